"""One order per room on every node, epoch changes that lose nothing live, and a node
that starts while Redis is down (issue 11).

Positions are read off the frames: `offset` and `epoch` (docs/protocol.md, 6b). A member
that stays connected gets, in each epoch, offsets that grow by one: no gap, no
duplicate; and every member of a room, on every node, gets the same sequence.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import coredis
import pytest
import trio

from roomcast.remote import RemoteNotificationService

from .cluster import RedisServer, cluster_node, needs_redis, nodes
from .conftest import Client, connect, eventually, make_config, running

pytestmark = pytest.mark.timeout(120)

ROOM = "r"
TOTAL = 2000
FAST = {"rate_limit": 1e6, "rate_burst": 10**6}  # clients that publish as fast as they can


def positions(frames: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    """Each frame's (epoch, offset, message): the order a member saw, and what."""
    return [(f.get("epoch"), f.get("offset"), f["message"]) for f in frames]


def describe(frames: list[dict[str, Any]]) -> str:
    """What a member got, for a failure's message: how many, the epochs, the offsets
    missing, repeated or out of order, and the first offsets."""
    offsets = [f.get("offset") for f in frames]
    numbers = [o for o in offsets if isinstance(o, int)]
    expected = set(range(1, max(numbers, default=0) + 1))
    repeated = len(numbers) - len(set(numbers))
    backwards = sum(1 for a, b in itertools.pairwise(numbers) if b < a)
    return (f"{len(frames)} frames, epochs {sorted({str(f.get('epoch')) for f in frames})}, "
            f"missing {sorted(expected - set(numbers))[:10]}, repeated {repeated}, "
            f"backwards steps {backwards}, first offsets {offsets[:12]}")


def assert_one_order(seen: dict[str, list[dict[str, Any]]], total: int) -> None:
    """Every member got `total` frames, in one epoch, offsets 1 apart, and every
    member the same sequence (positions and contents)."""
    summary = "\n".join(f"  {name}: {describe(frames)}" for name, frames in seen.items())
    print(f"sequences seen:\n{summary}")
    for name, frames in seen.items():
        assert len(frames) == total, f"{name} got {len(frames)} frames of {total}\n{summary}"
        epochs = {f.get("epoch") for f in frames}
        assert len(epochs) == 1 and None not in epochs, f"{name}: epochs {epochs}"
        offsets = [f["offset"] for f in frames]
        breaks = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(offsets)) if b != a + 1]
        assert not breaks, (f"{name}: offsets not consecutive at (index, prev, next) "
                            f"{breaks[:5]}\n{summary}")
    names = list(seen)
    reference = positions(seen[names[0]])
    for name in names[1:]:
        other = positions(seen[name])
        pairs = enumerate(zip(reference, other, strict=True))
        first = next((i for i, (x, y) in pairs if x != y), None)
        assert first is None, (
            f"{names[0]} and {name} differ from index {first}: "
            f"{reference[first:first + 4]} vs {other[first:first + 4]}"
        )


def assert_each_publisher_in_order(frames: list[dict[str, Any]]) -> None:
    """Messages are "TAG:SEQ": each publisher's own frames come in the order it sent."""
    by_tag: dict[str, list[int]] = {}
    for frame in frames:
        tag, seq = frame["message"].split(":")
        by_tag.setdefault(tag, []).append(int(seq))
    for tag, seqs in by_tag.items():
        assert seqs == sorted(seqs), f"publisher {tag} out of its own order"


async def read_all(members: dict[str, Client], count: int, seen: dict[str, list], timeout: float,
                   nursery: trio.Nursery) -> None:
    for name, client in members.items():
        async def read(name: str = name, client: Client = client) -> None:
            seen[name] = await client.frames(count, timeout=timeout)

        nursery.start_soon(read)


# 1. One order per room, on every node -------------------------------------------------


@needs_redis
async def test_three_nodes_two_clients_publishing_at_once_one_order_everywhere(redis):
    """Two clients on nodes A and B each send 1,000 room_messages without waiting for
    anything; members on A, B and C (the publishers are members too) all see the same
    2,000 frames, offsets 1..2000 in one epoch."""
    per_publisher = TOTAL // 2
    with nodes(redis.url, 3, **FAST) as (a, b, c):
        async with contextlib.AsyncExitStack() as stack:
            placement = {"pub_a": (a, 1), "pub_b": (b, 2), "on_a": (a, 3), "on_b": (b, 4),
                         "on_c": (c, 5)}
            members: dict[str, Client] = {}
            for name, (node, user) in placement.items():
                members[name] = await stack.enter_async_context(connect(node, user))
                answer = await members[name].request({"type": "join_room", "room": ROOM})
                assert answer["message"] == f"Joined room: {ROOM}"

            async def publish(client: Client, tag: str) -> None:
                for seq in range(per_publisher):
                    await client.send({"type": "room_message", "room": ROOM,
                                       "data": f"{tag}:{seq}"})

            seen: dict[str, list] = {}
            async with trio.open_nursery() as nursery:
                await read_all(members, TOTAL, seen, 40, nursery)
                nursery.start_soon(publish, members["pub_a"], "A")
                nursery.start_soon(publish, members["pub_b"], "B")
            for frames in seen.values():
                assert_each_publisher_in_order(frames)
            assert_one_order(seen, TOTAL)


