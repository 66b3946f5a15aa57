"""The Python client's rules, sans-IO: what a frame from the service means, which
frames to hand out (each frame of a room once, in order, across reconnects), what to
rejoin with which position, the backoff schedule, and when to renew the token.

`roomcast/client.py` drives them over trio-websocket; nothing here waits, reads a
clock or touches a socket (times come in as arguments, randomness as a function).
They mirror roomcast.js (roomcast/web/roomcast.js): positions per room, the highest
seen within an epoch; joins that ask to recover from there; full-jitter backoff;
renewal a margin before `exp`, at most a third of the time left.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import cattrs

from . import jsontext
from .frames import CloseCode
from .rules import PERSONAL_PREFIX, ROOM_NAME, ROOM_NAME_RULE, message_text


class BadFrame(ValueError):
    """A frame from the service that is not a roomcast frame (docs/protocol.md, 3)."""


@attrs.frozen
class Position:
    """Where a room stands: the offset of its last frame seen, within an epoch."""

    offset: int
    epoch: str


@attrs.frozen
class Frame:
    """One frame from the service: the four keys of every frame, and the room's
    position for frames that went through a room."""

    type: str
    message: str | None = None
    data: Any = None
    room: str | None = None
    offset: int | None = None
    epoch: str | None = None

    @property
    def position(self) -> Position | None:
        if self.offset is None or self.epoch is None:
            return None
        return Position(self.offset, self.epoch)

    @property
    def code(self) -> str | None:
        """An error frame's `data.code` (program against it, not the message)."""
        if self.type == "error" and isinstance(self.data, dict):
            code = self.data.get("code")
            return code if isinstance(code, str) else None
        return None

    @property
    def recovered(self) -> bool | None:
        """A join answer's (or welcome's) `data.recovered`: None when it says nothing."""
        if isinstance(self.data, dict) and isinstance(self.data.get("recovered"), bool):
            return bool(self.data["recovered"])
        return None

    @property
    def reason(self) -> str | None:
        """Why recovery was impossible (`epoch_changed`, `too_old`, `too_many`)."""
        if isinstance(self.data, dict) and isinstance(self.data.get("reason"), str):
            return str(self.data["reason"])
        return None


_converter = cattrs.Converter(forbid_extra_keys=False)


def parse_frame(text: str | bytes) -> Frame:
    """The frame in a text from the service, held to the strict JSON rule and to the
    frame's shape; anything else is a `BadFrame` that says what was wrong."""
    try:
        value = jsontext.loads(text)
    except jsontext.JsonRefused as exc:
        raise BadFrame(f"a frame that is not strict JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadFrame("a frame that is not a JSON object")
    for key, kind in (("type", str), ("message", str), ("room", str), ("epoch", str)):
        if value.get(key) is not None and not isinstance(value[key], kind):
            raise BadFrame(f"a frame whose {key!r} is not a string")
    if not isinstance(value.get("type"), str):
        raise BadFrame("a frame without a 'type'")
    offset = value.get("offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        raise BadFrame("a frame whose 'offset' is not a whole number >= 0")
    if (offset is None) != (value.get("epoch") is None):
        raise BadFrame("a frame with only one of 'offset' and 'epoch'")
    return _converter.structure(value, Frame)


def later_position(held: Position | None, seen: Position | None) -> Position | None:
    """The position to keep after seeing `seen`, holding `held`: the highest offset
    within an epoch; a position in another epoch replaces it (the room started over)."""
    if seen is None:
        return held
    if held is not None and held.epoch == seen.epoch and held.offset >= seen.offset:
        return held
    return seen


def position_in(data: Any) -> Position | None:
    """The position a welcome or a join answer carries in its `data`, if any."""
    if not isinstance(data, dict):
        return None
    offset, epoch = data.get("offset"), data.get("epoch")
    if type(offset) is int and offset >= 0 and isinstance(epoch, str) and epoch:
        return Position(offset, epoch)
    return None


def join_data(position: Position | None) -> dict[str, Any]:
    """A join's `data`: recover from `position`, or only ask for positions."""
    if position is None:
        return {"recover": True}
    return {"offset": position.offset, "epoch": position.epoch}


def check_room(room: str) -> str:
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room):
        raise ValueError(f"invalid room name {room!r}: use {ROOM_NAME_RULE}")
    return room


# -- reconnecting --------------------------------------------------------------------


@attrs.frozen
class Backoff:
    """Exponential backoff with full jitter: before retry `attempt` (0 for the first
    after a drop), a uniform wait in [0, min(max_delay, base_delay * 2 ** attempt));
    `max_attempts` failures in a row end the client (None: never)."""

    base_delay: float = 1.0
    max_delay: float = 30.0
    max_attempts: int | None = None

    def delay(self, attempt: int, random: Callable[[], float]) -> float:
        exponent = min(max(0, attempt), 52)
        ceiling = min(self.max_delay, self.base_delay * 2.0**exponent)
        return random() * ceiling

    def gives_up(self, failures: int) -> bool:
        return self.max_attempts is not None and failures >= self.max_attempts


STOP_CODES = frozenset({CloseCode.POLICY})
"""Close codes after which the client stops instead of reconnecting: 4008 says the
client misbehaves, and retrying would repeat it (docs/protocol.md, section 7)."""


def needs_fresh_token(code: int | None, opened: bool) -> bool:
    """Whether the next connect wants a fresh token: the old one expired (4001), or the
    connection failed before the service took us in."""
    return code == CloseCode.TOKEN_EXPIRED or not opened


# -- tokens ------------------------------------------------------------------------


def token_lifetime(token: str, now: float, elapsed: float = 0.0) -> float | None:
    """Seconds `token` has left, seen `elapsed` s after it was received, at wall time
    `now`; None when it has no `exp` (or is not a JWT we can read: the service decides
    then). With `iat`, its lifetime `exp - iat` minus `elapsed`, so a clock that is off
    still renews in time; without, `exp` against the local clock."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = jsontext.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return None
    if not isinstance(claims, dict):
        return None

    def number(name: str) -> float | None:
        value = claims.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return float(value) if math.isfinite(value) else None

    exp, iat = number("exp"), number("iat")
    if exp is None:
        return None
    if iat is not None and iat <= exp:
        return exp - iat - elapsed
    return exp - now


def refresh_delay(left: float, margin: float = 30.0) -> float:
    """Seconds to wait before renewing a token with `left` seconds to live: `margin`
    before it ends, but never more than a third of the time left."""
    if left <= 0:
        return 0.0
    return max(0.0, left - min(margin, left / 3))


def connect_url(url: str, personal: Position | None) -> str:
    """`url` asking to recover the personal room from its last position (`offset`,
    `epoch`), or `recover=1` when there is none yet. A `token` in `url` is taken out:
    the client sends its token in the Authorization header, where no access log
    records it (and a query parameter would win over the header)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OURS]
    if personal is None:
        query.append(("recover", "1"))
    else:
        query += [("offset", str(personal.offset)), ("epoch", personal.epoch)]
    return urlunsplit(parts._replace(query=urlencode(query)))


