"""Hostile input against a live service, over real TCP on 127.0.0.1.

Each attack is its own test. After each one the suite proves two things:

- the service still answers a well-behaved client within a second (connect, send a
  `text` frame, get the echo, all under `trio.fail_after(1)`);
- the number of live Trio tasks, counted by walking the task tree from the root task,
  returns to the baseline taken once the service was up and a first good client had
  come and gone: nothing the attacker did is still holding a task.

Raw sockets speak RFC 6455 by hand (masked client frames, fragments, control frames)
where trio-websocket's client would refuse to send what the attack needs.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from roomcast import CloseCode, Service
from roomcast.actors.room import LOBBY
from roomcast.protocol import (
    CLIENT_TYPES,
    MessageType,
    ProtocolError,
    decode,
    is_personal_room,
    message_text,
    personal_room,
    position_from,
)

from .conftest import connect, eventually, running, token_for

# Small timeouts so that every attack is over quickly.
# A short history: a room nobody is in lives on only while it keeps frames for clients
# that come back, so "back to the baseline" also proves that retention ends.
FAST: dict[str, Any] = {
    "handshake_timeout": 0.5, "close_timeout": 0.5, "shutdown_timeout": 2.0, "history_ttl": 0.5,
}
PROBE_USER = "probe"  # the well-behaved client of the health check
BROADCAST = "roomcast:broadcast"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# --- counting tasks -------------------------------------------------------------------


def live_tasks() -> list[trio.lowlevel.Task]:
    """Every task in the run, found by walking the tree from the root task."""
    found: list[trio.lowlevel.Task] = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        found.append(task)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return found


def task_names() -> Counter[str]:
    return Counter(task.name for task in live_tasks())


async def settle(baseline: Counter[str], timeout: float = 5.0) -> None:
    """Wait (at most `timeout`) until the task count is back to the baseline."""
    expected = sum(baseline.values())
    try:
        with trio.fail_after(timeout):
            while len(live_tasks()) != expected:
                await trio.sleep(0.01)  # the poll interval of a wait on the condition
    except trio.TooSlowError:
        now = task_names()
        raise AssertionError(
            f"{len(live_tasks())} tasks, baseline {expected}; "
            f"extra: {dict(now - baseline)}; missing: {dict(baseline - now)}"
        ) from None


# --- the well-behaved client ------------------------------------------------------------


async def assert_healthy(service: Service) -> None:
    """A good client connects and gets its echo within one second."""
    with trio.fail_after(1):
        async with connect(service, PROBE_USER) as client:
            await client.send({"type": "text", "data": "ping"})
            reply = json.loads(await client.ws.get_message())
            assert reply["type"] == "text" and reply["message"] == "Echo: ping", reply


class Arena:
    """A live service, and the task baseline the attacks are measured against."""

    def __init__(self, service: Service, baseline: Counter[str]) -> None:
        self.service = service
        self.baseline = baseline

    @property
    def port(self) -> int:
        return self.service.port

    async def check(self, settle_within: float = 5.0) -> None:
        """After an attack (its sockets closed): healthy, and back to the baseline."""
        await assert_healthy(self.service)
        await settle(self.baseline, settle_within)


async def quiet(service: Service) -> None:
    """No socket open, no room alive, every task asleep."""
    with trio.fail_after(5):
        while service.gateway.open_sockets or service.registry.room_names():
            await trio.sleep(0.01)  # the poll interval of a wait on the condition
    await trio.testing.wait_all_tasks_blocked(cushion=0.02)


@asynccontextmanager
async def arena(**overrides: Any) -> AsyncIterator[Arena]:
    async with running(**{**FAST, **overrides}) as service:
        await assert_healthy(service)
        await quiet(service)
        yield Arena(service, task_names())


# --- raw sockets, RFC 6455 by hand -------------------------------------------------------


def handshake_bytes(token: str | None, *, method: str = "GET", path: str = "/api/v1/ws") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    query = f"?token={token}" if token else ""
    return (
        f"{method} {path}{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, length: int | None = None
) -> bytes:
    """A masked client frame; `length` may lie about the payload's size."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    key = (mask * (len(payload) // 4 + 1))[: len(payload)]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big"
    )
    return header + mask + masked


def text(value: Any) -> bytes:
    return (value if isinstance(value, str) else json.dumps(value)).encode()


