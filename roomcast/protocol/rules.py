"""Naming and identity rules shared by the handshake, the actors and the facade."""

from __future__ import annotations

import json
import re
from typing import Any

from roomcast.protocol.errors import ProtocolError

UserId = int | str

# Room names: the one definition. The validators below, the OpenAPI document's
# patterns (roomcast/http/openapi.py) and the texts of their errors derive from it.
_ROOM_NAME_CHARS = ("A-Z", "a-z", "0-9", "_", ".", ":", "@", "-")
ROOM_NAME_MAX = 100
ROOM_NAME_PATTERN = f"^[{''.join(_ROOM_NAME_CHARS)}]{{1,{ROOM_NAME_MAX}}}$"
ROOM_NAME_RULE = f"1 to {ROOM_NAME_MAX} of {' '.join(_ROOM_NAME_CHARS)}"
ROOM_NAME = re.compile(ROOM_NAME_PATTERN.strip("^$"))  # used with fullmatch

# User ids: an int of 1 to 40 digits, or a string that makes a valid personal room
# name (`user_` + the id), so at most 95 characters.
PERSONAL_PREFIX = "user_"
USER_ID_DIGITS = 40
MAX_INT_USER_ID = 10**USER_ID_DIGITS - 1  # so that an int and its digit string name one user
USER_ID_TEXT_MAX = ROOM_NAME_MAX - len(PERSONAL_PREFIX)
USER_ID_TEXT_PATTERN = f"^[{''.join(_ROOM_NAME_CHARS)}]{{1,{USER_ID_TEXT_MAX}}}$"
_DIGITS = re.compile(f"[0-9]{{1,{USER_ID_DIGITS}}}")


def validate_room_name(room: str) -> str:
    """The protocol's check: a client frame's room, refused with `invalid_room`."""
    if not ROOM_NAME.fullmatch(room):
        raise ProtocolError.invalid_room(ROOM_NAME_RULE)
    return room


def room_name(value: object) -> str:
    """The same rule for the facade and the HTTP API: TypeError for a value that is not
    a string, ValueError for a string that breaks the rule; one text for both."""
    if not isinstance(value, str):
        raise TypeError(f"Invalid room name: {ROOM_NAME_RULE}")
    if not ROOM_NAME.fullmatch(value):
        raise ValueError(f"Invalid room name: {ROOM_NAME_RULE}")
    return value


def normalize_user_id(value: object) -> UserId:
    """An int, or a string of decimal digits, is an int; other strings stay strings.

    So `notify_user(42)` and `notify_user("42")` reach the same user. Raises
    ValueError, with the text the facade and the HTTP API show, for anything that
    cannot name a user (booleans, floats, empty text, text that would not make a valid
    personal room name).
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("Invalid user id: a user id is an int or a string")
    if isinstance(value, int):
        if not 0 <= value <= MAX_INT_USER_ID:
            raise ValueError(
                f"Invalid user id: an integer user id is from 0 to {USER_ID_DIGITS} digits"
            )
        return value
    if not value:
        raise ValueError("Invalid user id: a user id is not empty")
    if _DIGITS.fullmatch(value):
        return int(value)
    if not ROOM_NAME.fullmatch(PERSONAL_PREFIX + value):
        raise ValueError(
            f"Invalid user id: a string user id uses 1 to {USER_ID_TEXT_MAX} of "
            f"{' '.join(_ROOM_NAME_CHARS)}"
        )
    return value


def user_id_or_none(value: object) -> UserId | None:
    """The user `value` names, or None where it names none (a presence question about
    a malformed id is answered "not connected", not with an error)."""
    try:
        return normalize_user_id(value)
    except ValueError:
        return None


def personal_room(user_id: UserId) -> str:
    return f"{PERSONAL_PREFIX}{user_id}"


def personal_room_owner(room: str) -> UserId | None:
    """The user whose personal room this is, or None for any other room."""
    if not room.startswith(PERSONAL_PREFIX):
        return None
    return user_id_or_none(room.removeprefix(PERSONAL_PREFIX))


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
