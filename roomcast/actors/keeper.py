"""Keeper actor: the clock of every connection, in one task rather than one each.

Connections are watched and unwatched by plain calls, not messages: they only put an
entry on a heap (no await, so no other task runs meanwhile), and would otherwise cost
every connection two task switches for nothing. The keeper's task sleeps until the
earliest entry is due; a call that brings that moment closer wakes it.

- Heartbeats: it looks at each connection when that connection's own interval is up:
  `ping_interval` after the last byte it sent us (any frame counts, a pong included).
  Quiet for an interval (plus a random share of up to JITTER of it): it is sent a
  prebuilt ping frame. No answer within `ping_timeout` of the ping: it is dead or
  half-open, and is closed with 4000. Each connection is due on a clock of its own (a
  heap), so that thousands of connections opened together are not pinged in one sweep,
  which would wake thousands of readers at once.
- Token expiry: a connection whose token expires is closed with 4001 at that moment
  (plus the leeway), unless a `refresh_token` frame moved its expiry first.
"""

from __future__ import annotations

import heapq
import logging
import math
import random
import time
from typing import TYPE_CHECKING

import trio

from roomcast.actors.base import Actor
from roomcast.protocol import CloseCode

if TYPE_CHECKING:
    from roomcast.actors.connection import Connection

log = logging.getLogger(__name__)

PING_FRAME = b"\x89\x00"  # a final ping frame with no payload, unmasked
# Heartbeat checks due within this much are done in one pass (late by at most this).
GRANULARITY = 0.005
# A quiet connection is pinged `ping_interval` after its last byte, plus up to this share
# of the interval at random: connections opened together (a deploy, a benchmark) are not
# pinged together, and their pongs do not wake thousands of tasks in the same moments.
JITTER = 0.25
# A pass over many due connections yields after this long.
SLICE_SECONDS = 0.0005


class Keeper(Actor):
    name = "keeper"

    def __init__(self, ping_interval: float, ping_timeout: float, leeway: float) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.leeway = leeway
        self.connections: dict[int, Connection] = {}
        # (deadline on Trio's clock, conn id, the `exp` it was set for)
        self._expiries: list[tuple[float, int, float]] = []
        # (when to look at the connection's heartbeat again, conn id)
        self._checks: list[tuple[float, int]] = []
        self._pinged: dict[int, float] = {}  # conn id -> when its last ping was sent
        self._sleep = trio.CancelScope()  # the loop's sleep, until the next entry is due

    async def run(self) -> None:
        while True:
            wake_at = min(self._checks[0][0] + GRANULARITY if self._checks else math.inf,
                          self._expiries[0][0] if self._expiries else math.inf)
            with trio.CancelScope(deadline=wake_at) as self._sleep:
                await trio.sleep_forever()
            self._expire(trio.current_time())
            await self._check_heartbeats()

    def watch(self, connection: Connection) -> None:
        """Start (or refresh) watching a connection; its `expires_at` is read now."""
        if connection.id not in self.connections:
            self._push_check(trio.current_time() + self._quiet_for(), connection.id)
        self.connections[connection.id] = connection
        expires_at = connection.principal.expires_at
        if expires_at is not None:
            self._schedule(connection.id, expires_at)

    def unwatch(self, connection: Connection) -> None:
        self.connections.pop(connection.id, None)
        self._pinged.pop(connection.id, None)
        self._maybe_compact()

    def _quiet_for(self) -> float:
        return self.ping_interval * (1.0 + JITTER * random.random())

    def _push_check(self, at: float, conn_id: int) -> None:
        heapq.heappush(self._checks, (at, conn_id))
        self._wake_by(at + GRANULARITY)

    def _wake_by(self, deadline: float) -> None:
        if deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    def _schedule(self, conn_id: int, expires_at: float) -> None:
        self._maybe_compact()
        # Wall-clock `exp` to Trio's clock, when it is set.
        deadline = trio.current_time() + (expires_at + self.leeway - time.time())
        heapq.heappush(self._expiries, (deadline, conn_id, expires_at))
        self._wake_by(deadline)

    def _maybe_compact(self) -> None:
        # Amortized: a compaction leaves about one entry per connection, so the next
        # one comes only after as many more watches, refreshes or departures.
        if len(self._expiries) + len(self._checks) > 4 * len(self.connections):
            self._compact()

    def _compact(self) -> None:
        """Drop entries of gone connections and of refreshed tokens, so that churn and
        refresh floods cannot grow the heap past twice the live connections. In place:
        `unwatch` may run while the keeper's own pass over the heap is at a checkpoint,
        and that pass must go on with the same list."""
        self._expiries[:] = [
            (deadline, conn_id, expires_at)
            for deadline, conn_id, expires_at in self._expiries
            if (conn := self.connections.get(conn_id)) is not None
            and conn.principal.expires_at == expires_at
        ]
        heapq.heapify(self._expiries)
        self._checks[:] = [entry for entry in self._checks if entry[1] in self.connections]
        heapq.heapify(self._checks)

    def _expire(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            _, conn_id, expires_at = heapq.heappop(self._expiries)
            connection = self.connections.get(conn_id)
            if connection is None or connection.principal.expires_at != expires_at:
                continue  # gone, or refreshed since: a later entry stands
            if time.time() < expires_at + self.leeway:
                self._schedule(conn_id, expires_at)  # the two clocks drifted apart
                continue
            log.info("conn %d user=%r: token expired, closing with 4001",
                     connection.id, connection.user_id)
            connection.request_close(CloseCode.TOKEN_EXPIRED, "token expired")

    async def _check_heartbeats(self) -> None:
        checks, deadline = self._checks, time.perf_counter() + SLICE_SECONDS
        # `checks` stays this keeper's heap across the checkpoints (compaction is in
        # place), though watch/unwatch may change it meanwhile.
        while checks and checks[0][0] <= trio.current_time():
            _, conn_id = heapq.heappop(checks)
            connection = self.connections.get(conn_id)
            if connection is not None:
                self._check(connection, trio.current_time())
            if time.perf_counter() >= deadline:
                await trio.lowlevel.checkpoint()
                deadline = time.perf_counter() + SLICE_SECONDS

    def _check(self, connection: Connection, now: float) -> None:
        """Ping a quiet connection, close one that did not answer, and say when to look
        at it again."""
        last_received = connection.outbox.last_received
        pinged_at = self._pinged.get(connection.id)
        if pinged_at is not None and last_received < pinged_at:
            if now - pinged_at >= self.ping_timeout:
                log.info("conn %d user=%r: no answer to ping, closing with 4000",
                         connection.id, connection.user_id)
                connection.request_close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            again = pinged_at + self.ping_timeout
        elif now - last_received >= self.ping_interval:
            self._pinged[connection.id] = now
            connection.deliver(PING_FRAME)
            again = now + self.ping_timeout
        else:
            self._pinged.pop(connection.id, None)
            again = last_received + self._quiet_for()
        self._push_check(again, connection.id)
