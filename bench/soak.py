"""Soak run: thousands of WebSocket clients against a roomcast server in another process,
checking that no frame is lost, duplicated or reordered, and that the server is back
to the tasks it had once everybody has left.

    .venv/bin/python bench/soak.py --connections 2000 --duration 60

The server is bench/soak_server.py, in its own process, with "backend code" inside it
sending `notify_user`, `notify_room` and `broadcast` at a steady rate. The clients
all run here, in one Trio process, as raw sockets speaking the client side of RFC 6455
(handshake, masked text frames, pong, close): a trio-websocket client costs several
tasks and a wsproto state machine per connection, which one process cannot afford
thousands of times over.

Three populations:

- stable clients connect first, each with a user id of its own, join a few rooms, and
  only then does anything get sent. They stay for the whole run, read everything, and
  send a room message now and then;
- churn clients keep connecting, joining one or two rooms, sending, staying a little,
  then leaving their rooms or not, and closing cleanly or dropping the socket;
- listeners (`--listeners`, a few) are `roomcast.client` clients, on a Trio loop of their
  own in a thread, joined with the stable clients, whose connections go through a proxy
  (bench/netcut.py) that the soak cuts every `--cut-every` s: the client reconnects,
  rejoins from the highest position it saw, and recovers.

Every sequenced frame carries `{"s": sender, "q": seq}`, `seq` counted per (sender,
target) from 0 without holes: a client sends its next room message only after its own
copy came back (a refused frame is sent again with the same number), and the backend
reports how many it sent to each target. So, per receiver and per (sender, target):

- a stable client was in every target before the first frame was sent, and stays: it
  must get exactly 0..n-1, in order (lost = holes + missing head + missing tail);
- a churn client is in a target for one unbroken interval: whatever it gets from one
  sender must be consecutive (lost = holes), in order, once each;
- any frame for a room the client has left (after the leave reply) is a stray;
- a listener is held to the stable clients' rule across its drops, except in a room
  for which it reported `Recovery(recovered=False)`: what it missed there is counted
  apart, as the client said it would be.

`--json` adds the figures as one JSON line at the end (tests/test_soak.py reads it).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import resource
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import trio

from roomcast import Config, mint_token
from roomcast.client import (
    Backoff,
    ClientClosed,
    Connected,
    Event,
    JoinRefused,
    Reconnecting,
    Recovery,
    connect,
)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.append(str(HERE))  # appended: bench's scripts never shadow another module

from loadgen import machine_busy_seconds  # noqa: E402
from netcut import tcp_proxy  # noqa: E402

SECRET = "roomcast-soak-secret-0123456789abcdef-0123456789"
PATH = "/api/v1/ws"
BACKEND = "B"
STABLE_USER0 = 1  # stable client i is user 1 + i
CHURN_USER0 = 1_000_001  # churn slot j is user 1_000_001 + j
LISTENER_USER0 = 2_000_001  # listener k is user 2_000_001 + k
# A listener's reconnects: quick, so that it is back well within the rooms' history
# (soak_server.py's history_ttl); still full jitter, as in an application.
LISTENER_BACKOFF = Backoff(base_delay=0.1, max_delay=1.0)
REPLY_TIMEOUT = 30.0


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_version(package_dir: str) -> str:
    """The commit of the roomcast the server ran, and whether its files had changes."""

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", package_dir, *args], capture_output=True, text=True, timeout=10,
            check=False,
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    try:
        commit = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return package_dir
    if not commit:
        return package_dir
    return f"{package_dir} at {commit}" + (" with uncommitted changes" if changed else "")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the client side of RFC 6455, minimal -------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final frame, masked as a client must."""
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    if not n:
        return header + key
    stream = (key * ((n + 3) // 4))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")
    return header + key + masked


class HandshakeRefused(Exception):
    pass


Key = tuple[str, str]  # (sender, target): a room, "u" (the personal room), "*" (broadcast)


def sequenced(kind: str, data: Any, room: str | None) -> tuple[Key, int] | None:
    """The stream and number of a sequenced frame (`{"s": sender, "q": seq}`, bare from
    the backend, in `payload` from a client), or None for any other frame."""
    if not isinstance(data, dict):
        return None
    body = data.get("payload", data)
    if not isinstance(body, dict) or "s" not in body:
        return None
    target = room if kind == "room_message" else ("*" if kind == "broadcast" else "u")
    return (body["s"], target), body["q"]


class SeqCheck:
    """The sequence rule of one receiver, per (sender, target): numbers from 0
    (`strict`: the receiver was in the target before its first frame was sent) or from
    the first one seen, each once, in order. A hole is lost unless it comes late (an
    order violation); a number seen again is a duplicate: both are counted in
    `tally[prefix + ...]` as they happen."""

    def __init__(self, strict: bool, tally: dict[str, int], prefix: str = "") -> None:
        self.strict = strict
        self.tally = tally
        self.prefix = prefix
        # (sender, target) -> [last seq, set of missing seqs or None]
        self.streams: dict[Key, list[Any]] = {}
        self.delivered = 0  # sequenced frames received

    def observe(self, key: Key, seq: int) -> None:
        self.delivered += 1
        state = self.streams.get(key)
        if state is None:
            state = self.streams[key] = [-1 if self.strict else seq - 1, None]
        last = state[0]
        if seq == last + 1:
            state[0] = seq
        elif seq > last:
            if state[1] is None:
                state[1] = set()
            state[1].update(range(last + 1, seq))  # a hole: lost, unless it comes late
            state[0] = seq
        elif state[1] and seq in state[1]:
            state[1].discard(seq)
            self.tally[self.prefix + "order_violations"] += 1
        else:
            self.tally[self.prefix + "duplicates"] += 1

    def holes(self) -> int:
        return sum(len(state[1]) for state in self.streams.values() if state[1])

    def shortfall(self, key: Key, n: int) -> tuple[int, int]:
        """Against `n` frames sent on `key` (0..n-1): how many never came (holes and
        the missing tail; the head too when strict), and the last number seen."""
        state = self.streams.get(key)
        last, missing = (-1, None) if state is None else state
        return len(missing or ()) + max(0, n - 1 - last), last


class ReplyTimeout(Exception):
    pass


class Conn:
    """One WebSocket client: a reader task that checks every sequenced frame, and one
    request in flight at a time (every client frame gets exactly one reply)."""

    def __init__(self, soak: Soak, name: str, user: int, strict: bool) -> None:
        self.soak = soak
        self.name = name  # the sender id in `data.s`
        self.user = user
        self.strict = strict  # a stable client: streams are checked from seq 0
        self.check = SeqCheck(strict, soak.t)
        self.stream: trio.SocketStream | None = None
        self.started_at = 0.0
        self.buf = bytearray()
        self.streams = self.check.streams
        self.rooms: dict[str, str] = {}  # room -> "joining" | "in" | "leaving"
        self.closing = False  # we sent a close frame, or are dropping the socket
        self.close_received: int | None = None
        self.reader_done = trio.Event()
        self.lost_connection = False  # the socket ended while we did not expect it
        self._send_lock = trio.Lock()
        self._reply: dict[str, Any] | None = None
        self._reply_event: trio.Event | None = None
        self._want_own: tuple[str, int] | None = None
        self._control: list[bytes] = []  # pongs and close echoes to send

    # handshake and life -------------------------------------------------------------

    async def open(self, port: int, token: str) -> None:
        self.started_at = time.monotonic()
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            await sock.connect(("127.0.0.1", port))
        except BaseException:
            sock.close()
            raise
        self.stream = trio.SocketStream(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {PATH}?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        try:
            await self.stream.send_all(request)
            while b"\r\n\r\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise HandshakeRefused("closed during the handshake")
                self.buf += data
        except BaseException:
            await trio.aclose_forcefully(self.stream)
            raise
        head, _, rest = bytes(self.buf).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            await trio.aclose_forcefully(self.stream)
            raise HandshakeRefused(head.split(b"\r\n", 1)[0].decode("latin-1"))
        self.buf = bytearray(rest)

    async def session(self, body: Any) -> None:
        """Once `open`: read the welcome, run `body(self)` while the reader runs, and
        close (a body that returns without `close_clean` drops the socket)."""
        assert self.stream is not None
        self.soak.opened()
        try:
            async with trio.open_nursery() as nursery:
                event = self._reply_event = trio.Event()  # the welcome is the first reply
                nursery.start_soon(self.reader)
                welcome = await self._wait_reply(event)
                self.soak.latency["connect"].append(time.monotonic() - self.started_at)
                if welcome is None or not str(welcome.get("message", "")).startswith(
                    "Connected"
                ):
                    self.soak.t["anomalies"] += 1
                    return
                await body(self)
                self.closing = True
                nursery.cancel_scope.cancel()
        finally:
            self.soak.closed()
            self.closing = True
            await trio.aclose_forcefully(self.stream)

    async def close_clean(self) -> None:
        """Send a close frame, wait for the server's, then the socket goes."""
        self.closing = True
        if self.close_received is None and not self.reader_done.is_set():
            sent_at = time.monotonic()
            try:
                await self._send(client_frame(0x8, struct.pack("!H", 1000)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            with trio.move_on_after(REPLY_TIMEOUT) as scope:
                await self.reader_done.wait()
            if scope.cancelled_caught:
                self.soak.t["timeouts"] += 1
            else:
                self.soak.latency["close"].append(time.monotonic() - sent_at)

    # reading ------------------------------------------------------------------------

    async def reader(self) -> None:
        assert self.stream is not None
        try:
            self._parse()
            while self.close_received is None:
                await self._flush_control()
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.buf += data
                self._parse()
            await self._flush_control()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            if not self.closing:
                self.lost_connection = True
                self.soak.t["unexpected_closes"] += 1
                self.soak.close_codes[self.close_received] += 1
            self.reader_done.set()
            self._resolve(None)

    async def _flush_control(self) -> None:
        while self._control:
            await self._send(self._control.pop(0))

    def _parse(self) -> None:
        buf = self.buf
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length, header = b1 & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if end - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            pos += header + length
            opcode = b0 & 0x0F
            if b1 & 0x80 or not b0 & 0x80:
                self.soak.t["anomalies"] += 1  # masked, or fragmented: never sent by roomcast
            if opcode == 0x1:
                self._on_text(payload)
            elif opcode == 0x9:
                self.soak.t["pings"] += 1
                self._control.append(client_frame(0xA, payload))
            elif opcode == 0x8:
                self.close_received = int.from_bytes(payload[:2], "big") if payload else 1005
                if not self.closing:
                    self._control.append(client_frame(0x8, payload[:2]))
                break
            elif opcode != 0xA:
                self.soak.t["anomalies"] += 1
        del buf[:pos]

    def _on_text(self, payload: bytes) -> None:
        frame = json.loads(payload)
        kind, data, room = frame["type"], frame["data"], frame["room"]
        numbered = sequenced(kind, data, room)
        if numbered is not None:
            (sender, target), seq = numbered
            self.check.observe((sender, target), seq)
            if room is not None and room not in self.rooms:
                self.soak.t["stray"] += 1
            if sender == self.name:  # our own copy: the reply to our room message
                if self._want_own == (room, seq):
                    self._resolve(frame)
                elif not self.closing:
                    self.soak.t["anomalies"] += 1
            return
        if kind in ("error", "text") or (kind == "info" and isinstance(data, dict)):
            self._resolve(frame)  # a reply: welcome, joined, left, echo or error
        else:
            self.soak.t["anomalies"] += 1

    @property
    def delivered(self) -> int:
        return self.check.delivered

    def holes(self) -> int:
        return self.check.holes()

    # requests -----------------------------------------------------------------------

    def _resolve(self, frame: dict[str, Any] | None) -> None:
        event = self._reply_event
        if event is None:
            if frame is not None and not self.closing:
                self.soak.t["anomalies"] += 1  # a reply nobody asked for
            return
        self._reply_event = None
        self._reply = frame
        event.set()

    async def _wait_reply(self, event: trio.Event) -> dict[str, Any] | None:
        with trio.move_on_after(REPLY_TIMEOUT) as scope:
            await event.wait()
        if scope.cancelled_caught:
            self.soak.t["timeouts"] += 1
            raise ReplyTimeout(self.name)
        return self._reply

    async def _send(self, frame: bytes) -> None:
        assert self.stream is not None
        async with self._send_lock:
            await self.stream.send_all(frame)

    async def request(
        self, frame: dict[str, Any], own: tuple[str, int] | None = None
    ) -> dict[str, Any] | None:
        """Send one frame and wait for its reply; None if the connection ended."""
        if self.reader_done.is_set():
            return None
        self._want_own = own
        self._reply = None
        event = self._reply_event = trio.Event()
        sent_at = time.monotonic()
        try:
            await self._send(client_frame(0x1, json.dumps(frame).encode()))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._reply_event = None
            return None
        try:
            reply = await self._wait_reply(event)
        finally:
            self._want_own = None
        if reply is not None:
            self.soak.latency[frame["type"]].append(time.monotonic() - sent_at)
        return reply

    def _count_error(self, reply: dict[str, Any] | None) -> None:
        if reply is not None and reply["type"] == "error":
            self.soak.t["error_replies"] += 1
            self.soak.error_codes[reply["data"]["code"]] += 1

    async def join(self, room: str) -> bool:
        self.rooms[room] = "joining"
        reply = await self.request({"type": "join_room", "room": room})
        if reply is not None and reply["type"] == "info" and reply["room"] == room:
            self.rooms[room] = "in"
            self.soak.t["joins"] += 1
            return True
        self._count_error(reply)
        del self.rooms[room]
        return False

    async def leave(self, room: str) -> bool:
        self.rooms[room] = "leaving"
        reply = await self.request({"type": "leave_room", "room": room})
        if reply is not None and reply["type"] == "info" and reply["room"] == room:
            del self.rooms[room]
            self.soak.t["leaves"] += 1
            return True
        self._count_error(reply)
        return False

    async def room_message(self, room: str) -> bool:
        """Send the next seq to `room`; counted as sent once our own copy is back."""
        key = (self.name, room)
        seq = self.soak.sent.get(key, 0)
        reply = await self.request(
            {"type": "room_message", "room": room, "data": {"s": self.name, "q": seq}},
            own=(room, seq),
        )
        if reply is not None and reply["type"] == "room_message":
            self.soak.sent[key] = seq + 1
            self.soak.t["room_messages_stable" if self.strict else "room_messages_churn"] += 1
            return True
        self._count_error(reply)
        if reply is None:
            self.soak.uncertain[key] = seq  # it may or may not have gone out
        return False

    async def send_and_drop(self, room: str) -> None:
        """Send the next room message and let the socket go before any reply: whether
        the server still publishes it is up to the kernel, so it is only "maybe sent"."""
        key = (self.name, room)
        seq = self.soak.sent.get(key, 0)
        self.soak.uncertain[key] = seq
        self.closing = True  # its reply, if any, is nobody's business
        frame = {"type": "room_message", "room": room, "data": {"s": self.name, "q": seq}}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._send(client_frame(0x1, json.dumps(frame).encode()))

    async def echo(self) -> bool:
        reply = await self.request({"type": "text", "data": "fence"})
        return reply is not None and reply["type"] == "text"


# --- the roomcast.client population ------------------------------------------------


class Phases:
    """The soak's phases, as the listeners' thread sees them (events of its own loop)."""

    def __init__(self) -> None:
        self.go = trio.Event()
        self.stop = trio.Event()
        self.fence = trio.Event()
        self.leave = trio.Event()


class Listener:
    """One `roomcast.client` client, through the proxy the soak cuts: it joins its rooms
    before the first frame and reads everything. What it hands out is held to the stable
    clients' rule (exactly 0..n-1 of every stream, once, in order) across its drops,
    except in a room for which it reported `Recovery(recovered=False)`: what it missed
    there is counted apart, as the client said it would be."""

    def __init__(self, soak: Soak, k: int, rooms: list[str]) -> None:
        self.soak = soak
        self.name = f"l{k}"
        self.user = LISTENER_USER0 + k
        self.rooms = rooms
        self.tally = soak.listener_tally  # the listeners' thread writes only there
        self.check = SeqCheck(True, self.tally, "listener_")
        self.joined = False  # its rooms all joined before the first frame was sent
        self.failed = False
        self.connections = 0  # welcomed connections
        self.reconnects = 0  # drops of a welcomed connection (Reconnecting with a code)
        self.failed_attempts = 0  # connects that failed (Reconnecting without a code)
        self.recoveries = 0  # rejoins (and welcomes) after a drop that recovered
        self.missed = 0  # the frames those recoveries said followed
        self.unrecovered: dict[str, int] = defaultdict(int)  # room -> Recovery(False)s
        self.unrecovered_reasons: dict[str, int] = defaultdict(int)
        self.broadcasts = 0  # live only: a broadcast during a cut is gone, not checked
        self.outages: list[float] = []  # seconds from a cut to all its rooms answered
        self.why: dict[str, int] = defaultdict(int)  # Reconnecting, by code or failure
        self.back = trio.Event()  # set once every room answered its (re)join
        self._answered: set[str] = set()
        self._cut_at = 0.0
        self.fenced = trio.Event()

    def on_event(self, event: Event) -> None:
        if isinstance(event, Connected):
            self.connections += 1
        elif isinstance(event, Reconnecting):
            self.why[str(event.code or event.reason.split(":")[0])] += 1
            self._answered.clear()  # rejoins answered on a socket that dropped since
            if event.code is None:
                self.failed_attempts += 1
            else:
                self.reconnects += 1
        elif isinstance(event, Recovery) and self.reconnects:
            if event.recovered:
                self.recoveries += 1
                self.missed += event.missed
            else:
                room = event.room if event.room in self.rooms else "u"
                self.unrecovered[room] += 1
                self.unrecovered_reasons[str(event.reason)] += 1
            if event.room in self.rooms:
                self._answered.add(event.room)
                if len(self._answered) == len(self.rooms) and not self.back.is_set():
                    self.back.set()
                    self.outages.append(time.monotonic() - self._cut_at)

    def cut(self) -> None:
        """The proxy cut its connection (it was back in every room: see `cutter`)."""
        self._cut_at = time.monotonic()
        self._answered.clear()
        self.back = trio.Event()

    async def read(self, client: Any) -> None:
        t = self.tally
        async for frame in client:
            numbered = sequenced(frame.type, frame.data, frame.room)
            if numbered is not None:
                key, seq = numbered
                if key[1] == "*":
                    self.broadcasts += 1
                    continue
                self.check.observe(key, seq)
                if frame.room is not None and frame.room not in self.rooms:
                    t["listener_stray"] += 1
            elif frame.type == "text":
                self.fenced.set()  # the echo: every frame sent before it came before it
            elif frame.type == "error":
                t["listener_error_replies"] += 1
            elif not (frame.type == "info" and frame.recovered is False):
                t["listener_anomalies"] += 1  # (a rejoin that did not recover: on_event)

    def expected(self, backend: dict[str, Any], by_room: dict[str, dict[str, int]]) -> (
        dict[Key, int]
    ):
        """Every stream sent to it, and how many: its personal room and its rooms."""
        expected = {(BACKEND, "u"): backend["user"].get(str(self.user), 0)}
        for room in self.rooms:
            expected[(BACKEND, room)] = backend["room"].get(room, 0)
            for sender, n in by_room[room].items():
                expected[(sender, room)] = n
        return expected


# --- the server process ------------------------------------------------------------


class Server:
    def __init__(self, process: trio.Process, log_path: str) -> None:
        self.process = process
        self.log_path = log_path
        self._buffer = b""
        self._lock = trio.Lock()
        self.hello: dict[str, Any] = {}

    @classmethod
    async def start(cls, args: argparse.Namespace, log_file: Any) -> tuple[Server, int]:
        command = [
            sys.executable, str(HERE / "soak_server.py"), "--secret", SECRET,
            "--max-connections", str(args.connections * 2 + 100),
            "--max-connections-per-user", "100",
            "--rate-limit", "1000", "--rate-burst", "1000",
            "--history-size", str(args.history_size), "--history-ttl", str(args.history_ttl),
        ]
        process = await trio.lowlevel.open_process(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_file.fileno()
        )
        server = cls(process, log_file.name)
        with trio.fail_after(30):
            server.hello = await server._read_line()
        return server, int(server.hello["port"])

    async def _read_line(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            data = await self.process.stdout.receive_some(65536)
            if not data:
                raise RuntimeError(f"the server exited; see its log {self.log_path}")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        async with self._lock:
            await self.process.stdin.send_all(json.dumps(command).encode() + b"\n")
            with trio.fail_after(60):
                return await self._read_line()

    async def stats(self, names: bool = False) -> dict[str, Any]:
        return await self.call({"cmd": "stats", "names": names})


# --- the run -----------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.random = random.Random(args.seed)
        n = args.connections
        self.n_stable = max(1, round(n * args.stable_fraction))
        self.n_churn = max(0, n - self.n_stable)
        # every k-th stable client only listens
        self.listener_every = round(1 / args.listener_fraction) if args.listener_fraction else n + 1
        self.rooms = [f"soak-{i}" for i in range(args.rooms or max(3, n // 20))]
        self.t: dict[str, int] = defaultdict(int)
        self.close_codes: dict[int | None, int] = defaultdict(int)
        self.error_codes: dict[str, int] = defaultdict(int)
        self.latency: dict[str, list[float]] = defaultdict(list)  # seconds, by request
        self.rss_samples: list[int] = []  # server VmRSS in KiB, every 2 s of traffic
        self.sent: dict[tuple[str, str], int] = {}  # (client, room) -> seqs confirmed sent
        self.uncertain: dict[tuple[str, str], int] = {}
        self.open_now = 0
        self.open_peak = 0
        self.open_low = 1 << 30  # fewest open once the churn ramped up, till the stop
        self.measuring_held = False
        self.stable: list[Conn] = []
        self.n_listeners = max(0, args.listeners)
        self.listeners: list[Listener] = []
        self.listener_tally: dict[str, int] = defaultdict(int)  # merged into t at the end
        self.cut_at: list[float] = []  # when the proxy cut the listeners' connections
        self.tokens: dict[int, str] = {}
        # phases
        self.ready = 0
        self.all_ready = trio.Event()
        self.go = trio.Event()
        self.stop_senders = trio.Event()
        self.senders_done = 0
        self.all_senders_done = trio.Event()
        self.fence = trio.Event()
        self.fenced = 0
        self.all_fenced = trio.Event()
        self.leave = trio.Event()
        self.stop_churn = trio.Event()
        self.handshakes = trio.CapacityLimiter(args.handshake_concurrency)
        self.port = 0

    def opened(self) -> None:
        self.open_now += 1
        self.open_peak = max(self.open_peak, self.open_now)

    def closed(self) -> None:
        self.open_now -= 1
        if self.measuring_held:
            self.open_low = min(self.open_low, self.open_now)

    def token(self, user: int) -> str:
        token = self.tokens.get(user)
        if token is None:
            config = Config(jwt_secret=SECRET)
            token = self.tokens[user] = mint_token(config, user, ttl=24 * 3600)
        return token

    def _count_stable(self, attr: str, event: trio.Event) -> None:
        """One more stable client or listener through a phase (`ready`...)."""
        value = getattr(self, attr) + 1
        setattr(self, attr, value)
        if value >= self.n_stable + self.n_listeners:
            event.set()

    # stable clients ---------------------------------------------------------------

    async def stable_client(self, i: int) -> None:
        conn = Conn(self, f"s{i}", STABLE_USER0 + i, strict=True)
        self.stable.append(conn)
        rooms = self.random.sample(self.rooms, min(self.args.rooms_per_client, len(self.rooms)))
        counted = {"ready": False, "senders_done": False, "fenced": False}

        def count(attr: str, event: trio.Event) -> None:
            if not counted[attr]:
                counted[attr] = True
                self._count_stable(attr, event)

        async def body(conn: Conn) -> None:
            for room in rooms:
                if not await conn.join(room):
                    self.t["stable_failures"] += 1
                    conn.lost_connection = True  # left out of the exact check
            count("ready", self.all_ready)
            await self.go.wait()
            interval = self.args.stable_interval
            if i % self.listener_every == 0:
                await self.stop_senders.wait()  # a listener: it sends nothing, gets pinged
            else:
                with trio.move_on_after(self.random.uniform(0, interval)):
                    await self.stop_senders.wait()
            while not self.stop_senders.is_set() and not conn.reader_done.is_set():
                await conn.room_message(self.random.choice(rooms))
                with trio.move_on_after(self.random.uniform(0.5, 1.5) * interval):
                    await self.stop_senders.wait()
            count("senders_done", self.all_senders_done)
            await self.fence.wait()
            if not await conn.echo():
                conn.lost_connection = True
            count("fenced", self.all_fenced)
            await self.leave.wait()
            await conn.close_clean()

        try:
            async with self.handshakes:
                await conn.open(self.port, self.token(conn.user))
            await conn.session(body)
        except (OSError, HandshakeRefused, ReplyTimeout, trio.BrokenResourceError) as exc:
            self.t["stable_failures"] += 1
            conn.lost_connection = True
            print(f"stable client {i} failed: {exc!r}", file=sys.stderr)
        finally:
            count("ready", self.all_ready)
            count("senders_done", self.all_senders_done)
            count("fenced", self.all_fenced)

    # listeners ----------------------------------------------------------------------
    #
    # They run in a thread of their own, on a Trio loop of their own, with the proxy
    # and its cutter: on the clients' loop, a trio-websocket client needs a scheduler
    # pass or two per frame (its reader hands each message through a channel of one),
    # and with 1,000 raw clients a pass took 0.1-0.3 s, so a listener fell seconds
    # behind its stream (measured: a cut noticed 7.7 s late, its rooms' history gone).
    # The two loops only meet through `TrioToken.run_sync_soon`.

    async def run_listeners(self) -> None:
        """On the clients' loop: the listeners' thread, told each phase as it comes."""
        main_token = trio.lowlevel.current_trio_token()
        plans = [
            self.random.sample(self.rooms, min(self.args.rooms_per_client, len(self.rooms)))
            for _ in range(self.n_listeners)
        ]
        up = trio.Event()
        bridge: dict[str, Any] = {}

        def listeners_up(token: trio.lowlevel.TrioToken, phases: Phases) -> None:
            bridge.update(token=token, phases=phases)
            up.set()

        async def forward() -> None:
            await up.wait()
            for name, event in (("go", self.go), ("stop", self.stop_senders),
                                ("fence", self.fence), ("leave", self.leave)):
                await event.wait()
                bridge["token"].run_sync_soon(getattr(bridge["phases"], name).set)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            await trio.to_thread.run_sync(
                trio.run, self._listeners_loop, main_token, plans, listeners_up)
            nursery.cancel_scope.cancel()

    async def _listeners_loop(
        self, main_token: trio.lowlevel.TrioToken, plans: list[list[str]], up: Any,
    ) -> None:
        """The listeners' thread: the proxy, the listeners, the cutter."""
        phases = Phases()
        main_token.run_sync_soon(up, trio.lowlevel.current_trio_token(), phases)

        def count(attr: str, event: trio.Event) -> None:
            main_token.run_sync_soon(self._count_stable, attr, event)

        async with tcp_proxy(self.port) as proxy, trio.open_nursery() as nursery:
            for k, rooms in enumerate(plans):
                nursery.start_soon(self.listener, k, rooms, proxy.port, phases, count)
            await phases.go.wait()
            if self.args.cut_every > 0:
                nursery.start_soon(self.cutter, proxy, phases)

    async def listener(
        self, k: int, rooms: list[str], port: int, phases: Phases, count_phase: Any,
    ) -> None:
        """A `roomcast.client` client through the cuttable proxy on `port`, in the
        stable clients' phases: joined before the first frame, fenced with an echo once
        everything was sent, closed (1000) with them."""
        listener = Listener(self, k, rooms)
        self.listeners.append(listener)
        done: set[str] = set()

        def count(attr: str, event: trio.Event) -> None:
            if attr not in done:
                done.add(attr)
                count_phase(attr, event)

        url = f"ws://127.0.0.1:{port}{PATH}"
        rng = random.Random(self.args.seed * 7_000_003 + k)
        try:
            async with connect(
                url, token=self.tokens[listener.user], backoff=LISTENER_BACKOFF,
                on_event=listener.on_event, random=rng.random,
            ) as client, trio.open_nursery() as nursery:
                nursery.start_soon(listener.read, client)
                for room in rooms:
                    await client.join(room)
                listener.joined = True
                listener.back.set()
                count("ready", self.all_ready)
                await phases.stop.wait()
                count("senders_done", self.all_senders_done)
                await phases.fence.wait()
                await client.send_text("fence")
                with trio.move_on_after(REPLY_TIMEOUT) as scope:
                    await listener.fenced.wait()
                if scope.cancelled_caught:
                    listener.tally["listener_timeouts"] += 1
                    listener.failed = True
                count("fenced", self.all_fenced)
                await phases.leave.wait()
                nursery.cancel_scope.cancel()
        except (OSError, JoinRefused, ClientClosed, trio.TooSlowError) as exc:
            listener.failed = True
            print(f"listener {k} failed: {exc!r}", file=sys.stderr)
        finally:
            count("ready", self.all_ready)
            count("senders_done", self.all_senders_done)
            count("fenced", self.all_fenced)

    async def cutter(self, proxy: Any, phases: Phases) -> None:
        """Cut the listeners' connections (no closing handshake) every `cut_every` s
        while the senders run, refusing new ones for `cut_for` s each time; never before
        every listener is back in all its rooms (a cut during a rejoin would test
        nothing more, and could keep a listener away for good on a loaded machine)."""
        args = self.args
        while True:
            with trio.move_on_after(args.cut_every):
                await phases.stop.wait()
            for listener in self.listeners:
                await first_of(listener.back, phases.stop)
            if phases.stop.is_set():
                return
            proxy.cut()
            for listener in self.listeners:
                listener.cut()
            self.cut_at.append(time.monotonic())
            try:
                with trio.move_on_after(args.cut_for):
                    await phases.stop.wait()
            finally:
                proxy.restore()

    # churn clients ----------------------------------------------------------------

    async def churn_slot(self, j: int, nursery: trio.Nursery) -> None:
        """One slot of the churn population: a connection after another, the next one
        opened as soon as the current one starts leaving (make before break), so the
        slot always holds about one connection."""
        rng = random.Random(self.args.seed * 1_000_003 + j)
        with trio.move_on_after(rng.uniform(0, self.args.churn_dwell)):
            await self.stop_churn.wait()
        cycle = 0
        while not self.stop_churn.is_set():
            cycle += 1
            handoff = trio.Event()
            nursery.start_soon(self.churn_client, j, cycle, rng, handoff)
            await handoff.wait()

    async def churn_client(
        self, j: int, cycle: int, rng: random.Random, handoff: trio.Event
    ) -> None:
        user = CHURN_USER0 + j
        dwell = self.args.churn_dwell
        conn = Conn(self, f"c{j}.{cycle}", user, strict=False)

        async def body(conn: Conn) -> None:
            rooms = rng.sample(self.rooms, min(rng.randint(1, 2), len(self.rooms)))
            for room in rooms:
                await conn.join(room)
            joined = [room for room, state in conn.rooms.items() if state == "in"]
            for _ in range(rng.randint(1, 3)):
                if self.stop_churn.is_set() or conn.reader_done.is_set() or not joined:
                    break
                await conn.room_message(rng.choice(joined))
                with trio.move_on_after(rng.uniform(0, dwell)):
                    await self.stop_churn.wait()
            handoff.set()  # the slot's next connection opens while this one goes
            if joined and rng.random() < 0.1:
                await conn.send_and_drop(rng.choice(joined))
                self.t["churn_dropped_in_flight"] += 1
                return
            if rng.random() < 0.5:
                for room in joined:
                    await conn.leave(room)
            if rng.random() < 0.7:
                await conn.close_clean()
                self.t["churn_clean_closes"] += 1
            else:
                self.t["churn_dropped_sockets"] += 1  # no close frame: the socket just goes

        try:
            async with self.handshakes:
                await conn.open(self.port, self.token(user))
            self.t["churn_connections"] += 1
            await conn.session(body)
        except (OSError, HandshakeRefused, ReplyTimeout, trio.BrokenResourceError) as exc:
            self.t["churn_failures"] += 1
            if self.t["churn_failures"] <= 5:
                print(f"churn client {conn.name} failed: {exc!r}", file=sys.stderr)
            with trio.move_on_after(0.1):
                await self.stop_churn.wait()
        finally:
            handoff.set()
        self.t["lost"] += conn.holes()
        self.t["delivered"] += conn.delivered
        self.t["delivered_churn"] += conn.delivered

    # the whole run ----------------------------------------------------------------

    async def sample(self, server: Server, started: float, peaks: dict[str, int]) -> None:
        last_print = 0.0
        while True:
            await trio.sleep(2.0)
            s = await server.stats()
            peaks["server_open_sockets"] = max(peaks["server_open_sockets"], s["open_sockets"])
            peaks["server_tasks"] = max(peaks["server_tasks"], s["tasks"])
            if self.go.is_set() and not self.stop_churn.is_set():
                self.rss_samples.append(s["rss_kib"])
            elapsed = time.monotonic() - started
            if not self.args.quiet and elapsed - last_print >= 10:
                last_print = elapsed
                print(
                    f"  t={elapsed:4.0f}s open={self.open_now} server: sockets={s['open_sockets']}"
                    f" tasks={s['tasks']} rss={s['rss_kib'] // 1024} MiB"
                    f" churn so far={self.t['churn_connections']}",
                    file=sys.stderr,
                )

    def say(self, text: str) -> None:
        if not self.args.quiet:
            print(text, file=sys.stderr)

    async def run(self) -> dict[str, Any]:
        args = self.args
        fd_limit = raise_fd_limit()
        wall0 = time.monotonic()
        cpu0 = cpu_seconds()
        with tempfile.NamedTemporaryFile(
            "w+", prefix="soak-server-", suffix=".log", delete=False
        ) as log_file:
            server, self.port = await Server.start(args, log_file)
            try:
                report = await self._run(server, fd_limit, wall0, cpu0)
                await server.call({"cmd": "quit"})
                with trio.fail_after(30):
                    await server.process.wait()
            finally:
                if server.process.returncode is None:
                    server.process.kill()
                    await server.process.wait()
            log_file.seek(0)
            log = log_file.read()
        problems = [
            line for line in log.splitlines()
            if " WARNING " in line or " ERROR " in line or " CRITICAL " in line
        ]
        report["server_log_problems"] = len(problems)
        report["server_log_sample"] = problems[:10]
        report["server_log"] = log_file.name
        report["server_exit_code"] = server.process.returncode
        report["roomcast"] = source_version(server.hello.get("roomcast", "?"))
        if not problems:
            os.unlink(log_file.name)
            report["server_log"] = None
        return report

    async def _run(
        self, server: Server, fd_limit: int, wall0: float, cpu0: float
    ) -> dict[str, Any]:
        args = self.args
        before = await server.stats(names=True)
        for user in range(STABLE_USER0, STABLE_USER0 + self.n_stable):
            self.token(user)
        for j in range(self.n_churn):
            self.token(CHURN_USER0 + j)
        for k in range(self.n_listeners):
            self.token(LISTENER_USER0 + k)  # minted here: the listeners' thread only reads
        self.say(
            f"soak: {args.connections} connections ({self.n_stable} stable, {self.n_churn} "
            f"churn slots), {len(self.rooms)} rooms, {args.duration:g} s; server on port "
            f"{self.port}; fd limit {fd_limit}"
        )
        peaks = {"server_open_sockets": 0, "server_tasks": before["tasks"]}
        async with trio.open_nursery() as outer:
            outer.start_soon(self.sample, server, time.monotonic(), peaks)
            async with trio.open_nursery() as stable_nursery:
                t0 = time.monotonic()
                for i in range(self.n_stable):
                    stable_nursery.start_soon(self.stable_client, i)
                if self.n_listeners:
                    stable_nursery.start_soon(self.run_listeners)
                await self.all_ready.wait()
                ramp = time.monotonic() - t0
                self.say(
                    f"  {self.open_now} stable clients and {self.n_listeners} listeners "
                    f"connected and joined in {ramp:.1f} s"
                )
                users = (
                    list(range(STABLE_USER0, STABLE_USER0 + self.n_stable))
                    + list(range(CHURN_USER0, CHURN_USER0 + self.n_churn))
                    + list(range(LISTENER_USER0, LISTENER_USER0 + self.n_listeners))
                )
                await server.call({
                    "cmd": "start", "users": users, "rooms": self.rooms,
                    "user_rate": args.user_rate, "room_rate": args.room_rate,
                    "broadcast_rate": args.broadcast_rate,
                })
                self.go.set()
                run0 = time.monotonic()
                cpu_run0 = cpu_seconds()
                server_cpu_run0 = (await server.stats())["cpu_s"]
                machine_run0 = machine_busy_seconds()
                async with trio.open_nursery() as churn_nursery:
                    for j in range(self.n_churn):
                        churn_nursery.start_soon(self.churn_slot, j, churn_nursery)
                    ramp = min(args.duration / 2, 2 * args.churn_dwell + 1.0)
                    await trio.sleep(ramp)
                    self.open_low, self.measuring_held = self.open_now, True
                    await trio.sleep(args.duration - ramp)
                    self.measuring_held = False
                    self.stop_churn.set()
                    self.stop_senders.set()
                    self.say("  stopping: churn clients finish their cycle, senders stop")
                run_seconds = time.monotonic() - run0
                await self.all_senders_done.wait()
                sent_by_backend = await server.call({"cmd": "stop"})
                self.fence.set()
                await self.all_fenced.wait()
                held = await server.stats()
                stable_held = sum(1 for c in self.stable if not c.lost_connection)
                cpu_run = cpu_seconds() - cpu_run0
                server_cpu_run = held["cpu_s"] - server_cpu_run0
                others_run = machine_busy_seconds() - machine_run0 - cpu_run - server_cpu_run
                self.leave.set()
            self.say("  stable clients closed; waiting for the server to settle")
            settle0 = time.monotonic()
            after = await server.stats()
            while time.monotonic() - settle0 < args.settle_timeout and (
                after["open_sockets"] or after["connections"] or after["rooms"]
                or after["tasks"] != before["tasks"]
            ):
                await trio.sleep(0.25)
                after = await server.stats()
            settle = time.monotonic() - settle0
            if after["tasks"] != before["tasks"]:
                after = await server.stats(names=True)
            outer.cancel_scope.cancel()

        self._check_stable(sent_by_backend)
        t = self.t
        report: dict[str, Any] = {
            "connections": args.connections,
            "duration_s": args.duration,
            "run_s": round(run_seconds, 1),
            "stable_clients": self.n_stable,
            "churn_slots": self.n_churn,
            "rooms": len(self.rooms),
            "peak_connections": self.open_peak,
            "low_connections": self.open_low,
            "server_peak_open_sockets": peaks["server_open_sockets"],
            "stable_held": stable_held,
            "churn_connections": t["churn_connections"],
            "churn_clean_closes": t["churn_clean_closes"],
            "churn_dropped_sockets": t["churn_dropped_sockets"],
            "churn_dropped_in_flight": t["churn_dropped_in_flight"],
            "joins": t["joins"],
            "leaves": t["leaves"],
            "room_messages_stable": t["room_messages_stable"],
            "room_messages_churn": t["room_messages_churn"],
            "backend_notify_user": sum(sent_by_backend["user"].values()),
            "backend_notify_room": sum(sent_by_backend["room"].values()),
            "backend_broadcast": sent_by_backend["broadcast"],
            "backend_errors": sent_by_backend["errors"],
            "delivered": t["delivered"],
            "delivered_stable": t["delivered_stable"],
            "delivered_churn": t["delivered_churn"],
            "lost": t["lost"],
            "duplicates": t["duplicates"],
            "order_violations": t["order_violations"],
            "stray": t["stray"],
            "phantom": t["phantom"],
            "partial_fan_out": t["partial_fan_out"],
            "in_flight_published": t["in_flight_published"],
            "error_replies": t["error_replies"],
            "error_codes": dict(self.error_codes),
            "unexpected_closes": t["unexpected_closes"],
            "close_codes": {str(k): v for k, v in self.close_codes.items()},
            "timeouts": t["timeouts"],
            "stable_failures": t["stable_failures"],
            "churn_failures": t["churn_failures"],
            "anomalies": t["anomalies"],
            "pings": t["pings"],
            "server_rss_before_mib": before["rss_kib"] / 1024,
            "server_rss_traffic_first_mib": (self.rss_samples or [0])[0] / 1024,
            "server_rss_traffic_last_mib": (self.rss_samples or [0])[-1] / 1024,
            "server_rss_held_mib": held["rss_kib"] / 1024,
            "server_rss_settled_mib": after["rss_kib"] / 1024,
            "server_peak_rss_mib": after["hwm_kib"] / 1024,
            "tasks_before": before["tasks"],
            "tasks_peak_sampled": peaks["server_tasks"],
            "tasks_after": after["tasks"],
            "settle_s": round(settle, 2),
            "server_connections_after": after["connections"],
            "server_rooms_after": after["rooms"],
            "server_open_sockets_after": after["open_sockets"],
            "server_restarts": after["restarts"],
            "client_cpu_s": round(cpu_seconds() - cpu0, 1),
            "client_cpu_run_s": round(cpu_run, 1),
            "server_cpu_s": round(after["cpu_s"], 1),
            "server_cpu_run_s": round(server_cpu_run, 1),
            "others_cpu_run_s": round(max(0.0, others_run), 1),
            "cores": os.cpu_count(),
            "wall_s": round(time.monotonic() - wall0, 1),
            "latency_ms": {
                kind: percentiles(values) for kind, values in sorted(self.latency.items())
            },
        }
        report.update(self.listener_report(
            run_seconds,
            t["room_messages_stable"] + t["room_messages_churn"] + report["backend_notify_room"],
        ))
        if after["tasks"] != before["tasks"]:
            report["task_names_before"] = before.get("task_names")
            report["task_names_after"] = after.get("task_names")
        return report

    def _check_stable(self, backend: dict[str, Any]) -> None:
        """Every stable client must hold exactly 0..n-1 of every stream it was a
        target of for the whole run."""
        by_room: dict[str, dict[str, int]] = defaultdict(dict)
        for sender, room in {*self.sent, *self.uncertain}:
            by_room[room][sender] = self.sent.get((sender, room), 0)
        t = self.t
        # A frame whose sender dropped the socket right after it may or may not have
        # been published, but then to every member of the room or to none.
        maybe_seen: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
        for conn in self.stable:
            t["delivered"] += conn.delivered
            t["delivered_stable"] += conn.delivered
            if conn.lost_connection:
                t["lost"] += conn.holes()  # only what it proves it missed
                continue
            expected: dict[tuple[str, str], int] = {
                (BACKEND, "*"): backend["broadcast"],
                (BACKEND, "u"): backend["user"].get(str(conn.user), 0),
            }
            for room, state in conn.rooms.items():
                if state != "in":
                    continue
                expected[(BACKEND, room)] = backend["room"].get(room, 0)
                for sender, n in by_room[room].items():
                    expected[(sender, room)] = n
            for key, n in expected.items():
                lost, last = conn.check.shortfall(key, n)
                t["lost"] += lost
                maybe = self.uncertain.get(key)
                if maybe is not None:
                    maybe_seen[key][last == maybe] += 1
                if last > n - 1 and maybe != last:
                    t["phantom"] += last - (n - 1)  # more than was ever sent
            for key in conn.streams:
                if key not in expected:
                    t["stray"] += 1  # a stream from a target it was never in
        for key, value in self.listener_tally.items():  # the listeners' thread ended
            t[key] += value
        for listener in self.listeners:
            self._check_listener(listener, backend, by_room, maybe_seen)
        t["partial_fan_out"] = sum(1 for missed, got in maybe_seen.values() if missed and got)
        t["in_flight_published"] = sum(1 for missed, got in maybe_seen.values() if got)


    def _check_listener(
        self, listener: Listener, backend: dict[str, Any], by_room: dict[str, dict[str, int]],
        maybe_seen: dict[Key, list[int]],
    ) -> None:
        """A listener, as a stable client, across its drops: exactly 0..n-1 of every
        stream; what it missed in a room whose recovery it said failed is counted apart."""
        t = self.t
        t["listener_delivered"] += listener.check.delivered
        if not listener.joined or listener.failed:
            t["listener_failures"] += 1
            t["listener_lost"] += listener.check.holes()  # only what it proves it missed
            return
        expected = listener.expected(backend, by_room)
        for key, n in expected.items():
            lost, last = listener.check.shortfall(key, n)
            maybe = self.uncertain.get(key)
            if key[1] in listener.unrecovered:
                t["listener_unrecovered_lost"] += lost  # the client said so: not silent
            else:
                t["listener_lost"] += lost
                if maybe is not None:
                    maybe_seen[key][last == maybe] += 1
            if last > n - 1 and maybe != last:
                t["listener_phantom"] += last - (n - 1)
        for key in listener.check.streams:
            if key not in expected:
                t["listener_stray"] += 1

    def listener_report(self, run_seconds: float, frames_to_rooms: int) -> dict[str, Any]:
        """The listeners' figures, and what the rooms' history had to cover."""
        t, ls = self.t, self.listeners
        outages = [o for listener in ls for o in listener.outages]
        reasons: dict[str, int] = defaultdict(int)
        why: dict[str, int] = defaultdict(int)
        for listener in ls:
            for reason, n in listener.unrecovered_reasons.items():
                reasons[reason] += n
            for reason, n in listener.why.items():
                why[reason] += n
        # A room's mean publish rate over the run: what a cut of the longest outage
        # leaves for the room's history to hold until the rejoin.
        per_room = frames_to_rooms / max(1, len(self.rooms)) / max(run_seconds, 1e-9)
        longest = max(outages, default=0.0)
        return {
            "listeners": self.n_listeners,
            "listener_cuts": len(self.cut_at),
            "listener_reconnects": sum(listener.reconnects for listener in ls),
            "listener_reconnects_min": min((listener.reconnects for listener in ls), default=0),
            "listener_failed_attempts": sum(listener.failed_attempts for listener in ls),
            "listener_reconnect_causes": dict(why),
            # times a listener was back in all its rooms after a cut (each room's rejoin
            # answered with a Recovery): the cuts times the listeners, if all came back
            "listener_back": len(outages),
            "listener_connections": sum(listener.connections for listener in ls),
            "listener_recoveries": sum(listener.recoveries for listener in ls),
            "listener_missed": sum(listener.missed for listener in ls),
            "listener_unrecovered": sum(sum(x.unrecovered.values()) for x in ls),
            "listener_unrecovered_reasons": dict(reasons),
            "listener_unrecovered_lost": t["listener_unrecovered_lost"],
            "listener_delivered": t["listener_delivered"],
            "listener_broadcasts": sum(listener.broadcasts for listener in ls),
            "listener_lost": t["listener_lost"],
            "listener_duplicates": t["listener_duplicates"],
            "listener_order_violations": t["listener_order_violations"],
            "listener_stray": t["listener_stray"],
            "listener_phantom": t["listener_phantom"],
            "listener_error_replies": t["listener_error_replies"],
            "listener_anomalies": t["listener_anomalies"],
            "listener_timeouts": t["listener_timeouts"],
            "listener_failures": t["listener_failures"],
            "listener_outage_max_s": round(longest, 2),
            "listener_outage_p50_s": round(sorted(outages)[len(outages) // 2], 2)
            if outages else 0.0,
            "history_size": self.args.history_size,
            "history_ttl_s": self.args.history_ttl,
            "room_frames_per_s": round(per_room, 2),
            "room_frames_in_longest_outage": round(per_room * longest, 1),
        }


async def first_of(*events: trio.Event) -> None:
    """Return once any of `events` is set."""
    async with trio.open_nursery() as nursery:

        async def wait(event: trio.Event) -> None:
            await event.wait()
            nursery.cancel_scope.cancel()

        for event in events:
            nursery.start_soon(wait, event)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {"n": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": at(1.0)}


def _detail(counts: dict[str, int]) -> str:
    return f" {counts}" if counts else ""


def print_report(r: dict[str, Any]) -> None:
    def line(label: str, text: str) -> None:
        print(f"{label:<26}{text}")

    print()
    print(
        f"roomcast soak: {r['connections']} connections, {r['run_s']} s of traffic "
        f"({r['stable_clients']} stable, {r['churn_slots']} churn slots, {r['rooms']} rooms)"
    )
    line("connections held", (
        f"peak {r['peak_connections']} (server saw {r['server_peak_open_sockets']} sockets),"
        f" never under {r['low_connections']} once the churn ramped up;"
        f" stable {r['stable_held']}/{r['stable_clients']} for the whole run"
    ))
    line("churn", (
        f"{r['churn_connections']} connections opened and closed "
        f"({r['churn_clean_closes']} with a close frame, {r['churn_dropped_sockets']} "
        f"dropped idle, {r['churn_dropped_in_flight']} dropped with a room message in flight),"
        f" {r['joins']} joins, {r['leaves']} leaves"
    ))
    line("frames sent", (
        f"room messages {r['room_messages_stable']} stable + {r['room_messages_churn']} churn;"
        f" backend notify_user {r['backend_notify_user']}, notify_room "
        f"{r['backend_notify_room']}, broadcast {r['backend_broadcast']}"
    ))
    line("frames delivered", (
        f"{r['delivered']} sequenced frames ({r['delivered_stable']} to stable clients, "
        f"checked against everything sent; {r['delivered_churn']} to churn clients)"
    ))
    line("frames lost", str(r["lost"]))
    line("duplicates", str(r["duplicates"]))
    line("order violations", str(r["order_violations"]))
    line("stray / phantom frames", f"{r['stray']} / {r['phantom']}")
    line("partial fan-outs", (
        f"{r['partial_fan_out']} (frames in flight when their sender dropped the socket"
        f" reached all stable members or none; {r['in_flight_published']} were published)"
    ))
    line("errors", (
        f"{r['error_replies']} error replies{_detail(r['error_codes'])}, "
        f"{r['unexpected_closes']} unexpected closes{_detail(r['close_codes'])}, "
        f"{r['timeouts']} reply timeouts, {r['stable_failures'] + r['churn_failures']} "
        f"failed connects, {r['anomalies']} anomalies, backend errors {r['backend_errors']}"
    ))
    line("server RSS", (
        f"before {r['server_rss_before_mib']:.1f} MiB, peak (VmHWM) "
        f"{r['server_peak_rss_mib']:.1f} MiB, with stable clients held "
        f"{r['server_rss_held_mib']:.1f} MiB, after churn settled "
        f"{r['server_rss_settled_mib']:.1f} MiB; sampled during the traffic "
        f"{r['server_rss_traffic_first_mib']:.1f} -> {r['server_rss_traffic_last_mib']:.1f} MiB"
    ))
    line("server Trio tasks", (
        f"before {r['tasks_before']}, peak sampled {r['tasks_peak_sampled']}, "
        f"after {r['tasks_after']} (settled in {r['settle_s']} s; "
        f"{r['server_connections_after']} connections, {r['server_rooms_after']} rooms left;"
        f" {r['server_restarts']} actor restarts)"
    ))
    line("CPU seconds", (
        f"client {r['client_cpu_s']} ({r['client_cpu_run_s']} during the traffic), "
        f"server {r['server_cpu_s']} ({r['server_cpu_run_s']} during the traffic); "
        f"wall {r['wall_s']} s; other processes on this {r['cores']}-core machine used "
        f"{r['others_cpu_run_s']} during the traffic"
    ))
    line("reply latency (ms)", ", ".join(
        f"{kind} p50 {v['p50']} p99 {v['p99']} max {v['max']}"
        for kind, v in r["latency_ms"].items()
    ))
    line("pings answered", str(r["pings"]))
    if r["listeners"]:
        line("listeners", (
            f"{r['listeners']} roomcast.client clients through a proxy cut {r['listener_cuts']}"
            f" times: {r['listener_reconnects']} reconnects (at least "
            f"{r['listener_reconnects_min']} each, back {r['listener_back']} times, "
            f"{r['listener_failed_attempts']} failed "
            f"attempts; by cause{_detail(r['listener_reconnect_causes'])}), "
            f"{r['listener_recoveries']} recoveries ({r['listener_missed']} frames "
            f"missed and recovered), {r['listener_unrecovered']} unrecovered"
            f"{_detail(r['listener_unrecovered_reasons'])}"
            f" ({r['listener_unrecovered_lost']} frames said lost)"
        ))
        line("listeners' frames", (
            f"{r['listener_delivered']} sequenced frames, checked against everything sent "
            f"(+{r['listener_broadcasts']} broadcasts, live only); lost {r['listener_lost']}, "
            f"duplicates {r['listener_duplicates']}, order violations "
            f"{r['listener_order_violations']}, stray / phantom {r['listener_stray']} / "
            f"{r['listener_phantom']}; {r['listener_error_replies']} error replies, "
            f"{r['listener_timeouts']} timeouts, {r['listener_failures']} failed, "
            f"{r['listener_anomalies']} anomalies"
        ))
        line("history vs. cuts", (
            f"rooms keep {r['history_size']} frames for {r['history_ttl_s']} s; "
            f"a listener was away {r['listener_outage_p50_s']} s (p50), "
            f"{r['listener_outage_max_s']} s at most, in which a room published "
            f"{r['room_frames_in_longest_outage']} frames at its mean rate "
            f"({r['room_frames_per_s']}/s)"
        ))
    line("roomcast", r["roomcast"])
    line("server log", (
        f"{r['server_log_problems']} warnings/errors"
        + (f" (kept in {r['server_log']})" if r["server_log"] else "")
    ))
    for sample in r["server_log_sample"]:
        print(f"    {sample}")
    if "task_names_after" in r:
        print(f"    tasks before by name: {r['task_names_before']}")
        print(f"    tasks after by name:  {r['task_names_after']}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    parser.add_argument("--stable-fraction", type=float, default=0.75)
    parser.add_argument("--rooms", type=int, default=0, help="default: connections / 20")
    parser.add_argument("--rooms-per-client", type=int, default=3)
    parser.add_argument(
        "--stable-interval", type=float, default=10.0,
        help="mean seconds between a stable client's room messages",
    )
    parser.add_argument(
        "--listener-fraction", type=float, default=0.1,
        help="stable clients that never send (the server pings them every 25 s)",
    )
    parser.add_argument(
        "--churn-dwell", type=float, default=1.5,
        help="mean seconds a churn client waits after each of its room messages",
    )
    parser.add_argument("--user-rate", type=float, default=None, help="notify_user per second")
    parser.add_argument("--room-rate", type=float, default=None, help="notify_room per second")
    parser.add_argument("--broadcast-rate", type=float, default=1.0, help="broadcasts per second")
    parser.add_argument(
        "--listeners", type=int, default=4,
        help="roomcast.client clients through a proxy the soak cuts (0: none)",
    )
    parser.add_argument(
        "--cut-every", type=float, default=2.0,
        help="seconds between cuts of the listeners' connections (0: never cut)",
    )
    parser.add_argument(
        "--cut-for", type=float, default=0.25,
        help="seconds the proxy refuses new connections after a cut",
    )
    parser.add_argument(
        "--history-size", type=int, default=100, help="frames each room keeps (the server's)",
    )
    parser.add_argument(
        "--history-ttl", type=float, default=10.0,
        help="seconds a room keeps a frame (the server's): listeners recover within it",
    )
    parser.add_argument("--handshake-concurrency", type=int, default=64)
    parser.add_argument("--settle-timeout", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--json", action="store_true", help="end with the figures as JSON")
    args = parser.parse_args(argv)
    if args.user_rate is None:
        args.user_rate = max(2.0, args.connections / 20)
    if args.room_rate is None:
        args.room_rate = max(1.0, args.connections / 200)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = trio.run(Soak(args).run)
    print_report(report)
    if args.json:
        print(json.dumps(report))
    correct = (
        report["lost"] == report["duplicates"] == report["order_violations"] == 0
        and report["stray"] == report["phantom"] == report["partial_fan_out"] == 0
        and report["tasks_after"] == report["tasks_before"]
        and report["listener_lost"] == report["listener_duplicates"] == 0
        and report["listener_order_violations"] == report["listener_stray"] == 0
        and report["listener_phantom"] == report["listener_failures"] == 0
    )
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
