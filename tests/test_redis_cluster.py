"""Sharded mode on a real three-master Redis Cluster: rooms whose slots live on
different masters, two nodes (one in this process, one in its own), and a master
restarted mid-run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from roomcast import Service

from .cluster import Node, RedisCluster, needs_redis, nodes, redis_cluster_servers
from .conftest import connect, eventually, running

pytestmark = needs_redis

PREFIX = "roomcast"  # the default redis_prefix


def hist_key(room: str) -> str:
    return f"{{{PREFIX}:room:{room}}}:hist"


def rooms_on_each_master(cluster: RedisCluster) -> dict[int, str]:
    """One room per master (by its port), found by the slot of its history key."""
    found: dict[int, str] = {}
    for i in range(200):
        room = f"room-{i}"
        found.setdefault(cluster.master_of(hist_key(room)), room)
        if len(found) == len(cluster.ports):
            return found
    raise AssertionError("no room for every master")


@asynccontextmanager
async def two_nodes(cluster: RedisCluster) -> AsyncIterator[tuple[Service, Node]]:
    """Node A in this process, node B in its own; both in sharded mode, joined."""
    settings: dict[str, Any] = {"redis_url": cluster.url, "redis_sharded": True,
                                "presence_lease": 2.0}
    async with running(**settings) as a:
        with nodes(cluster.url, 1, redis_sharded=True) as (b,):
            await eventually(lambda: a.ready)
            yield a, b


async def test_sharded_rooms_on_different_masters_work_across_nodes():
    with redis_cluster_servers() as cluster:
        rooms = list(rooms_on_each_master(cluster).values())
        # A hash tag per room: the history keys spread over the slots (and masters).
        assert len({cluster.slot(hist_key(room)) for room in rooms}) == len(rooms)
        async with two_nodes(cluster) as (a, b):
            async with connect(a, 1) as x, connect(b, 2) as y:
                for client in (x, y):
                    for room in rooms:
                        await client.request({"type": "join_room", "room": room})
                # Presence across nodes.
                await eventually(lambda: all(a.notifications.get_room_members(room) == {1, 2}
                                             for room in rooms))
                assert a.notifications.is_user_connected(2)
                # Room messages both ways, in rooms on each master.
                seen: dict[str, dict[str, Any]] = {}
                for room in rooms:
                    await y.request({"type": "room_message", "room": room, "data": f"to x {room}"})
                    frame = await x.recv(positions=True)
                    assert frame["message"] == f"to x {room}"
                    seen[room] = frame
                    await x.request({"type": "room_message", "room": room, "data": f"to y {room}"})
                    assert (await y.recv())["message"] == f"to y {room}"
                # Each room's history is a stream in its own slot, on its own master.
                for room in rooms:
                    master = cluster.master_of(hist_key(room))
                    assert cluster.ask(master, "xlen", hist_key(room)).strip() == "2"
                # notify_user to a user on the other node.
                assert await a.notifications.notify_user(2, "hello y") is True
                assert (await y.recv())["message"] == "hello y"
                await x.nothing_within(0.2)
            # Both leave (disconnecting); y comes back and publishes meanwhile.
            async with connect(b, 2) as y:
                for room in rooms:
                    await y.request({"type": "join_room", "room": room})
                for room in rooms:
                    for i in range(3):
                        await y.request({"type": "room_message", "room": room,
                                         "data": f"missed {i}"})
                # x comes back on the OTHER node (B) with its position in each room.
                async with connect(b, 1) as again:
                    for room in rooms:
                        position = {"offset": seen[room]["offset"], "epoch": seen[room]["epoch"]}
                        answer = await again.request(
                            {"type": "join_room", "room": room, "data": position})
                        assert answer["data"]["recovered"] is True, (room, answer)
                        frames = [await again.recv(positions=True) for _ in range(4)]
                        assert [f["message"] for f in frames] == \
                            [f"to y {room}"] + [f"missed {i}" for i in range(3)]
                        first = seen[room]["offset"] + 1
                        assert [f["offset"] for f in frames] == list(range(first, first + 4))
                    await again.nothing_within(0.2)


async def test_a_master_restarted_mid_run(caplog: pytest.LogCaptureFixture):
    """coredis's sharded subscription is one for every master, reconnected as a whole:
    while a master is down, a node hears no room and says so (not ready), delivers
    locally, and comes back by itself. The restarted master has lost its keys (no
    persistence): a client back in a room of that master is told `epoch_changed`; in
    the rooms of the other masters it recovers exactly."""
    with redis_cluster_servers() as cluster:
        by_master = rooms_on_each_master(cluster)
        # The master restarted holds neither presence's slot nor its channel's.
        keep = {cluster.master_of("{" + PREFIX + "}:nodes"),
                cluster.master_of(f"{PREFIX}:presence")}
        victim = next(port for port in cluster.ports if port not in keep)
        lost_room = by_master[victim]
        other_rooms = [room for port, room in by_master.items() if port != victim]
        rooms = [lost_room, *other_rooms]
        async with two_nodes(cluster) as (a, b):
            async with connect(a, 1) as x, connect(b, 2) as y:
                for client in (x, y):
                    for room in rooms:
                        await client.request({"type": "join_room", "room": room})
                positions = {}
                async with connect(a, 3) as away:
                    for room in rooms:
                        await away.request({"type": "join_room", "room": room})
                    await eventually(lambda: all(a.notifications.get_room_members(r) == {1, 2, 3}
                                                 for r in rooms))
                    for room in rooms:
                        await y.request({"type": "room_message", "room": room, "data": "before"})
                        assert (await x.recv())["message"] == "before"
                        frame = await away.recv(positions=True)
                        positions[room] = {"offset": frame["offset"], "epoch": frame["epoch"]}
                cluster.stop_master(victim)
                await eventually(lambda: not a.ready)  # told, not silently deaf
                # ... and no actor crashed for it (coredis's fan-out to the masters
                # raises TypeError while one is down).
                assert not [r for r in caplog.records if "crashed" in r.getMessage()]
                for room in other_rooms:  # local delivery goes on
                    answer = await x.request({"type": "room_message", "room": room,
                                              "data": "local"})
                    assert answer["message"] == "local"
                cluster.start_master(victim)
                cluster.wait_until_ok()
                await eventually(lambda: a.ready, timeout=20)
                assert not [r for r in caplog.records if "crashed" in r.getMessage()]
                # Every room works across nodes again, the restarted master's too.
                with trio.fail_after(20):
                    for room in rooms:
                        await x.request({"type": "room_message", "room": room, "data": "after"})
                    got: list[tuple[str, str]] = []
                    while not {(room, "after") for room in rooms} <= set(got):
                        frame = await y.recv(timeout=15)
                        got.append((frame["room"], frame["message"]))
                # What x sent during the outage reached y or not (whether y's node
                # heard its rooms yet), once at most, and before what followed.
                assert len(got) == len(set(got))
                assert set(got) - {(room, "after") for room in rooms} <= \
                    {(room, "local") for room in other_rooms}
                await y.nothing_within(0.2)
            async with connect(b, 3) as again:  # back, on the other node
                for room in other_rooms:
                    answer = await again.request(
                        {"type": "join_room", "room": room, "data": positions[room]})
                    assert answer["data"]["recovered"] is True, (room, answer)
                    frame = await again.recv(positions=True)
                    assert frame["message"] == "after"
                    assert frame["offset"] == positions[room]["offset"] + 1
                answer = await again.request(
                    {"type": "join_room", "room": lost_room, "data": positions[lost_room]})
                assert answer["data"]["recovered"] is False
                assert answer["data"]["reason"] == "epoch_changed"
                await again.nothing_within(0.2)


async def test_a_batch_is_numbered_on_the_masters_that_answer():
    """One script per room: with a master down, its rooms' frames are not numbered
    (their room numbers them on the node), the others' are, in queue order."""
    import coredis

    from roomcast.actors.streams import PartlyNumbered, Streams

    with redis_cluster_servers() as cluster:
        by_master = rooms_on_each_master(cluster)
        victim, lost_room = next(iter(by_master.items()))
        live_room = next(room for port, room in by_master.items() if port != victim)
        streams = Streams(PREFIX, 100, 60.0, sharded=True)
        frames = [(room, b'{"type":"t","n":%d}' % n, None)
                  for n, room in enumerate([live_room, lost_room, live_room])]
        async with coredis.RedisCluster.from_url(cluster.url, decode_responses=False) as client:
            first = await streams.sequence_batch(client, frames, b"0123456789abcdef")
            assert [n.offset for n in first] == [1, 1, 2]
            cluster.stop_master(victim)
            with trio.fail_after(30), pytest.raises(PartlyNumbered) as partly:
                await streams.sequence_batch(client, frames, b"0123456789abcdef")
        numbered = partly.value.numbered
        assert numbered[1] is None
        assert [n.offset if n else None for n in numbered] == [3, None, 4]
        assert numbered[0] and numbered[0].frame.startswith(b'{"type":"t","n":0,"offset":3')


async def test_a_worker_process_notifies_through_the_cluster():
    """The facade outside a node (RemoteNotificationService) numbers in sharded mode
    too: a room's member hears it, and a user connected nowhere gets it on return."""
    from roomcast.remote import RemoteNotificationService

    with redis_cluster_servers() as cluster:
        worker = RemoteNotificationService(cluster.url, sharded=True)
        room = next(iter(rooms_on_each_master(cluster).values()))
        async with two_nodes(cluster) as (a, b):
            async with connect(b, 2) as y:
                joined = await y.request({"type": "join_room", "room": room,
                                          "data": {"recover": True}})
                await eventually(lambda: a.notifications.get_room_members(room) == {2})
                assert await worker.notify_room(room, "from the worker") == 1
                frame = await y.recv(positions=True)
                assert frame["message"] == "from the worker"
                assert frame["offset"] == joined["data"]["offset"] + 1
            assert await worker.notify_user(9, "your export is ready") is False
            async with connect(a, 9, query="&recover=1") as tab:
                assert (await tab.recv())["message"] == "your export is ready"
                await tab.nothing_within(0.2)