class PeerClosed(Exception):
    """The service ended the TCP connection: FIN or RST."""


class RawClient:
    """A WebSocket client made of a bare TCP socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    @classmethod
    async def upgraded(cls, port: int, user: Any) -> RawClient:
        """Handshake done, welcome read."""
        client = await cls.open(port)
        await client.stream.send_all(handshake_bytes(token_for(user)))
        status = await client.http_response()
        assert status.startswith(b"HTTP/1.1 101"), status
        welcome = await client.recv_json()
        assert welcome["message"].startswith("Connected successfully"), welcome
        return client

    async def _fill(self) -> None:
        try:
            chunk = await self.stream.receive_some(65536)
        except trio.BrokenResourceError as exc:
            raise PeerClosed("reset") from exc
        if not chunk:
            raise PeerClosed("eof")
        self.buffer += chunk

    async def http_response(self) -> bytes:
        """The status line and headers (and nothing else) of the service's answer."""
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        end = self.buffer.index(b"\r\n\r\n") + 4
        head = bytes(self.buffer[:end])
        del self.buffer[:end]
        return head

    async def _need(self, n: int) -> None:
        while len(self.buffer) < n:
            await self._fill()

    async def frame(self) -> tuple[int, bytes]:
        """The next server frame (unmasked, never fragmented): opcode and payload."""
        await self._need(2)
        first, second = self.buffer[0], self.buffer[1]
        assert first & 0x80 and not second & 0x80, "fragmented or masked server frame"
        n, at = second & 0x7F, 2
        if n == 126:
            await self._need(4)
            (n,) = struct.unpack("!H", self.buffer[2:4])
            at = 4
        elif n == 127:
            await self._need(10)
            (n,) = struct.unpack("!Q", self.buffer[2:10])
            at = 10
        await self._need(at + n)
        payload = bytes(self.buffer[at : at + n])
        del self.buffer[: at + n]
        return first & 0x0F, payload

    async def recv_json(self) -> dict[str, Any]:
        """The next text frame, as JSON; pings and pongs are skipped."""
        while True:
            opcode, payload = await self.frame()
            if opcode == OP_TEXT:
                return json.loads(payload)
            assert opcode in (OP_PING, OP_PONG), (opcode, payload)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_text(self, value: Any) -> None:
        await self.send(client_frame(OP_TEXT, text(value)))

    async def request(self, value: Any) -> dict[str, Any]:
        await self.send_text(value)
        return await self.recv_json()

    async def close_code(self) -> int | None:
        """Read to the end: the close frame's code, or None if the TCP connection
        ended without one. Text frames on the way are skipped."""
        while True:
            try:
                opcode, payload = await self.frame()
            except PeerClosed:
                return None
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    async def drained(self) -> bytes:
        """Everything the service sends until it ends the connection."""
        while True:
            try:
                await self._fill()
            except PeerClosed:
                data = bytes(self.buffer)
                self.buffer.clear()
                return data

    async def aclose(self) -> None:
        """Close the TCP connection without a WebSocket close frame (FIN)."""
        await self.stream.aclose()

    async def reset(self) -> None:
        """Abort the TCP connection with an RST (SO_LINGER with a zero timeout)."""
        self.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()


async def closed_by_service(client: RawClient, within: float) -> bytes:
    """Assert the service ends the connection within `within` seconds; what it sent."""
    with trio.fail_after(within):
        return await client.drained()


# --- 1 to 4: the handshake ------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 64, 1024, 4096, 20_000])
async def test_random_bytes_instead_of_a_handshake(size):
    async with arena() as a:
        rng = random.Random(size)
        clients = []
        for _ in range(4):
            client = await RawClient.open(a.port)
            await client.send(rng.randbytes(size))
            clients.append(client)
        await assert_healthy(a.service)  # while the garbage is still pending
        for client in clients:
            answer = await closed_by_service(client, 2.0)
            assert not answer or answer.startswith(b"HTTP/1.1 400"), answer[:100]
            assert b"101" not in answer.split(b"\r\n")[0]
            await client.aclose()
        await a.check()


