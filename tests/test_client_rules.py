"""The Python client's rules with plain values: frames in, decisions out (no socket,
no clock but the numbers passed in)."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.client_rules import (
    Backoff,
    BadFrame,
    ClientRules,
    Frame,
    Position,
    connect_url,
    later_position,
    needs_fresh_token,
    parse_frame,
    refresh_delay,
    token_lifetime,
)

positions = st.builds(Position, st.integers(0, 1000), st.sampled_from(["e1", "e2", "e3"]))


@given(st.none() | positions, st.none() | positions)
def test_the_position_kept_never_goes_back_within_an_epoch(held, seen):
    kept = later_position(held, seen)
    if seen is None:
        assert kept == held
    elif held is not None and held.epoch == seen.epoch:
        assert kept == (held if held.offset >= seen.offset else seen)
    else:
        assert kept == seen  # another epoch: the room started over


@given(st.integers(0, 100), st.floats(0.001, 10), st.floats(0.001, 100), st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_a_doubling_ceiling(attempt, base, cap, seed):
    backoff = Backoff(base_delay=base, max_delay=cap)
    delay = backoff.delay(attempt, random.Random(seed).random)
    assert 0 <= delay < min(cap, base * 2 ** min(attempt, 52)) or delay == 0
    # the same seed, the same schedule: a test can replay it
    assert delay == backoff.delay(attempt, random.Random(seed).random)


def test_backoff_ceiling_doubles_to_the_cap_and_gives_up_when_told():
    backoff = Backoff(base_delay=1.0, max_delay=8.0, max_attempts=3)
    assert [backoff.delay(n, lambda: 0.999999) for n in range(6)] == pytest.approx(
        [1, 2, 4, 8, 8, 8], rel=1e-5)
    assert [backoff.gives_up(n) for n in (1, 2, 3)] == [False, False, True]
    assert not Backoff().gives_up(10**6)  # by default it never gives up


@given(st.floats(-10, 10**6), st.floats(0, 600))
def test_renewal_comes_a_margin_before_expiry_but_never_before_two_thirds(left, margin):
    delay = refresh_delay(left, margin)
    if left <= 0:
        assert delay == 0
    else:
        assert left - margin - 1e-6 <= delay <= left
        assert delay >= left * 2 / 3 - 1e-6


def _jwt(claims: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.signature"


def test_token_lifetime_from_its_claims():
    assert token_lifetime(_jwt({"iat": 100, "exp": 700}), now=0.0, elapsed=50) == 550
    assert token_lifetime(_jwt({"exp": 700}), now=600.5) == pytest.approx(99.5)
    assert token_lifetime(_jwt({"sub": "1"}), now=0.0) is None  # no exp: no renewal
    for unreadable in ("not-a-jwt", "a.b.c", "a.!!!.c", _jwt({"exp": True}), "a.W10.c"):
        assert token_lifetime(unreadable, now=0.0) is None


def test_the_connect_url_asks_for_recovery_and_never_holds_the_token():
    url = "ws://h:8000/api/v1/ws?token=SECRET&x=1"
    assert connect_url(url, None) == "ws://h:8000/api/v1/ws?x=1&recover=1"
    assert connect_url(url, Position(41, "e 1")) == "ws://h:8000/api/v1/ws?x=1&offset=41&epoch=e+1"


@pytest.mark.parametrize(("text", "why"), [
    ("not json", "not strict JSON"),
    ('{"type": "info", "data": NaN}', "not strict JSON"),
    ("[" * 40 + "]" * 40, "not strict JSON"),
    ('["info"]', "not a JSON object"),
    ('{"message": "x"}', "without a 'type'"),
    ('{"type": 3}', "'type' is not a string"),
    ('{"type": "info", "room": 7}', "'room' is not a string"),
    ('{"type": "info", "offset": -1, "epoch": "e"}', "'offset' is not a whole number"),
    ('{"type": "info", "offset": true, "epoch": "e"}', "'offset' is not a whole number"),
    ('{"type": "info", "offset": 1.5, "epoch": "e"}', "'offset' is not a whole number"),
    ('{"type": "info", "offset": 1}', "only one of"),
])
def test_a_bad_frame_from_the_service_is_refused_with_its_reason(text, why):
    with pytest.raises(BadFrame, match=why):
        parse_frame(text)


def test_a_frame_keeps_its_fields_and_ignores_new_keys():
    frame = parse_frame('{"type": "room_message", "message": "hi", "data": {"x": 1},'
                        ' "room": "r", "offset": 3, "epoch": "e", "later": "ignored"}')
    assert frame == Frame("room_message", "hi", {"x": 1}, "r", 3, "e")
    assert frame.position == Position(3, "e")


def test_a_fresh_token_after_4001_or_a_connect_that_never_opened():
    assert needs_fresh_token(4001, opened=True)
    assert needs_fresh_token(None, opened=False)
    assert not needs_fresh_token(1006, opened=True)


# -- ClientRules -----------------------------------------------------------------------


def welcome(user: int = 7, **data: Any) -> Frame:
    return Frame("info", "Connected", {"user_id": user, "rooms": [f"user_{user}"], **data})


def answer(room: str, **data: Any) -> Frame:
    return Frame("info", f"Joined room: {room}", {"rooms": ["user_7", room], **data}, room)


def message(room: str, offset: int, epoch: str = "e", sender: int = 8) -> Frame:
    return Frame("room_message", "m", {"from_user_id": sender}, room, offset, epoch)


def test_rejoins_carry_the_highest_position_seen():
    rules = ClientRules()
    assert rules.seen(welcome()).welcome
    assert rules.join("r") == {"type": "join_room", "room": "r", "data": {"recover": True}}
    rules.sent(rules.join("r"))
    rules.seen(answer("r", offset=4, epoch="e"))
    for offset in (5, 6):
        assert rules.seen(message("r", offset)).frame is not None
    assert rules.opened() == [
        {"type": "join_room", "room": "r", "data": {"offset": 6, "epoch": "e"}}]


def test_a_failed_recovery_is_handed_out_and_restarts_from_the_rooms_position():
    rules = ClientRules(rooms={"r": None}, positions={"r": Position(6, "old")}, user_id=7)
    for frame in rules.opened():
        rules.sent(frame)
    seen = rules.seen(answer("r", offset=2, epoch="new", recovered=False, reason="epoch_changed"))
    assert seen.frame is not None and seen.frame.reason == "epoch_changed"
    assert seen.recovery is not None and not seen.recovery.recovered
    assert rules.positions["r"] == Position(2, "new")
    assert rules.seen(message("r", 2, "new")).frame is None  # already before the answer
    assert rules.seen(message("r", 3, "new")).frame is not None


def test_a_refused_join_is_the_joins_answer_and_the_room_is_not_rejoined():
    rules = ClientRules(user_id=7)
    rules.sent({"type": "text", "data": "x"})  # its reply comes first
    rules.sent(rules.join("r"))
    rate_limited = Frame("error", "Rate limited", {"code": "rate_limited"})
    assert rules.seen(rate_limited).frame == rate_limited  # the text's answer, handed out
    forbidden = Frame("error", "Not allowed", {"code": "forbidden"}, "r")
    seen = rules.seen(forbidden)
    assert seen.answer is not None and seen.answer.refused and seen.frame is None
    assert rules.opened() == []


def test_a_room_left_by_its_room_tokens_expiry_is_not_rejoined_with_that_token():
    rules = ClientRules(rooms={"r": "room-token"}, user_id=7)
    expired = Frame("error", "Room token expired", {"code": "room_token_expired"}, "r")
    assert rules.seen(expired).frame == expired
    assert rules.rooms == {}


def test_personal_frames_are_positioned_in_the_personal_room():
    rules = ClientRules()
    rules.seen(welcome(offset=3, epoch="p", recovered=True))
    personal = Frame("info", "n", {"notification": True}, None, 4, "p")
    assert rules.seen(personal).frame == personal
    assert rules.seen(personal).frame is None  # twice: handed out once
    assert rules.connect_url("ws://h/ws") == "ws://h/ws?offset=4&epoch=p"


@given(st.data())
def test_every_frame_of_a_room_once_in_order_across_any_reconnects(data):
    """A model: a room numbers frames 1..N; each connection rejoins with the client's
    position, and the service replays from there, or (to test the guard) from any
    earlier point, then sends some frames on, and the socket drops. The frames handed
    out are 1..k, once each, in order."""
    total = data.draw(st.integers(1, 30))
    rules = ClientRules(user_id=7)
    rules.sent(rules.join("r"))
    rules.seen(answer("r", offset=0, epoch="e"))
    handed: list[int] = []
    while not handed or handed[-1] < total:
        for frame in rules.opened():
            rules.sent(frame)
            asked = frame["data"].get("offset", 0)
            rules.seen(answer("r", offset=asked, epoch="e", recovered=True))
            replay_from = data.draw(st.integers(0, asked)) + 1
            upto = data.draw(st.integers(min(asked + 1, total), total))  # then the drop
            for offset in range(replay_from, upto + 1):
                seen = rules.seen(message("r", offset))
                if seen.frame is not None:
                    handed.append(seen.frame.offset or 0)
    assert handed == list(range(1, total + 1))


def copy(room: str | None, data: Any, sender: int = 7, kind: str = "room_message") -> Frame:
    """What the service sends every member when `sender` publishes `data`."""
    if isinstance(data, str):
        return Frame(kind, data, {"from_user_id": sender}, room)
    return Frame(kind, json.dumps(data, separators=(",", ":")),
                 {"from_user_id": sender, "payload": json.loads(json.dumps(data))}, room)


@pytest.mark.parametrize("data", ["hi", {"x": 1}, {1: [2.5, None]}, [1, "a"], None])
def test_another_tab_of_this_user_publishing_is_not_the_reply_an_error_is_paired_with(data):
    """Two connections of user 7 publish in room r at once. This one sent a room message,
    then a join of s; the other tab's copy comes first. The rate-limit error that
    follows answers this connection's room message, not its join."""
    rules = ClientRules(user_id=7)
    rules.sent({"type": "room_message", "room": "r", "data": data})
    rules.sent(rules.join("s"))
    other_tab = copy("r", "from the other tab")
    assert rules.seen(other_tab).frame == other_tab
    rate_limited = Frame("error", "Rate limited", {"code": "rate_limited"})
    seen = rules.seen(rate_limited)
    assert seen.frame == rate_limited and seen.answer is None  # handed out, not the join's
    assert rules.opened() == [{"type": "join_room", "room": "s", "data": {"recover": True}}]


@pytest.mark.parametrize("kind", ["room_message", "broadcast"])
@pytest.mark.parametrize("data", ["hi", {"x": 1}, {1: [2.5, None]}, [1, "a"], None, 3])
def test_the_copy_of_what_this_connection_published_is_its_reply(kind, data):
    rules = ClientRules(user_id=7)
    room = "r" if kind == "room_message" else None
    rules.sent({"type": kind, "room": room, "data": data} if room else {"type": kind,
                                                                        "data": data})
    rules.sent(rules.join("s"))
    rules.seen(copy(room, data, kind=kind))
    forbidden = Frame("error", "Not allowed", {"code": "forbidden"}, "s")
    seen = rules.seen(forbidden)
    assert seen.answer is not None and seen.answer.refused  # the join's, in turn
    assert rules.opened() == []
