"""The sequencer over a real Redis and real nodes: frames published back to back are
numbered a batch per round trip, go out a message per room and batch, and still reach
every member once, in offset order; a worker's open facade does the same."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio

from roomcast import BackplaneUnavailable
from roomcast.protocol import presence_rules
from roomcast.protocol.batch import RoomBatch, parse_room_message
from roomcast.remote import RemoteNotificationService

from .cluster import cluster_node, needs_redis
from .conftest import connect, eventually, make_config

pytestmark = needs_redis

FRAMES = 200


@asynccontextmanager
async def room_channel(redis: Any, room: str) -> AsyncIterator[list[bytes]]:
    """What Redis publishes on the room's channel (after the 16-byte origin)."""
    heard: list[bytes] = []
    async with coredis.Redis.from_url(redis.url, decode_responses=False) as client:
        async with client.pubsub() as pubsub, trio.open_nursery() as nursery:
            await pubsub.subscribe(f"roomcast:room:{room}")

            async def listen() -> None:
                async for message in pubsub:
                    if message.get("type") == "message":
                        heard.append(bytes(message["data"])[16:])

            nursery.start_soon(listen)
            yield heard
            nursery.cancel_scope.cancel()


async def script_calls(redis: Any) -> int:
    async with coredis.Redis.from_url(redis.url, decode_responses=False) as client:
        stats = await client.info("commandstats")
        return int(stats.get("cmdstat_eval", {}).get("calls", 0))


def offsets_of(messages: list[bytes]) -> list[int]:
    offsets = []
    for message in messages:
        batch = parse_room_message(message)
        assert isinstance(batch, RoomBatch)
        offsets += [offset for offset, _, _ in batch.numbered()]
    return offsets


async def test_a_burst_from_a_node_is_numbered_in_few_round_trips_and_kept_in_order(redis):
    async with cluster_node(redis.url) as a, cluster_node(redis.url) as b:
        async with connect(a, 1) as here, connect(b, 2) as there:
            for client in (here, there):
                await client.request({"type": "join_room", "room": "r"})
            async with room_channel(redis, "r") as heard:
                before = await script_calls(redis)
                for i in range(FRAMES):
                    assert await a.notifications.notify_room("r", f"m{i}") in (1, 2)
                for client in (here, there):
                    frames = await client.frames(FRAMES)
                    assert [f["message"] for f in frames] == [f"m{i}" for i in range(FRAMES)]
                    offsets = [f["offset"] for f in frames]
                    assert offsets == list(range(offsets[0], offsets[0] + FRAMES))
                    await client.nothing_within(0.2)
                # One script call and one room message per batch, not per frame.
                assert await script_calls(redis) - before < FRAMES / 4
                await eventually(lambda: offsets_of(heard) == offsets)
                assert len(heard) < FRAMES / 4


async def test_a_worker_with_its_facade_open_sends_in_batches_in_order(redis):
    async with cluster_node(redis.url) as node, connect(node, 1) as member:
        await member.request({"type": "join_room", "room": "r"})
        worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
        await eventually(lambda: worker.get_room_members("r") == {1})
        before = await script_calls(redis)
        async with worker:
            answers = [await worker.notify_room("r", f"m{i}") for i in range(FRAMES)]
        assert answers == [1] * FRAMES  # the room's members, from the presence view
        frames = await member.frames(FRAMES)
        assert [f["message"] for f in frames] == [f"m{i}" for i in range(FRAMES)]
        assert await script_calls(redis) - before < FRAMES / 4


async def test_an_open_worker_facade_reads_a_rooms_members_once_per_view_change(
        redis, monkeypatch):
    # Reading a room's members from the view parses a user id per member: per call, it
    # was most of a worker's CPU (a room of 100: 80 %).
    parsed: list[str] = []
    user_from_text = presence_rules.user_from_text

    def counted(text: str) -> Any:
        parsed.append(text)
        return user_from_text(text)

    monkeypatch.setattr(presence_rules, "user_from_text", counted)
    async with cluster_node(redis.url) as node, connect(node, 1) as first, \
            connect(node, 2) as second:
        for member in (first, second):
            await member.request({"type": "join_room", "room": "r"})
        worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
        await eventually(lambda: worker.get_room_members("r") == {1, 2})
        async with worker:
            parsed.clear()
            answers = [await worker.notify_room("r", f"m{i}") for i in range(FRAMES)]
            assert answers == [2] * FRAMES
            assert len(parsed) <= 2  # each member once, not once per call
            for member in (first, second):
                assert [f["message"] for f in await member.frames(FRAMES)] == [
                    f"m{i}" for i in range(FRAMES)]
            await second.request({"type": "leave_room", "room": "r"})

            async def counted_again() -> bool:  # the view changed: counted again
                return await worker.notify_room("r", "after") == 1

            await eventually(counted_again)


async def test_personal_frames_a_worker_batched_that_nobody_heard_wait_in_order(redis):
    async with cluster_node(redis.url) as node:
        worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
        async with worker:
            for i in range(5):
                assert await worker.notify_user(9, f"n{i}") is False
            await worker.broadcast("to everyone connected")  # unnumbered, in queue order
        async with connect(node, 9, query="&recover=1") as later:
            assert [(await later.recv())["message"] for _ in range(5)] == [
                f"n{i}" for i in range(5)]
            await later.nothing_within(0.3)


async def test_an_open_worker_facade_tells_of_an_outage_at_the_latest_when_it_closes(redis):
    worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
    with pytest.raises(BackplaneUnavailable):
        async with worker:
            await worker.notify_room("r", "before")
            redis.kill()
            with trio.fail_after(10):
                while True:  # the next call after the failure raises, or the block's end
                    await worker.notify_room("r", "during")
                    await trio.sleep(0.01)


async def test_a_batch_redis_fails_in_flight_is_numbered_and_delivered_here(redis, caplog):
    caplog.set_level(logging.ERROR, logger="roomcast")
    async with cluster_node(redis.url) as a, connect(a, 1) as member:
        await member.request({"type": "join_room", "room": "r"})
        await a.notifications.notify_room("r", "numbered in Redis")
        assert (await member.recv())["message"] == "numbered in Redis"
        redis.kill()
        assert a.backplane is not None and a.backplane.cluster_history  # not noticed yet
        # Queued before the outage is known: no exception for a frame delivered here.
        assert await a.notifications.notify_room("r", "numbered here") == 1
        assert (await member.recv())["message"] == "numbered here"
        await eventually(lambda: not a.backplane.healthy)
        with pytest.raises(BackplaneUnavailable):
            await a.notifications.notify_room("r", "known down: still delivered here")
        assert (await member.recv())["message"] == "known down: still delivered here"
        outages = [r for r in caplog.records if "Redis unreachable" in r.getMessage()]
        assert len(outages) == 1
