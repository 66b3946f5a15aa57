"""A connection's outgoing mailbox, counted in bytes, and its socket's one reader.

Why this exists (see ARCHITECTURE.md and the design's performance notes): waking
a task per recipient costs more than everything else in a fan-out. So a published
frame is written straight into the socket with one non-blocking system call while the
connection has no backlog; only when the kernel buffer is full does the frame wait
here, and only then is the connection's writer task woken, to write the whole backlog
in one call. The writer task exists only while there is a backlog: an idle
connection holds no task for it.

A big fan-out goes further: it defers its frames (`write_later`), and the room flushes
them once no other publish follows at once. Frames published back to back then reach
each member in one system call, not one each: that call is most of a fan-out's cost.

The WebSocket layer (websocket.py: handshake, pongs, closing frames) reads and writes
through this object too, so every byte it writes goes through the same ordered backlog
as the prebuilt frames: the two can never interleave inside a frame.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import ssl
from collections.abc import Callable

import trio
from trio.lowlevel import ParkingLot

# Deferred bytes that are written at once, without waiting for the room's flush: a
# system call's worth, and a bound on what a connection holds unwritten.
FLUSH_AT = 16 * 1024
RECEIVE_SIZE = 16 * 1024  # bytes asked of the kernel per read


class Outbox:
    def __init__(self, stream: trio.SocketStream, limit: int) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._limit = limit
        self._pending: list[bytes] = []  # deferred frames, not yet handed to the kernel
        self._pending_bytes = 0
        self._backlog: list[bytes] = []  # what the kernel did not take, for the writer
        self._backlog_bytes = 0
        self._queued = 0  # bytes ever accepted, so waiters know when theirs are out
        self._sent = 0  # bytes ever handed to the kernel (or dropped at overflow)
        self._flushing = False  # the writer task runs (a backlog is being written)
        # Where the writer task is started when a backlog appears: the connection's own
        # nursery (set by the gateway), so that it ends with the connection.
        self.writers: trio.Nursery | None = None
        self._partial_head = False  # backlog[0] is the unwritten tail of a started frame
        self._closed = False
        self._progress = ParkingLot()  # send_all callers wait here for their bytes
        self._waking: trio.CancelScope | None = None  # a read that `drain` interrupts
        self.eof = False  # the peer shut its side: a read returned b""
        self.broken: BaseException | None = None
        self.overflowed = False
        self.last_received = trio.current_time()  # for the keeper's heartbeats
        self.on_overflow: Callable[[], None] | None = None

    @property
    def backlog_bytes(self) -> int:
        return self._backlog_bytes + self._pending_bytes

    def write_nowait(self, frame: bytes) -> bool:
        """Queue one complete frame and hand it to the kernel now, after any deferred
        frames, without waiting. False when it was dropped: the stream is broken or
        closed, or the backlog would pass the limit (the connection is then a slow
        consumer, and `on_overflow` is called once)."""
        if not self._accept(frame):
            return False
        self.flush()
        return self.broken is None

    def write_later(self, frame: bytes) -> bool:
        """Queue one complete frame for the next `flush` (at once past FLUSH_AT bytes).
        False when it was dropped, as with `write_nowait`."""
        if not self._accept(frame):
            return False
        if self._pending_bytes >= FLUSH_AT:
            self.flush()
        return self.broken is None

    def flush(self) -> None:
        """Hand the deferred frames to the kernel in one call, or to the backlog if
        there is one (it goes first)."""
        if not self._pending:
            return
        pending = self._pending
        data = b"".join(pending) if len(pending) > 1 else pending[0]
        pending.clear()
        self._pending_bytes = 0
        if self._backlog or self._flushing:
            self._append(data)
        else:
            self._write_through(data)

    def _accept(self, frame: bytes) -> bool:
        if self._closed or self.broken is not None or self.overflowed:
            return False
        behind = self._backlog or self._flushing  # the kernel is not keeping up
        if behind and self._backlog_bytes + self._pending_bytes + len(frame) > self._limit:
            self._overflow()
            return False
        self._pending.append(frame)
        self._pending_bytes += len(frame)
        return True

    def _write_through(self, data: bytes) -> None:
        """Hand `data` to the kernel now; what it does not take waits in the backlog
        (a partly written frame is always finished, whatever the limit)."""
        self._queued += len(data)
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            written = 0
        except OSError as exc:  # the peer is gone: the reader will see it too
            self.broken = exc
            self._progressed()
            return
        self._sent += written
        if written < len(data):
            self._partial_head = written > 0
            self._backlog.append(data[written:])
            self._backlog_bytes += len(data) - written
            self._start_writer()

    def _append(self, data: bytes) -> None:
        self._queued += len(data)
        self._backlog.append(data)
        self._backlog_bytes += len(data)
        self._start_writer()

    def _overflow(self) -> None:
        """A slow consumer: drop the frames it has not started to receive, so that the
        closing frame that follows reaches it as soon as it reads again."""
        self.overflowed = True
        self.drop_unstarted()
        if self.on_overflow is not None:
            self.on_overflow()

    def drop_unstarted(self) -> None:
        """Drop the queued frames the kernel has not started to take: whole frames only
        (a frame already half-written is finished, and so are the frames the writer
        task is handing to the kernel in its current call)."""
        self._pending.clear()
        self._pending_bytes = 0
        keep = self._backlog[:1] if self._partial_head else []
        kept = sum(map(len, keep))
        self._sent += self._backlog_bytes - kept  # dropped bytes count as done for waiters
        self._backlog[:] = keep
        self._backlog_bytes = kept
        self._progressed()

    def _progressed(self) -> None:
        """Bytes went out (or were dropped, or the stream ended): wake who waits."""
        self._progress.unpark_all()
        if self._waking is not None:
            self._waking.cancel()

    def _start_writer(self) -> None:
        if not self._flushing and self.writers is not None:
            self._flushing = True
            self.writers.start_soon(self._write_backlog)

    async def _write_backlog(self) -> None:
        """The connection's writer task: writes the whole backlog in one call, again
        while more has come meanwhile, then ends. Ends too if the stream closes or
        breaks."""
        try:
            while not self._closed and self.broken is None:
                chunk = self._take_backlog()
                if chunk is None:
                    break
                data, done = chunk
                try:
                    await self._stream.send_all(data)
                    self._sent += done
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    self.broken = exc
                    return
                except BaseException as exc:
                    # Cancelled mid-write: the stream now ends inside a frame.
                    self.broken = exc
                    raise
                finally:
                    self._progressed()
        finally:
            self._flushing = False

    def _take_backlog(self) -> tuple[bytes, int] | None:
        """The writer's next write: the whole backlog as one `bytes`, and how many
        queued bytes it completes; None when there is nothing to write."""
        if not self._backlog:
            return None
        data = b"".join(self._backlog) if len(self._backlog) > 1 else self._backlog[0]
        self._backlog.clear()
        self._backlog_bytes = 0
        self._partial_head = False
        return data, len(data)

    # the WebSocket layer's reads and awaited writes ------------------------------------

    def write_final(self, data: bytes) -> bool:
        """Queue bytes that must not be dropped for the limit (a closing frame, a
        refusal): after everything queued before them, past any limit, even once the
        outbox overflowed. False if the stream is broken or closed."""
        if self._closed or self.broken is not None:
            return False
        self.flush()  # deferred frames go first
        if self._backlog or self._flushing:
            self._append(data)
        else:
            self._write_through(data)
        return self.broken is None

    def write_if_room(self, frame: bytes) -> bool:
        """Queue a frame only if it fits under the limit, never overflowing: a pong
        while the connection closes (RFC 6455 lets a pong answer only the latest ping)."""
        if self._closed or self.broken is not None or self.overflowed:
            return False
        if self._backlog_bytes + self._pending_bytes + len(frame) > self._limit:
            return False
        return self.write_nowait(frame)

    @property
    def all_sent(self) -> bool:
        """Every byte queued so far is with the kernel (or was dropped)."""
        return not self._pending and self._sent >= self._queued

    async def drain(self, received: Callable[[bytes], None]) -> bool:
        """Wait until every byte queued so far (and queued meanwhile) is with the
        kernel, reading the socket meanwhile: each chunk read goes to `received` (a
        reader that writes while we write must not block us both). Reads stop at the
        peer's EOF. True once all is sent; False if the stream broke or was closed.
        No task of its own: the writer task writes, this task reads, and the writer
        interrupts the read when it has written."""
        self.flush()
        while not self.all_sent:
            if self._closed or self.broken is not None:
                return False
            if self.eof:
                await self._progress.park()
                continue
            data: bytes | None = None
            with trio.CancelScope() as self._waking:
                try:
                    data = await self.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return False
                finally:
                    self._waking = None
            if data is not None:
                received(data)
        return not self._closed and self.broken is None

    async def send_eof(self) -> None:
        """Half-close: a FIN after the bytes sent (shutdown SHUT_WR). Only once every
        byte is out (`all_sent`): the writer task holds the stream while it writes."""
        if self._closed or self.broken is not None or not self.all_sent:
            return
        with contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError
        ):
            await self._stream.send_eof()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """A write that must not be dropped (a refusal) joins the same backlog, past
        any limit (`write_final`), and this waits until the kernel has taken it."""
        if self._closed:
            raise trio.ClosedResourceError("outbox closed")
        if self.broken is not None:
            raise trio.BrokenResourceError("connection broken")
        self.write_final(bytes(data))
        target = self._queued
        while self._sent < target:
            if self.broken is not None or self._closed:
                raise trio.BrokenResourceError("connection broken")
            await self._progress.park()
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int) -> bytes:
        # The socket's own recv, with SocketStream.receive_some's error translation but
        # not its generator-based context manager per read (a few % of a handshake).
        try:
            data = await self._stream.socket.recv(max_bytes)
        except OSError as exc:
            if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                raise trio.ClosedResourceError("socket closed") from None
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        self.last_received = trio.current_time()
        if not data:
            self.eof = True
        return data

    @property
    def remote(self) -> str:
        """The peer's address, for the logs."""
        try:
            host, port = self._stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"

    def close_now(self) -> None:
        """Close without waiting; set before the descriptor is released, so a reused
        descriptor number can never receive another connection's frame."""
        if not self._closed:
            self._closed = True
            self._pending.clear()
            self._pending_bytes = 0
            self._backlog.clear()
            self._backlog_bytes = 0
            self._progressed()
            self._stream.socket.close()

    async def aclose(self) -> None:
        self.close_now()
        await self._stream.aclose()


