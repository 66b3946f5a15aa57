"""The keeper actor alone, on Trio's MockClock (no socket, no real time): fake
connections with `deliver`, `request_close` and the time they last received a byte.
Its rule is tested with plain values in tests/test_deadlines.py; what crosses the wire
(the ping's bytes, the close codes) in tests/test_hardening.py."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import pairwise

import pytest
import trio
import trio.testing

from roomcast.actors.keeper import Keeper
from roomcast.protocol import CloseCode
from roomcast.protocol.deadlines import GRANULARITY, JITTER
from roomcast.protocol.wsframe import PING_FRAME

EPOCH = 1_700_000_000.0  # the wall clock's reading when Trio's clock reads 0


def wall_clock() -> float:
    """A wall clock that keeps pace with Trio's (mock) clock."""
    return EPOCH + trio.current_time()


class FakeConnection:
    """What the keeper reads of a connection, and what it does to one."""

    def __init__(self, conn_id: int, *, expires_at: float | None = None,
                 answers_pings: bool = False) -> None:
        self.id = conn_id
        self.user_id = conn_id
        self.expires_at = expires_at
        self.last_received = trio.current_time()
        self.answers_pings = answers_pings
        self.ping_times: list[float] = []
        self.pinged = trio.Event()  # set at the first ping
        self.close: tuple[int, float] | None = None  # (code, when)
        self.closed = trio.Event()

    @property
    def pings(self) -> int:
        return len(self.ping_times)

    def deliver(self, frame: bytes, *, later: bool = False) -> bool:
        assert frame == PING_FRAME
        self.ping_times.append(trio.current_time())
        self.pinged.set()
        if self.answers_pings:  # the pong arrives at once
            self.last_received = trio.current_time()
        return True

    def request_close(self, code: int, reason: str) -> None:
        assert self.close is None, "closed twice"
        self.close = (code, trio.current_time())
        self.closed.set()


@asynccontextmanager
async def running_keeper(ping_interval: float = 10.0, ping_timeout: float = 5.0,
                         leeway: float = 2.0) -> AsyncIterator[Keeper]:
    keeper = Keeper(ping_interval, ping_timeout, leeway, wall_clock=wall_clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        yield keeper
        nursery.cancel_scope.cancel()


async def test_a_quiet_connection_is_pinged_after_its_interval_then_closed_with_4000(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=10.0, ping_timeout=5.0) as keeper:
        connection = FakeConnection(1)
        keeper.watch(connection)
        await connection.pinged.wait()
        (pinged_at,) = connection.ping_times
        assert 10.0 <= pinged_at <= 10.0 * (1 + JITTER) + GRANULARITY
        await connection.closed.wait()
        assert connection.close is not None
        code, closed_at = connection.close
        assert code == CloseCode.HEARTBEAT_TIMEOUT
        assert pinged_at + 5.0 <= closed_at <= pinged_at + 5.0 + GRANULARITY
        assert connection.pings == 1


async def test_connections_watched_together_are_pinged_at_different_times(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=10.0) as keeper:
        connections = [FakeConnection(i) for i in range(50)]
        for connection in connections:
            keeper.watch(connection)
        for connection in connections:
            await connection.pinged.wait()
        times = [c.ping_times[0] for c in connections]
        assert all(10.0 <= t <= 10.0 * (1 + JITTER) + GRANULARITY for t in times)
        assert len(set(times)) > 1


async def test_no_ping_while_traffic_flows(autojump_clock: trio.testing.MockClock):
    async with running_keeper(ping_interval=10.0, ping_timeout=5.0) as keeper:
        connection = FakeConnection(1)
        keeper.watch(connection)
        for _ in range(20):  # a frame from the client every 6 s, for two minutes
            await trio.sleep(6.0)  # mock time: the client's pace, not a wait for a condition
            connection.last_received = trio.current_time()
        assert connection.pings == 0 and connection.close is None
        quiet_since = trio.current_time()
        await connection.pinged.wait()  # quiet now: pinged an interval later
        assert connection.ping_times[0] - quiet_since >= 10.0


async def test_a_connection_that_answers_pings_stays(autojump_clock: trio.testing.MockClock):
    async with running_keeper(ping_interval=10.0, ping_timeout=5.0) as keeper:
        connection = FakeConnection(1, answers_pings=True)
        keeper.watch(connection)
        await trio.sleep(1000.0)  # mock time: a hundred intervals
        assert connection.close is None
        assert 1000.0 / (10.0 * (1 + JITTER)) - 1 <= connection.pings <= 100
        gaps = [b - a for a, b in pairwise(connection.ping_times)]
        assert all(10.0 <= gap <= 10.0 * (1 + JITTER) + GRANULARITY for gap in gaps)


async def test_an_unwatched_connection_is_left_alone(autojump_clock: trio.testing.MockClock):
    async with running_keeper(ping_interval=10.0) as keeper:
        connection = FakeConnection(1, expires_at=EPOCH + 5.0)
        keeper.watch(connection)
        keeper.unwatch(connection)
        await trio.sleep(100.0)  # mock time: past every deadline it had
        assert connection.pings == 0 and connection.close is None


async def test_closed_with_4001_at_the_tokens_expiry_plus_the_leeway(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=2.0) as keeper:
        await trio.sleep(7.0)  # mock time: the keeper has been running a while
        connection = FakeConnection(1, expires_at=wall_clock() + 30.0)
        keeper.watch(connection)
        await connection.closed.wait()
        assert connection.close == (CloseCode.TOKEN_EXPIRED, 7.0 + 30.0 + 2.0)


async def test_a_token_expired_within_the_leeway_closes_when_the_leeway_is_up(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=2.0) as keeper:
        connection = FakeConnection(1, expires_at=wall_clock() - 1.5)
        keeper.watch(connection)
        await connection.closed.wait()
        assert connection.close == (CloseCode.TOKEN_EXPIRED, 0.5)


async def test_the_wall_clock_is_read_only_at_watch(autojump_clock: trio.testing.MockClock):
    readings: list[float] = []
    wall = EPOCH

    def jumpy_wall_clock() -> float:
        readings.append(wall)
        return wall

    keeper = Keeper(1000.0, 5.0, 0.0, wall_clock=jumpy_wall_clock)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper.run)
        connection = FakeConnection(1, expires_at=EPOCH + 30.0)
        keeper.watch(connection)
        wall = EPOCH + 10_000.0  # the wall clock jumps (NTP, a suspended VM): no matter
        await connection.closed.wait()
        assert connection.close == (CloseCode.TOKEN_EXPIRED, 30.0)
        assert readings == [EPOCH]
        nursery.cancel_scope.cancel()


