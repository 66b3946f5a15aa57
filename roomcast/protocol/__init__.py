"""The wire protocol as pure data and rules: no Trio, no sockets (sans-IO).

Everything here can be tested with plain values; the actors call into it.
"""

from roomcast.protocol.codec import (
    converter,
    decode,
    encode,
    encode_body,
    encode_frame,
    error_frame,
    position_from,
    strict,
    structure,
)
from roomcast.protocol.errors import ErrorCode, ProtocolError
from roomcast.protocol.frames import (
    CLIENT_TYPES,
    ClientFrame,
    CloseCode,
    MessageType,
    NotificationLevel,
    Position,
    RecoveryFailure,
    ServerFrame,
)
from roomcast.protocol.notification import (
    Broadcast,
    Notification,
    RoomNotification,
    UserNotification,
    notification_request,
)
from roomcast.protocol.rules import (
    UserId,
    is_personal_room,
    message_text,
    normalize_user_id,
    personal_room,
    personal_room_owner,
    room_name,
    user_id_or_none,
    validate_room_name,
)
from roomcast.protocol.wsframe import positioned_frame, text_frame

__all__ = [
    "CLIENT_TYPES",
    "Broadcast",
    "ClientFrame",
    "CloseCode",
    "ErrorCode",
    "MessageType",
    "Notification",
    "NotificationLevel",
    "Position",
    "ProtocolError",
    "RecoveryFailure",
    "RoomNotification",
    "ServerFrame",
    "UserId",
    "UserNotification",
    "converter",
    "decode",
    "encode",
    "encode_body",
    "encode_frame",
    "error_frame",
    "is_personal_room",
    "message_text",
    "normalize_user_id",
    "notification_request",
    "personal_room",
    "personal_room_owner",
    "position_from",
    "positioned_frame",
    "room_name",
    "strict",
    "structure",
    "text_frame",
    "user_id_or_none",
    "validate_room_name",
]
