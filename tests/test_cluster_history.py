"""History in Redis: positions agree across nodes, so a client recovers on any node."""

from __future__ import annotations

import json
import random

import coredis
import trio
from trio_websocket import open_websocket_url

from roomcast.remote import RemoteNotificationService

from .cluster import cluster_node, needs_redis
from .conftest import (
    connect,
    eventually,
    make_config,
    reconnect_at_random,
    running,
    token_for,
    ws_url,
)

pytestmark = needs_redis


def cluster(redis, **extra):
    """A node of the cluster, once it has joined (before that it numbers locally)."""
    return cluster_node(redis.url, **extra)


async def test_reconnecting_to_another_node_recovers_exactly_the_missed_frames(redis):
    async with cluster(redis) as a, cluster(redis) as b:
        async with connect(b, 2) as member:  # keeps the room alive on node B
            await member.request({"type": "join_room", "room": "r"})
            async with connect(a, 1) as first:
                await first.request({"type": "join_room", "room": "r"})
                await a.notifications.notify_room("r", "seen")
                seen = await first.recv(positions=True)
            for i in range(5):  # published on A while client 1 is away
                await a.notifications.notify_room("r", f"missed {i}")
            async with connect(b, 1) as again:  # comes back on the other node
                position = {"offset": seen["offset"], "epoch": seen["epoch"]}
                answer = await again.request(
                    {"type": "join_room", "room": "r", "data": position}
                )
                assert answer["data"]["recovered"] is True, answer
                await b.notifications.notify_room("r", "new")
                frames = [await again.recv(positions=True) for _ in range(6)]
                assert [f["message"] for f in frames] == [f"missed {i}" for i in range(5)] + ["new"]
                offsets = [f["offset"] for f in frames]
                assert offsets == list(range(seen["offset"] + 1, seen["offset"] + 7))
                assert {f["epoch"] for f in frames} == {seen["epoch"]}
                await again.nothing_within(0.3)


async def test_offline_user_gets_what_a_worker_sent_once_on_any_node(redis):
    # A worker process with the same settings as the nodes.
    worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
    async with cluster(redis) as a, cluster(redis) as b:
        assert await worker.notify_user(9, "your export is ready") is False
        assert await a.notifications.notify_user(9, "and a second thing") is False
        async with connect(b, 9) as plain:  # asks for nothing: the seed's behaviour
            await plain.nothing_within(0.3)
        async with connect(b, 9, query="&recover=1") as tab:
            assert (await tab.recv())["message"] == "your export is ready"
            assert (await tab.recv())["message"] == "and a second thing"
            await tab.nothing_within(0.3)
        async with connect(a, 9, query="&recover=1") as later:
            await later.nothing_within(0.3)


async def test_redis_restart_gives_an_honest_answer_not_a_wrong_recovery(redis):
    async with cluster(redis) as a, cluster(redis) as b:
        async with connect(b, 2) as member:
            await member.request({"type": "join_room", "room": "r"})
            async with connect(a, 1) as first:
                await first.request({"type": "join_room", "room": "r"})
                await a.notifications.notify_room("r", "before")
                seen = await first.recv(positions=True)
            redis.stop()
            await eventually(lambda: not a.ready and not b.ready)  # both saw the outage
            redis.start()  # empty: the room's history is gone
            await eventually(lambda: a.ready and b.ready, timeout=20)
            await a.notifications.notify_room("r", "after")
            # notify_room returns once its frame is queued (a cluster node numbers a
            # batch per round trip): node b has the new epoch once its member has it.
            assert [(await member.recv())["message"] for _ in range(2)] == ["before", "after"]
            async with connect(b, 1) as again:
                position = {"offset": seen["offset"], "epoch": seen["epoch"]}
                answer = await again.request(
                    {"type": "join_room", "room": "r", "data": position}
                )
                assert answer["data"]["recovered"] is False
                assert answer["data"]["reason"] == "epoch_changed"
                assert answer["data"]["epoch"] != seen["epoch"]
                await again.nothing_within(0.2)


async def test_random_reconnects_across_nodes_never_leave_a_gap_or_a_duplicate(redis):
    rng = random.Random(7)
    total = 600
    settings = {"rate_limit": 1e6, "rate_burst": 10**6, "history_size": total}
    async with cluster(redis, **settings) as a, cluster(redis, **settings) as b:
        async with connect(b, 2) as keeper:  # keeps the room alive on node B
            await keeper.request({"type": "join_room", "room": "r"})
            received, _ = await reconnect_at_random([a, b], total, rng=rng, max_burst=60)
            assert received == list(range(total))


async def test_a_stale_personal_position_still_gets_the_pending_frames_once(redis):
    async with cluster(redis) as a, cluster(redis) as b:
        query = f"?token={token_for(6)}&offset=3&epoch=long-gone"
        assert await a.notifications.notify_user(6, "while you were away") is False
        async with open_websocket_url(ws_url(b, query)) as ws:
            welcome = json.loads(await ws.get_message())
            assert welcome["data"]["recovered"] is False
            assert json.loads(await ws.get_message())["message"] == "while you were away"
        async with connect(a, 6) as again:
            await again.nothing_within(0.3)


async def test_a_quiet_room_keeps_its_epoch_in_redis_while_it_has_members(redis):
    """No frame and no join for longer than history_ttl: the node renews the room's
    keys while it has members there, so a reconnect right after still recovers."""
    async with running(redis_url=redis.url, presence_lease=0.6, history_ttl=1.0) as node:
        await eventually(lambda: node.ready)
        async with connect(node, 1) as member:
            joined = await member.request(
                {"type": "join_room", "room": "quiet", "data": {"recover": True}})
            position = {"offset": joined["data"]["offset"], "epoch": joined["data"]["epoch"]}
            epoch_key = f"{{{node.config.redis_prefix}}}:epoch:quiet"
            async with coredis.Redis.from_url(redis.url) as client:
                # Twice history_ttl of Redis's own time, the key never gone meanwhile.
                until = trio.current_time() + 2.0
                while trio.current_time() < until:
                    assert await client.exists([epoch_key]), "the quiet room's epoch expired"
                    await trio.sleep(0.1)  # the poll interval of a watch on Redis's clock
        async with connect(node, 1) as again:
            answer = await again.request({"type": "join_room", "room": "quiet", "data": position})
            assert answer["data"].get("recovered") is True, answer