async def test_half_a_handshake_then_silence_is_dropped_after_the_timeout():
    async with arena(handshake_timeout=0.5) as a:
        request = handshake_bytes(token_for(1))
        clients = []
        for _ in range(5):
            client = await RawClient.open(a.port)
            await client.send(request[: len(request) // 2])
            clients.append(client)
        started = trio.current_time()
        await assert_healthy(a.service)
        for client in clients:
            assert await closed_by_service(client, 2.0) == b""  # dropped, no answer
        elapsed = trio.current_time() - started
        assert 0.3 <= elapsed < 1.5, elapsed
        assert not a.service.notifications.is_user_connected(1)
        assert a.service.metrics.handshake_failures == {"timeout": 5}
        for client in clients:
            await client.aclose()
        await a.check()


async def test_half_a_handshake_then_hang_up_frees_the_socket_at_once():
    # A client that gives up mid-handshake must not hold a slot until the timeout.
    async with arena(handshake_timeout=5.0) as a:
        request = handshake_bytes(token_for(1))
        for hang_up in (RawClient.aclose, RawClient.reset):
            for _ in range(5):
                client = await RawClient.open(a.port)
                await client.send(request[:40])
                await hang_up(client)
            await settle(a.baseline, timeout=1.0)
        assert a.service.metrics.handshake_failures == {"hung_up": 10}
        await a.check()


async def test_slowloris_handshake_is_dropped_after_the_timeout():
    async with arena(handshake_timeout=0.5) as a:
        request = handshake_bytes(token_for(1))
        cut_off: list[float] = []

        dripped = 0

        async def drip(client: RawClient) -> None:
            nonlocal dripped
            started = trio.current_time()
            try:
                for byte in request:
                    await client.send(bytes([byte]))
                    dripped += 1
                    # A byte a second, scaled down: a peer trickling over real TCP.
                    await trio.sleep(0.05)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            cut_off.append(trio.current_time() - started)

        async def watch(client: RawClient) -> None:
            answer = await closed_by_service(client, 2.0)
            assert answer == b"", answer
            await client.aclose()  # ends the drip too

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                client = await RawClient.open(a.port)
                nursery.start_soon(drip, client)
                nursery.start_soon(watch, client)
            await eventually(lambda: dripped >= 5 * 3)  # every drip under way
            await assert_healthy(a.service)  # while the drips go on
        # Dropped after about handshake_timeout, far from the whole request's 0.05 s/byte.
        assert len(cut_off) == 5 and max(cut_off) < 1.5, cut_off
        assert len(request) * 0.05 > 5
        await a.check()


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"GET /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="plain-get"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n", id="root"
        ),
        pytest.param(
            b"HEAD /api/v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", id="head"
        ),
        pytest.param(
            handshake_bytes("x", method="POST").replace(
                b"\r\n\r\n", b"\r\nContent-Length: 0\r\n\r\n"
            ),
            id="post-upgrade",
        ),
        pytest.param(handshake_bytes("x", method="PUT"), id="put-upgrade"),
        pytest.param(
            handshake_bytes("x").replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"),
            id="old-version",
        ),
        pytest.param(handshake_bytes("x").replace(b"HTTP/1.1", b"HTTP/1.0"), id="http-1.0"),
        pytest.param(b"GET /api/v1/ws HTTP/1.1\r\n" + b"X-Pad: y\r\n" * 2000 + b"\r\n", id="huge"),
    ],
)
async def test_requests_that_are_not_a_websocket_upgrade(request_bytes):
    async with arena(handshake_timeout=5.0) as a:
        for _ in range(3):
            client = await RawClient.open(a.port)
            await client.send(request_bytes)
            # Refused at once: no need to wait for the (long) handshake timeout.
            answer = await closed_by_service(client, 1.0)
            status = answer.split(b"\r\n", 1)[0]
            assert status.startswith(b"HTTP/1.1 4"), answer[:200]
            await client.aclose()
        await settle(a.baseline, timeout=1.0)
        # Each refusal counted once: by wsproto's check (bad_request), or by ours when
        # the request was an upgrade after all (HTTP/1.0 here: a 403 for its token).
        failures = a.service.metrics.handshake_failures
        assert sum(failures.values()) == 3 and len(failures) == 1, failures
        if b"HTTP/1.0" not in request_bytes:
            assert failures == {"bad_request": 3}
        await a.check()


# --- 5 and 6: frames after a good handshake ------------------------------------------------

