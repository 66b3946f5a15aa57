"""A node started while its Redis is down: it serves its own clients at once, says so
once, and joins the cluster when Redis appears. And presence changes are never lost
while the backplane is writing presence."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

import trio
from trio_websocket import ConnectionClosed

from roomcast import CloseCode

from .cluster import RedisServer, needs_redis
from .conftest import connect, eventually, running

pytestmark = needs_redis

OUTAGE = "delivering locally only"


def _outage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if OUTAGE in r.getMessage()]


async def test_started_while_redis_is_down_serves_at_once_then_joins_the_cluster(caplog):
    caplog.set_level(logging.INFO, logger="roomcast")
    server = RedisServer()  # a free port where nothing listens yet
    try:
        async with running(redis_url=server.url, presence_lease=2.0) as a, \
                AsyncExitStack() as clients:
            backplane = a.registry.backplane
            attempts = 0
            renew = backplane._renew

            async def counted_renew(client):
                nonlocal attempts
                attempts += 1
                await renew(client)

            backplane._renew = counted_renew
            # Its own clients are served at once: welcome, join, room messages. (No
            # cancel scope around the clients: their nurseries outlive this block.)
            started = trio.current_time()
            x = await clients.enter_async_context(connect(a, 1))
            y = await clients.enter_async_context(connect(a, 2))
            assert x.welcome["data"]["rooms"] == ["user_1"]
            for client in (x, y):
                answer = await client.request({"type": "join_room", "room": "r"})
                assert answer["message"] == "Joined room: r"
            echo = await x.request({"type": "room_message", "room": "r", "data": "local"})
            assert echo["message"] == "local"
            assert (await y.recv())["message"] == "local"
            assert trio.current_time() - started < 1.0
            assert not a.ready
            # It keeps retrying, and said so once.
            await eventually(lambda: attempts >= 3)
            assert len(_outage_lines(caplog)) == 1, _outage_lines(caplog)

            await trio.to_thread.run_sync(server.start)
            async with running(redis_url=server.url, presence_lease=2.0) as b, \
                    connect(b, 3) as z:
                await z.request({"type": "join_room", "room": "r"})
                await eventually(lambda: a.ready and b.ready, timeout=20)
                # a wrote its presence: b sees a's users and room members.
                await eventually(lambda: b.notifications.get_room_members("r") == {1, 2, 3})
                assert b.notifications.is_user_connected(1)
                # a hears the rooms its members are in (the lobby too).
                await z.request({"type": "room_message", "room": "r", "data": "from b"})
                for client in (x, y):
                    assert (await client.recv())["message"] == "from b"
                # ... and numbers its frames in Redis again: one sequence for both nodes.
                assert x.last_position == y.last_position == z.last_position
                offset, epoch = z.last_position
                await x.request({"type": "room_message", "room": "r", "data": "from a"})
                for client in (y, z):
                    assert (await client.recv())["message"] == "from a"
                    assert client.last_position == (offset + 1, epoch)
                assert await b.notifications.broadcast("all") == 3
                for client in (x, y, z):
                    assert (await client.recv())["message"] == "all"
                    await client.nothing_within(0.1)
            # (Not "still one outage line" here: on a loaded machine the fresh
            # connection can drop once more, and that is a new outage, said anew.)
            assert any("connected to Redis as node" in r.getMessage() for r in caplog.records)
    finally:
        server.stop()


async def test_open_service_with_redis_down_and_a_small_mailbox_exits_promptly():
    server = RedisServer()  # never started
    closed: list[int] = []

    async def client(service, user: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with connect(service, user % 3) as c:
            await c.request({"type": "join_room", "room": f"room{user % 2}"})
            task_status.started()
            try:
                await c.ws.get_message()
            except ConnectionClosed as close:
                closed.append(close.reason.code)

    async with trio.open_nursery() as clients:
        async with running(redis_url=server.url, mailbox_size=2) as service:
            started = trio.current_time()
            for user in range(6):
                await clients.start(client, service, user)
            assert trio.current_time() - started < 1.0
            ending = trio.current_time()
            # The body ends with six clients connected: each is told 1001, and then
            # nothing may wait on an actor that is itself waiting.
        assert trio.current_time() - ending < 2.0
    assert closed == [CloseCode.GOING_AWAY] * 6


async def test_a_presence_change_during_a_presence_write_is_written_at_once(redis):
    # A lease of 60 s: the presence task's own tick is 20 s, so a lost wake-up would
    # leave user 2 unwritten that long.
    settings = {"redis_url": redis.url, "presence_lease": 60.0}
    async with running(**settings) as a, running(**settings) as b:
        await eventually(lambda: a.ready and b.ready)
        backplane = a.registry.backplane
        store = backplane._store
        holding, release, second_written = trio.Event(), trio.Event(), trio.Event()

        async def held_store(client, old, new):
            if "1" in new.users and not release.is_set():
                holding.set()  # the write of user 1 is under way, and waits here
                await release.wait()
            if "2" in new.users:
                second_written.set()
            await store(client, old, new)

        backplane._store = held_store
        async with connect(a, 1):
            with trio.fail_after(5):
                await holding.wait()
            async with connect(a, 2):  # welcomed: registered while the write is held
                release.set()
                with trio.fail_after(5):
                    await second_written.wait()
                await eventually(lambda: b.notifications.is_user_connected(2), timeout=5)
