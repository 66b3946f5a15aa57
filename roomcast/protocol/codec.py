"""Decode client frames and encode server frames, through one cattrs converter.

`decode` turns any text into a `ClientFrame` or raises `ProtocolError`; nothing else
escapes it, whatever the input (a hypothesis test holds it to that).
"""

from __future__ import annotations

import typing
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.gen import make_dict_structure_fn

from roomcast.protocol import jsontext
from roomcast.protocol.errors import ProtocolError
from roomcast.protocol.frames import (
    CLIENT_TYPES,
    DATA_TYPES,
    ROOM_TYPES,
    ClientFrame,
    JoinData,
    MessageType,
    Position,
    ServerFrame,
)
from roomcast.protocol.rules import compact_json, validate_room_name
from roomcast.protocol.wsframe import text_frame

T = TypeVar("T")

# One converter for every boundary: client frames, HTTP bodies, presence messages.
# An attrs field with a converter gets the raw value: the rule is the field's converter
# (facade calls and structured bodies thus check the same way, with the same texts).
converter = cattrs.Converter(prefer_attrib_converters=True)


def _strict_str(value: Any, _: type) -> str:
    # cattrs would call str() on anything; a number where a room name goes is an error.
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


converter.register_structure_hook(str, _strict_str)
# The str hook would also catch this str subclass and leave a bare string in `type`.
converter.register_structure_hook(MessageType, lambda value, _: MessageType(value))


def _is_set_of_str(type_: Any) -> bool:
    return typing.get_origin(type_) in (set, frozenset) and typing.get_args(type_) == (str,)


# A set of strings travels as a sorted list: JSON has no sets, and equal sets should
# encode equally.
converter.register_unstructure_hook_func(_is_set_of_str, sorted)


def strict(cls: type[T]) -> type[T]:
    """Class decorator: structuring refuses keys that `cls` has no field for (an HTTP
    body with an unknown key is an error, not silently ignored)."""
    converter.register_structure_hook(
        cls, make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)
    )
    return cls


def structure(value: Any, cls: type[T]) -> T:
    """`converter.structure`, raising the first broken rule as a plain TypeError or
    ValueError with the rule's own text (cattrs groups every error of a class): the
    same exception a direct call of the class would raise."""
    if attrs.has(cls) and not isinstance(value, dict):
        # cattrs would read a list or a string as an object with no keys.
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    try:
        return converter.structure(value, cls)
    except (cattrs.BaseValidationError, ForbiddenExtraKeysError) as exc:
        raise _first_error(exc) from None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _first_error(error: BaseException) -> TypeError | ValueError:
    leaves = _leaves(error)
    for leaf in leaves:  # unknown keys first, as a reader checks a form
        if isinstance(leaf, ForbiddenExtraKeysError):
            return ValueError(f"Unknown field: {sorted(leaf.extra_fields)[0]!r}")
    leaf = leaves[0]
    if isinstance(leaf, KeyError):
        return ValueError(f"{leaf.args[0]!r} is required")
    if isinstance(leaf, TypeError | ValueError):
        return leaf
    return ValueError(str(leaf))


def _parse(text: str | bytes) -> Any:
    if isinstance(text, bytes):
        raise ProtocolError.invalid("binary frames are not accepted; send JSON text")
    try:
        return jsontext.loads(text)
    except jsontext.JsonRefused as exc:
        raise ProtocolError.invalid(str(exc)) from None


def decode(text: str | bytes) -> ClientFrame:
    """One client text frame in, one validated `ClientFrame` out."""
    raw = _parse(text)
    if not isinstance(raw, dict):
        raise ProtocolError.invalid("a frame is a JSON object")
    type_ = raw.get("type")
    if type_ is None:
        raise ProtocolError.invalid("'type' is required")
    if not isinstance(type_, str):
        raise ProtocolError.invalid("'type' must be a string")
    if type_ not in CLIENT_TYPES:
        raise ProtocolError.unknown_type(type_[:100])
    try:
        frame = converter.structure(
            {"type": type_, "data": raw.get("data"), "room": raw.get("room")}, ClientFrame
        )
    except Exception as exc:  # cattrs reports a wrong field type as an exception group
        raise ProtocolError.invalid("'room' must be a string") from exc
    if frame.type in ROOM_TYPES:
        if frame.room is None:
            raise ProtocolError.room_required()
        validate_room_name(frame.room)
    if frame.type in DATA_TYPES and frame.data is None:
        raise ProtocolError.invalid("'data' is required")
    if frame.type == MessageType.JOIN_ROOM:
        if frame.data is not None:
            position_from(frame.data)  # validated here, used by the room
        token = raw.get("token")
        if token is not None:
            if not isinstance(token, str) or not token:
                raise ProtocolError.invalid("join_room 'token' is the room token's text")
            frame = attrs.evolve(frame, token=token)
    return frame


def position_from(data: Any) -> Position | None:
    """The recovery position a client sends: `{"offset": N, "epoch": "E"}` (the last
    frame it saw), `{"recover": true}` (nothing seen yet), or nothing."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ProtocolError.invalid("join_room 'data' is an object with 'offset' and 'epoch'")
    try:
        return structure(data, JoinData).position()
    except (TypeError, ValueError) as exc:
        raise ProtocolError.invalid(str(exc)) from None


def encode_body(frame: ServerFrame) -> bytes:
    """The JSON bytes of a frame that a room will number and frame."""
    return encode(frame).encode()


def encode(frame: ServerFrame) -> str:
    """The JSON text of a server frame, all four keys present."""
    return compact_json(converter.unstructure(frame))


def encode_frame(frame: ServerFrame) -> bytes:
    """The complete WebSocket frame bytes, built once and shared by every recipient."""
    return text_frame(encode(frame).encode())


def error_frame(error: ProtocolError) -> ServerFrame:
    return ServerFrame(type=MessageType.ERROR, message=error.message, data={"code": error.code})
