"""RFC 6455 server frames, built once per publish (and the keeper's ping).

Server frames are unmasked and we never negotiate compression, so the bytes of a
frame are the same for every recipient: the fan-out writes one prebuilt object.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
_FIN_PING = 0x89


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        header = bytes((_FIN_TEXT, n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


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