_OURS = frozenset({"token", "recover", "offset", "epoch"})


# -- the state of one client across its connections ----------------------------------


@attrs.frozen
class Answer:
    """The service's answer to a join or a leave of `room`: `frame` is the reply
    (an info frame, or the error that refused it)."""

    room: str
    frame: Frame

    @property
    def refused(self) -> bool:
        return self.frame.type == "error"


@attrs.frozen
class Recovery:
    """What a (re)join or the welcome said about recovering `room`."""

    room: str
    recovered: bool
    reason: str | None
    missed: int


@attrs.frozen
class Seen:
    """What one frame from the service means: hand `frame` to the application (or
    not: a duplicate, a welcome, a join's answer), the `answer` a join or leave waits
    for, a `recovery` to report, a renewed token's `expires_at`."""

    frame: Frame | None = None
    answer: Answer | None = None
    recovery: Recovery | None = None
    refreshed: float | None = None
    welcome: bool = False


PUBLISHED = ("room_message", "broadcast")  # their reply is the sender's own copy


@attrs.frozen
class Awaited:
    """A frame sent on this connection whose one reply has not come yet: its `kind`,
    its `room` ("" for none), and for a room message or a broadcast the `message` text
    its copy (the reply) carries."""

    kind: str
    room: str
    message: str | None = None