@needs_redis
async def test_two_nodes_facades_and_a_worker_publishing_at_once_one_order_everywhere(redis):
    """Backend code publishes: a task calling each node's facade and a worker process's
    RemoteNotificationService, none waiting for the others; two members on each node."""
    worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
    shares = {"A": 900, "B": 900, "W": 200}
    assert sum(shares.values()) == TOTAL
    async with cluster_node(redis.url) as a, cluster_node(redis.url) as b:
        async with contextlib.AsyncExitStack() as stack:
            members: dict[str, Client] = {}
            for name, node, user in (("a1", a, 1), ("a2", a, 2), ("b1", b, 3), ("b2", b, 4)):
                members[name] = await stack.enter_async_context(connect(node, user))
                await members[name].request({"type": "join_room", "room": ROOM})

            async def publish(facade: Any, tag: str) -> None:
                for seq in range(shares[tag]):
                    await facade.notify_room(ROOM, f"{tag}:{seq}")

            seen: dict[str, list] = {}
            async with trio.open_nursery() as nursery:
                await read_all(members, TOTAL, seen, 40, nursery)
                nursery.start_soon(publish, a.notifications, "A")
                nursery.start_soon(publish, b.notifications, "B")
                nursery.start_soon(publish, worker, "W")
            for frames in seen.values():
                assert_each_publisher_in_order(frames)
            assert_one_order(seen, TOTAL)


# 2. Epoch changes lose nothing live ---------------------------------------------------


def new_epoch_from_1(frames: list[dict[str, Any]], count: int, old: set[str]) -> str | None:
    """What is wrong with a member's frames after its room's history was lost, if
    anything: it must get `count` frames of one new epoch, offsets 1 to `count`."""
    got = [(f.get("epoch"), f.get("offset")) for f in frames]
    if len(frames) != count:
        return f"got {len(frames)} of {count}: {got}"
    epoch = frames[0]["epoch"]
    if epoch in old:
        return f"still epoch {epoch} after the history was lost"
    if got != [(epoch, n) for n in range(1, count + 1)]:
        return f"not offsets 1..{count} of one epoch: {got}"
    return None


@needs_redis
async def test_redis_restarted_empty_late_members_and_tabs_get_the_new_epoch_from_1(redis):
    """Members that joined at offset 50 (and a tab that came at personal offset 3) get
    every frame of the epoch that follows a Redis crash, from offset 1 on; notify_user
    four times after the restart reaches both tabs every time and answers True."""
    async with cluster_node(redis.url) as a, cluster_node(redis.url) as b:
        async with contextlib.AsyncExitStack() as stack:
            async def member(node: Any, user: int, room: bool = True) -> Client:
                client = await stack.enter_async_context(connect(node, user))
                if room:
                    await client.request({"type": "join_room", "room": ROOM})
                return client

            early = await member(a, 1)
            tab1 = await member(a, 7, room=False)
            for i in range(50):
                await (a, b)[i % 2].notifications.notify_room(ROOM, f"before {i}")
            for i in range(3):
                assert await a.notifications.notify_user(7, f"personal before {i}") is True
            before = await early.frames(50)
            personal_before = await tab1.frames(3)
            assert [f["offset"] for f in before] == list(range(1, 51))
            assert [f["offset"] for f in personal_before] == [1, 2, 3]
            old = {before[0]["epoch"], personal_before[0]["epoch"]}
            # Late: the room is at offset 50, user 7's personal room at 3.
            late_b, late_a = await member(b, 2), await member(a, 3)
            tab2 = await member(b, 7, room=False)
            await eventually(lambda: a.notifications.get_room_members(ROOM) == {1, 2, 3})

            redis.kill()
            await eventually(lambda: not a.ready and not b.ready)
            redis.start()  # empty: every key is gone
            await eventually(lambda: a.ready and b.ready, timeout=20)
            for node in (a, b):
                await eventually(lambda n=node: n.notifications.get_room_members(ROOM) == {1, 2, 3})
                await eventually(lambda n=node: n.notifications.is_user_connected(7))

            for i in range(20):
                await (a, b)[i % 2].notifications.notify_room(ROOM, f"after {i}")
            answers = [await (a, b)[i % 2].notifications.notify_user(7, f"personal after {i}")
                       for i in range(4)]
            problems = {}
            for name, client, count in (
                ("early on A", early, 20), ("late on B", late_b, 20), ("late on A", late_a, 20),
                ("tab1 on A", tab1, 4), ("tab2 on B (came at 3)", tab2, 4),
            ):
                problems[name] = new_epoch_from_1(await client.frames(count, timeout=3),
                                                  count, old)
            if answers != [True] * 4:
                problems["notify_user answers"] = f"{answers}, not four True"
            problems = {name: problem for name, problem in problems.items() if problem}
            assert problems == {}, "\n".join(f"{k}: {v}" for k, v in problems.items())


