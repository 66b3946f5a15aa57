"""The load generator: thousands of WebSocket clients in one process, as raw
non-blocking sockets on one epoll loop, speaking just enough RFC 6455 (the upgrade,
masked client frames, pong, close) and, for python-socketio, just enough Engine.IO 4 /
Socket.IO 5 (open, CONNECT with an auth payload, acknowledged events, ping/pong).

Why not a WebSocket library: the benchmarks need the server, not the client, to be
the bottleneck. A library client costs a task (or several) and a state machine per
connection; here a connection is one small object, and a reader that falls behind
reads many frames per `recv`, so the client gets cheaper per frame as load grows.
Both processes' CPU seconds are printed with every figure, so this can be checked.

A connection checks what it receives: fan-out frames carry `"seq":k` and must arrive
as `start .. end-1`, each once, in order; background frames (`"bg":k`) must arrive in
order; a latency probe waits for its own `"lat":k`. Anything else is counted as an
error and fails the benchmark.

Also here: the control channel client, and starting a peer server in its own process
pinned to a core.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "peers"
PATH = "/api/v1/ws"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# The peers, in the order the reports list them; each entry: (script, client dialect).
PEERS: dict[str, tuple[str, str]] = {
    "seed": ("seed.py", "ws"),
    "socketio": ("socketio_peer.py", "sio"),
    "websockets": ("websockets_peer.py", "ws"),
    "roomcast": ("roomcast_peer.py", "ws"),
}
PEER_TITLES = {
    "seed": "the seed's design (FastAPI + uvicorn)",
    "socketio": "python-socketio AsyncServer (uvicorn)",
    "websockets": "websockets.broadcast()",
    "roomcast": "roomcast",
}

_TAG = re.compile(rb'"(seq|lat|bg)":(\d+)')

_RECV_BUFFER = bytearray(256 * 1024)
_RECV_VIEW = memoryview(_RECV_BUFFER)

# connection states
CONNECTING, UPGRADING, WAIT_OPEN, WAIT_WELCOME, OPEN, JOINING, CLOSING, CLOSED = range(8)


class BenchError(Exception):
    """A benchmark could not run, or a correctness check failed."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    key = os.urandom(4)
    if not n:
        return header + key
    stream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return header + key + masked


def text(payload: str | bytes) -> bytes:
    return client_frame(0x1, payload.encode() if isinstance(payload, str) else payload)


CLOSE_FRAME = client_frame(0x8, (1000).to_bytes(2, "big"))


def mint_tokens(secret: str, users: range | list[int]) -> dict[int, str]:
    now = int(time.time())
    return {
        u: jwt.encode({"sub": str(u), "iat": now, "exp": now + 7200}, secret, algorithm="HS256")
        for u in users
    }