@attrs.define
class ClientRules:
    """One client's memory across connections: the rooms it wants (with their room
    tokens), the highest position seen per room, who it is, and on the current
    connection the joins and leaves still waiting for their answer, in order."""

    rooms: dict[str, str | None] = attrs.field(factory=dict)
    positions: dict[str, Position] = attrs.field(factory=dict)
    user_id: int | str | None = None
    awaiting: deque[Awaited] = attrs.field(factory=deque)

    @property
    def personal_room(self) -> str | None:
        return None if self.user_id is None else f"{PERSONAL_PREFIX}{self.user_id}"

    def connect_url(self, url: str) -> str:
        room = self.personal_room
        return connect_url(url, None if room is None else self.positions.get(room))

    def opened(self) -> list[dict[str, Any]]:
        """A new connection: the joins to send again, each with its last position."""
        self.awaiting.clear()
        return [self._join_frame(room) for room in self.rooms]

    def join(self, room: str, token: str | None = None) -> dict[str, Any]:
        """Want `room` from now on (rejoined after every reconnect); its join frame."""
        check_room(room)
        self.rooms[room] = token
        return self._join_frame(room)

    def leave(self, room: str) -> dict[str, Any]:
        """Stop wanting `room`; its leave frame."""
        check_room(room)
        self.rooms.pop(room, None)
        self.positions.pop(room, None)
        return {"type": "leave_room", "room": room}

    def sent(self, frame: dict[str, Any]) -> None:
        """`frame` went out on this connection: its one reply comes in turn
        (docs/protocol.md, 4: every frame gets exactly one frame back)."""
        room, kind = frame.get("room"), str(frame["type"])
        try:
            message = message_text(frame.get("data"))[0] if kind in PUBLISHED else None
        except ValueError:  # not JSON (NaN, say): the service answers with an error
            message = None
        self.awaiting.append(Awaited(kind, room if isinstance(room, str) else "", message))

    def _join_frame(self, room: str) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": "join_room", "room": room,
                                 "data": join_data(self.positions.get(room))}
        token = self.rooms.get(room)
        if token is not None:
            frame["token"] = token
        return frame

    def _tracks(self, room: str | None) -> bool:
        return room is not None and (room in self.rooms or room == self.personal_room)

    def seen(self, frame: Frame) -> Seen:
        """What `frame`, the next from the service on this connection, means."""
        data = frame.data if isinstance(frame.data, dict) else {}
        if frame.type == "info" and frame.room is None and "user_id" in data \
                and isinstance(data.get("rooms"), list):
            return self._welcome(frame, data)
        if frame.type == "info" and frame.room is not None and isinstance(data.get("rooms"), list):
            return self._answer(frame)
        if frame.code == "room_token_expired":
            # Not a reply: the service left the room at its room token's expiry, and
            # rejoining with the same token would be refused.
            if frame.room is not None:
                self.rooms.pop(frame.room, None)
                self.positions.pop(frame.room, None)
            return Seen(frame=frame)
        if frame.type == "error":
            return self._refusal(frame)
        if frame.type == "info" and frame.room is None and "expires_at" in data:
            self._reply_of("refresh_token", "")
            expires = data["expires_at"]
            ok = isinstance(expires, int | float) and not isinstance(expires, bool)
            # The answer to the client's own renewal: an event, not a frame to hand out.
            return Seen(refreshed=float(expires) if ok else None)
        if frame.type == "text":
            self._reply_of("text", "")
        elif frame.type in PUBLISHED and self.user_id is not None \
                and data.get("from_user_id") == self.user_id:
            # Another connection of this user may publish in the same room: its copy
            # is not our reply unless it carries what we sent.
            self._reply_of(frame.type, frame.room or "", frame)
        return Seen(frame=self._positioned(frame))

    def _positioned(self, frame: Frame) -> Frame | None:
        """`frame` unless it repeats one already handed out (a position at or below
        the highest seen in its room and epoch); moves the room's position on."""
        seen = frame.position
        if seen is None:
            return frame
        room = frame.room if frame.room is not None else self.personal_room
        if room is None or not self._tracks(room):
            return frame
        held = self.positions.get(room)
        if held is not None and held.epoch == seen.epoch and seen.offset <= held.offset:
            return None
        self.positions[room] = seen
        return frame

    def _welcome(self, frame: Frame, data: dict[str, Any]) -> Seen:
        user_id = data["user_id"]
        if isinstance(user_id, int | str) and not isinstance(user_id, bool):
            self.user_id = user_id
        return Seen(welcome=True, recovery=self._recovery(self.personal_room, frame, data))

    def _answer(self, frame: Frame) -> Seen:
        room = frame.room
        assert room is not None
        kind = self._reply_of(None, room)
        recovery = self._recovery(room, frame, frame.data) if kind == "join_room" else None
        # The answer of a rejoin that could not recover is the application's news.
        hand_out = frame if recovery is not None and not recovery.recovered else None
        return Seen(frame=hand_out, answer=Answer(room, frame), recovery=recovery)

    def _recovery(self, room: str | None, frame: Frame, data: dict[str, Any]) -> Recovery | None:
        if room is None or not self._tracks(room):
            return None
        position = position_in(data)
        before = self.positions.get(room)
        recovered = frame.recovered
        if recovered is not True and position is not None:
            # Start from where the service says the room is (frames after it are live).
            self.positions[room] = position
        if recovered is None:
            return None
        missed = 0
        if recovered and before is not None and position is not None:
            missed = max(0, position.offset - before.offset)
        return Recovery(room, recovered, frame.reason, missed)

    def _refusal(self, frame: Frame) -> Seen:
        if not self.awaiting:
            return Seen(frame=frame)
        awaited = self.awaiting.popleft()
        kind, room = awaited.kind, awaited.room
        if kind == "join_room":
            # A room the service refuses is dropped, not rejoined on every reconnect.
            self.rooms.pop(room, None)
            self.positions.pop(room, None)
        if kind in ("join_room", "leave_room"):
            return Seen(answer=Answer(room, frame))
        return Seen(frame=frame)

    def _reply_of(self, kind: str | None, room: str, copy: Frame | None = None) -> str | None:
        """Take the first awaited reply of `kind` (any join or leave when None) for
        `room`, and when `copy` is given, one that published what it carries, off the
        queue; its kind, or None when none was awaited."""
        for index, awaited in enumerate(self.awaiting):
            wanted = awaited.kind in ("join_room", "leave_room") if kind is None \
                else awaited.kind == kind
            if wanted and awaited.room == room and (copy is None
                                                    or awaited.message == copy.message):
                del self.awaiting[index]
                return awaited.kind
        return None
