"""The keeper's heaps while connections come and go during its own pass over them."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import trio

from roomcast.actors.keeper import Keeper


class FakeConnection:
    """What the keeper reads of a connection, and what it does to one."""

    def __init__(self, conn_id: int) -> None:
        self.id = conn_id
        self.user_id = conn_id
        self.principal = SimpleNamespace(expires_at=None)
        self.outbox = SimpleNamespace(last_received=trio.current_time())
        self.pings = 0

    def deliver(self, frame: bytes) -> bool:
        self.pings += 1
        return True

    def request_close(self, code: int, reason: str) -> None:
        raise AssertionError("nobody is closed here")


async def test_unwatching_during_a_heartbeat_pass_leaves_one_entry_per_connection():
    # watch/unwatch are plain calls from other tasks: one may compact the heap while the
    # keeper's pass over it waits at a checkpoint, and the pass must go on with it.
    keeper = Keeper(ping_interval=0.01, ping_timeout=60.0, leeway=0.0)
    connections = [FakeConnection(i) for i in range(3000)]
    for connection in connections:
        keeper.watch(connection)
    await trio.sleep(0.05)  # every one is due for a ping
    leaving = connections[:2700]

    async def unwatch_meanwhile() -> None:
        while not keeper._pinged:  # until the pass has begun and yielded
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
    entries = Counter(conn_id for _, conn_id in keeper._checks if conn_id in live)
    assert entries == Counter(live)
    assert all(c.pings == 1 for c in staying)
    assert all(c.pings <= 1 for c in leaving)