OWN = personal_room(1)
ROOM_NAMES = ["r1", "r2", "lobby", OWN, "user_2", "user_", LOBBY, "", "a b", "x" * 100, "x" * 101]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


def frame_dicts(tokens: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from([*CLIENT_TYPES, "shout", "", "TEXT"]) | json_values,
            "room": st.sampled_from(ROOM_NAMES) | st.text(max_size=6) | json_values,
            "data": json_values | st.sampled_from(tokens),
            "extra": json_values,
        },
    )


def hostile_texts(tokens: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        frame_dicts(tokens).map(json.dumps),
        json_values.map(json.dumps),
        st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")),  # random bytes
        st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "replace")),
        st.text(max_size=100),
        st.integers(1, 30_000).map(lambda depth: "[" * depth + "]" * depth),
        st.sampled_from(["", " ", "{}", "[]", "null", '{"type":', "NaN", "1e999", '"\\ud800"']),
    )


class Model:
    """What the service must answer to each frame, given the rooms joined so far."""

    def __init__(self, max_rooms: int, tokens: dict[str, tuple[Any, bool]]) -> None:
        self.rooms: list[str] = []
        self.max_rooms = max_rooms
        self.can_broadcast = True
        self.tokens = tokens  # token -> (user, broadcast permission)

    def expect(self, raw: str) -> Callable[[dict[str, Any]], None]:
        try:
            frame = decode(raw)
        except ProtocolError as error:
            return self._error(error.code)
        kind, room, data = frame.type, frame.room, frame.data
        if kind == MessageType.TEXT:
            return self._exact("text", f"Echo: {message_text(data)[0]}", None, None)
        if kind == MessageType.JOIN_ROOM:
            assert room is not None
            if is_personal_room(room) and room != OWN:
                return self._error("forbidden")
            if room != OWN and room not in self.rooms:
                if len(self.rooms) >= self.max_rooms:
                    return self._error("too_many_rooms")
                self.rooms.append(room)
                position = position_from(data)
                if position is not None:  # a new join that asked for positions
                    return self._positioned_join(room, [OWN, *self.rooms], position.offset)
            return self._exact("info", f"Joined room: {room}", room, {"rooms": [OWN, *self.rooms]})
        if kind == MessageType.LEAVE_ROOM:
            assert room is not None
            if room == OWN:
                return self._error("forbidden")
            if room in self.rooms:
                self.rooms.remove(room)
            return self._exact("info", f"Left room: {room}", room, {"rooms": [OWN, *self.rooms]})
        if kind in (MessageType.ROOM_MESSAGE, MessageType.BROADCAST):
            if kind == MessageType.ROOM_MESSAGE and room != OWN and room not in self.rooms:
                return self._error("not_member")
            if kind == MessageType.BROADCAST and not self.can_broadcast:
                return self._error("forbidden")
            message, extra = message_text(data)
            if kind == MessageType.BROADCAST:
                return self._exact(kind.value, message, None, {"from_user_id": 1, **extra})
            # Through a room: the room's position comes with it.
            return self._exact(kind.value, message, room, {"from_user_id": 1, **extra}, True)
        assert kind == MessageType.REFRESH_TOKEN
        if not isinstance(data, str) or not data:
            return self._error("invalid_message")
        if data not in self.tokens:
            return self._error("invalid_token")
        user, can_broadcast = self.tokens[data]
        if user != 1:
            return self._error("forbidden")
        self.can_broadcast = can_broadcast

        def refreshed(reply: dict[str, Any]) -> None:
            assert reply["type"] == "info" and reply["message"] == "Token refreshed", reply

        return refreshed

    @staticmethod
    def _error(code: str) -> Callable[[dict[str, Any]], None]:
        def check(reply: dict[str, Any]) -> None:
            assert reply["type"] == "error" and reply["data"] == {"code": code}, (code, reply)

        return check

    @staticmethod
    def _exact(
        kind: str, message: str, room: str | None, data: Any, positioned: bool = False
    ) -> Callable[[dict], None]:
        expected = {"type": kind, "message": message, "data": data, "room": room}

        def check(reply: dict[str, Any]) -> None:
            if positioned:
                reply = dict(reply)
                assert isinstance(reply.pop("offset"), int), reply
                assert isinstance(reply.pop("epoch"), str), reply
            assert reply == expected, (expected, reply)

        return check

    @staticmethod
    def _positioned_join(
        room: str, rooms: list[str], offset: int | None
    ) -> Callable[[dict], None]:
        def check(reply: dict[str, Any]) -> None:
            assert reply["type"] == "info" and reply["room"] == room, reply
            data = dict(reply["data"])
            assert data.pop("rooms") == rooms, reply
            assert isinstance(data.pop("offset"), int) and isinstance(data.pop("epoch"), str)
            if offset is not None:  # a random position: never this new room's
                assert data == {"recovered": False, "reason": "epoch_changed"}, reply
            assert not data or offset is not None, reply

        return check


