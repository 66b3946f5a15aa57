"""A notification's arguments, checked once for every way in.

The facade builds these classes from its arguments; the HTTP API structures them from
its JSON bodies with the protocol's cattrs converter, which hands each raw value to
the field's converter. So both refuse the same values, with the same exception types
(TypeError for a value of the wrong kind, ValueError for a value of the right kind that
breaks a rule) and the same texts; the HTTP API answers those texts with a 400.
"""

from __future__ import annotations

from typing import Any

import attrs

from roomcast.protocol.codec import encode_body, strict, structure
from roomcast.protocol.frames import MessageType, NotificationLevel, ServerFrame
from roomcast.protocol.rules import UserId, normalize_user_id, room_name

LEVELS_TEXT = ", ".join(level.value for level in NotificationLevel)


def _message(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("'message' is required, a string")
    return value


def _level(value: Any) -> NotificationLevel:
    try:
        return NotificationLevel(value)
    except ValueError:
        raise ValueError(f"'level' is one of {LEVELS_TEXT}") from None


def _data(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise TypeError("'data' is an object or null")
    return value


def _true(value: Any) -> bool:
    if value is not True:
        raise ValueError("'broadcast' must be true")
    return True


@attrs.frozen
class Notification:
    """What every notification carries: its text, its level, and extra `data` keys."""

    # None is the default only so that a missing message gets the rule's own text.
    message: str = attrs.field(default=None, converter=_message)
    level: NotificationLevel = attrs.field(default=NotificationLevel.INFO, converter=_level)
    data: dict[str, Any] | None = attrs.field(default=None, converter=_data)

    def body(self, type_: MessageType, room: str | None = None) -> bytes:
        """The frame's JSON, encoded once for all its recipients (the room adds its
        position and frames it, once). Data that JSON cannot carry raises TypeError
        (or ValueError: NaN, infinities) here."""
        # The two protocol keys win over the caller's keys of the same name.
        payload = {**(self.data or {}), "level": self.level.value, "notification": True}
        return encode_body(ServerFrame(type=type_, message=self.message, data=payload, room=room))


@strict
@attrs.frozen
class UserNotification(Notification):
    """To every connection of one user (`notify_user`)."""

    user_id: UserId = attrs.field(kw_only=True, converter=normalize_user_id)


@strict
@attrs.frozen
class RoomNotification(Notification):
    """To every connection in a room (`notify_room`)."""

    room: str = attrs.field(kw_only=True, converter=room_name)


@strict
@attrs.frozen
class Broadcast(Notification):
    """To every connection (`broadcast`)."""

    broadcast: bool = attrs.field(default=True, kw_only=True, converter=_true)


# The three forms of a notification request, told apart by their target key.
NotificationRequest = UserNotification | RoomNotification | Broadcast
_TARGETS: dict[str, type[Notification]] = {
    "user_id": UserNotification, "room": RoomNotification, "broadcast": Broadcast,
}
TARGETS_TEXT = "Give exactly one of 'user_id', 'room' or 'broadcast'"


def notification_request(value: Any) -> Notification:
    """A JSON object with exactly one target key, structured as that form; raises
    TypeError or ValueError with the first broken rule's text."""
    if not isinstance(value, dict):
        raise TypeError("The body must be a JSON object")
    targets = [key for key in _TARGETS if key in value]
    if len(targets) != 1:
        raise ValueError(TARGETS_TEXT)
    return structure(value, _TARGETS[targets[0]])
