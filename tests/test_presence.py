"""Cluster presence over a real Redis: what a worker's questions cost, how soon a dead
node leaves every answer, and a missed change repaired without a periodic reload."""

from __future__ import annotations

import json

import trio

from roomcast.remote import RemoteNotificationService

from .cluster import counted_commands, needs_redis, nodes
from .conftest import connect, eventually, running

pytestmark = needs_redis


async def round_trips(worker: RemoteNotificationService, room: str) -> dict[str, int]:
    counts = {}
    for name, call in [
        ("is_user_connected", lambda: trio.to_thread.run_sync(worker.is_user_connected, 7)),
        ("notify_user", lambda: worker.notify_user(7, "hi")),
        ("get_room_members", lambda: trio.to_thread.run_sync(worker.get_room_members, room)),
    ]:
        with counted_commands() as sent:
            await call()
        counts[name] = len(sent)
    return counts


async def test_a_workers_questions_take_as_few_round_trips_with_800_rooms_as_with_1(redis):
    settings = {"redis_url": redis.url, "presence_lease": 10.0,
                "max_rooms_per_connection": 1000, "rate_limit": 1e6, "rate_burst": 10**6}
    async with running(**settings) as node:
        await eventually(lambda: node.ready)
        worker = RemoteNotificationService(redis.url)
        async with connect(node, 7) as client:
            await client.request({"type": "join_room", "room": "room0"})
            await eventually(lambda: worker.get_room_members("room0") == {7})
            with_one_room = await round_trips(worker, "room0")
            for i in range(1, 800):  # sent at once, answered in order
                await client.ws.send_message(json.dumps({"type": "join_room",
                                                         "room": f"room{i}"}))
            joined = []
            while len(joined) < 799:  # the answers (and the notification sent above)
                frame = json.loads(await client.ws.get_message())
                if frame["message"].startswith("Joined room:"):
                    joined.append(frame)
            assert joined[-1]["room"] == "room799"
            assert len(joined[-1]["data"]["rooms"]) == 801
            await eventually(lambda: worker.get_room_members("room799") == {7})
            with_800_rooms = await round_trips(worker, "room0")
            # A worker's whole view (what an open facade keeps): the leases, then a
            # round trip per node, not per room.
            with counted_commands() as sent:
                view = await worker._with_redis(worker._view)
            assert len(sent) == 2, sent
            assert view.room_members("room799") == {7} and view.users() == {7}
        assert with_800_rooms == with_one_room
        assert max(with_800_rooms.values()) <= 3, with_800_rooms
        await eventually(lambda: worker.get_room_members("room0") == set())  # it left


async def test_a_killed_node_leaves_every_answer_when_its_own_lease_ends(redis):
    """Node A ticks every 10 s (a 30 s lease); node B, SIGKILLed, has a 1.5 s lease: A
    drops it when B's lease key expires, not at A's next tick; a worker too."""
    lease = 1.5
    async with running(redis_url=redis.url, presence_lease=30.0) as a:
        await eventually(lambda: a.ready)
        worker = RemoteNotificationService(redis.url)
        with nodes(redis.url, 1, lease=lease) as (b,):
            async with connect(b, 5) as client:
                await client.request({"type": "join_room", "room": "k"})
                await eventually(lambda: a.notifications.get_room_members("k") == {5})
                assert worker.get_room_members("k") == {5}
                b.kill()  # SIGKILL: no goodbye
                killed = trio.current_time()
                await eventually(lambda: not a.notifications.is_user_connected(5),
                                 timeout=lease + 0.5)
                assert trio.current_time() - killed <= lease + 0.5
                assert a.notifications.get_room_members("k") == set()
                assert not worker.is_user_connected(5)
                assert worker.get_room_members("k") == set()
                assert await worker.notify_user(5, "gone") is False


async def test_a_missed_presence_change_is_repaired_by_the_next_one(redis):
    """Node A (a 60 s lease: its own tick is 20 s) loses one of B's changes: the next
    change shows the gap, and A reloads B at once, not at a periodic reload."""
    settings = {"redis_url": redis.url, "presence_lease": 60.0}
    async with running(**settings) as a, running(**settings) as b:
        await eventually(lambda: a.ready and b.ready)
        backplane = a.registry.backplane
        on_presence = backplane._on_presence
        lost = []

        def losing_one(data: bytes) -> None:
            if not lost and b"\"2\"" in data and b"\"add\"" in data:
                lost.append(data)  # user 2's arrival never reaches A
                return
            on_presence(data)

        backplane._on_presence = losing_one
        async with connect(b, 1):
            await eventually(lambda: a.notifications.is_user_connected(1), timeout=5)
            async with connect(b, 2):
                await eventually(lambda: lost, timeout=5)
                assert not a.notifications.is_user_connected(2)
                async with connect(b, 3):
                    await eventually(lambda: a.notifications.get_connected_users() == {1, 2, 3},
                                     timeout=5)
