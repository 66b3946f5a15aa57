"""Several nodes over a real Redis: delivery, presence and faults across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import trio

from roomcast import BackplaneUnavailable, NotificationLevel

from .cluster import needs_redis, nodes
from .conftest import SECRET, connect, eventually, running

pytestmark = needs_redis


async def test_room_messages_cross_nodes_and_arrive_once(redis):
    with nodes(redis.url, 2) as (b, c):
        async with connect(b, 1) as on_b, connect(c, 2) as on_c:
            for client in (on_b, on_c):
                await client.request({"type": "join_room", "room": "team"})
            mine = await on_b.request({"type": "room_message", "room": "team", "data": "hi c"})
            assert mine["message"] == "hi c"
            theirs = await on_c.recv()
            assert theirs["message"] == "hi c" and theirs["data"]["from_user_id"] == 1
            await on_c.request({"type": "room_message", "room": "team", "data": "hi b"})
            assert (await on_b.recv())["message"] == "hi b"
            await on_b.nothing_within(0.3)
            await on_c.nothing_within(0.1)


async def test_notify_user_from_one_node_reaches_tabs_on_the_others(redis):
    async with running(redis_url=redis.url, presence_lease=2.0) as a:
        with nodes(redis.url, 2) as (b, c):
            async with connect(b, 7) as tab1, connect(c, 7) as tab2, connect(a, 7) as tab3:
                await eventually(lambda: a.notifications.is_user_connected(7))
                sent = await a.notifications.notify_user(
                    7, "done", level=NotificationLevel.SUCCESS, data={"id": 1}
                )
                assert sent is True
                for tab in (tab1, tab2, tab3):
                    frame = await tab.recv()
                    assert frame["message"] == "done"
                    assert frame["data"] == {"id": 1, "level": "success", "notification": True}
                    await tab.nothing_within(0.2)
                assert await a.notifications.notify_user(8, "nobody") is False


async def test_broadcast_reaches_everyone_once_and_counts_the_cluster(redis):
    async with running(redis_url=redis.url, presence_lease=2.0) as a:
        with nodes(redis.url, 2) as (b, c):
            async with connect(a, 1) as u1, connect(b, 2) as u2, connect(c, 3) as u3, \
                    connect(c, 3) as u3b:
                await eventually(lambda: a.notifications.get_connected_users() == {1, 2, 3})
                assert await a.notifications.broadcast("maintenance") == 3
                for client in (u1, u2, u3, u3b):
                    assert (await client.recv())["message"] == "maintenance"
                    await client.nothing_within(0.2)


async def test_presence_and_membership_agree_across_nodes(redis):
    async with running(redis_url=redis.url, presence_lease=2.0) as a:
        async with running(redis_url=redis.url, presence_lease=2.0) as b:
            async with connect(a, 1) as x, connect(b, 2) as y:
                await x.request({"type": "join_room", "room": "p"})
                await y.request({"type": "join_room", "room": "p"})
                for node in (a, b):
                    await eventually(lambda n=node: n.notifications.get_room_members("p") == {1, 2})
                    assert node.notifications.get_connected_users() == {1, 2}
                    assert node.notifications.is_user_connected(1)
                    assert node.notifications.is_user_connected("2")
                    assert node.notifications.get_room_members("user_2") == {2}
                assert await a.notifications.notify_room("p", "n") == 2
                assert await b.notifications.notify_user_in_room(1, "n") is True
                await y.request({"type": "leave_room", "room": "p"})
                await eventually(lambda: a.notifications.get_room_members("p") == {1})
            await eventually(lambda: a.notifications.get_connected_users() == set())
            assert a.notifications.get_room_members("p") == set()


WORKER = textwrap.dedent(
    """
    import asyncio, sys, trio
    from roomcast import NotificationService, NotificationLevel, SyncNotificationService

    def process_data_task(user_id, data_id):
        # The seed's Example 3, as written.
        return asyncio.run(NotificationService.notify_user(
            user_id=user_id,
            message="Data processing complete!",
            level=NotificationLevel.SUCCESS,
            data={"data_id": data_id, "result": "ok"},
        ))

    results = [
        process_data_task(int(sys.argv[1]), 1),
        trio.run(lambda: NotificationService.notify_room("jobs", "from trio")),
        SyncNotificationService.notify_user(int(sys.argv[1]), "from sync code"),
        SyncNotificationService.is_user_connected(int(sys.argv[1])),
        sorted(SyncNotificationService.get_room_members("jobs")),
    ]
    print(repr(results))
    """
)


def _run_worker(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    return subprocess.run(
        [sys.executable, "-c", WORKER, *args], capture_output=True, text=True, timeout=60,
        env={**env, "ROOMCAST_REDIS_URL": redis_url},
    )


async def test_worker_process_reaches_the_user_seed_example_3(redis):
    with nodes(redis.url, 1) as (b,):
        async with connect(b, 42) as client:
            await client.request({"type": "join_room", "room": "jobs"})
            result = await trio.to_thread.run_sync(_run_worker, redis.url, "42")
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "[True, 1, True, True, [42]]"
            first = await client.recv()
            assert first["message"] == "Data processing complete!"
            assert first["data"] == {"data_id": 1, "result": "ok", "level": "success",
                                     "notification": True}
            assert (await client.recv())["message"] == "from trio"
            assert (await client.recv())["message"] == "from sync code"
            await client.nothing_within(0.2)
            cli = await trio.to_thread.run_sync(lambda: subprocess.run(
                [sys.executable, "-m", "roomcast.cli", "notify", "--user", "42", "--message",
                 "from the shell", "--level", "warning", "--data", '{"k": [1]}',
                 "--redis-url", redis.url],
                capture_output=True, text=True, timeout=60,
            ))
            assert cli.returncode == 0, cli.stderr
            assert json.loads(cli.stdout) is True
            frame = await client.recv()
            assert frame["message"] == "from the shell"
            assert frame["data"] == {"k": [1], "level": "warning", "notification": True}


async def test_worker_facing_a_down_redis_gets_a_clear_error(redis):
    url = redis.url
    redis.stop()
    result = await trio.to_thread.run_sync(_run_worker, url, "42")
    assert result.returncode != 0
    assert "BackplaneUnavailable" in result.stderr
    cli = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "notify", "--broadcast", "--message", "x",
         "--redis-url", url], capture_output=True, text=True, timeout=60,
    ))
    assert cli.returncode == 1 and "unreachable" in cli.stderr


async def test_killed_node_drops_out_of_presence_after_its_lease(redis):
    async with running(redis_url=redis.url, presence_lease=2.0) as a:
        with nodes(redis.url, 1, lease=2.0) as (b,):
            async with connect(b, 5) as client:
                await client.request({"type": "join_room", "room": "k"})
                await eventually(lambda: a.notifications.get_room_members("k") == {5})
                b.kill()  # SIGKILL: no goodbye; it stays listed until its lease runs out
                await eventually(lambda: not a.notifications.is_user_connected(5), timeout=12)
                assert a.notifications.get_room_members("k") == set()
                assert await a.notifications.notify_user(5, "gone") is False


async def test_redis_restart_mid_run_delivery_and_presence_resume(redis):
    async with running(redis_url=redis.url, presence_lease=2.0) as a:
        async with running(redis_url=redis.url, presence_lease=2.0) as b:
            async with connect(a, 1) as on_a, connect(b, 2) as on_b:
                for client in (on_a, on_b):
                    await client.request({"type": "join_room", "room": "r"})
                await eventually(lambda: a.notifications.get_room_members("r") == {1, 2})
                redis.stop()
                await eventually(lambda: not a.ready and not b.ready)
                # Local delivery keeps working; the publisher is told the rest was not.
                with pytest.raises(BackplaneUnavailable):
                    await a.notifications.notify_room("r", "during")
                assert (await on_a.recv())["message"] == "during"
                await on_b.nothing_within(0.2)
                # A client's frame is still delivered on its own node.
                await on_a.request({"type": "room_message", "room": "r", "data": "local"})
                # The connection handles frames in order: once the echo is back, its
                # attempt to publish "local" to the other nodes is over (and failed).
                assert (await on_a.request({"type": "text", "data": "sync"}))["type"] == "text"
                redis.start()  # empty: every key is gone
                await eventually(lambda: a.ready and b.ready, timeout=20)
                await eventually(lambda: a.notifications.get_room_members("r") == {1, 2})
                await eventually(lambda: b.notifications.get_connected_users() == {1, 2})
                assert await a.notifications.notify_room("r", "after") == 2
                assert (await on_a.recv())["message"] == "after"
                assert (await on_b.recv())["message"] == "after"
                await on_b.request({"type": "room_message", "room": "r", "data": "back"})
                assert (await on_a.recv())["message"] == "back"
                await on_a.nothing_within(0.2)
                await on_b.nothing_within(0.1)


def test_worker_without_a_redis_url_says_no_service_runs():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    script = (
        "import asyncio\nfrom roomcast import NotificationService\n"
        "asyncio.run(NotificationService.notify_user(user_id=1, message='x'))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode != 0
    assert "ServiceNotRunning" in result.stderr and "ROOMCAST_REDIS_URL" in result.stderr
    assert SECRET not in result.stderr


async def test_sharded_pub_sub_on_a_redis_cluster():
    from .cluster import redis_cluster

    with redis_cluster() as url:
        settings = {"redis_url": url, "redis_sharded": True, "presence_lease": 2.0}
        async with running(**settings) as a, running(**settings) as b:
            async with connect(a, 1) as x, connect(b, 2) as y:
                for client in (x, y):
                    for room in ("alpha", "beta", "gamma"):  # spread over the shards
                        await client.request({"type": "join_room", "room": room})
                await eventually(lambda: a.notifications.get_room_members("gamma") == {1, 2})
                await eventually(lambda: a.ready and b.ready)
                for room in ("alpha", "beta", "gamma"):
                    await x.request({"type": "room_message", "room": room, "data": room})
                    assert (await y.recv())["message"] == room
                assert await b.notifications.notify_user(1, "to x") is True
                assert (await x.recv())["message"] == "to x"
                assert await a.notifications.broadcast("all") == 2
                assert (await x.recv())["message"] == "all"
                assert (await y.recv())["message"] == "all"
                await x.nothing_within(0.2)
                await y.nothing_within(0.1)


async def test_foreign_messages_on_a_room_channel_are_ignored(redis):
    import coredis

    async with running(redis_url=redis.url) as a, running(redis_url=redis.url) as b:
        async with connect(b, 7) as client:
            await client.request({"type": "join_room", "room": "r"})
            await eventually(lambda: a.notifications.get_room_members("r") == {7})
            async with coredis.Redis.from_url(redis.url) as raw:
                origin = b"0123456789abcdef"  # no node's
                for junk in (b"", b"no newline", b"x y\n{}", b"1\n{}", b"\nnot json",
                             b"5 \xff\xfe\n{}", b"\xff" * 40):
                    await raw.publish("roomcast:room:r", origin + junk)
            await client.nothing_within(0.3)
            assert await a.notifications.notify_room("r", "still here") == 1
            assert (await client.recv())["message"] == "still here"
            assert b.ready
