"""The protocol's error table: one machine code and one human text per cause."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_TYPE = "unknown_type"
    ROOM_REQUIRED = "room_required"
    INVALID_ROOM = "invalid_room"
    NOT_MEMBER = "not_member"
    FORBIDDEN = "forbidden"
    INTERNAL_ERROR = "internal_error"
    RATE_LIMITED = "rate_limited"
    TOO_MANY_ROOMS = "too_many_rooms"
    INVALID_TOKEN = "invalid_token"
    ROOM_TOKEN_EXPIRED = "room_token_expired"


class ProtocolError(Exception):
    """A client frame the service refuses; the connection stays open.

    `message` is the human text sent back, `code` the machine code in `data.code`.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def invalid(cls, why: str) -> ProtocolError:
        return cls(ErrorCode.INVALID_MESSAGE, f"Invalid message format: {why}")

    @classmethod
    def unknown_type(cls, type_: str) -> ProtocolError:
        return cls(ErrorCode.UNKNOWN_TYPE, f"Unknown message type: {type_}")

    @classmethod
    def room_required(cls) -> ProtocolError:
        return cls(ErrorCode.ROOM_REQUIRED, "Room name is required")

    @classmethod
    def invalid_room(cls, rule: str) -> ProtocolError:
        """`rule`: what a room name is (`rules.ROOM_NAME_RULE`, the one place it is said)."""
        return cls(ErrorCode.INVALID_ROOM, f"Invalid room name: use {rule}")

    @classmethod
    def not_member(cls, room: str) -> ProtocolError:
        return cls(ErrorCode.NOT_MEMBER, f"Not a member of room: {room}")

    @classmethod
    def forbidden(cls, what: str) -> ProtocolError:
        return cls(ErrorCode.FORBIDDEN, f"Not allowed: {what}")

    @classmethod
    def internal(cls) -> ProtocolError:
        return cls(ErrorCode.INTERNAL_ERROR, "Internal error: the message was not delivered")

    @classmethod
    def rate_limited(cls) -> ProtocolError:
        return cls(ErrorCode.RATE_LIMITED, "Rate limited: the frame was dropped; slow down")

    @classmethod
    def too_many_rooms(cls, limit: int) -> ProtocolError:
        return cls(ErrorCode.TOO_MANY_ROOMS, f"Too many rooms: at most {limit} per connection")

    @classmethod
    def invalid_token(cls, why: str) -> ProtocolError:
        return cls(ErrorCode.INVALID_TOKEN, f"Invalid token: {why}; the old token stands")
