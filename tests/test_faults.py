"""Faults stay where they happen: a crashed connection, a crashed room, a slow client."""

from __future__ import annotations

import json

import pytest
import trio
from trio_websocket import ConnectionClosed

from roomcast import CloseCode, NotificationService
from roomcast.actors.base import ActorCrashed, Crash, Reply, accept_crashes
from roomcast.actors.registry import JoinRoom

from .conftest import connect, crash_at_next_frame, eventually, running


class InjectedFault(Exception):
    pass


async def closed_code(client, timeout: float = 10.0) -> int:
    """Read whatever is left until the close frame; return the close code."""
    with trio.fail_after(timeout):
        while True:
            try:
                await client.ws.get_message()
            except ConnectionClosed as closed:
                return closed.reason.code


async def test_connection_crash_on_a_frame_answers_internal_error_to_that_client_only(service):
    async with connect(service, 1) as victim, connect(service, 2) as other:
        await victim.request({"type": "join_room", "room": "r"})
        await other.request({"type": "join_room", "room": "r"})
        (conn,) = service.registry.connections_of(1).values()
        crash_at_next_frame(conn, InjectedFault("injected"))
        reply = await victim.request({"type": "text", "data": "boom"})
        assert reply["data"] == {"code": "internal_error"}, reply
        assert NotificationService.get_room_members("r") == {1, 2}  # still connected
        await victim.ws.aclose()
        await eventually(lambda: not NotificationService.is_user_connected(1), timeout=5)
        assert NotificationService.get_room_members("r") == {2}
        assert await service.notifications.notify_room("r", "still here") == 1
        assert (await other.recv())["message"] == "still here"
        assert (await other.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


async def test_room_crash_restarts_with_members_intact(service):
    async with connect(service, 1) as a, connect(service, 2) as b:
        await a.request({"type": "join_room", "room": "r"})
        await b.request({"type": "join_room", "room": "r"})
        room = service.registry.room("r")
        reply: Reply[None] = Reply()
        accept_crashes(room)
        await room.send(Crash(InjectedFault("injected"), reply))
        try:
            await reply.wait()
        except ActorCrashed:
            pass
        else:
            raise AssertionError("the crash was not reported to the caller")
        assert service.supervisor.restarts == 1
        assert service.registry.room("r") is room
        assert NotificationService.get_room_members("r") == {1, 2}
        assert await NotificationService.notify_room(room_name="r", message="after") == 2
        assert (await a.recv())["message"] == "after"
        assert (await b.recv())["message"] == "after"
        reply_frame = await a.request({"type": "room_message", "room": "r", "data": "hi"})
        assert reply_frame["message"] == "hi"
        assert (await b.recv())["message"] == "hi"


async def test_client_sees_internal_error_when_room_crashes_on_its_frame(service):
    async with connect(service, 1) as a:
        await a.request({"type": "join_room", "room": "r"})
        room = service.registry.room("r")
        # Hold the room's loop on a crash that fires on the next message it handles.
        original = room.handle

        async def crash_once(message):
            room.handle = original
            raise InjectedFault("injected")

        room.handle = crash_once
        frame = await a.request({"type": "room_message", "room": "r", "data": "x"})
        assert frame["type"] == "error"
        assert frame["data"] == {"code": "internal_error"}
        frame = await a.request({"type": "room_message", "room": "r", "data": "y"})
        assert frame["message"] == "y"


async def test_slow_consumer_is_closed_with_4009_and_delays_nobody():
    async with running(outbox_limit=64 * 1024, close_timeout=10.0) as service:
        # The stalled client's library queues one message, then stops reading the socket.
        async with connect(service, 1, message_queue_size=1) as stalled, \
                connect(service, 2) as reader:
            await stalled.request({"type": "join_room", "room": "r"})
            await reader.request({"type": "join_room", "room": "r"})
            (conn,) = service.registry.connections_of(1).values()
            payload = "x" * 1000
            count = 3000  # ~3 MB: far past the kernel buffers and the 64 KiB outbox
            received: list[int] = []

            async def read_all():
                while len(received) < count:
                    frame = await reader.recv(timeout=10)
                    received.append(frame["data"]["seq"])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read_all)
                for seq in range(count):
                    await service.notifications.notify_room("r", payload, data={"seq": seq})
            assert received == list(range(count))
            assert conn.close_code == CloseCode.SLOW_CONSUMER
            # When it reads again, it finds an in-order prefix, then the 4009 close.
            seen: list[int] = []
            with trio.fail_after(10):
                while True:
                    try:
                        frame = json.loads(await stalled.ws.get_message())
                    except ConnectionClosed as closed:
                        assert closed.reason.code == CloseCode.SLOW_CONSUMER
                        break
                    if frame["data"] and "seq" in frame["data"]:
                        seen.append(frame["data"]["seq"])
            assert seen == list(range(len(seen)))
            assert len(seen) < count


