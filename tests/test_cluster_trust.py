"""Redis is trusted for delivery, never for the process's life: whatever anyone with
write access to Redis publishes on the channels a node hears, or leaves in its
streams, a malformed message is dropped, counted, and logged once per kind; the node
keeps serving, with no restart. Over a real Redis, one node in this process (its log
and metrics are read) and one in its own."""

from __future__ import annotations

import logging
from collections import Counter

from .cluster import needs_redis, nodes
from .conftest import connect, eventually, running

pytestmark = needs_redis

ORIGIN = b"0123456789abcdef"  # no node's: 16 bytes, as a publisher's prefix
DEEP = b"[" * 100_000

# (channel, message, the kind it is dropped as). A frame is checked as the script writes
# it (UTF-8, an object, its position at its end), not parsed: what is inside is the
# publisher's, and Redis is trusted for delivery (docs/security.md, Redis).
GARBAGE = [
    ("presence", DEEP, "presence_not_json"),
    ("presence", b"\xff\xfe{}", "presence_not_json"),
    ("presence", b'{"node": "x", "full": {"users": [1e999]}}', "presence_not_json"),
    ("presence", b'{"node": "x", "full": {"users": ["\\ud800"]}}', "presence_not_json"),
    ("presence", b"[1, 2]", "presence_shape"),
    ("presence", b'{"node": 5}', "presence_shape"),
    ("presence", b'{"node": "x", "full": {"users": "abc"}}', "presence_shape"),
    ("presence", b'{"node": "x", "add": {"rooms": {"r": [1]}}}', "presence_shape"),
    ("room", ORIGIN + b"no newline", "room_header"),
    ("room", ORIGIN + b"1 e\x00\n{}", "room_header"),
    ("room", ORIGIN + b"99999999999999999999 abc\n{}", "room_header"),
    ("room", ORIGIN + b"\nnot json", "room_frame"),
    ("room", ORIGIN + b"\n" + DEEP, "room_frame"),
    ("room", ORIGIN + b'\n{"type": "room_message"', "room_frame"),
    ("room", ORIGIN + b'\n{"type": "room_message", "message": "\xff"}', "room_frame"),
    ("room", ORIGIN + b'5 abc\n{"type": "room_message", "offset": 6, "epoch": "abc"}',
     "room_frame"),
    ("broadcast", ORIGIN + b'1 abc\n{"type": "broadcast", "offset": 1, "epoch": "abc"}',
     "broadcast_header"),
    ("broadcast", ORIGIN + b'\n{"type": "broadcast"', "broadcast_frame"),
    ("broadcast", ORIGIN + b"\n" + DEEP, "broadcast_frame"),
]
CHANNELS = {"presence": "roomcast:presence", "room": "roomcast:room:r",
            "broadcast": "roomcast:room:*"}


def dropped_lines(caplog) -> Counter[str]:
    lines = [r.getMessage() for r in caplog.records
             if r.name == "roomcast.actors.backplane" and "dropped a malformed" in r.getMessage()]
    return Counter(line.split("(", 1)[1].split(":", 1)[0] for line in lines)


async def test_garbage_on_every_channel_is_dropped_and_logged_once_per_kind(redis, caplog):
    import coredis

    caplog.set_level(logging.WARNING, logger="roomcast.actors.backplane")
    async with running(redis_url=redis.url, presence_lease=2.0) as here:
        await eventually(lambda: here.ready)
        with nodes(redis.url, 1) as (there,):
            async with connect(here, 1) as mine, connect(there, 2) as theirs:
                for client in (mine, theirs):
                    await client.request({"type": "join_room", "room": "r"})
                await eventually(lambda: here.notifications.get_room_members("r") == {1, 2})
                async with coredis.Redis.from_url(redis.url) as raw:
                    for _ in range(2):
                        for channel, message, _kind in GARBAGE:
                            await raw.publish(CHANNELS[channel], message)
                        await raw.publish(f"roomcast:node:{here.backplane.node_id}:inbox",
                                          DEEP)
                kinds = Counter(kind for _, _, kind in GARBAGE)
                expected = {kind: 2 * count for kind, count in kinds.items()}
                await eventually(lambda: dict(here.metrics.redis_dropped) == expected)
                await mine.nothing_within(0.2)
                # Still one cluster: a room message crosses, presence too.
                await theirs.request({"type": "room_message", "room": "r", "data": "across"})
                assert (await mine.recv())["message"] == "across"
                assert here.notifications.is_user_connected(2)
        assert dict(dropped_lines(caplog)) == dict.fromkeys(kinds, 1)
        assert not here.metrics.restarts
        assert here.ready