READ, WRITE = select.EPOLLIN, select.EPOLLOUT


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine spent busy (all processes, all cores), and of those
    in softirq: the kernel's own work charged to no process (on loopback, most of TCP's
    delivery of what one process writes to another)."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except OSError:
        return math.nan, math.nan
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq + steal) / tick, softirq / tick


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all processes, all cores)."""
    return machine_seconds()[0]


class Epoll:
    """`selectors` without its per-event objects: epoll, and a map from descriptor to
    connection."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._conns: dict[int, Conn] = {}

    def register(self, sock: socket.socket, events: int, conn: Conn) -> None:
        fd = sock.fileno()
        self._epoll.register(fd, events)
        self._conns[fd] = conn

    def modify(self, sock: socket.socket, events: int) -> None:
        self._epoll.modify(sock.fileno(), events)

    def unregister(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if self._conns.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def select(self, timeout: float) -> list[tuple[Conn, int]]:
        conns = self._conns
        return [(conns[fd], mask) for fd, mask in self._epoll.poll(timeout, 8192)
                if fd in conns]


class Conn:
    """One client connection; its state machine is driven by the Loadgen's loop."""

    __slots__ = (
        "accept_key", "bg_errors", "bg_next", "buf", "close_code", "counting", "dialect", "end",
        "error", "errors", "got", "hbuf", "lat_seq", "lat_time", "lg", "next", "on_done",
        "out", "sock", "state", "tls", "tls_in", "tls_out", "token", "user",
    )

    def __init__(self, lg: Loadgen, user: int, token: str) -> None:
        self.lg = lg
        self.user = user
        self.token = token
        self.dialect = lg.dialect
        self.sock: socket.socket | None = None
        self.state = CONNECTING
        self.buf = b""
        self.hbuf = b""
        self.out = b""
        self.accept_key = b""
        self.error: str | None = None
        self.close_code: int | None = None
        self.on_done: Callable[[Conn], None] | None = None  # state reached (open / closed)
        # checks
        self.next = 0  # next fan-out seq expected
        self.end = 0  # fan-out seqs expected: next .. end-1
        self.got = 0  # fan-out frames received in this round
        self.errors = 0  # frames out of order, duplicated or unexpected
        self.bg_next = 0
        self.bg_errors = 0
        self.lat_seq = -1
        self.lat_time = 0.0
        # Set once open, for good: frames are counted by this tag in the bytes read, not
        # parsed one by one (a saturating benchmark, where the clients' per-frame Python
        # would cost as much as the server's; no order check, no pong).
        self.counting: bytes | None = None
        # wss:// (bench/tls.py): an SSLObject over two memory BIOs; None for ws://.
        self.tls: ssl.SSLObject | None = None
        self.tls_in: ssl.MemoryBIO | None = None
        self.tls_out: ssl.MemoryBIO | None = None
        if lg.tls is not None:
            self.tls_in, self.tls_out = ssl.MemoryBIO(), ssl.MemoryBIO()
            self.tls = lg.tls.wrap_bio(self.tls_in, self.tls_out, server_hostname="127.0.0.1")

    # socket plumbing -------------------------------------------------------------------

    def start(self, port: int, source_port: int | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source_port is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", source_port))
            except OSError:
                sock.close()
                raise
        self.sock = sock
        code = sock.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, os.strerror(code))
        self.state = CONNECTING
        self.lg.sel.register(sock, WRITE, self)

    def send(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
            data = self.tls_out.read()  # type: ignore[union-attr]
        self._send_raw(data)

    def _send_raw(self, data: bytes) -> None:
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        if sent < len(data):
            self.out = data[sent:]
            self.lg.sel.modify(self.sock, READ | WRITE)

    def on_writable(self) -> None:
        if self.state == CONNECTING:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            if code:
                self.fail(f"connect: {os.strerror(code)}")
                return
            self.lg.sel.modify(self.sock, READ)
            self.state = UPGRADING
            if self.tls is not None:
                self._tls_handshake()
            else:
                self.send(self._upgrade_request())
            return
        try:
            sent = self.sock.send(self.out)  # type: ignore[union-attr]
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"send: {exc}")
            return
        self.out = self.out[sent:]
        if not self.out:
            self.lg.sel.modify(self.sock, READ)

    def _tls_handshake(self) -> bool:
        """One step of the TLS handshake; True once it is done (the upgrade is sent)."""
        assert self.tls is not None and self.tls_out is not None
        try:
            self.tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        except ssl.SSLError as exc:
            self.fail(f"TLS handshake: {exc}")
            return False
        if self.tls_out.pending:
            self._send_raw(self.tls_out.read())
        if done:
            self.send(self._upgrade_request())
        return done

    def _decrypted(self, data: bytes) -> bytes | None:
        """The plain text that `data` completes (b"" at close_notify), None while the
        TLS handshake is still going on."""
        assert self.tls is not None and self.tls_in is not None
        self.tls_in.write(data)
        if not self.accept_key and not self._tls_handshake():  # the upgrade not yet sent
            return None
        chunks = []
        while True:
            try:
                chunk = self.tls.read(1 << 18)
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b"".join(chunks) if chunks else b""
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks) if chunks else None

    def _upgrade_request(self) -> bytes:
        key = base64.b64encode(os.urandom(16))
        self.accept_key = base64.b64encode(hashlib.sha1(key + GUID).digest())
        if self.dialect == "sio":
            target = "/socket.io/?EIO=4&transport=websocket"
        else:
            target = f"{PATH}?token={self.token}"
        return (
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{self.lg.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def fail(self, why: str) -> None:
        if self.state == CLOSED:
            return
        self.error = why
        self._finish()

    def _finish(self) -> None:
        state, self.state = self.state, CLOSED
        if self.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.lg.sel.unregister(self.sock)
            self.sock.close()
        if state != CLOSED:
            self.lg.on_closed(self)

    def close(self) -> None:
        """Start the closing handshake; the server answers and hangs up."""
        if self.state in (OPEN, JOINING):
            self.state = CLOSING
            self.send(CLOSE_FRAME)
        elif self.state != CLOSED:
            self._finish()

    def abort(self) -> None:
        if self.state != CLOSED:
            self._finish()

    # reading ---------------------------------------------------------------------------

    def on_readable(self, now: float) -> None:
        try:
            # Into one shared buffer: `recv(256 KiB)` would allocate (mmap) that much for
            # every call, which costs several times more than the call itself.
            size = self.sock.recv_into(_RECV_BUFFER)  # type: ignore[union-attr]
            data = _RECV_VIEW[:size].tobytes()
        except BlockingIOError:
            return
        except OSError as exc:
            if self.state == CLOSING:
                self._finish()
            else:
                self.fail(f"recv: {exc}")
            return
        if data and self.tls is not None:
            plain = self._decrypted(data)
            if plain is None:  # a handshake step, or a record not yet whole
                return
            data = plain
        if not data:
            if self.state == CLOSING:
                self._finish()
            else:
                self.fail(f"server hung up (close code {self.close_code})")
            return
        if self.state == UPGRADING:
            self.hbuf += data
            head, sep, rest = self.hbuf.partition(b"\r\n\r\n")
            if not sep:
                return
            self.hbuf = b""
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.fail(f"handshake refused: {status.decode(errors='replace')}")
                return
            if self.accept_key not in head:
                self.fail("bad Sec-WebSocket-Accept")
                return
            self.state = WAIT_OPEN if self.dialect == "sio" else WAIT_WELCOME
            if not rest:
                return
            data = rest
        self._frames(data, now)

    def _frames(self, data: bytes, now: float) -> None:
        buf = self.buf + data if self.buf else data
        tag = self.counting
        if tag is not None and self.state == OPEN:
            self.got += buf.count(tag)
            self.buf = buf[max(0, len(buf) - len(tag) + 1):]  # a tag cut in two: counted next read
            return
        i, n = 0, len(buf)
        while n - i >= 2:
            length = buf[i + 1] & 0x7F
            if length < 126:
                start = i + 2
            elif length == 126:
                if n - i < 4:
                    break
                length = (buf[i + 2] << 8) | buf[i + 3]
                start = i + 4
            else:
                if n - i < 10:
                    break
                length = int.from_bytes(buf[i + 2:i + 10], "big")
                start = i + 10
            end = start + length
            if end > n:
                break
            opcode = buf[i] & 0x0F
            i = end
            if opcode == 0x1 and self.state == OPEN:
                match = _TAG.search(buf, start, end)
                if match is None:
                    self._text(buf[start:end])
                    if self.state == CLOSED:
                        return
                    continue
                kind, value = match.group(1), int(match.group(2))
                if kind == b"seq":
                    if value != self.next or value >= self.end:
                        self.errors += 1
                    self.next = value + 1
                    self.got += 1
                    if value == self.end - 1:
                        self.lg.on_round_done(now)
                elif kind == b"bg":
                    if value != self.bg_next:
                        self.bg_errors += 1
                    self.bg_next = value + 1
                else:
                    self.lat_seq = value
                    self.lat_time = now
            elif opcode == 0x1:
                self._text(buf[start:end])
                if self.state == CLOSED:
                    return
            elif opcode == 0x9:
                self.send(client_frame(0xA, buf[start:end]))
            elif opcode == 0x8:
                payload = buf[start:end]
                self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                if self.state == CLOSING:
                    self._finish()
                else:
                    self.fail(f"server closed with {self.close_code}")
                return
            elif opcode != 0xA:
                self.errors += 1
        self.buf = buf[i:] if i < n else b""

    def _text(self, payload: bytes) -> None:
        """Frames outside the fast path: handshake replies, join replies, Engine.IO."""
        if self.dialect == "sio":
            if payload == b"2":  # Engine.IO ping
                self.send(text(b"3"))
                return
            if self.state == WAIT_OPEN and payload.startswith(b"0"):
                self.state = WAIT_WELCOME
                self.send(text(b"40" + json.dumps({"token": self.token}).encode()))
                return
            if self.state == WAIT_WELCOME and payload.startswith(b"40"):
                self._opened()
                return
            if self.state == JOINING and payload.startswith(b"43"):
                self._opened()
                return
            if payload.startswith(b"44"):
                self.fail(f"connect refused: {payload[:200]!r}")
                return
        else:
            if self.state == WAIT_WELCOME:
                self._opened()
                return
            if self.state == JOINING and b"Joined room" in payload:
                self._opened()
                return
        if self.state != CLOSING:
            self.errors += 1

    def _opened(self) -> None:
        """Authenticated, or a join answered: ready for traffic."""
        self.state = OPEN
        if self.on_done is not None:
            self.on_done(self)

    def join(self, room: str) -> None:
        self.state = JOINING
        if self.dialect == "sio":
            self.send(text(b"420" + json.dumps(["join_room", room]).encode()))
        else:
            self.send(text(json.dumps({"type": "join_room", "room": room})))


class Control:
    """The client side of a peer's control channel (see peers/peer_common.py)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def send(self, command: dict[str, Any]) -> None:
        self.sock.sendall((json.dumps(command) + "\n").encode())

    def reply(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise BenchError("the server closed its control channel")
        answer = json.loads(line)
        if "error" in answer:
            raise BenchError(f"server: {answer['error']}")
        return answer

    def call(self, command: dict[str, Any]) -> dict[str, Any]:
        self.send(command)
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class Loadgen:
    """Every client connection of one benchmark against one server, on one loop."""

    def __init__(self, dialect: str, port: int, sel: Epoll | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.dialect = dialect
        self.port = port
        self.tls = tls  # a client context: every connection speaks wss://
        # Load generators of servers measured side by side share one epoll, so that
        # the clients of a server not being measured still answer its pings.
        self.sel = sel or Epoll()
        self.round_done = 0
        self.round_last = 0.0
        self.closed = 0
        self._on_closed: Callable[[Conn], None] | None = None

    def on_closed(self, conn: Conn) -> None:
        self.closed += 1
        if self._on_closed is not None:
            self._on_closed(conn)

    def on_round_done(self, now: float) -> None:
        self.round_done += 1
        self.round_last = now

    # the loop --------------------------------------------------------------------------

    def pump(self, timeout: float) -> int:
        events = self.sel.select(timeout)
        now = time.perf_counter()
        for conn, mask in events:
            if conn.state == CLOSED:
                continue
            if mask & WRITE:
                conn.on_writable()
            if mask & ~WRITE and conn.state != CLOSED:  # readable, or hung up
                conn.on_readable(now)
        return len(events)

    def drain(self, rounds: int = 4) -> None:
        """Handle whatever is ready now, without waiting."""
        for _ in range(rounds):
            if not self.pump(0):
                return

    def run_until(self, done: Callable[[], bool], timeout: float, what: str,
                  pause: float = 0.0) -> None:
        """Pump until `done()`. A `pause` between rounds lets frames gather in the
        kernel's buffers, so that one `recv` reads several (the fan-out's end time is
        then late by at most that much)."""
        deadline = time.perf_counter() + timeout
        while not done():
            if time.perf_counter() > deadline:
                raise BenchError(f"timed out after {timeout:.0f} s {what}")
            self.pump(0.05)
            if pause:
                time.sleep(pause)

    # phases ----------------------------------------------------------------------------

    def open(
        self,
        tokens: dict[int, str],
        concurrency: int = 100,
        timeout: float = 300.0,
        source_ports: Iterator[int] | None = None,
    ) -> list[Conn]:
        """Open a connection per (user, token), `concurrency` handshakes at a time, and
        return them once each is authenticated (welcome or Socket.IO CONNECT read).
        `source_ports` binds each socket to the next free one of them."""
        pending = iter(tokens.items())
        opened: list[Conn] = []
        failed: list[Conn] = []
        in_flight = 0

        def launch() -> bool:
            nonlocal in_flight
            for user, token in pending:
                conn = Conn(self, user, token)
                conn.on_done = done
                port = None
                while True:
                    if source_ports is not None:
                        port = next(source_ports, None)
                        if port is None:
                            raise BenchError("ran out of source ports")
                    try:
                        conn.start(self.port, port)
                        break
                    except OSError as exc:
                        if source_ports is None or exc.errno not in (errno.EADDRINUSE,
                                                                     errno.EADDRNOTAVAIL):
                            raise BenchError(f"connect failed: {exc}") from None
                in_flight += 1
                return True
            return False

        def done(conn: Conn) -> None:
            nonlocal in_flight
            in_flight -= 1
            conn.on_done = None
            opened.append(conn)
            launch()

        def closed(conn: Conn) -> None:
            nonlocal in_flight
            if conn.on_done is not None:  # never opened
                in_flight -= 1
                conn.on_done = None
                failed.append(conn)
                launch()

        self._on_closed = closed
        try:
            for _ in range(concurrency):
                if not launch():
                    break
            self.run_until(lambda: in_flight == 0, timeout, "opening connections")
        finally:
            self._on_closed = None
        if failed:
            examples = "; ".join(sorted({c.error or "?" for c in failed})[:3])
            raise BenchError(f"{len(failed)} connections failed to open: {examples}")
        return opened

    def join(self, conns: list[Conn], room: str, timeout: float = 120.0,
             concurrency: int = 500) -> None:
        todo = iter(conns)
        waiting = 0

        def launch() -> None:
            nonlocal waiting
            conn = next(todo, None)
            if conn is not None:
                conn.on_done = joined
                waiting += 1
                conn.join(room)

        def joined(conn: Conn) -> None:
            nonlocal waiting
            waiting -= 1
            conn.on_done = None
            launch()

        for _ in range(concurrency):
            launch()
        self.run_until(lambda: waiting == 0 or any(c.state == CLOSED for c in conns),
                       timeout, f"joining {room}")
        self.check_alive(conns)

    def check_alive(self, conns: list[Conn]) -> None:
        dead = [c for c in conns if c.state == CLOSED]
        if dead:
            raise BenchError(f"{len(dead)} connections died: {dead[0].error}")

    def close_all(self, conns: list[Conn], timeout: float = 30.0) -> None:
        for conn in conns:
            conn.close()
        with contextlib.suppress(BenchError):
            self.run_until(lambda: all(c.state == CLOSED for c in conns), timeout, "closing")
        for conn in conns:
            conn.abort()

    def churn(self, tokens: dict[int, str], concurrency: int, timeout: float = 300.0) -> float:
        """Handshakes: connect, upgrade, authenticate, close; `concurrency` at a time.
        Returns the wall-clock seconds for all of them."""
        pending = iter(tokens.items())
        in_flight = 0
        failures: list[str] = []
        completed = 0

        def launch() -> None:
            nonlocal in_flight
            item = next(pending, None)
            if item is None:
                return
            conn = Conn(self, *item)
            conn.on_done = lambda c: c.close()
            in_flight += 1
            conn.start(self.port)

        def closed(conn: Conn) -> None:
            nonlocal in_flight, completed
            in_flight -= 1
            if conn.error is not None:
                failures.append(conn.error)
            else:
                completed += 1
            launch()

        self._on_closed = closed
        began = time.perf_counter()
        try:
            for _ in range(concurrency):
                launch()
            self.run_until(lambda: in_flight == 0, timeout, "churning handshakes")
        finally:
            self._on_closed = None
        elapsed = time.perf_counter() - began
        if failures:
            raise BenchError(f"{len(failures)} handshakes failed: {failures[0]}")
        return elapsed

    def probe(self, control: Control, conn: Conn, seq: int, timeout: float = 30.0) -> float:
        """One notify_user round trip, from the control command written to the frame
        read by its client. Only that client's socket is watched meanwhile, so the
        time is not inflated by reading other clients (they wait in their buffers)."""
        self.drain()
        began = time.perf_counter()
        control.send({"cmd": "notify_user", "user": conn.user, "seq": seq})
        deadline = began + timeout
        poller = select.poll()
        poller.register(conn.sock, select.POLLIN)
        while conn.lat_seq != seq:
            if conn.state == CLOSED:
                raise BenchError(f"probed connection died: {conn.error}")
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise BenchError(f"no notification within {timeout} s")
            if poller.poll(remaining * 1000):
                conn.on_readable(time.perf_counter())
        control.reply()
        return conn.lat_time - began


def die_with_parent() -> None:
    """`preexec_fn` of every process a benchmark starts: in the child, before exec, it
    asks for SIGTERM when the benchmark dies, even by SIGKILL, so that no server, node
    or Redis outlives it (Linux only; the parent must be the main thread)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Server:
    """A peer server in its own process, pinned to `cpu` (None: not pinned)."""

    def __init__(self, peer: str, secret: str, cpu: int | None, max_connections: int = 100_000):
        script, self.dialect = PEERS[peer]
        # The server's stderr, read back if it fails; removed when it stops.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix=f"bench-{peer}-", suffix=".log", delete=False
        )
        command = [sys.executable, str(PEERS_DIR / script), "--secret", secret,
                   "--max-connections", str(max_connections)]
        if cpu is not None:
            command += ["--cpu", str(cpu)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        source = os.environ.get("ROOMCAST_BENCH_SOURCE")  # bench/run.py --roomcast-at
        if source:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=subprocess.DEVNULL, env=env,
                                     preexec_fn=die_with_parent)
        if cpu is not None and hasattr(os, "sched_setaffinity"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {cpu})
        poller = select.poll()  # not select(): descriptors past 1024 are common here
        poller.register(self.proc.stdout, select.POLLIN)
        ready = poller.poll(60_000)
        line = self.proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        if not line:
            tail = self.log_tail()
            self.stop()
            raise BenchError(f"{peer} server did not start:\n{tail}")
        info = json.loads(line)
        self.port: int = info["port"]
        self.control = Control(info["control"])

    def stats(self) -> dict[str, Any]:
        return self.control.call({"cmd": "stats"})

    def wait_connections(self, count: int, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.perf_counter() + timeout
        while True:
            stats = self.stats()
            if stats["connections"] == count:
                return stats
            if time.perf_counter() > deadline:
                raise BenchError(f"server holds {stats['connections']} connections, not {count}")
            time.sleep(0.05)

    def log_tail(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, AttributeError):
                self.control.send({"cmd": "quit"})
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if hasattr(self, "control"):
            self.control.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        os.unlink(self.log.name)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
