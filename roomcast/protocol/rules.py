"""Naming and identity rules shared by the handshake, the actors and the facade."""

from __future__ import annotations

import json
import re
from typing import Any

from roomcast.protocol.errors import ProtocolError

UserId = int | str

ROOM_NAME = re.compile(r"[A-Za-z0-9_.:@-]{1,100}")
PERSONAL_PREFIX = "user_"
_DIGITS = re.compile(r"[0-9]{1,40}")
_MAX_INT_ID = 10**40  # so that an int and its digit string always name one user


def validate_room_name(room: str) -> str:
    if not ROOM_NAME.fullmatch(room):
        raise ProtocolError.invalid_room()
    return room


def normalize_user_id(value: object) -> UserId:
    """An int, or a string of decimal digits, is an int; other strings stay strings.

    So `notify_user(42)` and `notify_user("42")` reach the same user. Raises
    ValueError for anything that cannot name a user (booleans, floats, empty text,
    text that would not make a valid personal room name).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("a user id is an int or a string")
    if isinstance(value, int):
        if not 0 <= value < _MAX_INT_ID:
            raise ValueError("an integer user id is from 0 to 40 digits")
        return value
    if not value:
        raise ValueError("a user id is not empty")
    if _DIGITS.fullmatch(value):
        return int(value)
    if not ROOM_NAME.fullmatch(PERSONAL_PREFIX + value):
        raise ValueError("a string user id uses 1 to 95 of A-Z a-z 0-9 _ . : @ -")
    return value


def personal_room(user_id: UserId) -> str:
    return f"{PERSONAL_PREFIX}{user_id}"


def personal_room_owner(room: str) -> UserId | None:
    """The user whose personal room this is, or None for any other room."""
    if not room.startswith(PERSONAL_PREFIX):
        return None
    try:
        return normalize_user_id(room.removeprefix(PERSONAL_PREFIX))
    except ValueError:
        return None


def is_personal_room(room: str) -> bool:
    """Every `user_*` name is reserved for personal rooms, not only canonical ones."""
    return room.startswith(PERSONAL_PREFIX)


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def message_text(data: Any) -> tuple[str, dict[str, Any]]:
    """The protocol's `M` rule: a string is the message itself; anything else travels
    as its compact JSON text, with the value also in `data.payload`."""
    if isinstance(data, str):
        return data, {}
    return compact_json(data), {"payload": data}
