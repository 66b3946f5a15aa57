"""Keeper actor: the clock of every connection, in one task rather than one each.

Connections are watched and unwatched by plain calls, not messages: they only put an
entry on a heap (no await, so no other task runs meanwhile), and would otherwise cost
every connection two task switches for nothing. The keeper's task sleeps until the
earliest entry is due; a call that brings that moment closer wakes it.

The rule (who is due for a ping, a 4000 or a 4001, and when) is
`roomcast.protocol.deadlines.Deadlines`, on Trio's clock alone; this actor only drives
it. A token's expiry is a wall-clock time (JWT `exp`): it is converted to Trio's clock
once, at `watch`, with the wall clock given to the constructor, and the wall clock is
never read again.

- Heartbeats: a connection quiet for `ping_interval` (plus up to a quarter of it at
  random) is sent a prebuilt ping frame; one that then stays silent for `ping_timeout`
  is closed with 4000 (the outbox records when the socket last received a byte).
- Token expiry: a connection whose token expires is closed with 4001 at that moment
  (plus the leeway), unless a `refresh_token` frame moved its expiry first; never with
  `token_expiry = connect` (`TokenExpiry`).
- Room token expiry: a room joined by a room token is left when that token expires
  (plus the leeway), with an event to the client (`Watched.leave_expired_room`),
  unless a re-join with a fresh room token moved its expiry first. The keeper awaits
  only the registry, which is inline and never waits on a full mailbox.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

import trio

from roomcast.actors.base import Actor
from roomcast.protocol import CloseCode, UserId
from roomcast.protocol.deadlines import Deadlines, Heartbeat, TokenExpiry
from roomcast.protocol.wsframe import PING_FRAME


class Watched(Protocol):
    """What the keeper needs of a connection."""

    @property
    def id(self) -> int: ...

    @property
    def user_id(self) -> UserId: ...

    @property
    def last_received(self) -> float:
        """When the socket last received a byte (Trio time)."""
        ...

    @property
    def expires_at(self) -> float | None:
        """When its token expires (wall-clock seconds), if ever."""
        ...

    def deliver(self, frame: bytes, *, later: bool = False) -> bool: ...

    def request_close(self, code: CloseCode, reason: str) -> None: ...

    async def leave_expired_room(self, room: str) -> None:
        """Its room token for `room` expired: leave the room, and tell the client."""
        ...

log = logging.getLogger(__name__)

# A pass over many due connections yields after this long.
SLICE_SECONDS = 0.0005


class Keeper(Actor):
    name = "keeper"

    def __init__(self, ping_interval: float, ping_timeout: float, leeway: float, *,
                 token_expiry: TokenExpiry = TokenExpiry.CLOSE,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.leeway = leeway
        self.token_expiry = token_expiry
        self.wall_clock = wall_clock  # read only at `watch`, to convert a token's `exp`
        self.connections: dict[int, Watched] = {}
        self.deadlines = Deadlines(ping_interval, ping_timeout)
        self._sleep = trio.CancelScope()  # the loop's sleep, until the next entry is due

    async def run(self) -> None:
        while True:
            with trio.CancelScope(deadline=self.deadlines.next_wakeup()) as self._sleep:
                await trio.sleep_forever()
            self._expire(trio.current_time())
            await self._expire_rooms(trio.current_time())
            await self._check_heartbeats()

    def watch(self, connection: Watched) -> None:
        """Start (or refresh) watching a connection; its `expires_at` is read now."""
        now = trio.current_time()
        self.connections[connection.id] = connection
        self.deadlines.watch(connection.id, now)
        closes_at = self.token_expiry.closes_at(connection.expires_at)
        self.deadlines.expire_at(connection.id, self._deadline(now, closes_at))
        self._wake_by(self.deadlines.next_wakeup())

    def watch_room(self, connection: Watched, room: str, expires_at: float | None) -> None:
        """Leave `room` when its room token expires (`expires_at`, wall-clock seconds,
        plus the leeway), replacing its earlier deadline; None: never (another rule
        allowed it, or the client left it)."""
        now = trio.current_time()
        self.deadlines.room_expire_at(connection.id, room, self._deadline(now, expires_at))
        self._wake_by(self.deadlines.next_wakeup())

    def _deadline(self, now: float, expires_at: float | None) -> float | None:
        if expires_at is None:
            return None
        # the wall-clock `exp`, on Trio's clock from here on
        return now + (expires_at + self.leeway - self.wall_clock())

    def unwatch(self, connection: Watched) -> None:
        self.connections.pop(connection.id, None)
        self.deadlines.unwatch(connection.id)

    def _wake_by(self, deadline: float) -> None:
        if deadline < self._sleep.deadline:
            self._sleep.deadline = deadline

    def _expire(self, now: float) -> None:
        for conn_id in self.deadlines.expired(now):
            connection = self.connections[conn_id]
            log.info("conn %d user=%r: token expired, closing with 4001",
                     connection.id, connection.user_id)
            connection.request_close(CloseCode.TOKEN_EXPIRED, "token expired")

    async def _expire_rooms(self, now: float) -> None:
        for conn_id, room in self.deadlines.rooms_expired(now):
            connection = self.connections.get(conn_id)
            if connection is not None:
                log.info("conn %d user=%r: room token for %s expired, leaving it",
                         conn_id, connection.user_id, room)
                await connection.leave_expired_room(room)

    async def _check_heartbeats(self) -> None:
        # `watch`/`unwatch` may run at this pass's checkpoints: it pops one at a time.
        deadline = time.perf_counter() + SLICE_SECONDS
        while (conn_id := self.deadlines.pop_due(trio.current_time())) is not None:
            self._check(self.connections[conn_id], trio.current_time())
            if time.perf_counter() >= deadline:
                await trio.lowlevel.checkpoint()
                deadline = time.perf_counter() + SLICE_SECONDS

    def _check(self, connection: Watched, now: float) -> None:
        verdict = self.deadlines.check(connection.id, now, connection.last_received)
        if verdict is Heartbeat.PING:
            connection.deliver(PING_FRAME)
        elif verdict is Heartbeat.TIMEOUT:
            log.info("conn %d user=%r: no answer to ping, closing with 4000",
                     connection.id, connection.user_id)
            connection.request_close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