async def test_restarts_past_the_intensity_stop_the_service_cleanly():
    from roomcast import ServiceFailed

    codes: list[int] = []
    with pytest.raises(ServiceFailed, match="room r restarted too often"):
        async with running(restart_intensity=2, restart_period=60.0) as service:
            async with connect(service, 1) as a, connect(service, 2) as b:
                await a.request({"type": "join_room", "room": "r"})
                room = service.registry.room("r")
                accept_crashes(room)
                for _ in range(3):
                    await room.send(Crash(InjectedFault("injected")))
                for client in (a, b):
                    codes.append(await closed_code(client))
                await trio.sleep_forever()  # the service stops us
    assert codes == [CloseCode.GOING_AWAY, CloseCode.GOING_AWAY]


async def test_room_crash_mid_fan_out_finishes_the_fan_out_after_restart(service):
    async with connect(service, 1) as a, connect(service, 2) as b, connect(service, 3) as c:
        for client in (a, b, c):
            await client.request({"type": "join_room", "room": "r"})
        room = service.registry.room("r")
        room.fault_after = 0  # crash right after the first member got the frame
        assert await service.notifications.notify_room("r", "one", data={"seq": 1}) == 3
        assert service.supervisor.restarts == 1
        assert await service.notifications.notify_room("r", "two", data={"seq": 2}) == 3
        for client in (a, b, c):
            assert [(await client.recv())["data"]["seq"] for _ in range(2)] == [1, 2]
            await client.nothing_within(0.1)  # and nothing twice


async def test_inline_registry_crash_fails_that_message_only_and_keeps_its_state(service):
    # The registry runs inline, in its senders' tasks: a crash fails the message it
    # crashed on, counts as a restart, and the registry goes on with its state.
    async with connect(service, 1) as a:
        await a.request({"type": "join_room", "room": "r"})
        reply: Reply[None] = Reply()
        accept_crashes(service.registry)
        await service.registry.send(Crash(InjectedFault("injected"), reply))
        with pytest.raises(ActorCrashed):
            await reply.wait()
        assert service.supervisor.restarts == 1
        assert service.metrics.restarts == {"registry": 1}
        assert NotificationService.get_room_members("r") == {1}
        async with connect(service, 2) as b:
            await b.request({"type": "join_room", "room": "r"})
            assert await NotificationService.notify_room("r", "after") == 2
            assert (await a.recv())["message"] == "after"
            assert (await b.recv())["message"] == "after"
        await eventually(lambda: NotificationService.get_room_members("r") == {1}, timeout=5)


async def test_inline_personal_room_crash_mid_fan_out_still_reaches_every_tab_once(service):
    async with connect(service, 1) as t1, connect(service, 1) as t2, connect(service, 1) as t3:
        room = service.registry.room("user_1")
        assert room is not None and room.inline
        room.fault_after = 0  # crash right after the first tab got the frame
        assert await NotificationService.notify_user(1, "one", data={"seq": 1}) is True
        assert service.supervisor.restarts == 1
        assert service.metrics.restarts == {"room": 1}
        assert await NotificationService.notify_user(1, "two", data={"seq": 2}) is True
        for tab in (t1, t2, t3):
            assert [(await tab.recv())["data"]["seq"] for _ in range(2)] == [1, 2]
            await tab.nothing_within(0.1)  # and nothing twice


async def test_member_failing_mid_fan_out_is_closed_with_1011_others_get_every_frame(service):
    async with connect(service, 1) as a, connect(service, 2) as b, connect(service, 3) as c:
        for client in (a, b, c):
            await client.request({"type": "join_room", "room": "r"})
        (broken,) = service.registry.connections_of(2).values()

        def deliver(frame: bytes) -> bool:
            raise InjectedFault("injected")

        broken.deliver = deliver
        for seq in range(5):
            await service.notifications.notify_room("r", "m", data={"seq": seq})
        assert await closed_code(b) == CloseCode.INTERNAL_ERROR
        for client in (a, c):
            assert [(await client.recv())["data"]["seq"] for _ in range(5)] == list(range(5))
        assert service.supervisor.restarts == 0


async def test_client_vanishing_without_close_frame_mid_stream_costs_nobody_a_frame():
    import socket

    from .conftest import token_for
    from .test_hardening import _raw_upgrade

    async with running(close_timeout=0.5) as service:
        async with connect(service, 1) as a, connect(service, 3) as c:
            for client in (a, c):
                await client.request({"type": "join_room", "room": "r"})
            vanishing = await _raw_upgrade(service.port, token_for(2))
            await eventually(lambda: service.notifications.is_user_connected(2), timeout=5)
            (conn,) = service.registry.connections_of(2).values()
            await service.registry.call(JoinRoom(conn, "r", Reply()))
            conn.rooms["r"] = None
            for seq in range(50):
                await service.notifications.notify_room("r", "m", data={"seq": seq})
                if seq == 20:  # abort: RST, no close frame
                    vanishing.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    vanishing.socket.close()
            for client in (a, c):
                assert [(await client.recv())["data"]["seq"] for _ in range(50)] == list(range(50))
            members = service.notifications.get_room_members
            await eventually(lambda: members("r") == {1, 3}, timeout=5)
