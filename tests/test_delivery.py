"""Recovery after a short absence, offline delivery that is opt-in and honest, and the
races around a user coming online (issue 11).

Most tests run twice through the `deployment` fixture: on one node, and on one node
over Redis (the cluster's history)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from roomcast import CloseCode
from roomcast.remote import RemoteNotificationService

from .cluster import cluster_node, needs_redis, nodes
from .conftest import (
    close_code,
    connect,
    eventually,
    make_config,
    running,
    token_for,
)

pytestmark = pytest.mark.timeout(120)

ROOM = "quiet"


def position_query(offset: int, epoch: str) -> str:
    return f"&offset={offset}&epoch={epoch}"


async def forgotten(node: Any, user: int) -> None:
    """Wait until `node` has no connection of `user` left: its rooms had their last
    member leave."""
    await eventually(lambda: not node.registry.connections_of(user))


# 3. A short reconnect recovers ---------------------------------------------------------


@pytest.mark.parametrize("published", [0, 3], ids=["nothing_published", "all_seen"])
async def test_a_room_recovers_after_its_last_member_was_away_a_second(
    deployment, published, jumping_clock,
):
    """The room's last member leaves and comes back a second later (well within
    history_ttl) with the position it was given (`{"recover": true}` first): recovered,
    not epoch_changed, nothing replayed, and the next frame follows on."""
    async with deployment() as node:
        async with connect(node, 1) as client:
            joined = await client.request(
                {"type": "join_room", "room": ROOM, "data": {"recover": True}}
            )
            position = {"offset": joined["data"]["offset"], "epoch": joined["data"]["epoch"]}
            for i in range(published):
                await node.notifications.notify_room(ROOM, f"m{i}")
            for frame in await client.frames(published):
                position = {"offset": frame["offset"], "epoch": frame["epoch"]}
        await forgotten(node, 1)
        jumping_clock.jump(1.0)  # away for a second
        async with connect(node, 1) as again:
            answer = await again.request({"type": "join_room", "room": ROOM, "data": position})
            assert answer["data"].get("recovered") is True, answer
            assert (answer["data"]["offset"], answer["data"]["epoch"]) == (
                position["offset"], position["epoch"])
            await again.nothing_within(0.2)
            await node.notifications.notify_room(ROOM, "next")
            (frame,) = await again.frames(1)
            assert (frame["message"], frame["offset"], frame["epoch"]) == (
                "next", position["offset"] + 1, position["epoch"])


@pytest.mark.parametrize("published", [0, 2], ids=["nothing_published", "all_seen"])
async def test_the_personal_room_recovers_through_the_url_after_a_second(
    deployment, published, jumping_clock,
):
    async with deployment() as node:
        async with connect(node, 4, query="&recover=1") as tab:
            position = (tab.welcome["data"]["offset"], tab.welcome["data"]["epoch"])
            for i in range(published):
                assert await node.notifications.notify_user(4, f"p{i}") is True
            for frame in await tab.frames(published):
                position = (frame["offset"], frame["epoch"])
        await forgotten(node, 4)
        jumping_clock.jump(1.0)  # away for a second
        async with connect(node, 4, query=position_query(*position)) as again:
            welcome = again.welcome["data"]
            assert welcome.get("recovered") is True, welcome
            assert (welcome["offset"], welcome["epoch"]) == position
            await again.nothing_within(0.2)


async def test_a_close_for_an_expired_token_then_a_reconnect_recovers(deployment):
    """Closed with 4001 (a token of two seconds, no leeway), the client comes back with
    a fresh token and its positions: both its room and its personal room recover."""
    async with deployment(jwt_leeway=0.0) as node:
        short = token_for(5, node.config, ttl=2)
        async with connect(node, 5, token=short, query="&recover=1") as tab:
            personal = (tab.welcome["data"]["offset"], tab.welcome["data"]["epoch"])
            joined = await tab.request(
                {"type": "join_room", "room": ROOM, "data": {"recover": True}}
            )
            room = {"offset": joined["data"]["offset"], "epoch": joined["data"]["epoch"]}
            assert await close_code(tab) == CloseCode.TOKEN_EXPIRED
        await forgotten(node, 5)
        async with connect(node, 5, query=position_query(*personal)) as again:
            assert again.welcome["data"].get("recovered") is True, again.welcome
            answer = await again.request({"type": "join_room", "room": ROOM, "data": room})
            assert answer["data"].get("recovered") is True, answer
            await again.nothing_within(0.2)


async def test_a_new_service_answers_epoch_changed():
    """One node, restarted: its rooms' history is gone, and the answer says so."""
    async with running() as first:
        async with connect(first, 1, query="&recover=1") as client:
            await client.request({"type": "join_room", "room": ROOM})
            await first.notifications.notify_room(ROOM, "before")
            assert await first.notifications.notify_user(1, "personal") is True
            room, personal = await client.frames(2)
    async with running() as second:
        query = position_query(personal["offset"], personal["epoch"])
        async with connect(second, 1, query=query) as again:
            assert again.welcome["data"]["recovered"] is False
            assert again.welcome["data"]["reason"] == "epoch_changed"
            answer = await again.request({"type": "join_room", "room": ROOM, "data": {
                "offset": room["offset"], "epoch": room["epoch"]}})
            assert (answer["data"]["recovered"], answer["data"]["reason"]) == (
                False, "epoch_changed")
            await again.nothing_within(0.2)


