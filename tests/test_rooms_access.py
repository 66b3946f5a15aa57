"""Who may join a room, over real sockets: closed unless a rule opens it (open patterns,
the token's rooms claim, a room token, an in-process authorizer, the HTTP one), the
forbidden answer, and a room token's expiry. The rules alone: test_rooms_access_rules.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

import roomcast.service
from roomcast import Config, Principal, Service, mint_token, open_service

from .conftest import Client, connect, eventually, make_config, running, token_for


async def join(client: Client, room: str, **extra: Any) -> dict[str, Any]:
    return await client.request({"type": "join_room", "room": room, **extra})


def joined(answer: dict[str, Any], room: str) -> bool:
    assert answer["room"] == room, answer
    if answer["type"] == "info":
        assert answer["message"] == f"Joined room: {room}"
        return True
    assert answer["type"] == "error" and answer["data"] == {"code": "forbidden"}, answer
    return False


def room_token(config: Config, user: Any, room: str, ttl: float = 3600.0) -> str:
    return mint_token(config, user, ttl=ttl, extra={"room": room})


async def echo(client: Client) -> None:
    """The connection still answers (and what was queued before the echo came first)."""
    assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


# closed by default --------------------------------------------------------------------


async def test_a_room_is_closed_unless_a_rule_opens_it_and_the_answer_says_how():
    async with running(open_rooms=(), max_strikes=2) as service:
        async with connect(service, 1) as client:
            for _ in range(3):  # more refusals than max_strikes: a refused join is no strike
                answer = await join(client, "project_7")
                assert not joined(answer, "project_7")
            assert "closed" in answer["message"] and "--open-rooms" in answer["message"]
            assert "'rooms' claim" in answer["message"] and "room token" in answer["message"]
            assert service.notifications.get_room_members("project_7") == set()
            # The connection is otherwise unchanged: its personal room, its frames.
            assert joined(await join(client, "user_1"), "user_1")
            await echo(client)
            await service.notifications.notify_user(1, "still here")
            assert (await client.recv())["message"] == "still here"
    async with running(open_rooms=("*",)) as service:  # the seed's behaviour
        async with connect(service, 1) as client:
            for room in ("project_7", "a", "x.y:z@w-1"):
                assert joined(await join(client, room), room)


async def test_open_patterns_glob_the_whole_name_and_never_open_a_personal_room():
    async with running(open_rooms=("public_*", "team?", "user_*", "u*")) as service:
        async with connect(service, 1) as client:
            assert joined(await join(client, "public_news"), "public_news")
            assert joined(await join(client, "teamA"), "teamA")
            assert not joined(await join(client, "teamAB"), "teamAB")  # ? is one character
            assert not joined(await join(client, "a_public_x"), "a_public_x")  # whole name
            refused = await join(client, "user_2")
            assert refused["data"] == {"code": "forbidden"}
            assert service.notifications.get_room_members("user_2") == set()


# the token's claim --------------------------------------------------------------------


async def test_the_rooms_claim_opens_its_patterns_for_that_user_only():
    async with running(open_rooms=()) as service:
        config = service.config
        granted = token_for(1, config, extra={"rooms": ["project_*", "team_1"]})
        async with connect(service, 1, token=granted) as client, connect(service, 2) as other:
            assert joined(await join(client, "project_7"), "project_7")
            assert joined(await join(client, "team_1"), "team_1")
            assert not joined(await join(client, "team_2"), "team_2")
            assert not joined(await join(other, "project_7"), "project_7")


async def test_the_rooms_claim_as_a_string_splits_on_plain_spaces_only():
    async with running(open_rooms=(), rooms_claim="chans") as service:
        config = service.config
        token = token_for(1, config, extra={"chans": "alpha beta\u3000gamma"})
        async with connect(service, 1, token=token) as client:
            assert joined(await join(client, "alpha"), "alpha")
            # "beta\u3000gamma" is one pattern (no room has that name): neither opens.
            assert not joined(await join(client, "beta"), "beta")
            assert not joined(await join(client, "gamma"), "gamma")


async def test_the_rooms_claim_never_opens_another_users_personal_room():
    async with running(open_rooms=()) as service:
        token = token_for(1, service.config, extra={"rooms": "u* user_* user_2"})
        async with connect(service, 1, token=token) as client:
            assert (await join(client, "user_2"))["data"] == {"code": "forbidden"}
            assert joined(await join(client, "up"), "up")
            assert not joined(await join(client, "other"), "other")


# room tokens --------------------------------------------------------------------------


async def test_a_room_token_opens_exactly_its_room_for_its_user():
    async with running(open_rooms=()) as service:
        config = service.config
        async with connect(service, 1) as client:
            for token, why in [
                (room_token(config, 1, "project_8"), "another room"),
                (room_token(config, 2, "project_7"), "another user"),
                (room_token(config, 1, "project_7", ttl=-60), "expired"),
                (room_token(config, 1, "project_7") + "x", "signature"),
            ]:
                answer = await join(client, "project_7", token=token)
                assert not joined(answer, "project_7")
                assert why in answer["message"]
                assert token not in answer["message"]
            assert joined(await join(client, "project_7", token=room_token(config, 1,
                                                                           "project_7")),
                          "project_7")
            assert service.notifications.get_room_members("project_7") == {1}


async def test_a_room_token_without_jwt_settings_is_refused_with_a_clear_text():
    async def authenticate(token: str) -> Principal | None:
        return Principal(user_id=int(token))

    config = Config(host="127.0.0.1", port=0, http_port=-1)
    async with open_service(config, authenticator=authenticate) as service:
        async with connect(service, 1, token="1") as client:
            minted = room_token(make_config(), 1, "project_7")
            answer = await join(client, "project_7", token=minted)
            assert not joined(answer, "project_7")
            assert "JWT settings" in answer["message"]


async def test_a_room_joined_by_room_token_is_left_with_an_event_when_it_expires(
    jumping_clock: trio.testing.MockClock,
):
    async with running(open_rooms=(), jwt_leeway=0.0) as service:
        config = service.config
        async with connect(service, 1, token=token_for(1, config, ttl=3600)) as client:
            token = room_token(config, 1, "project_7", ttl=30)
            assert joined(await join(client, "project_7", token=token), "project_7")
            jumping_clock.jump(31)
            event = await client.recv()
            assert event["type"] == "error" and event["room"] == "project_7"
            assert event["data"] == {"code": "room_token_expired", "rooms": ["user_1"]}
            assert "fresh room token" in event["message"]
            assert service.notifications.get_room_members("project_7") == set()
            await service.notifications.notify_room("project_7", "not for you")
            await echo(client)  # the connection stays; the room's frame never came


async def test_a_rejoin_with_a_fresh_room_token_moves_the_rooms_expiry(
    jumping_clock: trio.testing.MockClock,
):
    async with running(open_rooms=(), jwt_leeway=0.0) as service:
        config = service.config
        async with connect(service, 1, token=token_for(1, config, ttl=3600)) as client:
            assert not joined(await join(client, "project_7"), "project_7")
            first = room_token(config, 1, "project_7", ttl=30)
            assert joined(await join(client, "project_7", token=first), "project_7")
            fresh = room_token(config, 1, "project_7", ttl=600)
            assert joined(await join(client, "project_7", token=fresh), "project_7")
            jumping_clock.jump(60)
            await trio.testing.wait_all_tasks_blocked()  # the keeper has looked
            await service.notifications.notify_room("project_7", "still a member")
            assert (await client.recv())["message"] == "still a member"


# in-process authorizer ----------------------------------------------------------------


@asynccontextmanager
async def with_authorizer(authorizer: Any, **overrides: Any) -> AsyncIterator[Service]:
    config = make_config(open_rooms=(), **overrides)
    async with open_service(config, room_authorizer=authorizer) as service:
        yield service


async def test_an_in_process_authorizer_decides_what_no_other_rule_opens(caplog):
    caplog.set_level(logging.DEBUG, logger="roomcast")
    asked: list[tuple[Any, str]] = []

    async def authorize(principal: Principal, room: str) -> bool:
        asked.append((principal.user_id, room))
        if room == "boom":
            raise RuntimeError("secret-token-text")
        return room.startswith("ok_")

    async with with_authorizer(authorize, max_strikes=2) as service:
        token = token_for(1, service.config, extra={"rooms": ["claimed"]})
        async with connect(service, 1, token=token) as client:
            assert joined(await join(client, "ok_1"), "ok_1")
            assert joined(await join(client, "claimed"), "claimed")  # the claim, first
            for _ in range(3):
                assert not joined(await join(client, "boom"), "boom")
            assert not joined(await join(client, "no"), "no")
            await echo(client)
    assert asked == [(1, "ok_1"), *[(1, "boom")] * 3, (1, "no")]
    assert "secret-token-text" not in caplog.text
    lines = [r for r in caplog.records if "RuntimeError" in r.getMessage()]
    assert len(lines) == 3 and not any(r.exc_info for r in caplog.records)
    assert sum(r.levelno >= logging.WARNING for r in lines) <= 1  # once per cause


async def test_an_authorizer_past_join_timeout_refuses_and_blocks_only_its_connection():
    release = trio.Event()

    async def authorize(principal: Principal, room: str) -> bool:
        await release.wait()  # never set: the join times out
        return True

    async with with_authorizer(authorize, join_timeout=0.5) as service:
        async with connect(service, 1) as client, connect(service, 2) as bystander:
            await client.send({"type": "join_room", "room": "slow"})
            await echo(bystander)  # served while client 1 waits on the authorizer
            answer = await client.recv()
            assert not joined(answer, "slow")
            await echo(client)


# the HTTP authorizer (roomcast.join_proxy) --------------------------------------------


async def test_join_url_adds_the_http_authorizer_last_and_closes_it(monkeypatch):
    calls: list[str] = []
    closed: list[bool] = []

    class FakeHttpJoinAuthorizer:
        def __init__(self, config: Config) -> None:
            assert config.join_url == "http://127.0.0.1:9/join"

        async def __call__(self, principal: Principal, room: str) -> bool:
            calls.append(f"http {room}")
            return room == "via_http"

        async def aclose(self) -> None:
            closed.append(True)

    async def authorize(principal: Principal, room: str) -> bool:
        calls.append(f"app {room}")
        return room == "via_app"

    monkeypatch.setattr(roomcast.service, "HttpJoinAuthorizer", FakeHttpJoinAuthorizer)
    async with with_authorizer(authorize, join_url="http://127.0.0.1:9/join") as service:
        async with connect(service, 1) as client:
            assert joined(await join(client, "via_app"), "via_app")
            assert joined(await join(client, "via_http"), "via_http")
            assert not joined(await join(client, "neither"), "neither")
    assert calls == ["app via_app", "app via_http", "http via_http", "app neither",
                     "http neither"]
    assert closed == [True]


@pytest.mark.parametrize("demo", [True, False])
async def test_demo_mode_opens_every_room_and_says_so(demo, caplog):
    caplog.set_level(logging.INFO, logger="roomcast")
    async with running(open_rooms=(), demo=demo) as service:
        async with connect(service, 1) as client:
            assert joined(await join(client, "project_7"), "project_7") is demo
    assert ("demo mode: every room is open" in caplog.text) is demo


async def test_a_room_token_expiring_as_its_connection_leaves_does_not_leave_twice():
    """The keeper may find a room token expired after the connection told the registry
    it is gone (before the gateway unwatches it): that room must not be left again,
    or the registry would count one member too few and stop the room under user 2."""
    async with running(open_rooms=("project_*",)) as service:
        async with connect(service, 2) as stays:
            assert joined(await join(stays, "project_7"), "project_7")
            async with connect(service, 1) as goes:
                assert joined(await join(goes, "project_7"), "project_7")
                (gone,) = service.registry.connections_of(1).values()
            await eventually(lambda: not service.notifications.is_user_connected(1))
            await gone.leave_expired_room("project_7")  # what a late keeper would do
            await service.notifications.notify_room("project_7", "still here")
            assert (await stays.recv())["message"] == "still here"
