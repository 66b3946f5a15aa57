"""Delivery order per sender, and a drain that delivers what was queued before 1001."""

from __future__ import annotations

import contextlib
import json

import trio
from trio_websocket import ConnectionClosed

from roomcast import CloseCode, NotificationService

from .conftest import connect, running


async def test_one_task_calling_the_facade_is_received_in_order(service):
    async with connect(service, 1) as client:
        await client.request({"type": "join_room", "room": "r"})
        count = 600
        for seq in range(count):
            kind = seq % 4
            data = {"seq": seq}
            if kind == 0:
                await NotificationService.notify_user(user_id=1, message="u", data=data)
            elif kind == 1:
                await NotificationService.notify_room(room_name="r", message="r", data=data)
            elif kind == 2:
                await NotificationService.broadcast(message="b", data=data)
            else:
                await NotificationService.notify_user_in_room(user_id=1, message="p", data=data)
        seen = [(await client.recv())["data"]["seq"] for _ in range(count)]
        assert seen == list(range(count))


async def test_each_clients_frames_reach_each_recipient_in_order():
    async with running(rate_limit=1e6, rate_burst=1_000_000) as service:
        await _clients_in_order(service)


async def _clients_in_order(service):
    senders = [10, 11, 12]
    per_sender = 150
    async with connect(service, 1) as recipient:
        for room in ("a", "b"):
            await recipient.request({"type": "join_room", "room": room})

        async def send_all(user: int) -> None:
            async with connect(service, user) as client:
                for room in ("a", "b"):
                    await client.request({"type": "join_room", "room": room})
                for seq in range(per_sender):
                    room = "a" if seq % 2 else "b"
                    await client.send({"type": "room_message", "room": room, "data": {"s": seq}})
                for _ in range(per_sender):  # its own copies, then leave
                    await client.recv()

        received: dict[int, list[int]] = {user: [] for user in senders}
        async with trio.open_nursery() as nursery:
            for user in senders:
                nursery.start_soon(send_all, user)
            for _ in range(len(senders) * per_sender):
                frame = await recipient.recv()
                received[frame["data"]["from_user_id"]].append(frame["data"]["payload"]["s"])
        assert received == {user: list(range(per_sender)) for user in senders}


async def test_a_big_rooms_deferred_frames_keep_their_order_among_direct_ones(service):
    """A room of more than WRITE_NOW_UP_TO members defers its writes to its flush; a
    notification to one member, written at once, must still come after them."""
    from roomcast.actors.room import WRITE_NOW_UP_TO

    size, count = WRITE_NOW_UP_TO + 4, 300
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(connect(service, 100 + i))
                   for i in range(size)]
        for client in clients:
            await client.request({"type": "join_room", "room": "big"})
        for seq in range(count):
            if seq % 3 == 2:
                await NotificationService.notify_user(user_id=100, message="u", data={"seq": seq})
            else:
                await NotificationService.notify_room(room_name="big", message="r",
                                                      data={"seq": seq})
        first = [(await clients[0].recv())["data"]["seq"] for _ in range(count)]
        assert first == list(range(count))
        room_only = [seq for seq in range(count) if seq % 3 != 2]
        for client in clients[1:]:
            assert [(await client.recv())["data"]["seq"] for _ in room_only] == room_only
            await client.nothing_within(0.05)


async def test_drain_delivers_what_was_queued_before_the_1001():
    async with running(shutdown_timeout=20.0, close_timeout=20.0) as service:
        async with connect(service, 1, message_queue_size=1) as client:
            count = 400
            for seq in range(count):  # ~400 KB: more than the socket buffers hold
                await service.notifications.notify_user(1, "x" * 1000, data={"seq": seq})
            (connection,) = service.registry.connections_of(1).values()
            # some frames are still queued here
            assert connection.outbox.backlog_bytes > 0, "the kernel took all 400 KB"
            seen: list[int] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(service.gateway.drain, 20.0)
                with trio.fail_after(20):
                    while True:
                        try:
                            frame = json.loads(await client.ws.get_message())
                        except ConnectionClosed as closed:
                            assert closed.reason.code == CloseCode.GOING_AWAY
                            break
                        seen.append(frame["data"]["seq"])
            assert seen == list(range(count)), (len(seen), seen[:3], seen[-3:])
