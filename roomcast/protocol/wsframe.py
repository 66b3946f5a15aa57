"""RFC 6455 server frames, built once per publish, and the keeper's ping; the one
module that knows the frame header's layout.

Server frames are unmasked, so the bytes of a frame are the same for every
recipient: the fan-out writes one prebuilt object (or, to members that negotiated
permessage-deflate, its one compressed variant: `protocol.deflate`).
"""

from __future__ import annotations

import struct

from roomcast.protocol.frames import MessageType

_FIN_TEXT = 0x81
_FIN_PING = 0x89
# Header bytes before the payload, by the 7-bit length field of an unmasked frame:
# 126 adds a 16-bit length, 127 a 64-bit one.
_HEADER_SIZE = (2,) * 126 + (4, 10)


def unmasked_frame(first_byte: int, payload: bytes) -> bytes:
    """One unmasked frame: `first_byte` (FIN, RSV bits, opcode), then the payload's
    length in the shortest of the three encodings, then the payload."""
    n = len(payload)
    if n < 126:
        header = bytes((first_byte, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first_byte, 126, n)
    else:
        header = struct.pack("!BBQ", first_byte, 127, n)
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    return unmasked_frame(_FIN_TEXT, payload)


def payload_of(frame: bytes) -> bytes:
    """The payload of a prebuilt (unmasked) server frame."""
    return frame[_HEADER_SIZE[frame[1] & 0x7F]:]


def ping_frame(payload: bytes = b"") -> bytes:
    """One unmasked ping frame (a control frame: its payload is at most 125 bytes)."""
    if len(payload) > 125:
        raise ValueError("a ping's payload is at most 125 bytes")
    return bytes((_FIN_PING, len(payload))) + payload


# The keeper's heartbeat: an empty ping, the same bytes for every connection.
PING_FRAME = ping_frame()


def positioned_frame(body: bytes, offset: int, epoch: str) -> bytes:
    """A room's frame: the publisher's JSON object with the room's position added as
    two more keys, `offset` and `epoch`, then framed. Built once per publish, by the
    room that numbers it; seed clients ignore the extra keys."""
    position = b',"offset":%d,"epoch":"%s"}' % (offset, epoch.encode())
    return text_frame(body[:-1] + position)


_TYPE_KEY = b'{"type":"'  # every server frame is encoded with `type` first
_TYPE_AT = tuple(size + len(_TYPE_KEY) for size in _HEADER_SIZE)
_TYPES = {t.value.encode(): t.value for t in MessageType}


def frame_type(frame: bytes) -> str:
    """The `type` of a prebuilt server frame ("other" if it has none we know), so that
    a room can count what it fans out without being told: a table look-up and a short
    `find`, no parsing."""
    if len(frame) < 2:
        return "other"
    start = _TYPE_AT[frame[1] & 0x7F]
    end = frame.find(b'"', start, start + 16)
    return _TYPES.get(frame[start:end], "other") if end > 0 else "other"