async def test_a_room_idle_past_history_ttl_still_reaches_its_connected_members(
    deployment, jumping_clock,
):
    """Members stay connected while the room idles past a tiny history_ttl; what is
    published afterwards (a new epoch from 1, or the same one going on) reaches every
    member, the late ones (joined at offset 10) included, and the tabs too."""
    async with deployment(history_ttl=0.5) as node:
        async with connect(node, 1) as early, connect(node, 7) as tab1:
            await early.request({"type": "join_room", "room": ROOM})
            for i in range(10):
                await node.notifications.notify_room(ROOM, f"before {i}")
            assert await node.notifications.notify_user(7, "personal before") is True
            assert len(await early.frames(10)) == 10 and len(await tab1.frames(1)) == 1
            async with connect(node, 2) as late, connect(node, 7) as tab2:
                await late.request({"type": "join_room", "room": ROOM})
                jumping_clock.jump(1.5)  # idle: past the retention of every frame
                if node.config.redis_url:
                    # In a cluster the history is Redis's, expired by PEXPIRE on Redis's own
                    # clock: wait until Redis has forgotten the room and the tab's room.
                    await _forgotten_by_redis(node, [ROOM, "user_7"])
                for i in range(10):
                    await node.notifications.notify_room(ROOM, f"after {i}")
                assert await node.notifications.notify_user(7, "personal 1") is True
                assert await node.notifications.notify_user(7, "personal 2") is True
                room_seen = {"early": await early.frames(10, timeout=3),
                             "late (came at 10)": await late.frames(10, timeout=3)}
                tabs = {"tab1": await tab1.frames(2, timeout=3),
                        "tab2 (came at 1)": await tab2.frames(2, timeout=3)}
                expected = {**{name: [f"after {i}" for i in range(10)] for name in room_seen},
                            **{name: ["personal 1", "personal 2"] for name in tabs}}
                got = {name: [(f["message"], f.get("offset")) for f in frames]
                       for name, frames in {**room_seen, **tabs}.items()}
                wrong = {name: got[name] for name in got
                         if [message for message, _ in got[name]] != expected[name]}
                assert wrong == {}, f"(message, offset) received: {wrong}"
                assert_one_order(room_seen, 10)
                assert_one_order(tabs, 2)


# 5. A node started while Redis is down ------------------------------------------------


@needs_redis
async def test_a_node_started_while_redis_is_down_serves_then_joins_the_cluster():
    server = RedisServer()  # its port is closed: nothing listens yet
    try:
        # A short heartbeat: a connection stuck before its welcome ends soon (with 4000).
        async with running(redis_url=server.url, presence_lease=2.0, ping_interval=1.0,
                           ping_timeout=1.0) as a:
            async with contextlib.AsyncExitStack() as stack:
                # The 101 answer is written with the welcome: both within 1 s.
                started = trio.current_time()
                x = await stack.enter_async_context(
                    connect(a, 1, connect_timeout=1, disconnect_timeout=1))
                assert trio.current_time() - started < 1.0, "welcomed, but not within 1 s"
                assert x.welcome["data"]["user_id"] == 1
                y = await stack.enter_async_context(connect(a, 2))
                for client in (x, y):
                    await client.request({"type": "join_room", "room": ROOM})
                assert (await x.request({"type": "room_message", "room": ROOM,
                                         "data": "alone"}))["message"] == "alone"
                assert (await y.recv())["message"] == "alone"

                server.start()
                async with cluster_node(server.url) as b, connect(b, 3) as z:
                    await eventually(lambda: a.ready, timeout=20)
                    await z.request({"type": "join_room", "room": ROOM})
                    await x.request({"type": "room_message", "room": ROOM, "data": "to B"})
                    assert (await y.recv())["message"] == "to B"
                    assert (await z.recv())["message"] == "to B"
                    await z.request({"type": "room_message", "room": ROOM, "data": "to A"})
                    assert (await x.recv())["message"] == "to A"
                    assert (await y.recv())["message"] == "to A"
    finally:
        server.stop()


async def _forgotten_by_redis(node: Any, rooms: list[str]) -> None:
    """Wait (polling Redis) until the rooms' epochs have expired there."""
    keys = [f"{{{node.config.redis_prefix}}}:epoch:{room}" for room in rooms]
    async with coredis.Redis.from_url(node.config.redis_url) as client:
        with trio.fail_after(10):
            while await client.exists(keys):
                await trio.sleep(0.05)  # the poll interval of a wait on a condition