@needs_redis
async def test_lost_redis_data_answers_epoch_changed(redis):
    import coredis

    async with cluster_node(redis.url) as node:
        async with connect(node, 1) as client:
            await client.request({"type": "join_room", "room": ROOM})
            await node.notifications.notify_room(ROOM, "before")
            (seen,) = await client.frames(1)
        await forgotten(node, 1)
        async with coredis.Redis.from_url(redis.url) as raw:
            await raw.flushall()
        async with connect(node, 1) as again:
            answer = await again.request({"type": "join_room", "room": ROOM, "data": {
                "offset": seen["offset"], "epoch": seen["epoch"]}})
            assert (answer["data"]["recovered"], answer["data"]["reason"]) == (
                False, "epoch_changed")
            assert answer["data"]["epoch"] != seen["epoch"]
            await again.nothing_within(0.2)


# 4. Offline delivery is opt-in and honest ----------------------------------------------


async def test_a_plain_client_of_an_offline_user_gets_the_seeds_welcome_and_nothing_else(
    deployment,
):
    async with deployment() as node:
        assert await node.notifications.notify_user(9, "your upload is complete") is False
        assert await node.notifications.notify_user(9, "and one more") is False
        async with connect(node, 9) as tab:
            assert tab.welcome["data"] == {"user_id": 9, "rooms": ["user_9"]}
            await tab.nothing_within(0.3)


async def test_a_client_that_asks_gets_what_was_kept_for_it_after_the_welcome(deployment):
    async with deployment() as node:
        assert await node.notifications.notify_user(9, "your upload is complete") is False
        assert await node.notifications.notify_user(9, "and one more") is False
        async with connect(node, 9, query="&recover=1") as tab:
            assert tab.welcome["message"].startswith("Connected successfully")
            assert tab.welcome["data"].get("recovered") is not False, tab.welcome
            frames = await tab.frames(2)
            assert [f["message"] for f in frames] == ["your upload is complete", "and one more"]
            assert [f["offset"] for f in frames] == [frames[0]["offset"], frames[0]["offset"] + 1]
            await tab.nothing_within(0.2)


async def test_notify_user_is_true_only_when_a_connection_got_it_now(deployment):
    async with deployment() as node:
        async with connect(node, 3) as tab:
            assert await node.notifications.notify_user(3, "now") is True
            assert (await tab.recv())["message"] == "now"
        await forgotten(node, 3)
        assert await node.notifications.notify_user(3, "later") is False


async def test_more_missed_than_kept_is_told_in_the_welcome_before_the_frames_kept(
    deployment,
):
    """history_size 3, 5 notifications while offline: `?recover=1` is told `too_many`
    in the welcome, then gets the three still kept, once; live frames follow."""
    async with deployment(history_size=3) as node:
        for i in range(5):
            assert await node.notifications.notify_user(9, f"offline {i}") is False
        async with connect(node, 9, query="&recover=1") as tab:
            welcome = tab.welcome["data"]
            assert (welcome.get("recovered"), welcome.get("reason")) == (False, "too_many"), welcome
            kept = await tab.frames(3)
            assert [f["message"] for f in kept] == ["offline 2", "offline 3", "offline 4"]
            await tab.nothing_within(0.3)
            assert await node.notifications.notify_user(9, "live") is True
            assert [f["message"] for f in await tab.frames(1)] == ["live"]


