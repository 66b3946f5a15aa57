"""Positions, history and recovery: a client that comes back misses nothing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from trio_websocket import open_websocket_url

from .conftest import connect, eventually, reconnect_at_random, running, token_for, ws_url

BENCH = Path(__file__).resolve().parent.parent / "bench"


async def _frames(client, count: int) -> list[dict]:
    return [await client.recv(positions=True) for _ in range(count)]


async def test_room_frames_carry_increasing_offsets_in_one_epoch_broadcasts_none(service):
    async with connect(service, 1, scope="roomcast:broadcast") as client:
        joined = await client.request({"type": "join_room", "room": "r", "data": {"recover": True}})
        assert joined["data"]["offset"] == 0 and isinstance(joined["data"]["epoch"], str)
        for i in range(3):
            await service.notifications.notify_room("r", f"m{i}")
        await client.send({"type": "room_message", "room": "r", "data": "mine"})
        frames = await _frames(client, 4)
        assert [f["offset"] for f in frames] == [1, 2, 3, 4]
        assert {f["epoch"] for f in frames} == {joined["data"]["epoch"]}
        await service.notifications.notify_user(1, "personal")
        personal = await client.recv(positions=True)
        assert personal["offset"] == 1 and personal["epoch"] != joined["data"]["epoch"]
        await client.send({"type": "broadcast", "data": "all"})
        broadcast = await client.recv(positions=True)
        assert "offset" not in broadcast and "epoch" not in broadcast
        # Seed-style joins and welcomes keep the seed's exact shape.
        plain = await client.request({"type": "join_room", "room": "s"})
        assert plain["data"] == {"rooms": ["user_1", "r", "s"]}
        assert client.welcome["data"] == {"user_id": 1, "rooms": ["user_1"]}


async def test_reconnect_with_a_position_gets_exactly_the_missed_frames_in_order(service):
    async with connect(service, 1) as first:
        await first.request({"type": "join_room", "room": "r"})
        await service.notifications.notify_room("r", "seen")
        seen = await first.recv(positions=True)
    for i in range(5):  # sent while the client is away
        await service.notifications.notify_room("r", f"missed {i}")
    async with connect(service, 1) as again:
        position = {"offset": seen["offset"], "epoch": seen["epoch"]}
        await again.send({"type": "join_room", "room": "r", "data": position})
        answer = await again.recv(positions=True)
        assert answer["data"]["recovered"] is True
        assert answer["data"]["offset"] == seen["offset"] + 5
        await service.notifications.notify_room("r", "new")
        frames = await _frames(again, 6)
        assert [f["message"] for f in frames] == [f"missed {i}" for i in range(5)] + ["new"]
        assert [f["offset"] for f in frames] == list(range(seen["offset"] + 1, seen["offset"] + 7))
        await again.nothing_within(0.1)


async def test_an_offline_user_gets_the_personal_notifications_sent_while_away_once(service):
    assert await service.notifications.notify_user(9, "your upload is complete") is False
    assert await service.notifications.notify_user_in_room(9, "and one more") is False
    async with connect(service, 9) as plain:  # a seed client asks for nothing: gets nothing
        assert plain.welcome["data"] == {"user_id": 9, "rooms": ["user_9"]}
        await plain.nothing_within(0.1)
    async with connect(service, 9, query="&recover=1") as tab:
        assert tab.welcome["data"]["user_id"] == 9  # the welcome comes first
        assert (await tab.recv())["message"] == "your upload is complete"
        assert (await tab.recv())["message"] == "and one more"
        await tab.nothing_within(0.1)
        async with connect(service, 9, query="&recover=1") as second_tab:  # once: not again
            await second_tab.nothing_within(0.2)
    async with connect(service, 9, query="&recover=1") as later:
        await later.nothing_within(0.2)


async def test_more_offline_notifications_than_kept_are_refused_before_any_frame(service):
    size = service.config.history_size
    for i in range(size + 2):
        assert await service.notifications.notify_user(8, f"n{i}") is False
    async with connect(service, 8, query="&recover=1") as tab:
        # Told first that some were lost, then given the ones kept, in order.
        assert tab.welcome["data"]["recovered"] is False
        assert tab.welcome["data"]["reason"] == "too_many"
        for i in range(2, size + 2):
            assert (await tab.recv())["message"] == f"n{i}"
        await tab.nothing_within(0.1)
        assert await service.notifications.notify_user(8, "live") is True
        assert (await tab.recv())["message"] == "live"


async def test_a_short_reconnect_to_a_quiet_room_recovers(service):
    """The room had no frame and lost its last member: its epoch lives on."""
    async with connect(service, 1) as first:
        answer = await first.request({"type": "join_room", "room": "quiet",
                                      "data": {"recover": True}})
        seen = answer["data"]
    async with connect(service, 1) as again:
        answer = await again.request({"type": "join_room", "room": "quiet", "data": {
            "offset": seen["offset"], "epoch": seen["epoch"]}})
        assert answer["data"]["recovered"] is True, answer
    # The personal room too, through the URL, with no frame ever sent to it.
    async with connect(service, 5, query="&recover=1") as tab:
        position = tab.welcome["data"]
    query = f"&offset={position['offset']}&epoch={position['epoch']}"
    async with connect(service, 5, query=query) as tab:
        assert tab.welcome["data"]["recovered"] is True, tab.welcome


async def test_handshake_position_recovers_the_personal_room(service):
    async with connect(service, 4) as tab:
        await service.notifications.notify_user(4, "one")
        seen = await tab.recv(positions=True)
    await service.notifications.notify_user(4, "two")  # nobody connected: kept
    query = f"?token={token_for(4)}&offset={seen['offset']}&epoch={seen['epoch']}"
    async with open_websocket_url(ws_url(service, query)) as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome["data"]["recovered"] is True
        assert json.loads(await ws.get_message())["message"] == "two"


async def test_an_old_epoch_is_refused_honestly(service):
    async with connect(service, 1) as client:
        reply = await client.request(
            {"type": "join_room", "room": "r", "data": {"offset": 3, "epoch": "gone-away"}}
        )
        assert reply["data"]["recovered"] is False
        assert reply["data"]["reason"] == "epoch_changed"
        await client.nothing_within(0.1)


async def test_positions_past_the_retention_are_refused_too_many_or_too_old(jumping_clock):
    async with running(history_size=3, history_ttl=0.5) as service:
        async with connect(service, 1) as client:
            await client.request({"type": "join_room", "room": "r"})
            await service.notifications.notify_room("r", "first")
            first = await client.recv(positions=True)
            for i in range(5):
                await service.notifications.notify_room("r", f"n{i}")
            position = {"offset": first["offset"], "epoch": first["epoch"]}
            async with connect(service, 1) as other:
                reply = await other.request({"type": "join_room", "room": "r", "data": position})
                assert (reply["data"]["recovered"], reply["data"]["reason"]) == (False, "too_many")
            jumping_clock.jump(0.7)  # everything is older than the retention now
            latest = {"offset": first["offset"] + 4, "epoch": first["epoch"]}
            async with connect(service, 1) as late:
                reply = await late.request({"type": "join_room", "room": "r", "data": latest})
                assert (reply["data"]["recovered"], reply["data"]["reason"]) == (False, "too_old")


async def test_random_disconnects_never_give_a_recovered_client_a_gap_or_a_duplicate():
    """A seeded schedule: thousands of frames, a client dropping mid-stream at random
    moments and coming back with the last position it saw."""
    rng = random.Random(20261126)
    total = 2000
    async with running(history_size=total, rate_limit=1e6, rate_burst=10**6) as service:
        received, reconnects = await reconnect_at_random([service], total, rng=rng,
                                                         max_burst=150)
        assert received == list(range(total))
        assert reconnects > 10


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("recovery.py", ["--missed", "50"], "recovery of 50 missed frames"),
        ("history_cost.py", ["--members", "20", "--publishes", "20"], "history costs"),
    ],
    ids=["recovery", "history_cost"],
)
def test_history_benchmark_runs_tiny(script: str, args: list[str], expected: str):
    """bench/recovery.py and bench/history_cost.py kept working; they assert nothing
    about speed."""
    result = subprocess.run([sys.executable, str(BENCH / script), *args, "--repeat", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


async def test_a_personal_position_recovers_what_waited_for_the_user(service):
    """The personal room lost its last tab and kept nothing, yet its epoch lives on for
    `history_ttl`: the position the client remembers recovers what reached nobody."""
    query = f"?token={token_for(6)}&recover=1"
    async with open_websocket_url(ws_url(service, query)) as ws:
        welcome = json.loads(await ws.get_message())
    position = welcome["data"]
    assert await service.notifications.notify_user(6, "while you were away") is False
    query = f"?token={token_for(6)}&offset={position['offset']}&epoch={position['epoch']}"
    async with open_websocket_url(ws_url(service, query)) as ws:
        welcome = json.loads(await ws.get_message())
        assert welcome["data"]["recovered"] is True
        assert welcome["data"]["epoch"] == position["epoch"]
        assert json.loads(await ws.get_message())["message"] == "while you were away"
    async with connect(service, 6, query="&recover=1") as again:
        await again.nothing_within(0.2)  # given once


async def test_a_room_idle_past_retention_is_a_new_epoch():
    async with running(history_ttl=1.0) as service:
        async with connect(service, 3, query="&recover=1") as tab:
            position = tab.welcome["data"]
        await eventually(lambda: not service.registry.knows("user_3"), timeout=10)
        query = f"&offset={position['offset']}&epoch={position['epoch']}"
        async with connect(service, 3, query=query) as tab:
            assert tab.welcome["data"]["recovered"] is False
            assert tab.welcome["data"]["reason"] == "epoch_changed"