async def test_refresh_token_moves_the_deadline(autojump_clock: trio.testing.MockClock):
    async with running_keeper(ping_interval=1000.0, leeway=2.0) as keeper:
        connection = FakeConnection(1, expires_at=wall_clock() + 30.0)
        keeper.watch(connection)
        await trio.sleep(20.0)  # mock time: the client refreshes 10 s before expiry
        connection.expires_at = wall_clock() + 100.0
        keeper.watch(connection)  # what the connection does after a refresh_token
        await connection.closed.wait()
        assert connection.close == (CloseCode.TOKEN_EXPIRED, 20.0 + 100.0 + 2.0)


async def test_refresh_token_to_an_earlier_expiry_wakes_the_keeper_sooner(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=0.0) as keeper:
        connection = FakeConnection(1, expires_at=wall_clock() + 500.0)
        keeper.watch(connection)
        await trio.sleep(1.0)  # mock time: the keeper sleeps towards 500 s
        connection.expires_at = wall_clock() + 10.0
        keeper.watch(connection)
        await connection.closed.wait()
        assert connection.close == (CloseCode.TOKEN_EXPIRED, 11.0)


async def test_refresh_to_a_token_without_expiry_drops_the_deadline(
    autojump_clock: trio.testing.MockClock,
):
    async with running_keeper(ping_interval=1000.0, leeway=2.0) as keeper:
        connection = FakeConnection(1, expires_at=wall_clock() + 30.0, answers_pings=True)
        keeper.watch(connection)
        connection.expires_at = None
        keeper.watch(connection)
        await trio.sleep(5000.0)  # mock time: long past the first token's expiry
        assert connection.close is None


async def test_unwatching_during_a_heartbeat_pass_leaves_one_entry_per_connection(
    mock_clock: trio.testing.MockClock,
):
    # watch/unwatch are plain calls from other tasks: one may compact the heap while the
    # keeper's pass over it waits at a checkpoint, and the pass must go on with it.
    keeper = Keeper(ping_interval=0.01, ping_timeout=60.0, leeway=0.0)
    connections = [FakeConnection(i) for i in range(3000)]
    for connection in connections:
        keeper.watch(connection)
    mock_clock.jump(0.05)  # every one is due for a ping
    leaving = connections[:2700]

    async def unwatch_meanwhile() -> None:
        while not any(c.pings for c in connections):  # until the pass has begun and yielded
            await trio.lowlevel.checkpoint()
        for connection in leaving:  # enough departures for a compaction
            keeper.unwatch(connection)
        assert any(c.pings == 0 for c in connections)  # the pass is not over

    async with trio.open_nursery() as nursery:
        nursery.start_soon(keeper._check_heartbeats)
        nursery.start_soon(unwatch_meanwhile)
    await keeper._check_heartbeats()  # whatever the first pass left due

    staying = connections[2700:]
    # One entry each for those who stay (the gone ones' entries are dropped lazily).
    live = {c.id for c in staying}
    entries = Counter(conn_id for _, conn_id in keeper.deadlines._checks if conn_id in live)
    assert entries == Counter(live)
    assert all(c.pings == 1 for c in staying)
    assert all(c.pings <= 1 for c in leaving)


@pytest.mark.parametrize("interval", [0.5, 30.0])
async def test_many_connections_each_pinged_once_per_quiet_interval(
    autojump_clock: trio.testing.MockClock, interval: float,
):
    async with running_keeper(ping_interval=interval, ping_timeout=interval) as keeper:
        connections = [FakeConnection(i, answers_pings=True) for i in range(200)]
        for connection in connections:
            keeper.watch(connection)
        await trio.sleep(interval * 3.0)  # mock time: three intervals, of up to 1.25 each
        assert all(2 <= c.pings <= 3 for c in connections)
        assert all(c.close is None for c in connections)
