"""The WebSocket protocol over a connection's Outbox, read in the connection's own task.

wsproto does the parsing: its h11-based handshake for the upgrade request, its frame
protocol for the frames. This module only moves bytes, and reads only when the
connection asks for its next message: a connection has no reader task and no message
queue of its own, and once upgraded it keeps no HTTP state (the handshake object is
dropped, only the frame protocol stays). Every byte written goes through the Outbox,
after the frames queued before it.
"""

from __future__ import annotations

import contextlib
import zlib
from typing import cast

import attrs
import trio
from wsproto.connection import Connection as FrameConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason as WsCloseReason
from wsproto.frame_protocol import FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from roomcast.actors.outbox import RECEIVE_SIZE, Outbox
from roomcast.protocol import CloseCode
from roomcast.protocol.deflate import Inflater, MessageTooBig, negotiate

ABNORMAL_CLOSURE = 1006  # RFC 6455: the stream ended without a closing frame


@attrs.frozen
class CloseReason:
    code: int
    reason: str | None = None


class ConnectionClosed(Exception):
    """The WebSocket is closed (either side, or the stream ended); no more messages."""

    def __init__(self, reason: CloseReason) -> None:
        super().__init__(reason)
        self.reason = reason


class Deflate(PerMessageDeflate):
    """permessage-deflate as the service speaks it: wsproto checks the RSV bits and
    tracks which messages are compressed; the answer to an offer is
    `protocol.deflate.negotiate` (the first acceptable offer wins), and a client's
    messages are inflated by an `Inflater`, at most `max_message_size` bytes each
    (past it: 1009). wsproto never compresses for us: server frames are prebuilt,
    their compressed variants too (`protocol.deflate.deflated_frame`)."""

    def __init__(self, max_message_size: int) -> None:
        super().__init__(client_no_context_takeover=True, server_no_context_takeover=True)
        self._inflater = Inflater(max_message_size)

    def accept(self, offer: str) -> str | None:
        if self._enabled:  # an earlier offer was accepted: one answer only
            return None
        answer = negotiate(offer)
        self._enabled = answer is not None
        return answer

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits,
        payload_length: int,
    ) -> WsCloseReason | RsvBits:
        # wsproto's, without the zlib object it would make and keep: ours is the
        # Inflater's, made per message and dropped at its end.
        if rsv.rsv1 and (opcode.iscontrol() or opcode is Opcode.CONTINUATION):
            return WsCloseReason.PROTOCOL_ERROR
        self._inbound_is_compressible = self._compressible_opcode(opcode)
        if opcode.iscontrol():
            # A ping, pong or close between a message's fragments (RFC 6455 5.4) is
            # never compressed, and leaves the message's state alone.
            return RsvBits(True, False, False)
        if self._inbound_compressed is None:
            self._inbound_compressed = rsv.rsv1
        return RsvBits(True, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | WsCloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible:
            return data
        try:
            return self._inflater.feed(bytes(data))
        except MessageTooBig:
            return WsCloseReason.MESSAGE_TOO_BIG
        except zlib.error:
            return WsCloseReason.INVALID_FRAME_PAYLOAD_DATA

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | WsCloseReason | None:
        if not fin or not self._inbound_is_compressible:  # a control frame ends no message
            return None
        compressed, self._inbound_compressed = self._inbound_compressed, None
        if not compressed:
            return None
        try:
            return self._inflater.end()
        except MessageTooBig:
            return WsCloseReason.MESSAGE_TOO_BIG
        except zlib.error:
            return WsCloseReason.INVALID_FRAME_PAYLOAD_DATA


class Handshake:
    """The server side of the opening handshake on one stream."""

    __slots__ = ("_h11", "_outbox", "refused")

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._h11: H11Handshake | None = H11Handshake(ConnectionType.SERVER)
        self.refused = False  # the request was not a WebSocket upgrade (answered 4xx)

    async def request(self) -> Request | None:
        """Read until a whole upgrade request came. None if the peer hung up first, or
        sent something that is not a WebSocket upgrade (it is answered 400 or 426, as
        wsproto advises, and `refused` is set)."""
        assert self._h11 is not None
        while True:
            try:
                data = await self._outbox.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            try:
                self._h11.receive_data(data)
            except RemoteProtocolError as error:
                self.refused = True
                if error.event_hint is not None:
                    await self._send(self._h11.send(error.event_hint))
                return None
            for event in self._h11.events():
                if isinstance(event, Request):
                    return event

    async def reject(self, status: int, content_type: bytes, body: bytes) -> None:
        assert self._h11 is not None
        headers = [(b"Content-Type", content_type), (b"Content-Length", b"%d" % len(body))]
        data = self._h11.send(RejectConnection(status_code=status, headers=headers, has_body=True))
        data += self._h11.send(RejectData(data=body))
        self._h11 = None
        await self._send(data)

    def accept(self, max_message_size: int, compression: bool = False) -> WebSocket:
        """Answer 101 and drop the HTTP state. The answer is queued before any frame,
        deferred: it goes out in one system call with the welcome that follows.
        `compression`: permessage-deflate is negotiated if the client offers it."""
        assert self._h11 is not None
        deflate = Deflate(max_message_size) if compression else None
        response = self._h11.send(AcceptConnection(extensions=[deflate] if deflate else []))
        frames = self._h11.connection
        assert frames is not None
        # Frames the client sent in the same segment as its request are still in h11's
        # buffer: a server-side wsproto does not hand them on (a client-side one does).
        frames.receive_data(bytes(self._h11._h11_connection.trailing_data[0]))
        self._h11 = None
        self._outbox.write_later(response)
        ws = WebSocket(self._outbox, frames, max_message_size)
        ws.deflate = deflate is not None and deflate.enabled()
        return ws

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._outbox.send_all(data)  # a peer that is gone needs no answer


class WebSocket:
    """An open server WebSocket: messages in, closing frames out. The connection's
    own frames are written straight to the Outbox, prebuilt.

    Closing (RFC 6455 section 7), whoever begins it (the peer's Close, a frame we
    fail with 1002, 1007 or 1009, or the connection asking to close), is `close`: no
    message is read any more, the frames already queued go out whole, then our Close
    (never refused for the outbox limit), then a FIN (shutdown SHUT_WR); then what
    the peer sends is read and dropped until its Close, its EOF or the timeout, so that
    closing the socket never resets a peer that is still writing."""

    __slots__ = ("_frames", "_limit", "_outbox", "_owed", "_parseable", "_parts", "_size",
                 "closed", "deflate")

    def __init__(self, outbox: Outbox, frames: FrameConnection, max_message_size: int) -> None:
        self._outbox = outbox
        self._frames = frames
        self._limit = max_message_size
        self._parts: list[str | bytes | bytearray] = []  # the fragments of the message being read
        self._size = 0  # its size so far, in bytes
        # Set as soon as either side starts the closing handshake (or the stream ends):
        # no message is read, and nothing is queued but the closing frames, after that.
        self.closed: CloseReason | None = None
        self._owed: CloseConnection | None = None  # our Close, for `close` to send
        self._parseable = True  # False once wsproto failed to parse the peer's bytes
        self.deflate = False  # permessage-deflate negotiated: its frames may be compressed

    async def get_message(self) -> str | bytes:
        """The next whole message: str for text, bytes for binary. Pings are answered
        on the way. Raises ConnectionClosed once the connection is closing or closed."""
        while True:
            if self.closed is not None:
                raise ConnectionClosed(self.closed)
            for event in self._frames.events():
                if isinstance(event, (TextMessage, BytesMessage)):
                    message = self._add_part(event)
                    if message is not None:
                        return message
                elif isinstance(event, Ping):
                    self._outbox.write_nowait(self._frames.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._peer_closed(event)
                if self.closed is not None:
                    raise ConnectionClosed(self.closed)
            await self._receive()

    def _add_part(self, event: TextMessage | BytesMessage) -> str | bytes | None:
        data = event.data
        self._size += len(data.encode()) if isinstance(data, str) else len(data)
        if self._size > self._limit:
            self._fail(CloseCode.MESSAGE_TOO_BIG, f"message over {self._limit} bytes")
            return None
        self._parts.append(data)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(data, str):
            texts = cast("list[str]", parts)  # one message's parts: all text or all binary
            return texts[0] if len(texts) == 1 else "".join(texts)
        return b"".join(cast("list[bytes | bytearray]", parts))  # bytes, never a bytearray

    def _peer_closed(self, event: CloseConnection) -> None:
        if self._frames.state is ConnectionState.REMOTE_CLOSING:
            # The peer began the closing handshake: `close` answers with its code,
            # after the frames queued before.
            self._owed = event.response()
            self.closed = CloseReason(event.code, event.reason or None)
        else:
            # Not a closing frame: wsproto found a protocol error (1002, 1007...). What
            # follows in the stream cannot be parsed any more.
            self._parseable = False
            if event.code == CloseCode.MESSAGE_TOO_BIG:  # a message inflating past it
                self._fail(event.code, f"message over {self._limit} bytes")
            else:
                self._fail(event.code, event.reason or "protocol error")

    def _fail(self, code: int, reason: str) -> None:
        """Close from our side: `close` sends the Close, after what is queued."""
        self._owed = CloseConnection(code=code, reason=reason)
        self.closed = CloseReason(code, reason)

    async def _receive(self) -> None:
        try:
            data = await self._outbox.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = CloseReason(ABNORMAL_CLOSURE)
            return
        self._frames.receive_data(data)

    async def close(self, code: int, reason: str | None, timeout: float) -> CloseReason:
        """The closing handshake, whoever began it; `code` and `reason` are ours if the
        peer has not begun it. Takes at most twice `timeout`: once for the queued
        frames (those not started by then are dropped, whole), once for our Close and
        the peer's answer. The caller then closes the socket. Returns how it closed."""
        if self.closed is None:  # we begin it
            self._owed = CloseConnection(code=code, reason=reason)
            self.closed = CloseReason(code, reason)
        elif self._owed is None:
            # The stream ended without a Close (1006): there is no handshake to run, and
            # a peer that closed its socket would only answer our writes with a reset.
            return self.closed
        outbox = self._outbox
        # The frames queued before the close go out whole; pings are answered meanwhile.
        with trio.move_on_after(timeout):
            await outbox.drain(self._closing_input)
        if not outbox.all_sent:
            outbox.drop_unstarted()
        with trio.move_on_after(timeout):
            owed, self._owed = self._owed, None
            if owed is not None and self._frames.state in _MAY_CLOSE:
                outbox.write_final(self._frames.send(owed))
                if not await outbox.drain(self._closing_input):
                    return self.closed
            await outbox.send_eof()  # a FIN after our Close: the peer reads to the end
            while self._frames.state is not ConnectionState.CLOSED and not outbox.eof:
                try:
                    data = await outbox.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    break
                self._closing_input(data)
        return self.closed

    def _closing_input(self, data: bytes) -> None:
        """What the peer sends while we close: its Close ends the wait; a ping is
        answered while our Close has not been queued (RFC 6455 5.5.2: not after the
        peer's own Close, which wsproto ignores everything after); the rest is read
        and dropped."""
        frames = self._frames
        if not data or not self._parseable or frames.state not in _READING:
            return
        frames.receive_data(data)
        for event in frames.events():
            if isinstance(event, Ping):
                if frames.state is ConnectionState.OPEN and self._owed is not None:
                    self._outbox.write_if_room(frames.send(event.response()))
            elif isinstance(event, CloseConnection):
                if frames.state is ConnectionState.CLOSED:  # the answer to our Close
                    self.closed = CloseReason(event.code, event.reason or None)
                elif frames.state is not ConnectionState.REMOTE_CLOSING:
                    self._parseable = False  # a protocol error: the rest is noise
                return


# wsproto's states in which it parses what the peer sends, and may send a Close.
_READING = (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING)
_MAY_CLOSE = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
