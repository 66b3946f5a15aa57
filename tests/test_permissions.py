"""Each permission check of protocol.md, attacked over real connections: the attacker
gets `forbidden` or `not_member`, nothing is sent, and nothing leaks to the attacker."""

from __future__ import annotations

from typing import Any

import pytest

from roomcast import NotificationService

from .conftest import Client, connect, running, token_for

BROADCAST = "roomcast:broadcast"


async def assert_refused(client: Client, frame: dict[str, Any], code: str) -> None:
    reply = await client.request(frame)
    assert reply["type"] == "error", reply
    assert reply["data"] == {"code": code}, reply
    assert reply["room"] is None
    prefix = {"forbidden": "Not allowed", "not_member": "Not a member of room"}[code]
    assert reply["message"].startswith(prefix), reply
    # The connection stays open and usable.
    echo = await client.request({"type": "text", "data": "ok"})
    assert echo["message"] == "Echo: ok"


async def quiet(*clients: Client, seconds: float = 0.2) -> None:
    for client in clients:
        await client.nothing_within(seconds)
        seconds = 0.02  # the first wait already let everything in flight arrive


# joining another user's personal room ---------------------------------------------------


@pytest.mark.parametrize(
    "room", ["user_2", "user_02", "user_002", "user_abc", "user_", "user_2.x", "user_-1"]
)
async def test_joining_another_users_personal_room_is_forbidden(service, room):
    async with connect(service, 1) as attacker, connect(service, 2) as victim:
        await assert_refused(attacker, {"type": "join_room", "room": room}, "forbidden")
        # Not joined: the attacker's rooms are still its own only.
        reply = await attacker.request({"type": "join_room", "room": "mine"})
        assert reply["data"] == {"rooms": ["user_1", "mine"]}
        assert NotificationService.get_room_members(room) <= {2}
        # The victim's notifications reach the victim only.
        assert await NotificationService.notify_user(user_id=2, message="secret 1") is True
        assert await NotificationService.notify_user_in_room(2, "secret 2") is True
        assert await NotificationService.notify_room("user_2", "secret 3") == 1
        for text in ("secret 1", "secret 2", "secret 3"):
            assert (await victim.recv())["message"] == text
        await quiet(attacker, victim)


async def test_string_user_cannot_join_another_string_users_room(service):
    async with connect(service, "mallory") as attacker, connect(service, "abc") as victim:
        await assert_refused(attacker, {"type": "join_room", "room": "user_abc"}, "forbidden")
        assert await NotificationService.notify_user(user_id="abc", message="psst") is True
        assert (await victim.recv())["message"] == "psst"
        await quiet(attacker)


async def test_forbidden_join_when_victim_is_offline(service):
    async with connect(service, 1) as attacker:
        await assert_refused(attacker, {"type": "join_room", "room": "user_2"}, "forbidden")
        async with connect(service, 2) as victim:
            assert await NotificationService.notify_user(user_id=2, message="later") is True
            assert (await victim.recv())["message"] == "later"
            await quiet(attacker)


async def test_digit_user_ids_are_one_user_not_a_bypass(service):
    """A token whose `sub` is "02" is user 2 (decimal digits give an int): its own
    personal room is `user_2`, and it may not join `user_02`, nor user 1's room."""
    async with connect(service, "02") as two:
        assert two.welcome["data"] == {"user_id": 2, "rooms": ["user_2"]}
        await assert_refused(two, {"type": "join_room", "room": "user_02"}, "forbidden")
        await assert_refused(two, {"type": "join_room", "room": "user_1"}, "forbidden")


# leaving one's own personal room ------------------------------------------------------


async def test_leaving_own_personal_room_is_forbidden(service):
    async with connect(service, 1) as client, connect(service, 1) as other_tab:
        await assert_refused(client, {"type": "leave_room", "room": "user_1"}, "forbidden")
        # Still in it: personal notifications keep arriving, on every tab.
        assert NotificationService.get_room_members("user_1") == {1}
        assert await NotificationService.notify_user(user_id=1, message="still yours") is True
        assert (await client.recv())["message"] == "still yours"
        assert (await other_tab.recv())["message"] == "still yours"
        assert await NotificationService.notify_user_in_room(1, "room copy") is True
        assert (await client.recv())["message"] == "room copy"
        assert (await other_tab.recv())["message"] == "room copy"
        # It still lists the room and may speak in it.
        reply = await client.request({"type": "join_room", "room": "x"})
        assert reply["data"] == {"rooms": ["user_1", "x"]}
        await client.send({"type": "room_message", "room": "user_1", "data": "me"})
        assert (await client.recv())["message"] == "me"
        assert (await other_tab.recv())["message"] == "me"


