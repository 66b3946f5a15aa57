"""Frame shapes and enums, with the seed document's string values."""

from __future__ import annotations

import enum
from typing import Any

import attrs


class MessageType(enum.StrEnum):
    TEXT = "text"
    JOIN_ROOM = "join_room"
    LEAVE_ROOM = "leave_room"
    ROOM_MESSAGE = "room_message"
    BROADCAST = "broadcast"
    INFO = "info"
    ERROR = "error"
    NOTIFICATION = "notification"
    REFRESH_TOKEN = "refresh_token"


# What a client may send; the rest are server-only.
CLIENT_TYPES = frozenset(
    {
        MessageType.TEXT,
        MessageType.JOIN_ROOM,
        MessageType.LEAVE_ROOM,
        MessageType.ROOM_MESSAGE,
        MessageType.BROADCAST,
        MessageType.REFRESH_TOKEN,
    }
)

# Client types that act on a room, and those that carry a payload.
ROOM_TYPES = frozenset({MessageType.JOIN_ROOM, MessageType.LEAVE_ROOM, MessageType.ROOM_MESSAGE})
DATA_TYPES = frozenset(
    {MessageType.TEXT, MessageType.ROOM_MESSAGE, MessageType.BROADCAST, MessageType.REFRESH_TOKEN}
)


class NotificationLevel(enum.StrEnum):
    INFO = "info"
    SUCCESS = "success"
    WARNING = "warning"
    ERROR = "error"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    HEARTBEAT_TIMEOUT = 4000
    TOKEN_EXPIRED = 4001
    POLICY = 4008
    SLOW_CONSUMER = 4009


@attrs.frozen
class ClientFrame:
    """A validated frame from a client: `room` is checked where the type needs one."""

    type: MessageType
    data: Any = None
    room: str | None = None
    # join_room only: a room token (a JWT for this user and room), never logged.
    token: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class ServerFrame:
    """Every frame the service sends has these four keys, `null` where unused."""

    type: MessageType
    message: str
    data: dict[str, Any] | None = None
    room: str | None = None


@attrs.frozen
class Position:
    """Where a client got to in a room: the last `offset` it saw, in `epoch`. Both
    None: the client has seen nothing yet, but wants positions in its answers."""

    offset: int | None = None
    epoch: str | None = None


EPOCH_MAX = 64  # an epoch the service gives is shorter (roomlog.new_epoch)
OFFSET_RULE = "'offset' is a whole number, 0 or more"
EPOCH_RULE = "'epoch' is the string the service gave"


def _offset(value: Any) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise ValueError(OFFSET_RULE)
    return value


def _epoch(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= EPOCH_MAX):
        raise ValueError(EPOCH_RULE)
    return value


def _is_true(value: Any) -> bool:
    return value is True


@attrs.frozen
class JoinData:
    """A `join_room` frame's `data`: the last position the client saw (`offset` and
    `epoch`, both), or `recover: true` (nothing seen yet). Other keys are ignored."""

    offset: int | None = attrs.field(default=None, converter=_offset)
    epoch: str | None = attrs.field(default=None, converter=_epoch)
    recover: bool = attrs.field(default=False, converter=_is_true)

    def position(self) -> Position | None:
        if self.offset is None and self.epoch is None:
            return Position() if self.recover else None
        if self.offset is None:
            raise ValueError(OFFSET_RULE)
        if self.epoch is None:
            raise ValueError(EPOCH_RULE)
        return Position(offset=self.offset, epoch=self.epoch)


class RecoveryFailure(enum.StrEnum):
    """Why missed frames could not be recovered; the client should reload its state."""

    EPOCH_CHANGED = "epoch_changed"  # the room's history was lost (a restart) or is another
    TOO_OLD = "too_old"  # the missed frames are older than the retention time
    TOO_MANY = "too_many"  # more frames were missed than the room keeps