async def test_random_json_and_random_text_frames_get_one_answer_each():
    """Thousands of hypothesis-made frames through one connection: each gets exactly
    one answer, the one its content calls for, and the connection stays open."""
    async with arena(rate_limit=1e9, rate_burst=10**9, max_strikes=10**9) as a:
        tokens = {
            token_for(1, scope=BROADCAST): (1, True),
            token_for(1): (1, False),
            token_for(2, scope=BROADCAST): (2, True),
        }
        model = Model(a.service.config.max_rooms_per_connection, tokens)
        sent = 0
        async with connect(a.service, 1, scope=BROADCAST) as client:

            async def exchange(raw: str) -> None:
                nonlocal sent
                check = model.expect(raw)
                await client.send(raw)
                sent += 1
                with trio.fail_after(5):
                    reply = json.loads(await client.ws.get_message())
                check(reply)

            @settings(
                max_examples=3000,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # one stateful connection: no shrinking
                suppress_health_check=list(HealthCheck),
            )
            @given(hostile_texts(list(tokens)))
            def fuzz(raw: str) -> None:
                trio.from_thread.run(exchange, raw)

            await trio.to_thread.run_sync(fuzz)
            assert sent >= 3000
            # Nothing more is pending: the next answer is the sentinel's.
            sentinel = await client.request({"type": "text", "data": "still here"})
            assert sentinel["message"] == "Echo: still here"
            assert a.service.notifications.is_user_connected(1)
        await a.check()


@pytest.mark.parametrize("seed", range(3))
async def test_invalid_utf8_in_a_text_frame_fails_the_connection(seed):
    # RFC 6455 8.1: a text frame that is not UTF-8 fails the connection; it must not
    # leave anything behind.
    rng = random.Random(seed)
    async with arena() as a:
        for _ in range(5):
            client = await RawClient.upgraded(a.port, 1)
            payload = rng.randbytes(rng.randint(1, 300))
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                payload += b"\xff"
            await client.send(client_frame(OP_TEXT, payload))
            code = await client_close_code(client, 2.0)
            assert code in (None, 1002, 1007), code
            await client.aclose()
        await a.check()


async def client_close_code(client: RawClient, within: float) -> int | None:
    with trio.fail_after(within):
        return await client.close_code()


async def test_binary_frames_are_refused_and_the_connection_stays():
    async with arena() as a:
        client = await RawClient.upgraded(a.port, 1)
        rng = random.Random(6)
        for size in (0, 1, 10, 200, 5000, 60_000):
            await client.send(client_frame(OP_BINARY, rng.randbytes(size)))
            reply = await client.recv_json()
            assert reply["type"] == "error" and reply["data"] == {"code": "invalid_message"}
        reply = await client.request({"type": "text", "data": "after"})
        assert reply["message"] == "Echo: after"
        await client.aclose()
        await a.check()


# --- 7: fragments and sizes -----------------------------------------------------------------


def fragments(opcode: int, payload: bytes, sizes: list[int]) -> list[bytes]:
    """`payload` as one message of several frames, cut at the given sizes."""
    frames, at = [], 0
    cuts = [*sizes, len(payload)]
    for i, size in enumerate(cuts):
        piece = payload[at : at + size] if i < len(cuts) - 1 else payload[at:]
        at += len(piece)
        frames.append(client_frame(opcode if i == 0 else OP_CONT, piece, fin=i == len(cuts) - 1))
    return frames