async def test_leaving_another_users_personal_room_changes_nothing(service):
    async with connect(service, 1) as attacker, connect(service, 2) as victim:
        reply = await attacker.request({"type": "leave_room", "room": "user_2"})
        # Not a member: either refused or a no-op; never a change for the victim.
        assert reply["type"] in {"error", "info"}
        if reply["type"] == "info":
            assert reply["data"] == {"rooms": ["user_1"]}
        assert NotificationService.get_room_members("user_2") == {2}
        assert await NotificationService.notify_user(user_id=2, message="fine") is True
        assert (await victim.recv())["message"] == "fine"
        await quiet(attacker)


# room_message to a room one is not in ---------------------------------------------------


async def test_room_message_to_room_not_joined(service):
    async with (
        connect(service, 1) as attacker,
        connect(service, 2) as member,
        connect(service, 3) as other_member,
    ):
        await member.request({"type": "join_room", "room": "team"})
        await other_member.request({"type": "join_room", "room": "team"})
        await assert_refused(
            attacker, {"type": "room_message", "room": "team", "data": "spam"}, "not_member"
        )
        await quiet(member, other_member, attacker)


async def test_room_message_to_unknown_room(service):
    async with connect(service, 1) as attacker, connect(service, 2) as bystander:
        await assert_refused(
            attacker, {"type": "room_message", "room": "ghost", "data": "x"}, "not_member"
        )
        await quiet(attacker, bystander)


async def test_room_message_after_leaving(service):
    async with connect(service, 1) as leaver, connect(service, 2) as member:
        await leaver.request({"type": "join_room", "room": "team"})
        await member.request({"type": "join_room", "room": "team"})
        await leaver.request({"type": "leave_room", "room": "team"})
        await assert_refused(
            leaver, {"type": "room_message", "room": "team", "data": "x"}, "not_member"
        )
        await quiet(member, leaver)


@pytest.mark.parametrize("room", ["user_2", "user_02"])
async def test_room_message_to_another_users_personal_room(service, room):
    async with connect(service, 1) as attacker, connect(service, 2) as victim:
        await assert_refused(
            attacker, {"type": "room_message", "room": room, "data": "phish"}, "not_member"
        )
        await quiet(victim, attacker)


async def test_room_message_from_another_tab_of_a_member_is_refused(service):
    async with (
        connect(service, 1) as tab_a,
        connect(service, 1) as tab_b,
        connect(service, 2) as member,
    ):
        await tab_a.request({"type": "join_room", "room": "team"})
        await member.request({"type": "join_room", "room": "team"})
        await assert_refused(
            tab_b, {"type": "room_message", "room": "team", "data": "x"}, "not_member"
        )
        await quiet(tab_a, member, tab_b)


# broadcast --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scope",
    [None, "", "roomcast:read", "roomcast:broadcaster", "broadcast", "ROOMCAST:BROADCAST",
     "roomcast:broadcast:x"],
)
async def test_broadcast_without_scope_is_forbidden(service, scope):
    async with (
        connect(service, 1, scope=scope) as sender,
        connect(service, 2) as bob,
        connect(service, 3, scope=BROADCAST) as admin,
    ):
        await assert_refused(sender, {"type": "broadcast", "data": "everyone!"}, "forbidden")
        await assert_refused(sender, {"type": "broadcast", "data": {"x": 1}}, "forbidden")
        await quiet(bob, admin, sender)


async def test_broadcast_with_scope_reaches_everyone_once(service):
    async with (
        connect(service, 1, scope="read " + BROADCAST + " write") as admin,
        connect(service, 2) as bob,
        connect(service, 3) as carol_a,
        connect(service, 3) as carol_b,
        connect(service, "dave") as dave,
    ):
        await bob.request({"type": "join_room", "room": "r"})
        await carol_a.request({"type": "join_room", "room": "r"})
        await admin.send({"type": "broadcast", "data": "maintenance"})
        expected = {
            "type": "broadcast", "message": "maintenance", "data": {"from_user_id": 1},
            "room": None,
        }
        everyone = (admin, bob, carol_a, carol_b, dave)
        for client in everyone:
            assert await client.recv() == expected
        await quiet(*everyone)


async def test_broadcast_scope_is_configurable():
    async with (
        running(broadcast_claim="perms", broadcast_scope="admin") as service,
        connect(service, 1, scope=BROADCAST) as default_scope,
        connect(service, 2) as listener,
    ):
        # The default claim/value no longer grant it.
        await assert_refused(default_scope, {"type": "broadcast", "data": "x"}, "forbidden")
        await quiet(listener)
        token = token_for(3, service.config, extra={"perms": "admin other"})
        async with connect(service, 3, token=token) as admin:
            await admin.send({"type": "broadcast", "data": "ok"})
            for client in (admin, listener, default_scope):
                assert (await client.recv())["message"] == "ok"


async def test_open_broadcast_lets_everyone_broadcast():
    async with (
        running(open_broadcast=True) as service,
        connect(service, 1) as sender,
        connect(service, 2) as listener,
    ):
        await sender.send({"type": "broadcast", "data": "open"})
        assert (await sender.recv())["message"] == "open"
        assert (await listener.recv())["message"] == "open"
