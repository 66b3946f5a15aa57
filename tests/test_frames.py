"""Every client frame of protocol.md, over real TCP WebSocket connections.

Each test checks the exact reply, all four keys (type, message, data, room), and for
errors that the connection stays open: a valid frame sent afterwards still works.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from roomcast import NotificationService

from .conftest import Client, connect

BROADCAST = "roomcast:broadcast"


def server_frame(
    type_: str, message: str, data: dict[str, Any] | None = None, room: str | None = None
) -> dict[str, Any]:
    return {"type": type_, "message": message, "data": data, "room": room}


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def joined(room: str, rooms: list[str]) -> dict[str, Any]:
    return server_frame("info", f"Joined room: {room}", {"rooms": rooms}, room)


def left(room: str, rooms: list[str]) -> dict[str, Any]:
    return server_frame("info", f"Left room: {room}", {"rooms": rooms}, room)


async def assert_error(client: Client, sent: Any, code: str, starts_with: str) -> None:
    """`sent` is refused with `code`, and the connection still answers afterwards."""
    reply = await client.request(sent)
    assert set(reply) == {"type", "message", "data", "room"}, reply
    assert reply["type"] == "error", reply
    assert reply["data"] == {"code": code}, reply
    assert reply["room"] is None, reply
    assert isinstance(reply["message"], str)
    assert reply["message"].startswith(starts_with), reply
    await assert_alive(client)


async def assert_alive(client: Client) -> None:
    assert client.ws.closed is None
    assert await client.request({"type": "text", "data": "still here"}) == server_frame(
        "text", "Echo: still here"
    )


# text ---------------------------------------------------------------------------------


async def test_welcome_frame_shape(service):
    async with connect(service, 7) as client:
        assert client.welcome == server_frame(
            "info",
            "Connected successfully. You are in room: user_7",
            {"user_id": 7, "rooms": ["user_7"]},
        )


async def test_text_echo_string(service):
    async with connect(service, 1) as client:
        reply = await client.request({"type": "text", "data": "hello"})
        assert reply == server_frame("text", "Echo: hello")
        reply = await client.request({"type": "text", "data": "héllo ☃ 世界"})
        assert reply == server_frame("text", "Echo: héllo ☃ 世界")
        # An empty string is a string: no JSON quoting.
        assert await client.request({"type": "text", "data": ""}) == server_frame(
            "text", "Echo: "
        )
        # The JSON text of a string is not unwrapped twice.
        assert await client.request({"type": "text", "data": '"quoted"'}) == server_frame(
            "text", 'Echo: "quoted"'
        )


@pytest.mark.parametrize(
    "value",
    [
        42,
        -1.5,
        True,
        False,
        [1, "a", None],
        {"a": 1, "b": [1, 2, {"c": "d"}]},
        {},
        [],
    ],
)
async def test_text_echo_non_string_is_compact_json(service, value):
    async with connect(service, 1) as client:
        reply = await client.request({"type": "text", "data": value})
        assert reply == server_frame("text", "Echo: " + compact(value))
        assert ", " not in reply["message"] and ": " not in reply["message"][6:]


async def test_text_echo_unicode_json_round_trips(service):
    value = {"name": "Zoë", "emoji": "🎉", "nested": {"k": ["ü", 1]}}
    async with connect(service, 1) as client:
        reply = await client.request({"type": "text", "data": value})
        assert reply["type"] == "text"
        assert reply["message"].startswith("Echo: ")
        assert json.loads(reply["message"][len("Echo: ") :]) == value
        assert reply["data"] is None and reply["room"] is None


async def test_extra_fields_and_room_on_text_are_ignored(service):
    async with connect(service, 1) as client:
        reply = await client.request({"type": "text", "data": "x", "room": "lobby", "id": 9})
        assert reply == server_frame("text", "Echo: x")


# join_room / leave_room ---------------------------------------------------------------


async def test_join_room_reply_lists_personal_room_first(service):
    async with connect(service, 1) as client:
        assert await client.request({"type": "join_room", "room": "project_1"}) == joined(
            "project_1", ["user_1", "project_1"]
        )
        assert await client.request({"type": "join_room", "room": "a.b:c@d-e"}) == joined(
            "a.b:c@d-e", ["user_1", "project_1", "a.b:c@d-e"]
        )
        assert NotificationService.get_room_members("project_1") == {1}


async def test_join_room_with_string_user_id(service):
    async with connect(service, "alice") as client:
        assert client.welcome["data"] == {"user_id": "alice", "rooms": ["user_alice"]}
        assert await client.request({"type": "join_room", "room": "r"}) == joined(
            "r", ["user_alice", "r"]
        )


async def test_join_twice_is_idempotent(service):
    async with connect(service, 1) as client:
        first = await client.request({"type": "join_room", "room": "r"})
        second = await client.request({"type": "join_room", "room": "r"})
        assert first == second == joined("r", ["user_1", "r"])
        # One membership only: one copy of a room message, and one leave suffices.
        await client.send({"type": "room_message", "room": "r", "data": "once"})
        assert (await client.recv())["message"] == "once"
        await client.nothing_within(0.2)
        assert await client.request({"type": "leave_room", "room": "r"}) == left(
            "r", ["user_1"]
        )
        await assert_error(
            client, {"type": "room_message", "room": "r", "data": "x"}, "not_member",
            "Not a member of room",
        )


async def test_joining_own_personal_room_is_a_no_op(service):
    async with connect(service, 1) as client:
        assert await client.request({"type": "join_room", "room": "user_1"}) == joined(
            "user_1", ["user_1"]
        )
        await client.send({"type": "join_room", "room": "r"})
        assert (await client.recv())["data"] == {"rooms": ["user_1", "r"]}


async def test_leave_room_reply(service):
    async with connect(service, 1) as client:
        await client.request({"type": "join_room", "room": "a"})
        await client.request({"type": "join_room", "room": "b"})
        assert await client.request({"type": "leave_room", "room": "a"}) == left(
            "a", ["user_1", "b"]
        )
        assert await client.request({"type": "leave_room", "room": "b"}) == left(
            "b", ["user_1"]
        )
        # Rejoining after leaving works, and keeps join order.
        assert await client.request({"type": "join_room", "room": "a"}) == joined(
            "a", ["user_1", "a"]
        )


async def test_leaving_a_room_not_joined(service):
    async with connect(service, 1) as client, connect(service, 2) as other:
        # Never existed.
        assert await client.request({"type": "leave_room", "room": "nowhere"}) == left(
            "nowhere", ["user_1"]
        )
        # Exists (someone else is in it) but this connection is not.
        await other.request({"type": "join_room", "room": "theirs"})
        assert await client.request({"type": "leave_room", "room": "theirs"}) == left(
            "theirs", ["user_1"]
        )
        # Their membership is untouched.
        assert NotificationService.get_room_members("theirs") == {2}
        await other.send({"type": "room_message", "room": "theirs", "data": "mine"})
        assert (await other.recv())["message"] == "mine"
        await assert_alive(client)


# room_message ---------------------------------------------------------------------------


async def test_room_message_reaches_members_and_the_sender(service):
    async with (
        connect(service, 1) as alice,
        connect(service, 2) as bob,
        connect(service, 3) as carol,
    ):
        await alice.request({"type": "join_room", "room": "r"})
        await bob.request({"type": "join_room", "room": "r"})
        await alice.send({"type": "room_message", "room": "r", "data": "hi all"})
        expected = server_frame("room_message", "hi all", {"from_user_id": 1}, "r")
        assert await alice.recv() == expected
        assert await bob.recv() == expected
        await carol.nothing_within(0.2)
        await alice.nothing_within(0.05)
        await bob.nothing_within(0.05)


async def test_room_message_from_string_user(service):
    async with connect(service, "bob") as bob:
        await bob.request({"type": "join_room", "room": "r"})
        await bob.send({"type": "room_message", "room": "r", "data": "yo"})
        assert await bob.recv() == server_frame(
            "room_message", "yo", {"from_user_id": "bob"}, "r"
        )


@pytest.mark.parametrize(
    "value",
    [7, 2.5, True, False, 0, [1, 2, "x"], {"k": {"n": [1, None, "ü"]}}],
)
async def test_room_message_non_string_data(service, value):
    async with connect(service, 1) as alice, connect(service, 2) as bob:
        await alice.request({"type": "join_room", "room": "r"})
        await bob.request({"type": "join_room", "room": "r"})
        await alice.send({"type": "room_message", "room": "r", "data": value})
        expected = server_frame(
            "room_message", compact(value), {"from_user_id": 1, "payload": value}, "r"
        )
        assert await alice.recv() == expected
        assert await bob.recv() == expected


async def test_room_message_payload_cannot_spoof_sender(service):
    async with connect(service, 1) as alice:
        await alice.request({"type": "join_room", "room": "r"})
        value = {"from_user_id": 99, "level": "error", "notification": True}
        await alice.send({"type": "room_message", "room": "r", "data": value})
        frame = await alice.recv()
        assert frame["data"] == {"from_user_id": 1, "payload": value}


async def test_room_message_to_personal_room_reaches_every_tab(service):
    async with connect(service, 1) as tab_a, connect(service, 1) as tab_b:
        await tab_a.send({"type": "room_message", "room": "user_1", "data": "note to self"})
        expected = server_frame("room_message", "note to self", {"from_user_id": 1}, "user_1")
        assert await tab_a.recv() == expected
        assert await tab_b.recv() == expected


# broadcast ------------------------------------------------------------------------------


async def test_broadcast_frame_shape(service):
    async with connect(service, 1, scope=BROADCAST) as admin, connect(service, 2) as bob:
        await admin.send({"type": "broadcast", "data": "hear ye"})
        expected = server_frame("broadcast", "hear ye", {"from_user_id": 1})
        assert await admin.recv() == expected
        assert await bob.recv() == expected


async def test_broadcast_non_string_data(service):
    value = {"alert": ["a", 1], "ok": False}
    async with connect(service, 1, scope=BROADCAST) as admin, connect(service, 2) as bob:
        await admin.send({"type": "broadcast", "data": value})
        expected = server_frame(
            "broadcast", compact(value), {"from_user_id": 1, "payload": value}
        )
        assert await admin.recv() == expected
        assert await bob.recv() == expected


# errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["not json", "{", "{'type': 'text'}", "", "NaN", '{"type": "text", "data": NaN}', "[1"],
)
async def test_not_json_is_invalid_message(service, text):
    async with connect(service, 1) as client:
        await assert_error(client, text, "invalid_message", "Invalid message format:")


@pytest.mark.parametrize("value", ["[]", "[1, 2]", '"text"', "42", "null", "true"])
async def test_not_an_object_is_invalid_message(service, value):
    async with connect(service, 1) as client:
        await assert_error(client, value, "invalid_message", "Invalid message format:")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": 1, "data": "x"},
        {"type": None, "data": "x"},
        {"type": ["text"], "data": "x"},
        {"data": "x"},
        {"type": "join_room", "room": 5},
        {"type": "join_room", "room": ["r"]},
        {"type": "leave_room", "room": {"name": "r"}},
        {"type": "room_message", "room": 1.5, "data": "x"},
        {"type": "text", "data": "x", "room": 3},
        {"type": "text"},
        {"type": "text", "data": None},
        {"type": "broadcast"},
    ],
)
async def test_wrong_field_types_are_invalid_message(service, frame):
    async with connect(service, 1) as client:
        await assert_error(client, frame, "invalid_message", "Invalid message format:")


async def test_room_message_without_data_is_invalid_message(service):
    async with connect(service, 1) as client:
        await client.request({"type": "join_room", "room": "r"})
        await assert_error(
            client, {"type": "room_message", "room": "r"}, "invalid_message",
            "Invalid message format:",
        )


async def test_binary_frame_is_invalid_message(service):
    async with connect(service, 1) as client:
        await client.ws.send_message(json.dumps({"type": "text", "data": "x"}).encode())
        reply = await client.recv()
        assert reply["type"] == "error"
        assert reply["data"] == {"code": "invalid_message"}
        assert reply["message"].startswith("Invalid message format:")
        assert reply["room"] is None
        await assert_alive(client)


@pytest.mark.parametrize(
    "type_", ["dance", "TEXT", "Text", "info", "error", "notification", "", "join"]
)
async def test_unknown_type(service, type_):
    async with connect(service, 1) as client:
        await assert_error(
            client, {"type": type_, "data": "x", "room": "r"}, "unknown_type",
            "Unknown message type:",
        )


async def test_unknown_type_message_names_the_type(service):
    async with connect(service, 1) as client:
        reply = await client.request({"type": "dance", "data": "x"})
        assert reply == server_frame(
            "error", "Unknown message type: dance", {"code": "unknown_type"}
        )


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join_room"},
        {"type": "join_room", "room": None},
        {"type": "leave_room"},
        {"type": "room_message", "data": "x"},
        {"type": "room_message", "room": None, "data": "x"},
    ],
)
async def test_room_required(service, frame):
    async with connect(service, 1) as client:
        await assert_error(client, frame, "room_required", "Room name is required")


@pytest.mark.parametrize(
    "room",
    ["", "has space", "x" * 101, "ünïcode", "a/b", "semi;colon", "tab\t", "new\nline", "*"],
)
@pytest.mark.parametrize("type_", ["join_room", "leave_room", "room_message"])
async def test_invalid_room(service, type_, room):
    async with connect(service, 1) as client:
        await assert_error(
            client, {"type": type_, "room": room, "data": "x"}, "invalid_room",
            "Invalid room name",
        )


async def test_room_name_of_100_chars_is_valid(service):
    room = "r" * 100
    async with connect(service, 1) as client:
        assert await client.request({"type": "join_room", "room": room}) == joined(
            room, ["user_1", room]
        )


async def test_not_member(service):
    async with connect(service, 1) as client:
        await assert_error(
            client, {"type": "room_message", "room": "elsewhere", "data": "x"}, "not_member",
            "Not a member of room",
        )


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join_room", "room": "user_2"},
        {"type": "leave_room", "room": "user_1"},
        {"type": "broadcast", "data": "x"},
    ],
)
async def test_forbidden(service, frame):
    async with connect(service, 1) as client:
        await assert_error(client, frame, "forbidden", "Not allowed")


async def test_many_errors_in_a_row_then_valid_frames(service):
    async with connect(service, 1) as client:
        for bad in ["nope", "[]", {"type": "x"}, {"type": "join_room"}]:
            assert (await client.request(bad))["type"] == "error"
        assert await client.request({"type": "join_room", "room": "r"}) == joined(
            "r", ["user_1", "r"]
        )


# rooms are per connection ---------------------------------------------------------------


async def test_rooms_are_per_connection(service):
    async with (
        connect(service, 1) as tab_a,
        connect(service, 1) as tab_b,
        connect(service, 2) as bob,
    ):
        assert await tab_a.request({"type": "join_room", "room": "r"}) == joined(
            "r", ["user_1", "r"]
        )
        await bob.request({"type": "join_room", "room": "r"})
        # tab_b's own rooms do not include r.
        assert await tab_b.request({"type": "join_room", "room": "s"}) == joined(
            "s", ["user_1", "s"]
        )
        await bob.send({"type": "room_message", "room": "r", "data": "to r"})
        expected = server_frame("room_message", "to r", {"from_user_id": 2}, "r")
        assert await bob.recv() == expected
        assert await tab_a.recv() == expected
        await tab_b.nothing_within(0.2)
        # And tab_b may not speak in r.
        await assert_error(
            tab_b, {"type": "room_message", "room": "r", "data": "x"}, "not_member",
            "Not a member of room",
        )
        await tab_a.nothing_within(0.05)
        await bob.nothing_within(0.05)


async def test_leaving_in_one_tab_keeps_the_other_tab_in(service):
    async with connect(service, 1) as tab_a, connect(service, 1) as tab_b:
        await tab_a.request({"type": "join_room", "room": "r"})
        await tab_b.request({"type": "join_room", "room": "r"})
        assert await tab_a.request({"type": "leave_room", "room": "r"}) == left(
            "r", ["user_1"]
        )
        assert NotificationService.get_room_members("r") == {1}
        await tab_b.send({"type": "room_message", "room": "r", "data": "still"})
        assert (await tab_b.recv())["message"] == "still"
        await tab_a.nothing_within(0.2)


async def test_personal_room_contains_every_tab(service):
    async with (
        connect(service, 1) as tab_a,
        connect(service, 1) as tab_b,
        connect(service, 1) as tab_c,
        connect(service, 2) as bob,
    ):
        for tab in (tab_a, tab_b, tab_c):
            assert tab.welcome["data"] == {"user_id": 1, "rooms": ["user_1"]}
        assert await NotificationService.notify_user(user_id=1, message="all tabs") is True
        for tab in (tab_a, tab_b, tab_c):
            assert (await tab.recv())["message"] == "all tabs"
        await tab_b.send({"type": "room_message", "room": "user_1", "data": "sync"})
        for tab in (tab_a, tab_b, tab_c):
            assert await tab.recv() == server_frame(
                "room_message", "sync", {"from_user_id": 1}, "user_1"
            )
        await bob.nothing_within(0.2)
