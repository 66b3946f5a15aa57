"""Kept history's memory over real connections: a node-wide budget (`history_memory`)
that a flood of large frames cannot pass, frames that go at their `history_ttl` with
no publish or join to notice it, and rooms with nobody left freed with their frames.
The budget's rules alone are in tests/test_budget.py."""

from __future__ import annotations

import json
from typing import Any

from .conftest import connect, eventually, running

MiB = 1024 * 1024


def large_payload(limit: int = 64 * 1024) -> dict[str, Any]:
    """A dict payload whose client frame is just under `limit` bytes (the default
    `max_message_size`): an ordinary user's largest frame."""
    items = ["ab"] * ((limit - 200) // 6)  # `"ab", ` as the test client sends it
    return {"items": items}


def room_message(room: str) -> dict[str, Any]:
    frame = {"type": "room_message", "room": room, "data": large_payload()}
    assert len(json.dumps(frame)) < 64 * 1024
    return frame


FLOOD = {"rate_limit": 1000.0, "rate_burst": 1000, "history_size": 100}


async def test_a_flood_of_large_frames_stays_within_the_budget_and_leaves_nothing(
    jumping_clock,
):
    budget, ttl = 2 * MiB, 60.0
    async with running(history_memory=budget, history_ttl=ttl, **FLOOD) as service:
        registry = service.registry
        rooms = [f"flood{i}" for i in range(5)]
        first_position: dict[str, Any] | None = None
        most = 0
        async with connect(service, 7) as first:
            await first.request({"type": "join_room", "room": rooms[0]})
            kept = await first.request(room_message(rooms[0]))
            assert kept["type"] == "room_message"
            first_position = {"offset": first.last_position[0], "epoch": first.last_position[1]}
            # Ten connections of the same user, two per room, each publishing big frames.
            for round_ in range(2):
                for index in range(10):
                    async with connect(service, 7) as client:
                        room = rooms[index % 5]
                        await client.request({"type": "join_room", "room": room})
                        for _ in range(2):
                            reply = await client.request(room_message(room))
                            assert reply["type"] == "room_message", (round_, reply)
                            most = max(most, registry.kept_bytes())
        assert 0 < most <= budget
        assert registry.kept_bytes() <= budget
        # Everyone left; the first frame was the node's oldest, so the budget dropped it:
        # a recovery across it is refused, not answered with a gap.
        async with connect(service, 7) as late:
            reply = await late.request({"type": "join_room", "room": rooms[0],
                                        "data": first_position})
            assert (reply["data"]["recovered"], reply["data"]["reason"]) == (False, "too_old")
        jumping_clock.jump(ttl + registry.sweep_every)
        await eventually(lambda: registry.kept_bytes() == 0)
        await eventually(lambda: not any(registry.knows(room) for room in rooms))
        assert registry.budget is not None and registry.budget.frames == 0


async def test_frames_go_at_their_ttl_while_members_stay_with_no_publish_or_join(
    jumping_clock,
):
    async with running(history_ttl=3.0, **FLOOD) as service:
        async with connect(service, 1) as client:
            await client.request({"type": "join_room", "room": "quiet"})
            await client.request(room_message("quiet"))
            room = service.registry.room("quiet")
            assert room is not None and len(room.log.kept) == 1
            jumping_clock.jump(3.5)
            # Nothing happens in the room: the frame goes on the node's timer anyway.
            await eventually(lambda: not room.log.kept, timeout=3.0)
            assert service.registry.kept_bytes() == 0


async def test_a_kept_frame_is_counted_once_as_the_bytes_sent(service):
    async with connect(service, 1) as client:
        await client.request({"type": "join_room", "room": "once"})
        await client.send(room_message("once"))
        sent = await client.ws.get_message()
        room = service.registry.room("once")
        assert room is not None
        (entry,) = room.log.kept
        assert isinstance(entry.frame, bytes)
        # One bytes object: the WebSocket frame (header and the text sent), nothing else.
        assert len(entry.frame) - len(sent.encode()) in (2, 4, 10)
        assert service.registry.kept_bytes() == len(entry.frame)