# The answer to a plain-text HTTP request on a TLS port, in plain text: the one a
# client can read (nginx answers the same case with a 400 too).
_PLAIN_TEXT_ERROR = json.dumps({"error": "This port speaks TLS: connect with wss://"}).encode()
_PLAIN_TEXT_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_PLAIN_TEXT_ERROR),
                                                             _PLAIN_TEXT_ERROR)
)


HUNG_UP = "hung up"  # a TLS handshake the peer ended without a word: not a TLS failure


class TlsOutbox(Outbox):
    """The same outbox over TLS, with the same shape: an `ssl.SSLObject` between two
    memory BIOs, so that a frame is encrypted where it is queued (synchronously, in
    the publisher's task) and its ciphertext written with the same one non-blocking
    system call, the writer task started only for a backlog.

    The backlog stays plain text until the writer takes it (so that an overflow or a
    close can still drop whole frames the peer has not started on); ciphertext once
    made is part of the TLS stream and is always sent (`_sealed`). Reads feed the
    incoming BIO and return plain text. Only this class knows TLS: a plain
    connection's path has no test for it."""

    def __init__(self, stream: trio.SocketStream, limit: int, context: ssl.SSLContext) -> None:
        super().__init__(stream, limit)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._sealed = b""  # ciphertext made but not yet with the kernel: the writer's
        self._sealed_done = 0  # the queued (plain text) bytes that `_sealed` completes

    async def handshake(self) -> str | None:
        """The TLS handshake, before the peer's first plain byte is read. None once it
        is done; otherwise why it failed (for one log line: OpenSSL's reason, or
        HUNG_UP); the peer got TLS's alert, or a plain-text 400 if it spoke plain HTTP."""
        while True:
            try:
                self._tls.do_handshake()
                done = True
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLError as error:
                reason = str(error.reason or type(error).__name__)
                if reason == "HTTP_REQUEST":
                    self._outgoing.read()
                    await self._send_raw(_PLAIN_TEXT_REFUSAL)
                else:
                    await self._send_raw(self._outgoing.read())  # the alert
                return reason.lower().replace("_", " ")
            if self._outgoing.pending and not await self._send_raw(self._outgoing.read()):
                return HUNG_UP
            if done:
                return None
            try:
                data = await super().receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                return HUNG_UP
            self._incoming.write(data)

    async def _send_raw(self, data: bytes) -> bool:
        """Bytes straight to the socket, when nothing else is being written: during the
        handshake (nothing is queued yet) and for close_notify (everything is out)."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _write_through(self, data: bytes) -> None:
        self._queued += len(data)
        if self._seal(data):
            self._send_sealed(len(data))

    def _seal(self, data: bytes) -> bool:
        """Encrypt `data` into the outgoing BIO. False once TLS refuses (after our
        close_notify, or a failure): the stream is then broken, as a socket error would
        leave it, and nothing more is written."""
        try:
            self._tls.write(data)
        except ssl.SSLError as exc:
            self.broken = exc
            self._progressed()
            return False
        return True

    def _send_sealed(self, done: int) -> None:
        """Hand the ciphertext made so far to the kernel now; what it does not take is
        the writer's (so is all of it when the writer already has some)."""
        sealed = self._outgoing.read()
        if self._sealed or self._flushing:
            self._sealed += sealed
            self._sealed_done += done
            self._start_writer()
            return
        try:
            written = os.write(self._fd, sealed)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self.broken = exc
            self._progressed()
            return
        if written == len(sealed):
            self._sent += done
            return
        self._sealed = sealed[written:]
        self._sealed_done = done
        self._start_writer()

    def _take_backlog(self) -> tuple[bytes, int] | None:
        if self._backlog:
            data = b"".join(self._backlog) if len(self._backlog) > 1 else self._backlog[0]
            self._backlog.clear()
            self._backlog_bytes = 0
            if not self._seal(data):
                return None
            self._sealed += self._outgoing.read()
            self._sealed_done += len(data)
        if not self._sealed:
            return None
        chunk = self._sealed, self._sealed_done
        self._sealed, self._sealed_done = b"", 0
        return chunk

    @property
    def all_sent(self) -> bool:
        return super().all_sent and not self._sealed and not self._flushing

    async def receive_some(self, max_bytes: int) -> bytes:
        """Plain text: what the TLS layer holds, else what the socket brings. b"" at
        the peer's close_notify or at the end of the stream."""
        while True:
            try:
                data = self._tls.read(max_bytes)
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                self.eof = True
                return b""
            except ssl.SSLError as error:
                raise trio.BrokenResourceError(f"TLS failed: {error.reason}") from None
            else:
                if not data:
                    self.eof = True
                return data
            if self._outgoing.pending:  # the TLS layer's own answer (a key update)
                self._send_sealed(0)
            received = await super().receive_some(RECEIVE_SIZE)
            if received:
                self._incoming.write(received)
            else:
                self._incoming.write_eof()

    async def send_eof(self) -> None:
        """TLS's close_notify, then the FIN; the peer's close_notify is not waited for
        (the closing handshake reads until the peer's Close or EOF anyway)."""
        if self._closed or self.broken is not None or not self.all_sent:
            return
        with contextlib.suppress(ssl.SSLError):  # SSLWantReadError: the peer's is not in
            self._tls.unwrap()
        if not await self._send_raw(self._outgoing.read()):
            return
        await super().send_eof()
