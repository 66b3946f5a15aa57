"""Room history in Redis: one sequence for a room across every node of a cluster.

With a backplane (and classic pub/sub), a publisher does not number a room's frames
itself. One Lua script, atomic in Redis, takes the room's next offset, adds the
numbered frame to the room's stream (`XADD`, bounded by `history_size`), keeps the
room's keys for `history_ttl` after the last frame, and publishes the frame to the
nodes: every node, and every client recovering on any node, sees the same offsets in
the same epoch. The epoch is new whenever the room's keys are gone (Redis restarted,
or the room was idle past its retention), so a lost history is always told apart.

A personal notification that no node heard (Redis counts the subscribers a publish
reached, in the same script) is also pushed to the user's pending list, which the
user's next connection that asks for it, on any node, takes once.

Keys, with classic pub/sub (one Redis), the prefix as a hash tag:

    {P}:seq:R        STRING  the room's last offset
    {P}:epoch:R      STRING  the room's epoch
    {P}:hist:R       STREAM  entries 0-OFFSET with fields t (ms) and f (the frame's JSON)
    {P}:pending:U    LIST    frames for user U that reached nobody (at most history_size)
    {P}:pending_lost:U STRING set when older ones were dropped: the user is told too_many

With sharded pub/sub (`--redis-sharded`, Redis Cluster), a hash tag per room: its
channel's name, `P:room:R`. The room's keys and its channel then hash to the same
slot, so the script that numbers may SPUBLISH the frames (Redis 7 allows a script a
shard channel of its keys' slot), and the rooms spread over the cluster's masters. A
user's pending list lives under the tag of the user's personal room (`user:U`), the
room whose script fills it (a prefix with braces in it would break this: keep it
without):

    {P:room:R}:seq  {P:room:R}:epoch  {P:room:R}:hist
    {P:room:user:U}:pending  {P:room:user:U}:pending_lost

Redis is trusted to deliver, not to keep this process alive: whatever it answers is
checked before it is used (an epoch is an epoch, an offset a number, a stream entry
has its fields and a JSON object for a frame). A reply that breaks its format is
`Malformed`; an entry that does, is skipped (a gap, which the room's rules refuse to
recover across) and reported to `on_malformed`.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from roomcast.protocol import UserId, jsontext, personal_room
from roomcast.protocol.batch import group_by_room, positioned_json, spread_partly
from roomcast.protocol.holdback import Fetch
from roomcast.protocol.roomlog import Stretch, new_epoch

# Frames of one room or several numbered in one round trip. KEYS: seq, epoch, hist,
# pending, pending_lost of each room in turn (the last two unused but for a personal
# room); ARGV: maxlen, ttl ms, origin,
# now ms, then per room: channel, candidate epoch, pending flag, COUNT, and COUNT bodies
# without their closing brace. Each room's frames get consecutive offsets and go out
# as ONE message (roomcast.protocol.batch has its format); a personal room's frames
# that nobody heard go to the user's pending list (at most maxlen; the oldest dropped,
# and that noted, so the user is told `too_many`). Returns, per room: its first offset,
# its epoch, and how many subscribers heard the message.
SEQUENCE_BATCH = """
local size = tonumber(ARGV[1])
local at = 5
local answers = {}
for k = 0, #KEYS - 5, 5 do
  local channel, candidate, pending = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  local count = tonumber(ARGV[at + 3])
  at = at + 4
  local epoch = redis.call('GET', KEYS[k + 2])
  if not epoch then
    epoch = candidate
    redis.call('SET', KEYS[k + 2], epoch)
    redis.call('DEL', KEYS[k + 1], KEYS[k + 3])
  end
  local first = redis.call('INCRBY', KEYS[k + 1], count) - count + 1
  local frames, parts = {}, {}
  for i = 0, count - 1 do
    local offset = first + i
    local frame = ARGV[at + i] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
    frames[i + 1] = frame
    parts[i + 1] = #frame .. '\\n' .. frame
    if size > 0 then
      redis.call('XADD', KEYS[k + 3], 'MAXLEN', ARGV[1], '0-' .. offset, 't', ARGV[4], 'f', frame)
    end
  end
  at = at + count
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[k + i], ARGV[2]) end
  local message
  if count == 1 then
    message = ARGV[3] .. first .. ' ' .. epoch .. '\\n' .. frames[1]
  else
    message = ARGV[3] .. first .. ' ' .. epoch .. ' ' .. count .. '\\n' .. table.concat(parts)
  end
  local heard = redis.call('PUBLISH', channel, message)
  if pending == '1' and heard == 0 and size > 0 then
    for i = 1, count do
      if redis.call('RPUSH', KEYS[k + 4], frames[i]) > size then
        redis.call('LPOP', KEYS[k + 4])
        redis.call('SET', KEYS[k + 5], 'too_many', 'PX', ARGV[2])
      end
    end
    redis.call('PEXPIRE', KEYS[k + 4], ARGV[2])
  end
  answers[#answers + 1] = {first, epoch, heard}
end
return answers
"""

# The same scripts for sharded pub/sub: a room's channel is a shard channel of the
# slot of its keys (one room per call: one slot per script).
SHARDED_SEQUENCE_BATCH = SEQUENCE_BATCH.replace("redis.call('PUBLISH'",
                                                "redis.call('SPUBLISH'")

# KEYS: seq, epoch, hist; ARGV: candidate epoch, ttl ms. A room's position, made if
# missing. A join is activity: the room's keys live `history_ttl` from now.
POSITION = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], '0')
  redis.call('DEL', KEYS[3])
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
return {epoch, redis.call('GET', KEYS[1]) or '0'}
"""

# KEYS: epoch, seq, hist; ARGV: first stream id, last stream id ('-': none wanted), ttl
# ms. The epoch, last offset and entries from one moment: a frame numbered meanwhile
# cannot be both recovered and live. Renews the keys, as POSITION does.
SINCE = """
local epoch = redis.call('GET', KEYS[1])
if not epoch then return false end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local entries = {}
if ARGV[2] ~= '-' then entries = redis.call('XRANGE', KEYS[3], ARGV[1], ARGV[2]) end
return {epoch, redis.call('GET', KEYS[2]) or '0', entries}
"""

# KEYS: epoch, hist; ARGV: epoch, first stream id, last stream id. Frames a node missed
# (the hold-back buffer's gap), if the room is still in that epoch.
FETCH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {} end
return redis.call('XRANGE', KEYS[2], ARGV[2], ARGV[3])
"""

# KEYS: seq, epoch, hist of one room or more; ARGV: ttl ms. The room's epoch lives
# `history_ttl` from now: its last member of a node just left (a short reconnect
# recovers), or it has members and must not expire for want of frames.
TOUCH = """
for i = 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ARGV[1]) end
return 1
"""

# KEYS: pending, pending_lost. What waited for the user, and whether some was dropped.
TAKE_PENDING = """
local frames = redis.call('LRANGE', KEYS[1], 0, -1)
local lost = redis.call('GET', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
return {frames, lost or ''}
"""


class BackplaneUnavailable(RuntimeError):
    """Redis could not be reached: other nodes (or this worker's recipients) were not."""


class PartlyNumbered(BackplaneUnavailable):
    """Some rooms of a batch were numbered (with sharded pub/sub, one script per room)
    and some not: `numbered` holds each frame's number, None where its room's script
    failed (those frames are numbered by their room on this node)."""

    def __init__(self, numbered: list[Numbered | None], cause: Exception) -> None:
        super().__init__(f"some rooms were not numbered ({type(cause).__name__})")
        self.numbered = numbered
        self.cause = cause


class Malformed(ValueError):
    """Something read from Redis breaks its format: dropped, never acted on. `kind`
    (a short fixed label: `presence_shape`, `room_not_json`...) is what is counted and
    logged once."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# An epoch as `new_epoch` makes them (hex digits), with room to spare; an offset as
# Redis's INCR counts (a signed 64-bit integer).
_EPOCH = re.compile(rb"[0-9A-Za-z]{1,64}")
_OFFSET = re.compile(rb"[0-9]{1,18}")


def checked_epoch(value: Any) -> str:
    raw = _raw(value)
    if raw is None or not _EPOCH.fullmatch(raw):
        raise Malformed("stream_reply", "not an epoch")
    return raw.decode("ascii")


def checked_offset(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
        return value
    raw = _raw(value)
    if raw is None or not _OFFSET.fullmatch(raw):
        raise Malformed("stream_reply", "not an offset")
    return int(raw)


def checked_frame(value: Any, kind: str) -> bytes:
    """A frame's JSON as Redis holds it: a JSON object with a `type`, or Malformed."""
    raw = _raw(value)
    if raw is None:
        raise Malformed(kind, "not bytes")
    frame_object(raw, kind)
    return raw


def frame_object(raw: bytes, kind: str) -> dict[str, Any]:
    """The object a frame's JSON holds (strict JSON, a `type`), or Malformed."""
    try:
        frame = jsontext.loads(raw)
    except jsontext.JsonRefused as exc:
        raise Malformed(kind, str(exc)) from None
    if not isinstance(frame, dict) or not isinstance(frame.get("type"), str) or \
            not raw.endswith(b"}"):
        raise Malformed(kind, "not a frame")
    return frame


def _raw(value: Any) -> bytes | None:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return None


@attrs.frozen
class Numbered:
    offset: int
    epoch: str
    frame: bytes  # the frame's JSON, position included
    heard: int = 0  # subscribers (nodes, workers) that received it from Redis


class Streams:
    """A room's history in Redis, through the Lua scripts above: its sequence, its
    stream of numbered frames, and the pending lists of users who were away."""

    def __init__(self, prefix: str, size: int, ttl: float, sharded: bool = False) -> None:
        self._tag = "{" + prefix + "}"
        self._size = size
        self._ttl_ms = max(1, int(ttl * 1000))
        self._channel_prefix = f"{prefix}:room:"
        self._sharded = sharded
        self._sequence_batch = SHARDED_SEQUENCE_BATCH if sharded else SEQUENCE_BATCH
        # Told of each stream entry skipped for breaking its format (the backplane logs
        # it once per kind and counts it).
        self.on_malformed: Callable[[Malformed], None] = _ignore

    def _key(self, kind: str, room: str) -> str:
        """A room's key (the layout is in the module's docstring)."""
        if self._sharded:
            return "{" + self._channel_prefix + room + "}:" + kind
        return f"{self._tag}:{kind}:{room}"

    def _pending_keys(self, room: str, user: UserId | None) -> list[str]:
        """The pending list and its `too_many` mark of `user` (who owns `room`, a
        personal room) in the slot of `room`'s script; with no user, keys that the
        script leaves alone."""
        if self._sharded:
            owner_room = personal_room(user) if user is not None else room
            return [self._key("pending", owner_room), self._key("pending_lost", owner_room)]
        name = user if user is not None else "-"
        return [f"{self._tag}:pending:{name}", f"{self._tag}:pending_lost:{name}"]

    async def sequence_batch(
        self, client: Any, frames: Sequence[tuple[str, bytes, UserId | None]], origin: bytes
    ) -> list[Numbered]:
        """Number `frames` (room, body, pending user): each room's frames in queue
        order, published to the room's channel as one message. The answer is in the
        order of `frames`. One script call for every room; with sharded pub/sub one
        per room (a script's keys share a slot), all at once, and `PartlyNumbered` if
        some failed (their master out of reach): the others are numbered all the same."""
        groups = group_by_room([room for room, _, _ in frames])
        if not self._sharded:
            runs = await self._number(client, frames, groups, origin)
            return [n for n in self._numbered(frames, groups, runs) if n is not None]
        outcomes: list[tuple[int, str, int] | Exception | None] = [None] * len(groups)

        async def number_room(index: int) -> None:
            try:
                [outcomes[index]] = await self._number(client, frames,
                                                       groups[index:index + 1], origin)
            except Exception as exc:  # this room only: told below, with the others
                outcomes[index] = exc

        async with trio.open_nursery() as nursery:
            for index in range(len(groups)):
                nursery.start_soon(number_room, index)
        answered: list[tuple[int, str, int] | None] = [
            o if isinstance(o, tuple) else None for o in outcomes]
        numbered = self._numbered(frames, groups, answered)
        failures = [o for o in outcomes if isinstance(o, Exception)]
        if failures:
            raise PartlyNumbered(numbered, failures[0])
        return [n for n in numbered if n is not None]

    async def _number(
        self, client: Any, frames: Sequence[tuple[str, bytes, UserId | None]],
        groups: Sequence[tuple[str, list[int]]], origin: bytes,
    ) -> list[tuple[int, str, int]]:
        """One SEQUENCE_BATCH call for `groups` (rooms and the indexes of their
        frames): each room's first offset, epoch, and how many subscribers heard it."""
        keys: list[str] = []
        args = [str(self._size), str(self._ttl_ms), origin, str(int(time.time() * 1000))]
        for room, indexes in groups:
            pending = frames[indexes[0]][2]
            keys += [self._key("seq", room), self._key("epoch", room), self._key("hist", room),
                     *self._pending_keys(room, pending)]
            args += [self._channel_prefix + room, new_epoch(time.time(), secrets.token_hex(4)),
                     "1" if pending is not None else "0", str(len(indexes))]
            args += [frames[i][1][:-1] for i in indexes]
        answers = await client.eval(self._sequence_batch, keys, args)
        # Checked as every reply from Redis is: a malformed one is dropped, not trusted.
        if not isinstance(answers, list | tuple) or len(answers) != len(groups) or not all(
            isinstance(answer, list | tuple) and len(answer) == 3 for answer in answers
        ):
            raise Malformed("stream_reply", "not what the script returns")
        return [(checked_offset(first), checked_epoch(epoch), checked_offset(heard))
                for first, epoch, heard in answers]

    @staticmethod
    def _numbered(
        frames: Sequence[tuple[str, bytes, UserId | None]],
        groups: Sequence[tuple[str, list[int]]],
        runs: Sequence[tuple[int, str, int] | None],
    ) -> list[Numbered | None]:
        """The frames in queue order, numbered from their room's run (None: none)."""
        heard = [run[2] if run is not None else 0 for run in runs]
        heard_by_frame = {index: count for (_, indexes), count in zip(groups, heard, strict=True)
                          for index in indexes}
        positions = spread_partly(groups, [run[:2] if run is not None else None for run in runs])
        return [None if position is None else
                Numbered(position[0], position[1],
                         positioned_json(body, position[0], position[1]), heard_by_frame[index])
                for index, ((_, body, _), position) in enumerate(zip(frames, positions,
                                                                    strict=True))]

    async def position(self, client: Any, room: str) -> tuple[str, int]:
        """The room's epoch and last offset (a new epoch if it had none)."""
        keys = [self._key("seq", room), self._key("epoch", room), self._key("hist", room)]
        candidate = new_epoch(time.time(), secrets.token_hex(4))
        reply = await client.eval(POSITION, keys, [candidate, str(self._ttl_ms)])
        if not isinstance(reply, list | tuple) or len(reply) != 2:
            raise Malformed("stream_reply", "not a position")
        return checked_epoch(reply[0]), checked_offset(reply[1])

    async def since(self, client: Any, room: str, offset: int, entries: bool = True) -> Stretch:
        """The room's epoch and last offset, and (with `entries`) the frames after
        `offset` that its stream still holds."""
        keys = [self._key("epoch", room), self._key("seq", room), self._key("hist", room)]
        found = await client.eval(SINCE, keys, [f"0-{offset + 1}", "+" if entries else "-",
                                                str(self._ttl_ms)])
        if not found:
            return Stretch(None, 0, ())
        if not isinstance(found, list | tuple) or len(found) != 3:
            raise Malformed("stream_reply", "not a stretch")
        epoch, last, raw = found
        return Stretch(checked_epoch(epoch), checked_offset(last),
                       tuple(self._entries(raw)))

    async def fetch(self, client: Any, room: str, fetch: Fetch) -> list[tuple[int, bytes]]:
        """Frames `fetch.after + 1` to `fetch.upto`, if the room is still in that epoch."""
        keys = [self._key("epoch", room), self._key("hist", room)]
        raw = await client.eval(FETCH, keys, [fetch.epoch, f"0-{fetch.after + 1}",
                                              f"0-{fetch.upto}"])
        return [(offset, frame) for offset, _, frame in self._entries(raw or [])]

    async def touch(self, client: Any, *rooms: str) -> None:
        """Renew the rooms' keys for `history_ttl` (a key already gone stays gone).
        Sharded: one script per room (one round trip each), as a script's keys share
        a slot."""
        step = 1 if self._sharded else 300  # bounded scripts
        for start in range(0, len(rooms), step):
            keys = [self._key(kind, room) for room in rooms[start:start + step]
                    for kind in ("seq", "epoch", "hist")]
            await client.eval(TOUCH, keys, [str(self._ttl_ms)])

    async def take_pending(self, client: Any, user: UserId) -> tuple[list[bytes], bool]:
        """What waited for `user` (taken: once), and whether some of it was dropped."""
        keys = self._pending_keys(personal_room(user), user)
        reply = await client.eval(TAKE_PENDING, keys, [])
        if not isinstance(reply, list | tuple) or len(reply) != 2 or \
                not isinstance(reply[0], list | tuple):
            raise Malformed("stream_reply", "not a pending list")
        frames = []
        for raw in reply[0]:
            try:
                frames.append(checked_frame(raw, "pending_frame"))
            except Malformed as malformed:
                self.on_malformed(malformed)
        return frames, bool(reply[1])

    def _entries(self, raw: Any) -> list[tuple[int, float, bytes]]:
        """XRANGE's answer as (offset, published at in seconds, frame JSON); an entry
        that breaks the format is skipped (a gap) and reported."""
        if not isinstance(raw, list | tuple):
            raise Malformed("stream_reply", "not a list of entries")
        entries = []
        for item in raw:
            try:
                entries.append(_entry(item))
            except Malformed as malformed:
                self.on_malformed(malformed)
        return entries


def _entry(item: Any) -> tuple[int, float, bytes]:
    if not isinstance(item, list | tuple) or len(item) != 2:
        raise Malformed("stream_entry", "not an entry")
    identifier, flat = _raw(item[0]), item[1]
    if identifier is None or not identifier.startswith(b"0-") or \
            not isinstance(flat, list | tuple) or len(flat) % 2:
        raise Malformed("stream_entry", "not an entry")
    fields = {_raw(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
    if b"t" not in fields or b"f" not in fields:
        raise Malformed("stream_entry", "missing fields")
    try:
        offset, at = checked_offset(identifier[2:]), checked_offset(fields[b"t"])
    except Malformed:
        raise Malformed("stream_entry", "not a position") from None
    return offset, at / 1000, checked_frame(fields[b"f"], "stream_entry")


def _ignore(malformed: Malformed) -> None:
    pass

