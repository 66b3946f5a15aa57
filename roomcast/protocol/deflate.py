"""permessage-deflate (RFC 7692): the server's answer to an offer, server frames
compressed once per publish, and client messages inflated within a size budget.

The server always compresses without context takeover (`server_no_context_takeover`):
each compressed frame stands alone, so one compressed copy of a room's frame is valid
for every member that negotiated the extension, whatever it received before. It asks
the client for the same (`client_no_context_takeover`), so the service keeps no
inflating window between a client's messages.
"""

from __future__ import annotations

import threading
import zlib

from roomcast.protocol.wsframe import payload_of, unmasked_frame

NAME = "permessage-deflate"

# Payloads shorter than this are sent plain (RFC 7692 allows uncompressed messages on
# a deflate connection). Measured on server JSON frames: 144 bytes compress to 116
# (81 %), 240 to 176 (73 %), 383 to 195 (51 %), 2,063 to 208 (10 %); at 15-17 us a
# compression either way. Below 128 bytes a frame saves under 30 bytes, which changes
# no packet count: not worth the work for a one-member room (docs/benchmarks.md).
MIN_DEFLATE_SIZE = 128

WINDOW_BITS = 15  # the only server window we compress with
_SYNC_TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with
_FIN_RSV1_TEXT = 0xC1

_ANSWER = "server_no_context_takeover; client_no_context_takeover"


def negotiate(offer: str) -> str | None:
    """The parameters of our answer to one permessage-deflate offer (the header's
    element, "permessage-deflate; ..."), or None to decline it (RFC 7692 section 7:
    an unknown or repeated parameter, or a bad value). We always answer with
    `server_no_context_takeover` and `client_no_context_takeover`; an offer that limits
    our window below 15 bits (`server_max_window_bits`) is declined, since one
    compressed frame serves every member, and one of 15 is accepted by saying it back
    (RFC 7692 7.1.2.1; clients such as `websockets` fail the handshake otherwise).
    `client_max_window_bits` needs no answer: we inflate with a 15-bit window, which
    reads any smaller one."""
    name, *parameters = (part.strip() for part in offer.split(";"))
    if name.lower() != NAME:
        return None
    seen: set[str] = set()
    for parameter in parameters:
        key, has_value, raw = (p.strip() for p in parameter.partition("="))
        key = key.lower()
        value = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
        if key in seen:
            return None
        seen.add(key)
        if key in ("server_no_context_takeover", "client_no_context_takeover"):
            if has_value:
                return None
        elif key == "server_max_window_bits":
            if _window_bits(value) != WINDOW_BITS:
                return None
        elif key == "client_max_window_bits":
            if has_value and _window_bits(value) is None:
                return None
        else:
            return None
    if "server_max_window_bits" in seen:
        return f"{_ANSWER}; server_max_window_bits={WINDOW_BITS}"
    return _ANSWER


def _window_bits(value: str) -> int | None:
    """A window size parameter's value: 8 to 15, in plain decimal digits."""
    if not value.isascii() or not value.isdigit() or len(value) > 2:
        return None
    bits = int(value)
    return bits if 8 <= bits <= 15 else None


# One compressor per thread (one for a service), reset by a full flush after every frame: the
# frames it makes are independent of one another (no context takeover), and none pays
# for a new compressor (making one costs ~100 us, more than the compression itself).
# Not one per process: a compression is two calls (compress, then flush), and two
# services run in two threads of one process must not interleave theirs in one stream.
_per_thread = threading.local()


def _compressor() -> zlib._Compress:
    compressor: zlib._Compress | None = getattr(_per_thread, "compressor", None)
    if compressor is None:
        compressor = _per_thread.compressor = zlib.compressobj(
            zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -WINDOW_BITS)
    return compressor


def deflated_frame(frame: bytes) -> bytes:
    """The compressed variant of a prebuilt, final, unmasked text frame: its payload
    raw-deflated on its own (RFC 7692 7.2.1: a flush, and the trailing 00 00 ff ff
    removed), with RSV1 set. The frame itself when its payload is shorter than
    MIN_DEFLATE_SIZE or would not shrink."""
    payload = payload_of(frame)
    if len(payload) < MIN_DEFLATE_SIZE:
        return frame
    compressor = _compressor()
    compressed = compressor.compress(payload) + compressor.flush(zlib.Z_FULL_FLUSH)
    compressed = compressed[:-4] if compressed.endswith(_SYNC_TAIL) else compressed
    deflated = unmasked_frame(_FIN_RSV1_TEXT, compressed)
    return deflated if len(deflated) < len(frame) else frame


class MessageTooBig(Exception):
    """A compressed message inflates past the size limit."""


class Inflater:
    """Inflates one client's compressed messages, at most `limit` bytes each: a small
    compressed frame (a decompression bomb) never makes more than limit + 1 bytes
    before it is refused. No context takeover: each message starts a new window, and
    none is kept between messages."""

    __slots__ = ("_left", "_limit", "_window")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._left = limit
        self._window: zlib._Decompress | None = None

    def feed(self, data: bytes) -> bytes:
        """The inflated bytes of a part of the message. Raises MessageTooBig past the
        limit, zlib.error on data that is not raw deflate or goes on after its final
        block."""
        if self._window is None:
            self._window = zlib.decompressobj(-WINDOW_BITS)
        window = self._window
        inflated = window.decompress(data, self._left + 1)
        if len(inflated) > self._left:
            self._window = None
            raise MessageTooBig(f"message over {self._limit} bytes")
        if window.eof and window.unused_data:
            self._window = None
            raise zlib.error("bytes after the message's final deflate block")
        self._left -= len(inflated)
        return inflated

    def end(self) -> bytes:
        """The message is complete: its last bytes; the next message starts afresh.
        (A message may end with a final block: nothing is then appended, RFC 7692 7.2.2.)"""
        try:
            if self._window is not None and self._window.eof:
                return b""
            return self.feed(_SYNC_TAIL)
        finally:
            self._window = None
            self._left = self._limit
