"""The keeper and room tokens, on Trio's MockClock: a room joined by a room token is
left at that token's expiry plus the leeway, unless a fresh one moved it; over real
sockets in test_rooms_access.py."""

from __future__ import annotations

import trio
import trio.testing

from .test_keeper import EPOCH, FakeConnection, running_keeper, wall_clock


class RoomMember(FakeConnection):
    def __init__(self, conn_id: int) -> None:
        super().__init__(conn_id, expires_at=EPOCH + 10_000.0)
        self.left: list[tuple[str, float]] = []
        self.left_one = trio.Event()

    async def leave_expired_room(self, room: str) -> None:
        self.left.append((room, trio.current_time()))
        self.left_one.set()


async def test_a_room_is_left_at_its_room_tokens_expiry_plus_the_leeway(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=2.0) as keeper:
        member = RoomMember(1)
        keeper.watch(member)
        keeper.watch_room(member, "a", wall_clock() + 30.0)
        keeper.watch_room(member, "b", wall_clock() + 500.0)
        keeper.watch_room(member, "c", None)  # allowed by another rule: never
        await member.left_one.wait()
        assert member.left == [("a", 32.0)]
        assert member.close is None  # the connection stays


async def test_a_fresh_room_token_moves_the_rooms_deadline_and_a_leave_drops_it(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=0.0) as keeper:
        member = RoomMember(1)
        keeper.watch(member)
        keeper.watch_room(member, "a", wall_clock() + 30.0)
        keeper.watch_room(member, "b", wall_clock() + 40.0)
        await trio.sleep(20.0)  # mock time (autojump): 20 s pass, no real wait
        keeper.watch_room(member, "a", wall_clock() + 100.0)  # a re-join, fresh token
        keeper.watch_room(member, "b", None)  # left
        await member.left_one.wait()
        assert member.left == [("a", 120.0)]
        keeper.unwatch(member)
