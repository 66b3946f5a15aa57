"""The pure parts of the sequencer (roomcast/protocol/batch.py): which room's frames are
numbered together, which position each queued frame gets back, and the room message
that carries a batch. Plain values and hypothesis."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.batch import (
    BadFrame,
    BadHeader,
    RoomBatch,
    encode_room_batch,
    group_by_room,
    parse_room_message,
    positioned_json,
    spread,
    spread_partly,
)
from roomcast.protocol.wsframe import positioned_frame, text_frame

rooms = st.lists(st.sampled_from(["a", "b", "user_7", "c"]), min_size=1, max_size=60)
json_objects = st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4).map(
    lambda d: json.dumps(d, ensure_ascii=False).encode())
epochs = st.from_regex(r"[0-9a-z]{1,16}", fullmatch=True)


@given(rooms, st.dictionaries(st.sampled_from(["a", "b", "user_7", "c"]),
                              st.integers(1, 10**9)))
def test_each_room_gets_a_run_of_offsets_in_queue_order(queued, last):
    groups = group_by_room(queued)
    assert [room for room, _ in groups] == list(dict.fromkeys(queued))  # first appearance
    answers = [(last.get(room, 0) + 1, f"e-{room}") for room, _ in groups]
    positions = spread(groups, answers)
    assert len(positions) == len(queued)
    for room in set(queued):
        mine = [positions[i] for i, r in enumerate(queued) if r == room]
        first = last.get(room, 0) + 1
        assert mine == [(first + k, f"e-{room}") for k in range(len(mine))]


@given(rooms, st.sets(st.sampled_from(["a", "b", "user_7", "c"])))
def test_a_room_whose_script_failed_leaves_its_frames_unnumbered_only(queued, failed):
    """Sharded mode numbers a batch one script per room: the rooms that answered get
    their positions as if all had, the others None (numbered by the room, here)."""
    groups = group_by_room(queued)
    answers = [(10, f"e-{room}") for room, _ in groups]
    partly = spread_partly(groups, [None if room in failed else answer
                                    for (room, _), answer in zip(groups, answers, strict=True)])
    for index, (room, whole) in enumerate(zip(queued, spread(groups, answers), strict=True)):
        assert partly[index] == (None if room in failed else whole)


def test_spread_refuses_an_answer_that_does_not_fit_the_batch():
    groups = group_by_room(["a", "b"])
    with pytest.raises(ValueError):
        spread(groups, [(1, "e")])


@given(st.integers(1, 10**12), epochs, st.lists(json_objects, min_size=1, max_size=20))
def test_a_batch_parsed_is_the_batch_encoded(first, epoch, frames):
    batch = numbered(first, epoch, frames)
    assert parse_room_message(encode_room_batch(batch)) == batch


def numbered(first: int, epoch: str, bodies: list[bytes]) -> RoomBatch:
    """A batch as the script makes it: each frame ends with its own position."""
    return RoomBatch(first, epoch, tuple(positioned_json(body, first + i, epoch)
                                         for i, body in enumerate(bodies)))


def test_one_frame_is_the_message_a_node_of_the_previous_version_reads():
    frame = b'{"x":1,"offset":7,"epoch":"e1"}'
    assert encode_room_batch(RoomBatch(7, "e1", (frame,))) == b"7 e1\n" + frame
    assert parse_room_message(b"7 e1\n" + frame) == RoomBatch(7, "e1", (frame,))
    assert parse_room_message(b'\n{"type":"broadcast"}') == b'{"type":"broadcast"}'


@pytest.mark.parametrize(("message", "error"), [
    (b'7 e1\n{"x":1,"offset":8,"epoch":"e1"}', BadFrame),  # not the header's position
    (b'7 e1\n{"x":1,"offset":7,"epoch":"e2"}', BadFrame),
    (b'7 e1\n{"x":1}', BadFrame),  # no position at all
    (b'7 e1 2\n31\n{"x":1,"offset":7,"epoch":"e1"}31\n{"x":1,"offset":7,"epoch":"e1"}',
     BadFrame),  # the second frame repeats the first's position
    (b'\n{"message":"\xff"}', BadFrame),  # not UTF-8: every client would close
    (b"\n[1]", BadFrame),
    (b"99999999999999999999 e\n{}", BadHeader),  # past 2**63
    (b"1 e\x00\n{}", BadHeader),
])
def test_a_frame_must_be_what_the_script_writes(message, error):
    with pytest.raises(error):
        parse_room_message(message)


def test_the_position_spliced_here_is_the_frame_the_room_sends():
    body = b'{"type":"room_message","message":"hi"}'
    assert text_frame(positioned_json(body, 42, "e-1")) == positioned_frame(body, 42, "e-1")


@pytest.mark.parametrize("message", [
    b"", b"no newline", b"1 e\nnot json", b"x e\n{}", b"1\n{}", b"1 e 2\n2\n{}",
    b"1 e 2\n2\n{}2\n{}extra", b"1 e 0\n", b"1 e 99999\n2\n{}", b"1 e 2\n-1\n{}2\n{}",
    b"1 e 2\n9999999999999999999999\n{}", b"1 \xff 1\n{}", b"\nnot json",
    b"1 e 2\n2\n{}2\n[]",
])
def test_a_malformed_message_is_refused(message):
    with pytest.raises(ValueError):
        parse_room_message(message)


@given(st.binary(max_size=200))
def test_any_bytes_are_parsed_or_refused_never_a_crash(message):
    with contextlib.suppress(ValueError):
        parse_room_message(message)


@given(st.integers(1, 10**6), epochs, st.lists(json_objects, min_size=2, max_size=5),
       st.data())
def test_a_cut_batch_is_refused(first, epoch, frames, data):
    encoded = encode_room_batch(numbered(first, epoch, frames))
    cut = data.draw(st.integers(len(encoded.partition(b"\n")[0]) + 1, len(encoded) - 1))
    with pytest.raises(ValueError):
        parse_room_message(encoded[:cut])
