"""Shared helpers: a real service on a free port, real WebSocket clients, `eventually`
for what settles asynchronously, a random drop-and-recover schedule, and (the `redis`
fixture) a throwaway Redis server."""

from __future__ import annotations

import functools
import inspect
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from roomcast import Config, Service, mint_token, open_service

if TYPE_CHECKING:
    from .cluster import RedisServer

SECRET = "roomcast-test-secret-0123456789abcdef"


def make_config(**overrides: Any) -> Config:
    # No HTTP port unless a test asks for one (http_port=0): services run side by side.
    # Every room open (the seed's behaviour) unless a test about who may join says
    # otherwise (open_rooms=() closes them).
    values: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "jwt_secret": SECRET,
                              "http_port": -1, "open_rooms": ("*",)}
    values.update(overrides)
    return Config(**values)


def token_for(user: Any, config: Config | None = None, **kwargs: Any) -> str:
    return mint_token(config or make_config(), user, **kwargs)


@asynccontextmanager
async def running(**overrides: Any) -> AsyncIterator[Service]:
    """A service on a free loopback port, closed (1001 to every client) on exit."""
    async with open_service(make_config(**overrides)) as service:
        yield service


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds: its result (awaited, if it is awaitable) is truthy
    and it raised no AssertionError. Much of what tests check settles asynchronously:
    disconnect cleanup, presence through Redis, a page in the browser's thread.
    Past `timeout`, the last AssertionError is raised again, with its own message."""
    failure: AssertionError | None = None
    with trio.move_on_after(timeout):
        while True:
            try:
                result = condition()
                if inspect.isawaitable(result):
                    result = await result
                if result:
                    return
                failure = None
            except AssertionError as error:
                failure = error
            await trio.sleep(0.01)  # the poll interval of a wait on the condition
    if failure is not None:
        raise failure
    raise AssertionError(f"still false after {timeout} s: {condition!r}")


@pytest.fixture
def jumping_clock() -> trio.testing.MockClock:
    """Trio's clock for a test over real sockets that needs time to pass for the service
    (retention, a token's deadline, an absence): it runs at real speed, so the sockets'
    timeouts behave, and `jumping_clock.jump(seconds)` makes that much Trio time pass at
    once for every actor, instead of a sleep."""
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    """A throwaway redis-server on a free port (tests/cluster.py), stopped afterwards.
    Tests that use it are marked `needs_redis`."""
    from .cluster import redis_server

    with redis_server() as server:
        yield server


@pytest.fixture(params=["single", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """How to open a node, for tests that hold on one node and in a cluster alike:
    `async with deployment(**settings) as node`. "cluster" is one in-process node over
    a throwaway Redis (the `redis` fixture), once it has joined."""
    if request.param == "single":
        return running
    from .cluster import REDIS, cluster_node

    if REDIS is None:
        pytest.skip("redis-server is not installed")
    server = request.getfixturevalue("redis")
    return functools.partial(cluster_node, server.url)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    async with running() as svc:
        yield svc


class Client:
    """A real WebSocket client speaking JSON, with the welcome frame already read."""

    def __init__(self, ws: WebSocketConnection, welcome: dict[str, Any]) -> None:
        self.ws = ws
        self.welcome = welcome
        self.last_position: tuple[int, str] | None = None

    async def send(self, frame: Any) -> None:
        await self.ws.send_message(frame if isinstance(frame, str) else json.dumps(frame))

    async def recv(self, timeout: float = 5.0, positions: bool = False) -> dict[str, Any]:
        """The next frame. Frames published through a room carry its `offset` and
        `epoch` (tests/test_history.py checks them); most tests check the seed's four
        keys, so those two are kept aside in `last_position` unless `positions`."""
        with trio.fail_after(timeout):
            frame = json.loads(await self.ws.get_message())
        if "offset" in frame and not positions:
            self.last_position = (frame.pop("offset"), frame.pop("epoch"))
        return frame

    async def frames(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Up to `count` next frames, positions kept: what arrived within `timeout`
        (fewer if some never came, so that the caller's assertion shows which)."""
        frames: list[dict[str, Any]] = []
        with trio.move_on_after(timeout):
            while len(frames) < count:
                frames.append(json.loads(await self.ws.get_message()))
        return frames

    async def request(self, frame: Any) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv()

    async def nothing_within(self, seconds: float = 0.2) -> None:
        """Assert that no frame arrives for `seconds`."""
        with trio.move_on_after(seconds):
            frame = await self.ws.get_message()
            raise AssertionError(f"unexpected frame: {frame}")


async def close_code(client: Client, timeout: float = 10.0) -> int:
    """Read (and drop) frames until the service closes the socket; its close code."""
    with trio.fail_after(timeout), pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.ws.get_message()
    return closed.value.reason.code


def ws_url(service: Service, query: str = "") -> str:
    return f"ws://127.0.0.1:{service.port}{service.config.path}{query}"


@asynccontextmanager
async def connect(
    service: Service, user: Any = 1, *, token: str | None = None, scope: str | None = None,
    query: str = "", **ws_kwargs: Any,
) -> AsyncIterator[Client]:
    """Connect as `user` (a token is minted unless one is given) and read the welcome.
    `query`: more of the URL's query string (`&recover=1`, `&offset=3&epoch=E`)."""
    if token is None:
        token = token_for(user, service.config, scope=scope)
    async with open_websocket_url(ws_url(service, f"?token={token}{query}"), **ws_kwargs) as ws:
        with trio.fail_after(5):
            welcome = json.loads(await ws.get_message())
        yield Client(ws, welcome)


async def reconnect_at_random(
    nodes: list[Service], total: int, *, rng: random.Random, max_burst: int,
    user: Any = 1, room: str = "r",
) -> tuple[list[int], int]:
    """A seeded schedule of drops: `user` joins `room` on a random node with the last
    position it saw (every join must recover), a random node publishes the next burst of
    frames numbered 0 to `total` - 1 (`data.seq`), and the client reads a random part
    of what is there and drops the connection with the rest in flight; again, until
    all `total` arrived. Returns the `seq`s in the order received and how many
    connections it took. (With one node, no node is drawn from `rng`.)"""

    def pick() -> Service:
        return nodes[0] if len(nodes) == 1 else rng.choice(nodes)

    received: list[int] = []
    position: dict[str, Any] = {"recover": True}
    last_offset, sent, reconnects = 0, 0, 0
    while len(received) < total:
        async with connect(pick(), user) as client:
            reconnects += 1
            answer = await client.request({"type": "join_room", "room": room, "data": position})
            assert answer["data"].get("recovered", True) is True, answer
            if "offset" not in position:  # nothing seen yet: from the room's start
                position = {"offset": 0, "epoch": answer["data"]["epoch"]}
            available = answer["data"]["offset"] - last_offset
            burst = min(rng.randint(1, max_burst), total - sent)
            publisher = pick()
            for _ in range(burst):
                await publisher.notifications.notify_room(room, "x", data={"seq": sent})
                sent += 1
            available += burst
            finish = sent == total and rng.random() < 0.5
            keep = available if finish else rng.randint(0, available)
            for _ in range(keep):  # then drop the connection, frames still in flight
                frame = await client.recv(positions=True)
                received.append(frame["data"]["seq"])
                last_offset = frame["offset"]
                position = {"offset": frame["offset"], "epoch": frame["epoch"]}
    return received, reconnects


def crash_at_next_frame(connection: Any, error: BaseException) -> None:
    """Fault injection (a test seam with no cost in the service): the connection
    raises `error` when it handles its client's next frame."""

    async def crash(frame: Any) -> None:
        raise error

    connection._handle = crash
