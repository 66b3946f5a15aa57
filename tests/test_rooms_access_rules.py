"""The rules of who may join a room, with plain values (roomcast/protocol/access.py)
and the keeper's room-token deadlines (roomcast/protocol/deadlines.py). Over real
sockets: test_rooms_access.py."""

from __future__ import annotations

import fnmatch
import re

from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.access import (
    MAX_CLAIM_PATTERNS,
    RoomAccess,
    Rule,
    glob_matches,
    patterns_from_claim,
    refusal_text,
    scope_values,
)
from roomcast.protocol.deadlines import Deadlines
from roomcast.protocol.rules import ROOM_NAME, personal_room

room_names = st.from_regex(ROOM_NAME, fullmatch=True)
patterns = st.text(alphabet="ab_*?.[]!-", max_size=12)
names = st.text(alphabet="ab_.[]!-", max_size=12)


def reference(pattern: str, name: str) -> bool:
    """The rule stated as a regular expression: `*` any run, `?` one, the rest literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


@given(patterns, names)
def test_glob_is_star_and_question_mark_over_the_whole_name(pattern, name):
    assert glob_matches(pattern, name) == reference(pattern, name)


def test_brackets_are_plain_characters_unlike_fnmatch():
    assert fnmatch.fnmatchcase("a", "[ab]")
    assert not glob_matches("[ab]", "a")
    assert glob_matches("[ab]", "[ab]")


def test_a_long_run_of_stars_is_not_exponential():
    assert not glob_matches("a*" * 50 + "b", "a" * 100)


@given(st.sampled_from(["*", "u*", "user_*", "user_?", "*_*", "*2", "user_2"]),
       st.one_of(st.integers(0, 10**6), st.from_regex(r"[a-z]{1,10}", fullmatch=True)))
def test_no_pattern_opens_someone_elses_personal_room(pattern, owner):
    room = personal_room(owner)
    access = RoomAccess((pattern,))
    assert access.decide(room, "user_me", (pattern,)) is None


@given(room_names)
def test_the_own_personal_room_is_always_allowed_and_star_opens_the_rest(room):
    access = RoomAccess(("*",))
    own = "user_me"
    expected = Rule.PERSONAL if room == own else None if room.startswith("user_") \
        else Rule.OPEN_PATTERN
    assert access.decide(room, own, ()) is expected


def test_the_cheapest_rule_is_named():
    access = RoomAccess(("public_*",))
    assert access.decide("public_1", "user_1", ("public_*",)) is Rule.OPEN_PATTERN
    assert access.decide("team_1", "user_1", ("team_*",)) is Rule.CLAIM
    assert access.decide("team_1", "user_1", ()) is None
    assert RoomAccess().decide("anything", "user_1", ()) is None  # closed by default


def test_the_claim_is_a_list_or_a_string_split_on_plain_spaces():
    assert patterns_from_claim(["a_*", "b", 3, "", None]) == ("a_*", "b")
    assert patterns_from_claim(" a_*  b ") == ("a_*", "b")
    assert patterns_from_claim("a\u3000b\tc\nd") == ("a\u3000b\tc\nd",)
    assert patterns_from_claim({"a": 1}) == ()
    assert patterns_from_claim(None) == ()
    assert len(patterns_from_claim(["x"] * 1000)) == MAX_CLAIM_PATTERNS
    assert scope_values("roomcast:broadcast\u3000other") == ("roomcast:broadcast\u3000other",)


def test_the_refusal_text_says_how_a_room_is_opened():
    text = refusal_text("project_7", rooms_claim="chans", why="room token refused: expired")
    assert text.startswith("Not allowed: room project_7 is closed (room token refused")
    for how in ("--open-rooms", "'chans' claim", "room token", "authorizer"):
        assert how in text


def test_room_deadlines_are_replaced_dropped_and_gone_with_their_connection():
    deadlines = Deadlines(10.0, 5.0, jitter=lambda: 0.0)
    deadlines.watch(1, 0.0)
    deadlines.watch(2, 0.0)
    deadlines.room_expire_at(1, "a", 30.0)
    deadlines.room_expire_at(1, "b", 40.0)
    deadlines.room_expire_at(2, "a", 35.0)
    deadlines.room_expire_at(3, "a", 1.0)  # not watched: ignored
    assert deadlines.next_wakeup() == 10.0 + 0.005  # the heartbeat look comes first
    deadlines.room_expire_at(1, "a", 100.0)  # a fresh room token
    deadlines.room_expire_at(1, "b", None)  # left, or joined again by another rule
    assert deadlines.rooms_expired(50.0) == [(2, "a")]
    deadlines.unwatch(1)
    assert deadlines.rooms_expired(1000.0) == []


def test_room_deadline_churn_keeps_the_heaps_small():
    deadlines = Deadlines(10.0, 5.0, jitter=lambda: 0.0)
    deadlines.watch(1, 0.0)
    for i in range(10_000):
        deadlines.room_expire_at(1, "a", float(i))
    assert len(deadlines._room_expiries) <= 16
    assert deadlines.rooms_expired(1e9) == [(1, "a")]
