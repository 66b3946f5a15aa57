"""roomcast.client against a real service, over real TCP: reconnection through a proxy
the test cuts, recovery, in-band token renewal, refusals."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketRequest, serve_websocket

from roomcast.client import (
    Backoff,
    BadFrameReceived,
    ClientClosed,
    ClientStopped,
    Connected,
    Event,
    HandshakeRefused,
    JoinRefused,
    Reconnecting,
    Recovery,
    TokenRefreshed,
    connect,
)

from .cluster import cluster_node, needs_redis
from .conftest import running, token_for
from .proxy import tcp_proxy

FAST = Backoff(base_delay=0.02, max_delay=0.1)


class Watcher:
    """The client's events, kept, with a wait for the next one of a kind."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = trio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def of(self, kind: type) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(self, kind: type, count: int = 1, room: str | None = None) -> Any:
        """The `count`th event of `kind` (about `room`, if given), once it came."""

        def matching() -> list[Any]:
            return [e for e in self.of(kind) if room is None or e.room == room]

        with trio.fail_after(10):
            while len(matching()) < count:
                await self._changed.wait()
        return matching()[count - 1]


def url_of(port: int, service: Any) -> str:
    return f"ws://127.0.0.1:{port}{service.config.path}"


async def publish(service: Any, room: str, seqs: range) -> None:
    for seq in seqs:
        await service.notifications.notify_room(room, f"n{seq}", data={"seq": seq})


async def frames_of(client: Any, count: int) -> list[Any]:
    with trio.fail_after(10):
        return [await client.receive() for _ in range(count)]


async def test_frames_published_while_cut_arrive_once_in_order_then_live_frames():
    watcher = Watcher()
    async with running() as service, tcp_proxy(service.port) as proxy:
        async with connect(url_of(proxy.port, service), token=token_for(1),
                           backoff=FAST, on_event=watcher) as client:
            await client.join("project_7")
            await publish(service, "project_7", range(0, 3))
            before = await frames_of(client, 3)

            proxy.cut()
            reconnecting = await watcher.wait_for(Reconnecting)
            assert reconnecting.code == 1006  # no closing frame: the network, not the service
            await publish(service, "project_7", range(3, 8))  # nobody there to get them live
            proxy.restore()
            await watcher.wait_for(Connected, 2)
            recovered = await watcher.wait_for(Recovery, room="project_7")
            assert (recovered.room, recovered.recovered, recovered.missed) == ("project_7", True, 5)

            missed = await frames_of(client, 5)
            await publish(service, "project_7", range(8, 10))
            live = await frames_of(client, 2)

            frames = before + missed + live
            assert [f.data["seq"] for f in frames] == list(range(10))
            assert [f.offset for f in frames] == list(range(1, 11))
            assert len({f.epoch for f in frames}) == 1
            assert {(f.type, f.room) for f in frames} == {("room_message", "project_7")}
            assert proxy.accepted >= 2


@needs_redis
async def test_the_client_fails_over_to_another_node_and_recovers_there(redis):
    """Cut from node A, the client comes back through the proxy on node B (the room's
    history is in Redis): what A published meanwhile, once, in order, then B's frames."""
    watcher = Watcher()
    async with (
        cluster_node(redis.url) as a, cluster_node(redis.url) as b, tcp_proxy(a.port) as proxy,
    ):
        async with connect(url_of(proxy.port, a), token=token_for(1), backoff=FAST,
                           on_event=watcher) as client:
            await client.join("r")
            await publish(a, "r", range(0, 2))
            before = await frames_of(client, 2)
            proxy.cut()
            await watcher.wait_for(Reconnecting)
            await publish(a, "r", range(2, 6))  # on A, while the client is away
            proxy.target_port = b.port
            proxy.restore()
            missed = await frames_of(client, 4)
            assert (await watcher.wait_for(Recovery, room="r")).recovered
            await publish(b, "r", range(6, 8))
            frames = before + missed + await frames_of(client, 2)
            assert [f.data["seq"] for f in frames] == list(range(8))
            assert [f.offset for f in frames] == list(range(1, 9))


async def test_a_room_whose_history_is_gone_says_so_once_then_goes_on_live():
    watcher = Watcher()
    async with running(history_size=2) as service, tcp_proxy(service.port) as proxy:
        async with connect(url_of(proxy.port, service), token=token_for(1),
                           backoff=FAST, on_event=watcher) as client:
            await client.join("r")
            await publish(service, "r", range(0, 1))
            await frames_of(client, 1)
            proxy.cut()
            await watcher.wait_for(Reconnecting)
            await publish(service, "r", range(1, 6))  # more than the room keeps
            proxy.restore()

            answer = await frames_of(client, 1)
            assert answer[0].recovered is False and answer[0].reason == "too_many"
            assert (await watcher.wait_for(Recovery, room="r")).reason == "too_many"
            await publish(service, "r", range(6, 7))
            assert [f.data["seq"] for f in await frames_of(client, 1)] == [6]


async def test_a_token_about_to_expire_is_renewed_in_band(jumping_clock):
    watcher = Watcher()
    issued: list[int] = []

    async def get_token() -> str:
        issued.append(10 if not issued else 60)
        return token_for(1, ttl=issued[-1])

    async with running(jwt_leeway=0.0) as service:
        async with connect(service.url, get_token=get_token, on_event=watcher) as client:
            await trio.testing.wait_all_tasks_blocked()  # the renewal is scheduled
            # `exp` is whole seconds: 9 to 10 s left; renewed at two thirds of 10 s
            jumping_clock.jump(7.0)
            refreshed = await watcher.wait_for(TokenRefreshed)
            assert refreshed.expires_at is not None
            jumping_clock.jump(3.2)  # past the first token's expiry, on the keeper's clock
            await trio.testing.wait_all_tasks_blocked()
            await client.send_text("still here")
            assert (await client.receive()).message == "Echo: still here"
            assert watcher.of(Reconnecting) == []
            assert issued == [10, 60]


