"""The seed's notification facade: seven methods, both ways of calling them, their
return values and the frames they send (protocol.md), checked over real connections."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import trio

from roomcast import NotificationLevel, NotificationService, ServiceNotRunning

from .conftest import Client, connect, eventually, running

LEVELS = [
    NotificationLevel.INFO,
    NotificationLevel.SUCCESS,
    NotificationLevel.WARNING,
    NotificationLevel.ERROR,
]


def notification(
    type_: str, message: str, level: str = "info", room: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "type": type_,
        "message": message,
        "data": {**extra, "level": level, "notification": True},
        "room": room,
    }


async def join(client: Client, room: str) -> None:
    reply = await client.request({"type": "join_room", "room": room})
    assert reply["type"] == "info" and reply["room"] == room, reply


async def leave(client: Client, room: str) -> None:
    reply = await client.request({"type": "leave_room", "room": room})
    assert reply["type"] == "info" and reply["room"] == room, reply


# both ways of calling -------------------------------------------------------------------


async def test_seed_class_call_in_body_of_running():
    async with running() as service, connect(service, 123) as client:
        result = await NotificationService.notify_user(
            user_id=123,
            message="Your project upload is complete!",
            level=NotificationLevel.SUCCESS,
            data={"project_id": 456},
        )
        assert result is True
        assert await client.recv() == notification(
            "info", "Your project upload is complete!", "success", project_id=456
        )


async def test_seed_class_call_from_a_task_in_a_nursery():
    results: list[Any] = []

    async def backend_task(user_id: int) -> None:
        results.append(
            await NotificationService.notify_user(
                user_id=user_id, message="from a task", level=NotificationLevel.WARNING,
                data={"k": 1},
            )
        )
        results.append(await NotificationService.notify_room("r", "room from a task"))
        results.append(await NotificationService.broadcast("all from a task"))
        results.append(await NotificationService.notify_user_in_room(user_id, "personal"))
        results.append(NotificationService.is_user_connected(user_id))
        results.append(NotificationService.get_connected_users())
        results.append(NotificationService.get_room_members("r"))

    async with running() as service, connect(service, 9) as client:
        await join(client, "r")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(backend_task, 9)
        assert results == [True, 1, 1, True, True, {9}, {9}]
        assert await client.recv() == notification("info", "from a task", "warning", k=1)
        assert await client.recv() == notification("room_message", "room from a task", room="r")
        assert await client.recv() == notification("broadcast", "all from a task")
        assert await client.recv() == notification("room_message", "personal", room="user_9")


async def test_seed_class_call_with_service_fixture(service):
    async with connect(service, 5) as client:
        assert await NotificationService.notify_user(user_id=5, message="fixture") is True
        assert (await client.recv())["message"] == "fixture"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(NotificationService.notify_user, 5, "fixture task")
        assert (await client.recv())["message"] == "fixture task"


async def test_explicit_handle(service):
    handle = service.notifications
    assert NotificationService.current() is handle
    async with connect(service, 5) as client:
        await join(client, "r")
        assert await handle.notify_user(
            user_id=5, message="h1", level=NotificationLevel.ERROR, data={"x": [1]}
        ) is True
        assert await handle.notify_room(room_name="r", message="h2") == 1
        assert await handle.broadcast(message="h3", level=NotificationLevel.SUCCESS) == 1
        assert await handle.notify_user_in_room(user_id=5, message="h4") is True
        assert handle.is_user_connected(5) is True
        assert handle.get_connected_users() == {5}
        assert handle.get_room_members("r") == {5}
        assert await client.recv() == notification("info", "h1", "error", x=[1])
        assert await client.recv() == notification("room_message", "h2", room="r")
        assert await client.recv() == notification("broadcast", "h3", "success")
        assert await client.recv() == notification("room_message", "h4", room="user_5")


async def test_explicit_handle_from_outside_the_services_context():
    """A task started before the service (so without its context) cannot use the
    class-level calls, but the explicit handle works there."""
    handles: trio.MemorySendChannel[Any]
    handles, handles_out = trio.open_memory_channel[Any](1)
    done = trio.Event()

    async def task() -> None:
        handle = await handles_out.receive()
        with pytest.raises(ServiceNotRunning):
            await NotificationService.notify_user(4, "class call")
        assert await handle.notify_user(4, "via handle") is True
        done.set()

    async with trio.open_nursery() as outside:
        outside.start_soon(task)
        async with running() as service, connect(service, 4) as client:
            await handles.send(service.notifications)
            await done.wait()
            assert await client.recv() == notification("info", "via handle")
            await client.nothing_within(0.1)


# return values ------------------------------------------------------------------------


async def test_notify_user_return_value(service):
    assert await NotificationService.notify_user(user_id=1, message="nobody") is False
    async with connect(service, 1):
        assert await NotificationService.notify_user(user_id=1, message="you") is True
        assert await NotificationService.notify_user(user_id=2, message="not you") is False
        assert await NotificationService.notify_user(user_id="ghost", message="x") is False


async def test_notify_room_counts_distinct_users(service):
    assert await NotificationService.notify_room("unknown_room", "x") == 0
    async with (
        connect(service, 1) as a1,
        connect(service, 1) as a2,
        connect(service, 2) as b,
        connect(service, 3),
    ):
        assert await NotificationService.notify_room("r", "empty") == 0
        await join(a1, "r")
        assert await NotificationService.notify_room("r", "one") == 1
        await join(a2, "r")
        assert await NotificationService.notify_room("r", "two tabs, one user") == 1
        await join(b, "r")
        assert await NotificationService.notify_room("r", "two users") == 2
        # The personal room counts its user once, whatever the tabs.
        assert await NotificationService.notify_room("user_1", "personal") == 1
        assert await NotificationService.notify_room("unknown_room", "x") == 0
        # Every tab in the room got each frame exactly once.
        for text in ("one", "two tabs, one user", "two users", "personal"):
            assert (await a1.recv())["message"] == text
        for text in ("two tabs, one user", "two users", "personal"):
            assert (await a2.recv())["message"] == text
        assert (await b.recv())["message"] == "two users"
        await leave(a1, "r")
        await leave(a2, "r")
        assert await NotificationService.notify_room("r", "after leaves") == 1
        assert (await b.recv())["message"] == "after leaves"
        await a1.nothing_within(0.1)
        await a2.nothing_within(0.01)
        await b.nothing_within(0.01)


async def test_broadcast_counts_distinct_users(service):
    assert await NotificationService.broadcast("nobody here") == 0
    async with connect(service, 1), connect(service, 1), connect(service, 2):
        assert await NotificationService.broadcast("hi") == 2
        async with connect(service, "alice"):
            assert await NotificationService.broadcast("hi") == 3
        await eventually(lambda: NotificationService.get_connected_users() == {1, 2}, timeout=2)
        assert await NotificationService.broadcast("hi") == 2


async def test_notify_user_in_room_return_value(service):
    assert await NotificationService.notify_user_in_room(user_id=8, message="x") is False
    async with connect(service, 8) as client:
        assert await NotificationService.notify_user_in_room(user_id=8, message="y") is True
        assert await NotificationService.notify_user_in_room(user_id=9, message="z") is False
        # "x" reached nobody: kept for a client that asks to recover, not for this one.
        assert (await client.recv())["message"] == "y"
        await client.nothing_within(0.1)
    async with connect(service, 9, query="&recover=1") as client:
        assert (await client.recv())["message"] == "z"


async def test_is_user_connected_and_get_connected_users(service):
    assert NotificationService.is_user_connected(1) is False
    assert NotificationService.get_connected_users() == set()
    async with connect(service, 1):
        assert NotificationService.is_user_connected(1) is True
        assert NotificationService.is_user_connected("1") is True
        assert NotificationService.is_user_connected(2) is False
        assert NotificationService.is_user_connected(None) is False
        assert NotificationService.is_user_connected("not a valid id!") is False
        async with connect(service, "bob"):
            users = NotificationService.get_connected_users()
            assert users == {1, "bob"}
            assert isinstance(users, set)
            users.add(99)  # a copy: the caller cannot corrupt the service's state
            assert NotificationService.get_connected_users() == {1, "bob"}
        await eventually(lambda: not NotificationService.is_user_connected("bob"), timeout=2)
        assert NotificationService.get_connected_users() == {1}
    await eventually(lambda: NotificationService.get_connected_users() == set(), timeout=2)
    assert NotificationService.is_user_connected(1) is False


async def test_get_room_members_after_joins_leaves_and_disconnects(service):
    members = NotificationService.get_room_members
    assert members("r") == set()
    assert members("*") == set()  # the internal everyone-room is not a room
    async with connect(service, 1) as a1, connect(service, 1) as a2, connect(service, 2) as b:
        assert members("user_1") == {1}
        assert members("user_2") == {2}
        assert members("r") == set()
        await join(a1, "r")
        assert members("r") == {1}
        await join(a2, "r")
        await join(b, "r")
        assert members("r") == {1, 2}
        assert isinstance(members("r"), set)
        await leave(a1, "r")
        assert members("r") == {1, 2}  # a2 still holds user 1 in the room
        await leave(a2, "r")
        assert members("r") == {2}
        await join(a1, "other")
        await a1.ws.aclose()
        await eventually(lambda: members("other") == set(), timeout=2)
        assert members("user_1") == {1}  # a2 is still connected
        assert members("r") == {2}
        await b.ws.aclose()
        await eventually(lambda: members("r") == set(), timeout=2)
        assert members("user_2") == set()
    await eventually(lambda: members("user_1") == set(), timeout=2)
    assert NotificationService.get_connected_users() == set()


async def test_rooms_forget_members_when_connections_drop_abruptly(service):
    async with connect(service, 1) as client:
        await join(client, "r")
        assert NotificationService.get_room_members("r") == {1}
        # No closing handshake: the TCP stream just goes away.
        await client.ws._stream.aclose()
        await eventually(lambda: NotificationService.get_room_members("r") == set(), timeout=2)
        await eventually(lambda: not NotificationService.is_user_connected(1), timeout=2)
        assert await NotificationService.notify_room("r", "x") == 0
        assert await NotificationService.notify_user(1, "x") is False


# frame shapes ---------------------------------------------------------------------------


@pytest.mark.parametrize("level", LEVELS)
async def test_notify_user_frame_for_each_level(service, level):
    async with connect(service, 1) as client:
        await NotificationService.notify_user(user_id=1, message="m", level=level)
        assert await client.recv() == notification("info", "m", level.value)


@pytest.mark.parametrize("level", LEVELS)
async def test_every_call_carries_the_level(service, level):
    async with connect(service, 1) as client:
        await join(client, "r")
        await NotificationService.notify_room("r", "room", level=level)
        await NotificationService.broadcast("all", level=level)
        await NotificationService.notify_user_in_room(1, "mine", level=level)
        assert await client.recv() == notification("room_message", "room", level.value, "r")
        assert await client.recv() == notification("broadcast", "all", level.value)
        assert await client.recv() == notification(
            "room_message", "mine", level.value, "user_1"
        )


async def test_level_defaults_to_info_and_accepts_its_string_value(service):
    async with connect(service, 1) as client:
        await NotificationService.notify_user(1, "default")
        assert await client.recv() == notification("info", "default", "info")
        await NotificationService.notify_user(1, "as text", level="warning")
        assert await client.recv() == notification("info", "as text", "warning")


async def test_caller_data_is_merged_and_cannot_override(service):
    data = {"level": "debug", "notification": False, "project_id": 456, "url": "/p/456"}
    original = copy.deepcopy(data)
    async with connect(service, 1) as client:
        await join(client, "r")
        await NotificationService.notify_user(1, "u", NotificationLevel.ERROR, data)
        await NotificationService.notify_room("r", "r", NotificationLevel.SUCCESS, data)
        await NotificationService.broadcast("b", NotificationLevel.WARNING, data)
        await NotificationService.notify_user_in_room(1, "p", NotificationLevel.INFO, data)
        extra = {"project_id": 456, "url": "/p/456"}
        assert await client.recv() == notification("info", "u", "error", **extra)
        assert await client.recv() == notification("room_message", "r", "success", "r", **extra)
        assert await client.recv() == notification("broadcast", "b", "warning", **extra)
        assert await client.recv() == notification(
            "room_message", "p", "info", "user_1", **extra
        )
    assert data == original  # the caller's dict is not modified


async def test_complex_data_round_trips(service):
    data = {
        "list": [1, 2.5, -3, "four", None, True, False, [], {}],
        "dict": {"nested": {"deeper": {"deepest": ["x", {"y": "z"}]}}},
        "unicode": "Zoë 🎉 世界 \u00a0 \"quotes\" \\ back\nslash",
        "emoji_key_🔑": "value",
        "null": None,
        "zero": 0,
        "big": 2**53,
        "negative": -1.25e-10,
        "empty": "",
        "bools": [True, False],
    }
    async with connect(service, 1) as client:
        await join(client, "r")
        await NotificationService.notify_user(1, "ünïcödé message ✓", data=data)
        await NotificationService.notify_room("r", "room", data=data)
        await NotificationService.broadcast("all", data=data)
        await NotificationService.notify_user_in_room(1, "mine", data=data)
        assert await client.recv() == notification("info", "ünïcödé message ✓", **data)
        assert await client.recv() == notification("room_message", "room", room="r", **data)
        assert await client.recv() == notification("broadcast", "all", **data)
        assert await client.recv() == notification(
            "room_message", "mine", room="user_1", **data
        )


async def test_empty_data_and_none_data(service):
    async with connect(service, 1) as client:
        await NotificationService.notify_user(1, "none", data=None)
        await NotificationService.notify_user(1, "empty", data={})
        await NotificationService.notify_user(1, "")
        assert await client.recv() == notification("info", "none")
        assert await client.recv() == notification("info", "empty")
        assert await client.recv() == notification("info", "")


async def test_notify_room_frame_reaches_only_the_room(service):
    async with (
        connect(service, 1) as member,
        connect(service, 1) as other_tab,
        connect(service, 2) as outsider,
    ):
        await join(member, "project_123")
        count = await NotificationService.notify_room(
            room_name="project_123",
            message="New screening result available",
            level=NotificationLevel.INFO,
            data={"project_id": 123, "action": "project_update"},
        )
        assert count == 1
        assert await member.recv() == notification(
            "room_message", "New screening result available", "info", "project_123",
            project_id=123, action="project_update",
        )
        await other_tab.nothing_within(0.2)
        await outsider.nothing_within(0.01)


async def test_notify_user_in_room_targets_the_personal_room(service):
    async with connect(service, 7) as a, connect(service, 7) as b, connect(service, 8) as c:
        assert await NotificationService.notify_user_in_room(
            user_id=7, message="You have a new message", level=NotificationLevel.INFO
        ) is True
        expected = notification("room_message", "You have a new message", room="user_7")
        assert await a.recv() == expected
        assert await b.recv() == expected
        await c.nothing_within(0.2)


async def test_broadcast_reaches_every_connection_once(service):
    async with connect(service, 1) as a1, connect(service, 1) as a2, connect(service, 2) as b:
        count = await NotificationService.broadcast(
            message="System maintenance in 5 minutes", level=NotificationLevel.WARNING
        )
        assert count == 2
        expected = notification("broadcast", "System maintenance in 5 minutes", "warning")
        for client in (a1, a2, b):
            assert await client.recv() == expected
        for client in (a1, a2, b):
            await client.nothing_within(0.05)


# users and their connections -----------------------------------------------------------


async def test_two_connections_of_one_user(service):
    async with connect(service, 1) as staying:
        async with connect(service, 1) as leaving:
            assert await NotificationService.notify_user(1, "both") is True
            assert (await staying.recv())["message"] == "both"
            assert (await leaving.recv())["message"] == "both"
        # One tab closed: the user is still connected through the other.
        assert NotificationService.is_user_connected(1) is True
        assert NotificationService.get_connected_users() == {1}
        assert await NotificationService.notify_user(1, "still here") is True
        assert (await staying.recv())["message"] == "still here"
        await staying.nothing_within(0.1)
    await eventually(lambda: not NotificationService.is_user_connected(1), timeout=2)
    assert await NotificationService.notify_user(1, "gone") is False


@pytest.mark.parametrize("token_user, call_user", [(42, "42"), ("42", 42), (42, 42)])
async def test_int_and_digit_string_user_ids_are_one_user(service, token_user, call_user):
    async with connect(service, token_user) as client:
        assert client.welcome["data"] == {"user_id": 42, "rooms": ["user_42"]}
        assert NotificationService.is_user_connected(call_user) is True
        assert NotificationService.get_connected_users() == {42}
        assert await NotificationService.notify_user(user_id=call_user, message="a") is True
        assert await NotificationService.notify_user_in_room(call_user, "b") is True
        assert (await client.recv())["message"] == "a"
        assert (await client.recv())["room"] == "user_42"


async def test_string_user_ids(service):
    async with connect(service, "alice") as client:
        assert NotificationService.get_connected_users() == {"alice"}
        assert await NotificationService.notify_user("alice", "hi") is True
        assert (await client.recv())["message"] == "hi"
        assert await NotificationService.notify_user("Alice", "case matters") is False


# no service running ---------------------------------------------------------------------


ASYNC_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("notify_user", (1, "m")),
    ("notify_room", ("r", "m")),
    ("broadcast", ("m",)),
    ("notify_user_in_room", (1, "m")),
]
SYNC_CALLS: list[tuple[str, tuple[Any, ...]]] = [
    ("is_user_connected", (1,)),
    ("get_connected_users", ()),
    ("get_room_members", ("r",)),
]


def assert_says_not_running(excinfo: pytest.ExceptionInfo[ServiceNotRunning]) -> None:
    assert isinstance(excinfo.value, RuntimeError)
    assert "no roomcast service is running" in str(excinfo.value)


@pytest.mark.parametrize("name, args", ASYNC_CALLS)
async def test_async_calls_without_a_service_raise(name, args):
    with pytest.raises(ServiceNotRunning) as excinfo:
        await getattr(NotificationService, name)(*args)
    assert_says_not_running(excinfo)


@pytest.mark.parametrize("name, args", SYNC_CALLS)
async def test_sync_calls_without_a_service_raise(name, args):
    with pytest.raises(ServiceNotRunning) as excinfo:
        getattr(NotificationService, name)(*args)
    assert_says_not_running(excinfo)


@pytest.mark.parametrize("name, args", SYNC_CALLS)
def test_sync_calls_outside_trio_raise(name, args):
    with pytest.raises(ServiceNotRunning) as excinfo:
        getattr(NotificationService, name)(*args)
    assert_says_not_running(excinfo)


async def test_seed_call_raises_after_the_service_stopped():
    async with running() as service, connect(service, 1):
        assert await NotificationService.notify_user(user_id=1, message="up") is True
    with pytest.raises(ServiceNotRunning) as excinfo:
        await NotificationService.notify_user(
            user_id=1, message="down", level=NotificationLevel.SUCCESS, data={"a": 1}
        )
    assert_says_not_running(excinfo)
    with pytest.raises(ServiceNotRunning):
        NotificationService.is_user_connected(1)


async def test_stale_handle_after_stop_does_not_hang():
    async with running() as service, connect(service, 1) as client:
        await join(client, "r")
        handle = service.notifications
    with trio.fail_after(2):
        assert await handle.notify_user(1, "x") is False
        assert await handle.notify_room("r", "x") == 0
        assert await handle.broadcast("x") == 0
        assert handle.get_connected_users() == set()


async def test_nested_services_bind_the_innermost():
    async with running() as outer:
        async with running() as inner:
            assert NotificationService.current() is inner.notifications
            async with connect(inner, 1) as on_inner:
                assert await NotificationService.notify_user(1, "inner") is True
                assert (await on_inner.recv())["message"] == "inner"
        assert NotificationService.current() is outer.notifications
        async with connect(outer, 1) as on_outer:
            assert await NotificationService.notify_user(1, "outer") is True
            assert (await on_outer.recv())["message"] == "outer"


# bad arguments ------------------------------------------------------------------------


class Unserializable:
    pass


BAD_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception]]] = [
    # non-string message
    ("notify_user", (1, 123), {}, TypeError),
    ("notify_user", (1, None), {}, TypeError),
    ("notify_user", (1, b"bytes"), {}, TypeError),
    ("notify_room", ("r", ["list"]), {}, TypeError),
    ("broadcast", ({"m": 1},), {}, TypeError),
    ("notify_user_in_room", (1, 4.5), {}, TypeError),
    # invalid room names
    ("notify_room", ("", "m"), {}, ValueError),
    ("notify_room", ("has space", "m"), {}, ValueError),
    ("notify_room", ("x" * 101, "m"), {}, ValueError),
    ("notify_room", ("ünï", "m"), {}, ValueError),
    ("notify_room", ("*", "m"), {}, ValueError),
    ("notify_room", (None, "m"), {}, TypeError),
    ("notify_room", (123, "m"), {}, TypeError),
    # invalid user ids
    ("notify_user", (None, "m"), {}, ValueError),
    ("notify_user", (1.5, "m"), {}, ValueError),
    ("notify_user", (True, "m"), {}, ValueError),
    ("notify_user", ("", "m"), {}, ValueError),
    ("notify_user", ("a b", "m"), {}, ValueError),
    ("notify_user_in_room", ("a/b", "m"), {}, ValueError),
    # non-dict data
    ("notify_user", (1, "m"), {"data": [1, 2]}, TypeError),
    ("notify_user", (1, "m"), {"data": "text"}, TypeError),
    ("notify_room", ("r", "m"), {"data": 5}, TypeError),
    ("broadcast", ("m",), {"data": ("a", "b")}, TypeError),
    ("notify_user_in_room", (1, "m"), {"data": ["x"]}, TypeError),
    # unknown levels
    ("notify_user", (1, "m"), {"level": "critical"}, ValueError),
    ("notify_user", (1, "m"), {"level": "INFO"}, ValueError),
    ("notify_room", ("r", "m"), {"level": 3}, ValueError),
    ("broadcast", ("m",), {"level": None}, ValueError),
    ("notify_user_in_room", (1, "m"), {"level": "debug"}, ValueError),
    # unserializable data
    ("notify_user", (1, "m"), {"data": {"o": Unserializable()}}, TypeError),
    ("notify_user", (1, "m"), {"data": {"s": {1, 2}}}, TypeError),
    ("notify_user", (1, "m"), {"data": {"b": b"bytes"}}, TypeError),
    ("notify_room", ("r", "m"), {"data": {"nan": math.nan}}, ValueError),
    ("broadcast", ("m",), {"data": {"inf": math.inf}}, ValueError),
    ("notify_user_in_room", (1, "m"), {"data": {(1, 2): "tuple key"}}, TypeError),
]


@pytest.mark.parametrize("name, args, kwargs, error", BAD_CALLS)
async def test_bad_arguments_raise_and_the_service_keeps_working(
    service, name, args, kwargs, error
):
    async with connect(service, 1) as client:
        await join(client, "r")
        with pytest.raises(error):
            await getattr(NotificationService, name)(*args, **kwargs)
        with pytest.raises(error):
            await getattr(service.notifications, name)(*args, **kwargs)
        # Nothing was sent, and everything still works.
        await client.nothing_within(0.05)
        assert await NotificationService.notify_user(1, "ok") is True
        assert (await client.recv())["message"] == "ok"
        assert await NotificationService.notify_room("r", "room ok") == 1
        assert (await client.recv())["message"] == "room ok"
        echo = await client.request({"type": "text", "data": "alive"})
        assert echo["message"] == "Echo: alive"


async def test_get_room_members_with_odd_names(service):
    async with connect(service, 1):
        for name in ["", "has space", "x" * 101, None, 5, "*"]:
            assert NotificationService.get_room_members(name) == set()


# the welcome and registration ----------------------------------------------------------


async def test_reachable_as_soon_as_the_welcome_arrives(service):
    """Once a client has its welcome it is registered: in its personal room, counted by
    broadcast, and reached by notify_user (the welcome used to go out first)."""
    async with connect(service, 1):
        for _ in range(30):
            async with connect(service, 2) as client:
                assert NotificationService.is_user_connected(2) is True
                assert await NotificationService.broadcast("b") == 2
                assert await NotificationService.notify_user(2, "u") is True
                assert NotificationService.get_room_members("user_2") == {2}
                assert (await client.recv())["message"] == "b"
                assert (await client.recv())["message"] == "u"
            await eventually(lambda: not NotificationService.is_user_connected(2), timeout=2)


async def test_welcome_stays_first_while_notifications_race_the_connection(service):
    async def spam() -> None:
        while True:
            await NotificationService.notify_user(3, "early")
            await NotificationService.broadcast("early broadcast")
            await trio.sleep(0)  # a checkpoint (no time passes): let the service run

    async with trio.open_nursery() as nursery:
        nursery.start_soon(spam)
        for _ in range(20):
            async with connect(service, 3) as client:
                assert client.welcome["message"].startswith("Connected successfully")
                assert client.welcome["data"] == {"user_id": 3, "rooms": ["user_3"]}
                frame = await client.recv()
                assert frame["message"] in {"early", "early broadcast"}
                assert frame["data"]["notification"] is True
        nursery.cancel_scope.cancel()


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


# Data the strict JSON rule refuses (roomcast/protocol/jsontext.py): what the service
# would send could not be read back by a client held to the same rule.
UNSENDABLE_DATA: list[tuple[str, dict[str, Any]]] = [
    ("lone surrogate", {"s": "\ud800"}),
    ("lone surrogate", {"\udc00": 1}),
    ("nested too deeply", {"deep": nested(40)}),
    ("nested too deeply", {"deep": nested(100_000)}),
]
UNSENDABLE_IDS = ["surrogate", "surrogate-key", "40-deep", "100000-deep"]


@pytest.mark.parametrize("text, data", UNSENDABLE_DATA, ids=UNSENDABLE_IDS)
async def test_data_the_json_rule_refuses_raises_a_plain_value_error(service, text, data):
    async with connect(service, 1) as client:
        await join(client, "r")
        calls = [
            NotificationService.notify_user(1, "m", data=data),
            NotificationService.notify_room("r", "m", data=data),
            NotificationService.broadcast("m", data=data),
            NotificationService.notify_user_in_room(1, "m", data=data),
        ]
        for call in calls:
            with pytest.raises(ValueError, match=text) as raised:
                await call
            assert not isinstance(raised.value, UnicodeError)
        with pytest.raises(ValueError, match="lone surrogate"):
            await NotificationService.notify_user(1, "\udfff")
        await client.nothing_within(0.05)
        assert await NotificationService.notify_room("r", "ok", data={"deep": nested(30)}) == 1
        assert (await client.recv())["data"]["deep"] == nested(30)


@pytest.mark.parametrize("text, data", UNSENDABLE_DATA, ids=UNSENDABLE_IDS)
async def test_the_remote_facade_refuses_the_same_data_before_reaching_redis(text, data):
    from roomcast.remote import RemoteNotificationService

    remote = RemoteNotificationService("redis://127.0.0.1:1")  # nothing listens there
    with pytest.raises(ValueError, match=text):
        await remote.notify_room("r", "m", data=data)
