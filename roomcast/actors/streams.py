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

Keys, with the prefix as a hash tag so they share one slot on Redis Cluster:

    {P}:seq:R        STRING  the room's last offset
    {P}:epoch:R      STRING  the room's epoch
    {P}:hist:R       STREAM  entries 0-OFFSET with fields t (ms) and f (the frame's JSON)
    {P}:pending:U    LIST    frames for user U that reached nobody (at most history_size)
    {P}:pending_lost:U STRING set when older ones were dropped: the user is told too_many

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

from roomcast.protocol import UserId, jsontext
from roomcast.protocol.batch import group_by_room, positioned_json, spread
from roomcast.protocol.holdback import Fetch
from roomcast.protocol.roomlog import Stretch, new_epoch

# KEYS: seq, epoch, hist, pending, pending_lost (the last two may be unused); ARGV:
# body without its closing brace, maxlen, ttl ms, channel, origin, candidate epoch, now
# ms, pending flag. Returns the position, the frame, and how many subscribers heard it:
# a personal frame that nobody heard is kept in the user's pending list (at most
# maxlen; the oldest dropped, and that noted, so the user is told `too_many`).
SEQUENCE = """
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', KEYS[2], epoch)
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[1])
local frame = ARGV[1] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}'
local size = tonumber(ARGV[2])
if size > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], '0-' .. offset, 't', ARGV[7], 'f', frame)
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
local heard = redis.call('PUBLISH', ARGV[4], ARGV[5] .. offset .. ' ' .. epoch .. '\\n' .. frame)
if ARGV[8] == '1' and heard == 0 and size > 0 then
  if redis.call('RPUSH', KEYS[4], frame) > size then
    redis.call('LPOP', KEYS[4])
    redis.call('SET', KEYS[5], 'too_many', 'PX', ARGV[3])
  end
  redis.call('PEXPIRE', KEYS[4], ARGV[3])
end
return {offset, epoch, frame, heard}
"""

# SEQUENCE for a batch: frames of several rooms numbered in one round trip. KEYS: seq,
# epoch, hist, pending, pending_lost of each room in turn; ARGV: maxlen, ttl ms, origin,
# now ms, then per room: channel, candidate epoch, pending flag, COUNT, and COUNT bodies
# without their closing brace. Each room's frames get consecutive offsets and go out
# as ONE message (roomcast.protocol.batch has its format); a personal room's frames
# that nobody heard go to the user's pending list, as SEQUENCE's do. Returns, per
# room: its first offset, its epoch, and how many subscribers heard the message.
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

    def __init__(self, prefix: str, size: int, ttl: float) -> None:
        self._tag = "{" + prefix + "}"
        self._size = size
        self._ttl_ms = max(1, int(ttl * 1000))
        self._channel_prefix = f"{prefix}:room:"
        # Told of each stream entry skipped for breaking its format (the backplane logs
        # it once per kind and counts it).
        self.on_malformed: Callable[[Malformed], None] = _ignore

    def _key(self, kind: str, name: object) -> str:
        return f"{self._tag}:{kind}:{name}"

    async def sequence(
        self, client: Any, room: str, body: bytes, origin: bytes, pending: UserId | None
    ) -> Numbered:
        user = pending if pending is not None else "-"
        keys = [self._key("seq", room), self._key("epoch", room), self._key("hist", room),
                self._key("pending", user), self._key("pending_lost", user)]
        args = [body[:-1], str(self._size), str(self._ttl_ms), self._channel_prefix + room,
                origin, new_epoch(time.time(), secrets.token_hex(4)), str(int(time.time() * 1000)),
                "1" if pending is not None else "0"]
        reply = await client.eval(SEQUENCE, keys, args)
        if not isinstance(reply, list | tuple) or len(reply) != 4:
            raise Malformed("stream_reply", "not what the script returns")
        offset, epoch, frame, heard = reply
        # The frame is the one the script just built from our JSON and the epoch.
        frame = _raw(frame)
        if frame is None:
            raise Malformed("stream_reply", "no frame")
        return Numbered(checked_offset(offset), checked_epoch(epoch), frame,
                        checked_offset(heard))

    async def sequence_batch(
        self, client: Any, frames: Sequence[tuple[str, bytes, UserId | None]], origin: bytes
    ) -> list[Numbered]:
        """Number `frames` (room, body, pending user) in one script call: each room's
        frames in queue order, published to the room's channel as one message. The
        answer is in the order of `frames`."""
        groups = group_by_room([room for room, _, _ in frames])
        keys: list[str] = []
        args = [str(self._size), str(self._ttl_ms), origin, str(int(time.time() * 1000))]
        for room, indexes in groups:
            pending = frames[indexes[0]][2]
            user = pending if pending is not None else "-"
            keys += [self._key("seq", room), self._key("epoch", room), self._key("hist", room),
                     self._key("pending", user), self._key("pending_lost", user)]
            args += [self._channel_prefix + room, new_epoch(time.time(), secrets.token_hex(4)),
                     "1" if pending is not None else "0", str(len(indexes))]
            args += [frames[i][1][:-1] for i in indexes]
        answers = await client.eval(SEQUENCE_BATCH, keys, args)
        # Checked as every reply from Redis is: a malformed one is dropped, not trusted.
        if not isinstance(answers, list | tuple) or len(answers) != len(groups) or not all(
            isinstance(answer, list | tuple) and len(answer) == 3 for answer in answers
        ):
            raise Malformed("stream_reply", "not what the script returns")
        runs = [(checked_offset(first), checked_epoch(epoch)) for first, epoch, _ in answers]
        heard = {room: checked_offset(answer[2])
                 for (room, _), answer in zip(groups, answers, strict=True)}
        return [Numbered(offset, epoch, positioned_json(body, offset, epoch), heard[room])
                for (room, body, _), (offset, epoch) in zip(frames, spread(groups, runs),
                                                            strict=True)]

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
        """Renew the rooms' keys for `history_ttl` (a key already gone stays gone)."""
        for start in range(0, len(rooms), 300):  # bounded scripts
            keys = [self._key(kind, room) for room in rooms[start:start + 300]
                    for kind in ("seq", "epoch", "hist")]
            await client.eval(TOUCH, keys, [str(self._ttl_ms)])

    async def take_pending(self, client: Any, user: UserId) -> tuple[list[bytes], bool]:
        """What waited for `user` (taken: once), and whether some of it was dropped."""
        keys = [self._key("pending", user), self._key("pending_lost", user)]
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