async def test_fragmented_text_message_is_reassembled():
    async with arena() as a:
        client = await RawClient.upgraded(a.port, 1)
        rng = random.Random(7)
        for n in range(20):
            message = "fragment-" + "é" * n + "🎉" * (n % 3) + str(n)
            payload = text({"type": "text", "data": message})
            # Cut anywhere, even inside a multi-byte character; empty pieces allowed.
            sizes = [rng.randint(0, 6) for _ in range(rng.randint(1, 8))]
            frames = fragments(OP_TEXT, payload, sizes)
            if n % 2:  # control frames may come between the fragments of a message
                frames.insert(1, client_frame(OP_PING, b"hi"))
            if n % 3 == 0:  # ... and the fragments may come one TCP segment each
                for frame in frames:
                    await client.send(frame)
                    await trio.sleep(0)  # a checkpoint: one TCP segment each
            else:
                await client.send(b"".join(frames))
            while True:
                opcode, body = await client.frame()
                if opcode == OP_PONG:
                    assert body == b"hi"
                    continue
                assert opcode == OP_TEXT
                assert json.loads(body)["message"] == f"Echo: {message}"
                break
        # A binary message in fragments is still one refused message.
        await client.send(b"".join(fragments(OP_BINARY, b"\x00" * 50, [10, 10])))
        assert (await client.recv_json())["data"] == {"code": "invalid_message"}
        assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"
        await client.aclose()
        await a.check()