async def test_a_refused_handshake_raises_with_the_services_reason():
    async with running() as service:
        with pytest.raises(HandshakeRefused) as refused:
            async with connect(service.url, token=token_for(1, ttl=-10)):
                pass
        assert (refused.value.status, refused.value.reason) == (403, "Token expired")

        with pytest.raises(HandshakeRefused) as wrong_path:
            async with connect(f"ws://127.0.0.1:{service.port}/nowhere", token=token_for(1)):
                pass
        assert (wrong_path.value.status, wrong_path.value.reason) == (404, "Not found")


async def test_a_refused_token_is_replaced_once_from_get_token_then_raises():
    asked = 0

    async def get_token() -> str:
        nonlocal asked
        asked += 1
        return "not-a-jwt"

    async with running() as service:
        with pytest.raises(HandshakeRefused) as refused:
            async with connect(service.url, get_token=get_token):
                pass
        assert refused.value.reason == "Token malformed"
        assert "not-a-jwt" not in str(refused.value)
        assert asked == 2  # one fresh token, then the refusal: no retry loop


async def test_a_refused_join_raises_and_the_room_is_not_rejoined():
    async with running(open_rooms=()) as service:
        async with connect(service.url, token=token_for(1)) as client:
            with pytest.raises(JoinRefused) as refused:
                await client.join("project_7")
            assert refused.value.code == "forbidden"
            assert client.rooms == []
            answer = await client.join("user_1")  # the personal room is always ours
            assert answer.data["rooms"] == ["user_1"]


async def test_after_the_block_the_client_is_closed():
    async with running() as service:
        async with connect(service.url, token=token_for(1)) as client:
            pass
        with pytest.raises(ClientClosed):
            await client.receive()
        with pytest.raises(ClientClosed):
            await client.send_text("x")


WELCOME = ('{"type": "info", "message": "Connected", "data": {"user_id": 1, "rooms": '
           '["user_1"]}, "room": null}')


@asynccontextmanager
async def fake_service(*frames: str | bytes, close: int | None = None) -> AsyncIterator[str]:
    """A WebSocket server that is not roomcast: it sends the welcome, then `frames`,
    then closes with `close` (or waits); yields its URL."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        for frame in (WELCOME, *frames):
            await ws.send_message(frame)
        if close is not None:
            await ws.aclose(close)
        else:
            await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            functools.partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None))
        yield f"ws://127.0.0.1:{server.port}/api/v1/ws"
        nursery.cancel_scope.cancel()


async def test_bad_frames_from_the_service_are_dropped_and_reported_not_fatal():
    watcher = Watcher()
    garbage = ["not json", "[1, 2]", '{"type": "info", "offset": -3, "epoch": "e"}',
               b"\xff\xfe binary", '{"type": "x", "data": ' + "[" * 100 + "]" * 100 + "}"]
    echo = '{"type": "text", "message": "Echo: hi", "data": null, "room": null}'
    async with fake_service(*garbage, echo) as url:
        async with connect(url, token="t", on_event=watcher) as client:
            assert (await client.receive()).message == "Echo: hi"
            assert len(watcher.of(BadFrameReceived)) == len(garbage) == client.bad_frames
            assert watcher.of(Reconnecting) == []


async def test_a_policy_close_stops_the_client_instead_of_a_retry_loop():
    async with fake_service(close=4008) as url:
        async with connect(url, token="t", backoff=FAST) as client:
            with pytest.raises(ClientClosed) as closed:
                await client.receive()
            assert isinstance(closed.value.__cause__, ClientStopped)
            assert closed.value.__cause__.code == 4008


async def test_a_fixed_token_that_expires_ends_in_a_clear_refusal_not_a_retry_loop():
    """4001, a reconnect with the same token, 403 Token expired: the client stops and
    says why (no get_token to ask for another)."""
    watcher = Watcher()
    async with running(jwt_leeway=0.0) as service:
        async with connect(service.url, token=token_for(1, ttl=2), backoff=FAST,
                           on_event=watcher) as client:
            with trio.fail_after(10), pytest.raises(ClientClosed) as closed:
                await client.receive()
            refusal = closed.value.__cause__
            assert isinstance(refusal, HandshakeRefused)
            assert (refusal.status, refusal.reason) == (403, "Token expired")
            assert [event.code for event in watcher.of(Reconnecting)] == [4001]


async def test_a_leave_cut_by_a_drop_returns_and_the_room_is_not_rejoined():
    async with running() as service, tcp_proxy(service.port) as proxy:
        watcher = Watcher()
        async with connect(url_of(proxy.port, service), token=token_for(1), backoff=FAST,
                           on_event=watcher) as client:
            await client.join("r")
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.leave, "r")
                    proxy.cut()  # the leave's answer may never come on this socket
            proxy.restore()
            await watcher.wait_for(Connected, 2)
            assert client.rooms == []
            await client.send_text("x")
            assert (await client.receive()).message == "Echo: x"
            assert not any(r.room == "r" for r in watcher.of(Recovery))


async def test_leaving_the_block_with_unread_frames_is_clean_and_prompt():
    async with running() as service:
        with trio.fail_after(5):
            async with connect(service.url, token=token_for(1), buffer=1) as client:
                await client.join("r")
                await publish(service, "r", range(5))  # none read: the buffer is full
                await trio.testing.wait_all_tasks_blocked()
