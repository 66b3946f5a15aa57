"""The write path on a real socket pair: order, partial writes, backlog, overflow."""

from __future__ import annotations

import os
import socket

import trio
import trio.testing

from roomcast.actors.outbox import Outbox


async def _pair(limit: int = 1 << 20):
    a, b = trio.socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return Outbox(trio.SocketStream(a), limit), trio.SocketStream(b)


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = bytearray()
    with trio.fail_after(10):
        while len(data) < n:
            chunk = await stream.receive_some(65536)
            assert chunk, "peer closed early"
            data += chunk
    return bytes(data)


async def test_frames_arrive_whole_and_in_order_through_backlog_and_send_all():
    outbox, peer = await _pair()
    frames = [bytes([i % 251]) * (1000 + i) for i in range(300)]  # ~450 KB >> buffers
    received = b""
    done, written = trio.Event(), trio.Event()

    async def read_all() -> None:
        nonlocal received
        # Nothing is read until the writing side is stuck on the full kernel buffer
        # (every other task blocked), or done: a backlog builds up first.
        await trio.testing.wait_all_tasks_blocked()
        received = await _read_exactly(peer, sum(map(len, frames)))
        done.set()

    async with trio.open_nursery() as nursery:
        outbox.writers = nursery
        nursery.start_soon(read_all)
        backlogged = False
        for i, frame in enumerate(frames):
            if i % 50 == 49:
                # the WebSocket layer's own writes join the same ordered backlog
                await outbox.send_all(frame)
            else:
                assert outbox.write_nowait(frame)
            backlogged = backlogged or outbox.backlog_bytes > 0
        written.set()
        with trio.fail_after(10):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert backlogged  # the kernel could not take it all at once
    assert received == b"".join(frames)
    await outbox.aclose()


async def test_overflow_keeps_the_started_frame_drops_the_rest_and_reports_once():
    outbox, peer = await _pair(limit=20_000)
    overflows: list[bool] = []
    outbox.on_overflow = lambda: overflows.append(True)
    frame = b"y" * 10_000
    written: list[bytes] = []
    while outbox.write_nowait(frame):
        written.append(frame)
    assert overflows == [True]
    assert outbox.overflowed
    assert outbox.backlog_bytes < len(frame)  # only the tail of a started frame stays
    assert not outbox.write_nowait(b"late")  # nothing more once a slow consumer
    async with trio.open_nursery() as nursery:
        outbox.writers = nursery
        # A closing frame still goes out after whatever had been started.
        with trio.fail_after(5):
            nursery.start_soon(outbox.send_all, b"CLOSE")
            data = bytearray()
            while not data.endswith(b"CLOSE"):
                data += await peer.receive_some(65536)
        nursery.cancel_scope.cancel()
    body = bytes(data[:-5])
    assert len(body) % len(frame) == 0  # whole frames only, no torn frame
    assert set(body) <= {ord("y")}
    await outbox.aclose()


async def test_writes_after_close_are_dropped_never_sent_to_a_reused_descriptor():
    outbox, peer = await _pair()
    await outbox.aclose()
    # Another socket may now get the same descriptor number.
    other_a, other_b = socket.socketpair()
    try:
        assert not outbox.write_nowait(b"secret")
        other_b.setblocking(False)
        try:
            leaked = other_b.recv(100)
        except BlockingIOError:
            leaked = b""
        assert leaked == b""
    finally:
        other_a.close()
        other_b.close()
        await peer.aclose()


async def test_a_vanished_peer_breaks_the_outbox_without_raising():
    outbox, peer = await _pair()
    await peer.aclose()
    results = [outbox.write_nowait(b"z" * 5000) for _ in range(100)]
    assert results[-1] is False
    assert outbox.broken is not None
    await outbox.aclose()


def _readable(stream: trio.SocketStream) -> bytes:
    """What the peer can read right now (Trio's sockets do not block)."""
    data = b""
    while True:
        try:
            chunk = os.read(stream.socket.fileno(), 65536)
        except BlockingIOError:
            return data
        if not chunk:  # end of stream
            return data
        data += chunk


async def test_deferred_frames_wait_for_the_flush_and_go_out_in_one_write():
    from roomcast.actors.outbox import FLUSH_AT

    outbox, peer = await _pair()
    assert outbox.write_later(b"a1") and outbox.write_later(b"a2")
    assert _readable(peer) == b""  # nothing written yet
    assert outbox.backlog_bytes == 4  # counted as the connection's, for its limit
    outbox.flush()
    assert _readable(peer) == b"a1a2"
    # A frame written now goes after the deferred ones, never before.
    outbox.write_later(b"b1")
    assert outbox.write_nowait(b"now")
    assert _readable(peer) == b"b1now"
    # the WebSocket layer's own writes (a pong, a close) too.
    outbox.write_later(b"c1")
    await outbox.send_all(b"pong")
    assert _readable(peer) == b"c1pong"
    # Past FLUSH_AT bytes they are written without waiting for the flush.
    chunk = b"d" * 1000
    for _ in range(FLUSH_AT // len(chunk) + 1):
        outbox.write_later(chunk)
    assert _readable(peer).startswith(chunk)  # no flush was called
    await outbox.aclose()
    await peer.aclose()


async def test_deferred_frames_of_a_slow_consumer_are_dropped_at_overflow():
    outbox, peer = await _pair(limit=20_000)
    overflows: list[bool] = []
    outbox.on_overflow = lambda: overflows.append(True)
    while outbox.write_nowait(b"y" * 10_000):
        pass  # the kernel's buffer is full now, and a backlog waits
    assert overflows == [True]
    assert not outbox.write_later(b"late")
    assert outbox.backlog_bytes < 10_000  # nothing deferred is kept
    await outbox.aclose()
    await peer.aclose()


async def test_deferred_frames_are_never_written_after_close():
    outbox, peer = await _pair()
    outbox.write_later(b"secret")
    outbox.close_now()
    outbox.flush()
    assert not outbox.write_later(b"more")
    assert _readable(peer) == b""
    await peer.aclose()