async def test_a_personal_position_older_than_the_window_is_refused_before_what_waited(
    deployment,
):
    """The position cannot be served whole: refused, then only what reached no
    connection (and is still kept) follows, once."""
    async with deployment(history_size=3) as node:
        async with connect(node, 9, query="&recover=1") as tab:
            assert await node.notifications.notify_user(9, "seen") is True
            (seen,) = await tab.frames(1)
        await forgotten(node, 9)
        for i in range(5):
            assert await node.notifications.notify_user(9, f"offline {i}") is False
        async with connect(node, 9, query=position_query(seen["offset"], seen["epoch"])) as tab:
            welcome = tab.welcome["data"]
            assert (welcome.get("recovered"), welcome.get("reason")) == (False, "too_many"), welcome
            kept = await tab.frames(3)
            assert [f["message"] for f in kept] == ["offline 2", "offline 3", "offline 4"]
            await tab.nothing_within(0.3)
        async with connect(node, 9, query="&recover=1") as again:
            await again.nothing_within(0.3)  # once


async def test_a_room_position_older_than_the_window_is_refused_and_nothing_old_follows(
    deployment,
):
    async with deployment(history_size=3) as node:
        async with connect(node, 2) as keeper:  # the room stays, with its history
            await keeper.request({"type": "join_room", "room": ROOM})
            async with connect(node, 1) as client:
                await client.request({"type": "join_room", "room": ROOM})
                await node.notifications.notify_room(ROOM, "seen")
                (seen,) = await client.frames(1)
            for i in range(5):
                await node.notifications.notify_room(ROOM, f"missed {i}")
            async with connect(node, 1) as again:
                answer = await again.request({"type": "join_room", "room": ROOM, "data": {
                    "offset": seen["offset"], "epoch": seen["epoch"]}})
                assert (answer["data"].get("recovered"), answer["data"].get("reason")) == (
                    False, "too_many"), answer
                await again.nothing_within(0.3)


# 6. Races ------------------------------------------------------------------------------

OFFLINE_USERS = 2000


async def test_many_offline_notifications_each_reach_their_user_who_asks():
    """2,000 facade calls to distinct offline users on one node, each user connecting
    with `?recover=1` right after its call, 25 at a time: every one gets its frame. A
    history_ttl of 4 s makes the registry sweep every second meanwhile, so that it runs
    between a room's creation and its publish if it can."""
    async with running(history_ttl=4.0) as node:
        answers: list[bool] = []
        missing: list[tuple[int, list[str]]] = []

        async def one(user: int) -> None:
            answers.append(await node.notifications.notify_user(user, f"for {user}"))
            async with connect(node, user, query="&recover=1") as tab:
                got = [f["message"] for f in await tab.frames(1, timeout=2)]
                if got != [f"for {user}"]:
                    missing.append((user, got))

        async def worker(users: range) -> None:
            for user in users:
                await one(user)
                if len(missing) > 10:
                    return

        per_worker = OFFLINE_USERS // 25
        async with trio.open_nursery() as nursery:
            for start in range(1000, 1000 + OFFLINE_USERS, per_worker):
                nursery.start_soon(worker, range(start, start + per_worker))
        assert missing == [], f"users without their frame (user, got): {missing[:10]}"
        assert answers == [False] * OFFLINE_USERS


@needs_redis
@pytest.mark.parametrize("lanes", [1, 10], ids=["one_at_a_time", "ten_at_once"])
async def test_a_worker_notifying_right_after_the_welcome_is_told_true(redis, lanes):
    """Presence: once a tab has its welcome, a worker's notify_user answers True and
    reaches it. 50 times, a new user each time: one after another, and in ten lanes
    at once (tabs of other users arriving meanwhile). The node runs in its own process,
    as it would beside a worker."""
    worker = RemoteNotificationService.from_config(make_config(redis_url=redis.url))
    with nodes(redis.url, 1) as (node,):
        async with connect(node, 499):  # once Redis lists this tab, the node has joined
            await eventually(lambda: worker.is_user_connected(499))
        answers: dict[int, bool] = {}

        async def lane(users: range) -> None:
            for user in users:
                async with connect(node, user) as tab:
                    answers[user] = await worker.notify_user(user, "right away")
                    got = [f["message"] for f in await tab.frames(1, timeout=5)]
                    assert got == ["right away"], (user, got)

        async with trio.open_nursery() as nursery:
            per_lane = 50 // lanes
            for start in range(500, 550, per_lane):
                nursery.start_soon(lane, range(start, start + per_lane))
        wrong = sorted(user for user, answer in answers.items() if answer is not True)
        assert wrong == [], f"{len(wrong)} of 50 calls answered False, users {wrong[:10]}"