async def test_a_stream_entry_without_its_frame_is_a_gap_not_a_crash(redis, caplog,
                                                                     jumping_clock):
    """Numbered, never published, unreadable in the stream: the frames before "after"
    might still come through the subscription, so the room waits its patience for them
    (GAP_PATIENCE_SECONDS, jumped here), then members get the gap."""
    import coredis

    from roomcast.actors.room import GAP_PATIENCE_SECONDS

    caplog.set_level(logging.WARNING, logger="roomcast.actors.backplane")
    async with running(redis_url=redis.url, presence_lease=2.0) as here:
        await eventually(lambda: here.ready)
        async with connect(here, 1) as client:
            await client.request({"type": "join_room", "room": "r"})
            first = await client.request({"type": "room_message", "room": "r", "data": "1"})
            assert first["message"] == "1"
            offset, epoch = client.last_position
            async with coredis.Redis.from_url(redis.url) as raw:
                # Two forged entries: one with no frame, one whose frame is too deep.
                for fields in ({"t": "1"}, {"t": "1", "f": DEEP}):
                    numbered = await raw.incr("{roomcast}:seq:r")
                    await raw.xadd("{roomcast}:hist:r", fields, identifier=f"0-{numbered}")
            await here.notifications.notify_room("r", "after")
            room = here.registry.room("r")
            assert room is not None
            await eventually(lambda: room.holdback.held)  # "after", waiting for the two
            jumping_clock.jump(GAP_PATIENCE_SECONDS)
            after = await client.recv(positions=True)
            assert after["message"] == "after" and after["offset"] == offset + 3
            async with connect(here, 1) as late:
                answer = await late.request({"type": "join_room", "room": "r",
                                             "data": {"offset": offset, "epoch": epoch}})
                assert (answer["data"]["recovered"], answer["data"]["reason"]) == (
                    False, "too_many")
            assert await here.notifications.notify_room("r", "still") == 1
            assert (await client.recv())["message"] == "still"
        assert dict(dropped_lines(caplog)) == {"stream_entry": 1}
        assert here.metrics.redis_dropped["stream_entry"] >= 2
        assert not here.metrics.restarts


async def test_a_call_cut_by_its_connection_closing_is_backplane_unavailable():
    """Why `open_service` ended in a group with coredis's RuntimeError: a publish that
    was waiting for a pooled connection when the backplane's connection closed (its
    crash, or the node stopping) resumed in a pool that had exited, and coredis
    raised RuntimeError ("Connection pool is not initialized or has exited"), which
    went up through the facade into the caller's body. The call now answers what it
    means: Redis is not there."""
    from roomcast import BackplaneUnavailable
    from roomcast.actors.backplane import Backplane
    from roomcast.actors.registry import Registry

    from .conftest import make_config

    backplane = Backplane(make_config(redis_url="redis://127.0.0.1:1"),
                          Registry(16, lambda room: None))
    backplane._client = object()

    async def cut_short(client: object) -> None:
        backplane._client = None  # what `_run_connected` does on its way out
        raise RuntimeError("Connection pool is not initialized or has exited.")

    try:
        await backplane._redis(cut_short)
    except BackplaneUnavailable:
        return
    raise AssertionError("the RuntimeError went up to the caller")