@pytest.mark.parametrize(
    "attack",
    ["one-frame", "one-frame-lying-header", "many-fragments", "many-fragments-binary"],
)
async def test_oversized_messages_close_with_1009(attack):
    limit = 4096
    async with arena(max_message_size=limit) as a:
        async with connect(a.service, 2) as bystander:
            await bystander.request({"type": "join_room", "room": "r"})
            client = await RawClient.upgraded(a.port, 1)
            await client.request({"type": "join_room", "room": "r"})
            # A message at the limit is fine.
            assert (await client.request("x" * limit))["data"] == {"code": "invalid_message"}
            big = b"y" * (limit + 1)
            if attack == "one-frame":
                data = client_frame(OP_TEXT, big)
            elif attack == "one-frame-lying-header":  # claims 2**40 bytes, sends a few more KB
                data = client_frame(OP_TEXT, b"y" * (3 * limit), length=1 << 40)
            elif attack == "many-fragments":
                data = b"".join(fragments(OP_TEXT, big, [16] * ((limit + 1) // 16)))
            else:
                data = b"".join(fragments(OP_BINARY, big, [16] * ((limit + 1) // 16)))
            with suppress(trio.BrokenResourceError):
                await client.send(data)
            assert await client_close_code(client, 2.0) == CloseCode.MESSAGE_TOO_BIG
            await client.aclose()
            # The room lost the member; the other member did not notice anything.
            await eventually(lambda: a.service.notifications.get_room_members("r") == {2},
                             timeout=2)
            assert await a.service.notifications.notify_room("r", "still") == 1
            assert (await bystander.recv())["message"] == "still"

        await a.check()


# --- 8: a flood from several connections ---------------------------------------------------


async def test_flood_past_the_rate_limit_while_a_bystander_gets_its_notifications():
    async with arena(rate_limit=20.0, rate_burst=10, max_strikes=20) as a:
        service = a.service
        frames = b"".join(
            client_frame(OP_TEXT, text({"type": "text", "data": f"flood {i}"})) for i in range(400)
        )
        flooders = [await RawClient.upgraded(a.port, 100 + i) for i in range(8)]
        codes: list[int | None] = []
        got: list[str] = []

        async def flood(client: RawClient) -> None:
            with suppress(trio.BrokenResourceError):
                await client.send(frames)
            codes.append(await client_close_code(client, 5.0))
            await client.aclose()

        async with connect(service, 2) as bystander:
            await bystander.request({"type": "join_room", "room": "news"})

            async def listen() -> None:
                while len(got) < 100:
                    got.append((await bystander.recv(timeout=2))["message"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                for client in flooders:
                    nursery.start_soon(flood, client)
                for i in range(50):
                    assert await service.notifications.notify_user(2, f"user {i}")
                    assert await service.notifications.notify_room("news", f"room {i}") == 1
                    await trio.sleep(0.002)  # pacing: the notifications spread over the flood
            # Every notification, in order, while the flood was refused and closed.
            assert [m for m in got if m.startswith("user")] == [f"user {i}" for i in range(50)]
            assert [m for m in got if m.startswith("room")] == [f"room {i}" for i in range(50)]
            assert (await bystander.request({"type": "text", "data": "x"}))["message"] == "Echo: x"
        assert codes == [CloseCode.POLICY] * 8, codes
        await a.check()


# --- 9: join and leave, over and over --------------------------------------------------------


def assert_registry_holds_only(
    service: Service, connections: dict[Any, int], rooms: tuple[str, ...] = ()
) -> bool:
    """Rooms and members are exactly those of the live connections (user -> count):
    their personal rooms, the lobby, and `rooms`. True (for `eventually`) if they are."""
    registry = service.registry
    expected_rooms = {personal_room(user) for user in connections} | set(rooms)
    if connections:
        expected_rooms.add(LOBBY)
    assert set(registry.room_names()) == expected_rooms, registry.room_names()
    assert {u: len(c) for u, c in registry.users.items()} == connections
    live = {conn.id for conn in registry.all_connections()}
    for name in registry.room_names():
        room = registry.room(name)
        assert room is not None
        assert set(room.members) <= live, (name, room.members)
        assert sum(room.user_counts.values()) == len(room.members)
    lobby = registry.room(LOBBY)
    assert lobby is None or set(lobby.members) == live
    return True


async def test_ten_thousand_join_leave_pairs_leave_nothing_behind():
    pairs = 10_000

    def room_of(i: int) -> str:
        return "shared" if i % 10 == 0 else f"room-{i}"  # a new room each time, mostly

    async with arena(rate_limit=1e9, rate_burst=10**9) as a:
        service = a.service
        async with connect(service, 2) as other:
            await other.request({"type": "join_room", "room": "shared"})
            client = await RawClient.upgraded(a.port, 1)
            frames = [
                client_frame(OP_TEXT, text({"type": kind, "room": room_of(i)}))
                for i in range(pairs)
                for kind in ("join_room", "leave_room")
            ]

            async def send_all() -> None:
                for at in range(0, len(frames), 200):
                    await client.send(b"".join(frames[at : at + 200]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)
                with trio.fail_after(60):
                    for i in range(pairs):
                        room = room_of(i)
                        joined, left = await client.recv_json(), await client.recv_json()
                        assert joined["message"] == f"Joined room: {room}", joined
                        assert joined["data"]["rooms"] == ["user_1", room]
                        assert left["message"] == f"Left room: {room}", left
                        assert left["data"]["rooms"] == ["user_1"]
            (conn,) = service.registry.connections_of(1).values()
            assert conn.rooms == {}
            # Only the live connections' rooms are left, with only live members.
            await eventually(
                lambda: assert_registry_holds_only(service, {1: 1, 2: 1}, ("shared",)), timeout=2
            )
            assert service.notifications.get_room_members("shared") == {2}
            await other.request({"type": "leave_room", "room": "shared"})
            await eventually(lambda: assert_registry_holds_only(service, {1: 1, 2: 1}), timeout=2)
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"
            await client.aclose()
        await eventually(lambda: assert_registry_holds_only(service, {}), timeout=2)
        await a.check()


# --- 10: abrupt drops while a room fans out -------------------------------------------------


async def test_abrupt_drops_during_a_fan_out_lose_nothing_for_the_others():
    async with arena(max_connections_per_user=1000) as a:
        service = a.service
        receivers_n, hostiles_n = 3, 150
        published = 0
        done_publishing = trio.Event()
        rng = random.Random(10)

        async def publisher() -> None:
            nonlocal published
            while not done_publishing.is_set():
                await service.notifications.notify_room("fan", str(published))
                published += 1
                if published % 5 == 0:
                    await trio.sleep(0)  # a checkpoint: let the others run
            await service.notifications.notify_room("fan", "end")

        async def receive_all(client: Any, out: list[str]) -> None:
            with trio.fail_after(30):
                while True:
                    message = json.loads(await client.ws.get_message())["message"]
                    if message == "end":
                        return
                    out.append(message)

        async def hostile(i: int) -> None:
            try:
                client = await RawClient.upgraded(a.port, 1000 + i % 20)
                await client.send_text({"type": "join_room", "room": "fan"})
                for _ in range(rng.randint(0, 20)):  # read some of the fan-out, or none
                    await client.frame()
                if rng.random() < 0.5:
                    await client.send(client_frame(OP_TEXT, b'{"type": "te'))  # half a message
                await trio.sleep(rng.random() * 0.01)  # drop at a random moment of the fan-out
                await (client.reset() if i % 2 else client.aclose())
            except PeerClosed:  # the service may not be the one waiting here
                pass

        async with connect(service, 1) as r1, connect(service, 2) as r2, connect(service, 3) as r3:
            receivers = [r1, r2, r3]
            for client in receivers:
                await client.request({"type": "join_room", "room": "fan"})
            results: list[list[str]] = [[] for _ in range(receivers_n)]
            async with trio.open_nursery() as nursery:
                for client, out in zip(receivers, results, strict=True):
                    nursery.start_soon(receive_all, client, out)
                nursery.start_soon(publisher)
                async with trio.open_nursery() as attackers:
                    for i in range(hostiles_n):
                        attackers.start_soon(hostile, i)
                        if i % 10 == 0:
                            # A wave of ten per ten frames published: the drops are spread
                            # over the fan-out, however fast handshakes are.
                            await eventually(lambda i=i: published >= i, timeout=10)
                done_publishing.set()
            assert published > 100
            for out in results:
                assert out == [str(i) for i in range(published)]
            await eventually(lambda: service.gateway.open_sockets == 3, timeout=5)
            members = service.notifications.get_room_members
            await eventually(lambda: members("fan") == {1, 2, 3}, timeout=2)
            await eventually(
                lambda: assert_registry_holds_only(service, {1: 1, 2: 1, 3: 1}, ("fan",)),
                timeout=2,
            )
        await a.check()


async def test_slow_readers_flooding_joins_while_their_room_fans_out_leave_no_rooms():
    """Clients that never read, flood join/leave frames, and are in a busy room: each is
    cut off as a slow consumer (4009) at whatever point of a join or leave it is, and
    must leave no room and no member behind."""
    async with arena(rate_limit=1e9, rate_burst=10**9, outbox_limit=32 * 1024) as a:
        service = a.service
        frames = b"".join(
            client_frame(OP_TEXT, text({"type": kind, "room": f"room-{i}"}))
            for i in range(2000)
            for kind in ("join_room", "leave_room", "join_room")
        )
        stop = trio.Event()
        codes: list[int | None] = []

        async def publish() -> None:
            big = "z" * 4000
            while not stop.is_set():
                await service.notifications.notify_room("hot", big)
                await trio.sleep(0)  # a checkpoint: let the others run

        async def slow_reader(i: int) -> None:
            client = await RawClient.upgraded(a.port, 200 + i)
            await client.request({"type": "join_room", "room": "hot"})
            with suppress(trio.BrokenResourceError):
                await client.send(frames)  # and never read
            # Unread until the service has cut us off (reading would relieve the outbox).
            await eventually(lambda: not service.registry.connections_of(200 + i))
            # The 4009 closing frame, unless the reset (the service closes with our
            # flood unread) overtook it.
            codes.append(await client_close_code(client, 5.0))
            await client.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            async with trio.open_nursery() as clients:
                for i in range(20):
                    clients.start_soon(slow_reader, i)
            stop.set()
        assert set(codes) <= {CloseCode.SLOW_CONSUMER, None}, codes
        assert not service.registry.users
        await eventually(lambda: assert_registry_holds_only(service, {}), timeout=2)
        await a.check()


async def test_refresh_floods_and_reconnects_leave_nothing_in_the_keeper():
    async with arena(rate_limit=1e9, rate_burst=10**9) as a:
        keeper = a.service.gateway._keeper
        before = len(keeper.deadlines._expiries)
        fresh = token_for(1, ttl=86_400)
        async with connect(a.service, 1) as client:
            for _ in range(200):
                await client.send({"type": "refresh_token", "data": fresh})
            for _ in range(200):
                assert (await client.recv())["message"] == "Token refreshed"
        for i in range(30):
            (await RawClient.upgraded(a.port, 300 + i)).stream.socket.close()
        await a.check()
        await eventually(lambda: not keeper.connections, timeout=2)
        assert len(keeper.deadlines._expiries) <= before, (len(keeper.deadlines._expiries), before)
