"""Batches of frames numbered in one Redis round trip, and the room message that
carries them (sans-IO: plain bytes and ints).

A cluster node numbers the frames its publishers queued meanwhile together: one
script call for frames of several rooms. The script takes them room by room
(`group_by_room`: each room's frames in the order they were queued), gives each room
a run of consecutive offsets, and publishes each room's frames as ONE message on the
room's channel. The node hands the numbered frames to its rooms in the order they
were queued (`spread`), so that one publisher's frames keep their order, across rooms
too.

The room message, after the publisher's 16-byte origin (the script builds the same
bytes, see `roomcast.actors.streams`):

    OFFSET EPOCH\\nJSON                       one numbered frame
    OFFSET EPOCH COUNT\\n(LENGTH\\nJSON)*COUNT  COUNT frames, offsets OFFSET, OFFSET+1, ...
    \\nJSON                                   one unnumbered frame (a broadcast)

Anything with access to Redis can publish on a room's channel: a message that is not
one of these is refused (`BadHeader`, `BadFrame`), never half-read.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from typing import TypeVar

import attrs

K = TypeVar("K", bound=Hashable)

# A room message carries at most this many frames (a sequencer batch is smaller).
MAX_FRAMES = 4096


@attrs.frozen
class RoomBatch:
    """Frames of one room numbered together: `first`, `first` + 1, ... in `epoch`."""

    first: int
    epoch: str
    frames: tuple[bytes, ...]

    def numbered(self) -> list[tuple[int, str, bytes]]:
        return [(self.first + i, self.epoch, frame) for i, frame in enumerate(self.frames)]


def positioned_json(body: bytes, offset: int, epoch: str) -> bytes:
    """The publisher's JSON object with its position as two more keys (what the
    numbering script stores, publishes and answers)."""
    return body[:-1] + b',"offset":%d,"epoch":"%s"}' % (offset, epoch.encode())


def encode_room_batch(batch: RoomBatch) -> bytes:
    """A room message without its origin: the script's format, for tests and tools."""
    header = b"%d %s" % (batch.first, batch.epoch.encode())
    if len(batch.frames) == 1:
        return header + b"\n" + batch.frames[0]
    parts = [header, b" %d\n" % len(batch.frames)]
    for frame in batch.frames:
        parts += [b"%d\n" % len(frame), frame]
    return b"".join(parts)


class BadHeader(ValueError):
    """A room message whose header (position, count, lengths) is not the script's."""


class BadFrame(ValueError):
    """A room message whose frame is not a frame as the publisher and the script make
    it: a UTF-8 JSON object, ending with its position when numbered."""


def parse_room_message(message: bytes) -> bytes | RoomBatch:
    """A room message without its origin: the unnumbered JSON of a broadcast, or a
    batch of numbered frames. `BadHeader` or `BadFrame` (ValueErrors) if it is neither.

    The checks are exact but cheap (no JSON parse: a node reads every frame of its
    rooms, and a parse would cost about 12 us a frame): a frame is UTF-8 (clients would
    close on anything else), begins with `{`, and ends with `}`, a numbered one with
    the `,"offset":N,"epoch":"E"}` the script appended for the header's position."""
    header, newline, rest = message.partition(b"\n")
    if not newline:
        raise BadHeader("no header line")
    if not header:
        _check_frame(rest, b"}")
        return rest
    fields = header.split(b" ")
    if len(fields) not in (2, 3) or not _is_offset(fields[0]) or \
            not _EPOCH.fullmatch(fields[1]):
        raise BadHeader("not a position")
    first, epoch = int(fields[0]), fields[1].decode("ascii")
    if len(fields) == 2:
        _check_frame(rest, _position_suffix(first, epoch))
        return RoomBatch(first, epoch, (rest,))
    if not _is_number(fields[2]) or not 1 <= int(fields[2]) <= MAX_FRAMES:
        raise BadHeader("bad frame count")
    frames = []
    at = 0
    for step in range(int(fields[2])):
        end = rest.find(b"\n", at, at + 12)
        if end < 0 or not _is_number(rest[at:end]):
            raise BadHeader("bad frame length")
        at, stop = end + 1, end + 1 + int(rest[at:end])
        if stop > len(rest):
            raise BadHeader("frame cut short")
        frame = rest[at:stop]
        _check_frame(frame, _position_suffix(first + step, epoch))
        frames.append(frame)
        at = stop
    if at != len(rest):
        raise BadHeader("bytes after the last frame")
    return RoomBatch(first, epoch, tuple(frames))


def group_by_room(rooms: Sequence[K]) -> list[tuple[K, list[int]]]:
    """The rooms of a batch in the order each first appears, each with the indexes of
    its frames in queue order: how the script numbers them."""
    groups: dict[K, list[int]] = {}
    for index, room in enumerate(rooms):
        groups.setdefault(room, []).append(index)
    return list(groups.items())


def spread(
    groups: Sequence[tuple[object, Sequence[int]]], answers: Sequence[tuple[int, str]]
) -> list[tuple[int, str]]:
    """Each queued frame's (offset, epoch), in queue order, from the script's answer
    per group: the first offset of the group's run and the room's epoch."""
    positions = spread_partly(groups, answers)
    return [p for p in positions if p is not None]


def spread_partly(
    groups: Sequence[tuple[object, Sequence[int]]], answers: Sequence[tuple[int, str] | None]
) -> list[tuple[int, str] | None]:
    """`spread`, where a group may have no answer (None: its room's script failed,
    with sharded pub/sub, one script per room): its frames have no position."""
    if len(groups) != len(answers):
        raise ValueError("one answer per room expected")
    size = sum(len(indexes) for _, indexes in groups)
    positions: list[tuple[int, str] | None] = [None] * size
    covered = [False] * size
    for (_, indexes), answer in zip(groups, answers, strict=True):
        for step, index in enumerate(indexes):
            covered[index] = True
            if answer is not None:
                positions[index] = (answer[0] + step, answer[1])
    if not all(covered):
        raise ValueError("the groups do not cover the batch")
    return positions


# Epochs as `roomlog.new_epoch` makes them (hex time and salt), or any other short
# alphanumeric word: what a client gets back as its position.
_EPOCH = re.compile(rb"[0-9A-Za-z]{1,64}")


def _is_number(text: bytes) -> bool:
    return 0 < len(text) <= 20 and text.isdigit()


def _is_offset(text: bytes) -> bool:
    return 0 < len(text) <= 18 and text.isdigit()  # below 2**63, as every offset


def _position_suffix(offset: int, epoch: str) -> bytes:
    return b',"offset":%d,"epoch":"%s"}' % (offset, epoch.encode())


def _check_frame(frame: bytes, ending: bytes) -> None:
    if not frame.startswith(b"{") or not frame.endswith(ending):
        raise BadFrame("not a frame at its position" if ending != b"}" else "not a frame")
    try:
        frame.decode("utf-8")
    except UnicodeDecodeError:
        raise BadFrame("not UTF-8") from None
