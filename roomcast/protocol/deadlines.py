"""The keeper's rule, sans-IO: when each connection is due for a look, a ping, a 4000 or
a 4001. Plain values on one clock (the caller's; the keeper passes Trio's), no Trio.

- Heartbeats: a connection is looked at `ping_interval` after the last byte it sent
  (plus a random share of up to JITTER of the interval, so that connections opened
  together are not pinged together). Quiet for an interval: ping it. No byte within
  `ping_timeout` of the ping: it times out (4000). Each connection has an entry of its
  own in a heap, so thousands opened together are not looked at in one sweep.
- Token expiry: a deadline per connection on the same clock (the caller converts the
  token's wall-clock `exp` once); a new deadline replaces the old one (a refresh). With
  `TokenExpiry.CONNECT` a connection has none (its `exp` was checked at the handshake).
- Room token expiry: a deadline per (connection, room) joined by a room token, kept the
  same way: a re-join with a fresh room token replaces it, a leave (or a join that
  another rule allowed) drops it, and the connection's departure drops them all.

Entries of gone connections and replaced deadlines stay in the heaps until popped or
until a compaction, which runs once the heaps hold more than four entries per
connection: churn and refresh floods cannot grow them past that.
"""

from __future__ import annotations

import enum
import heapq
import math
import random
from collections.abc import Callable

# A quiet connection is looked at `ping_interval` after its last byte, plus up to this
# share of the interval at random.
JITTER = 0.25
# Heartbeat looks due within this much are done in one wake-up (late by at most this).
GRANULARITY = 0.005


class Heartbeat(enum.Enum):
    PING = "ping"  # quiet for an interval: send it a ping
    TIMEOUT = "timeout"  # no answer to the ping within ping_timeout: close with 4000


class TokenExpiry(enum.Enum):
    """What a connection token's `exp` means once the connection is open (the
    `token_expiry` setting)."""

    CLOSE = "close"  # the connection closes with 4001 then, unless refresh_token renewed it
    CONNECT = "connect"  # nothing: it was checked at the handshake only

    def closes_at(self, expires_at: float | None) -> float | None:
        """When a connection whose token expires at `expires_at` must close, if ever.
        Room tokens are not concerned: a room is always left at its token's expiry."""
        return expires_at if self is TokenExpiry.CLOSE else None


class Deadlines:
    def __init__(self, ping_interval: float, ping_timeout: float, *,
                 jitter: Callable[[], float] = random.random) -> None:
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._jitter = jitter  # a float in [0, 1)
        self._watched: set[int] = set()
        self._checks: list[tuple[float, int]] = []  # (when to look at it, conn id)
        self._expiries: list[tuple[float, int]] = []  # (expiry deadline, conn id)
        self._expiry: dict[int, float] = {}  # conn id -> its current expiry deadline
        self._pinged: dict[int, float] = {}  # conn id -> when its last ping was sent
        self._room_expiries: list[tuple[float, int, str]] = []  # (deadline, conn id, room)
        self._room_expiry: dict[int, dict[str, float]] = {}  # conn id -> room -> deadline
        self._live_rooms = 0  # entries in _room_expiry's dicts, all together

    def __len__(self) -> int:
        return len(self._watched)

    def __contains__(self, conn_id: object) -> bool:
        return conn_id in self._watched

    def watch(self, conn_id: int, now: float) -> None:
        """Start watching a connection (opened `now`); again, it changes nothing."""
        if conn_id not in self._watched:
            self._watched.add(conn_id)
            heapq.heappush(self._checks, (now + self._quiet_for(), conn_id))

    def expire_at(self, conn_id: int, deadline: float | None) -> None:
        """Set (or replace, or with None drop) a watched connection's expiry deadline."""
        self._maybe_compact()
        if deadline is None:
            self._expiry.pop(conn_id, None)
            return
        self._expiry[conn_id] = deadline
        heapq.heappush(self._expiries, (deadline, conn_id))

    def room_expire_at(self, conn_id: int, room: str, deadline: float | None) -> None:
        """Set (or replace, or with None drop) the deadline of a watched connection's
        room joined by a room token."""
        if conn_id not in self._watched:
            return
        self._maybe_compact()
        rooms = self._room_expiry.setdefault(conn_id, {})
        had = room in rooms
        if deadline is None:
            rooms.pop(room, None)
            self._live_rooms -= had
            if not rooms:
                del self._room_expiry[conn_id]
            return
        rooms[room] = deadline
        self._live_rooms += not had
        heapq.heappush(self._room_expiries, (deadline, conn_id, room))

    def unwatch(self, conn_id: int) -> None:
        self._watched.discard(conn_id)
        self._expiry.pop(conn_id, None)
        self._pinged.pop(conn_id, None)
        self._live_rooms -= len(self._room_expiry.pop(conn_id, {}))
        self._maybe_compact()

    def next_wakeup(self) -> float:
        """When something may next be due (inf: nothing is watched)."""
        check = self._checks[0][0] + GRANULARITY if self._checks else math.inf
        rooms = self._room_expiries[0][0] if self._room_expiries else math.inf
        return min(check, rooms, self._expiries[0][0] if self._expiries else math.inf)

    def expired(self, now: float) -> list[int]:
        """The connections whose expiry deadline is `now` or before, each once."""
        due: list[int] = []
        while self._expiries and self._expiries[0][0] <= now:
            deadline, conn_id = heapq.heappop(self._expiries)
            if self._expiry.get(conn_id) == deadline:  # not gone, not replaced since
                del self._expiry[conn_id]
                due.append(conn_id)
        return due

    def rooms_expired(self, now: float) -> list[tuple[int, str]]:
        """The (connection, room) pairs whose room token deadline is `now` or before,
        each once."""
        due: list[tuple[int, str]] = []
        while self._room_expiries and self._room_expiries[0][0] <= now:
            deadline, conn_id, room = heapq.heappop(self._room_expiries)
            rooms = self._room_expiry.get(conn_id)
            if rooms is not None and rooms.get(room) == deadline:  # not gone nor replaced
                del rooms[room]
                self._live_rooms -= 1
                if not rooms:
                    del self._room_expiry[conn_id]
                due.append((conn_id, room))
        return due

    def pop_due(self, now: float) -> int | None:
        """The next watched connection due for a heartbeat look at `now`, or None.
        The caller then calls `check` for it (which schedules its next look)."""
        while self._checks and self._checks[0][0] <= now:
            _, conn_id = heapq.heappop(self._checks)
            if conn_id in self._watched:
                return conn_id
        return None

    def check(self, conn_id: int, now: float, last_received: float) -> Heartbeat | None:
        """Look at a connection popped by `pop_due`, which last received a byte at
        `last_received`: what to do to it, and when to look at it again (none after
        TIMEOUT, whose connection is to be closed and unwatched)."""
        pinged_at = self._pinged.get(conn_id)
        if pinged_at is not None and last_received < pinged_at:
            if now - pinged_at >= self.ping_timeout:
                return Heartbeat.TIMEOUT
            again, verdict = pinged_at + self.ping_timeout, None
        elif now - last_received >= self.ping_interval:
            self._pinged[conn_id] = now
            again, verdict = now + self.ping_timeout, Heartbeat.PING
        else:
            self._pinged.pop(conn_id, None)
            again, verdict = last_received + self._quiet_for(), None
        heapq.heappush(self._checks, (again, conn_id))
        return verdict

    def _quiet_for(self) -> float:
        return self.ping_interval * (1.0 + JITTER * self._jitter())

    def _maybe_compact(self) -> None:
        # Amortized: a compaction leaves about one entry per connection, so the next
        # one comes only after as many more watches, refreshes or departures.
        entries = len(self._expiries) + len(self._checks) + len(self._room_expiries)
        if entries > 4 * (len(self._watched) + self._live_rooms):
            self._expiries = [(d, c) for d, c in self._expiries if self._expiry.get(c) == d]
            heapq.heapify(self._expiries)
            self._room_expiries = [
                (d, c, r) for d, c, r in self._room_expiries
                if self._room_expiry.get(c, {}).get(r) == d
            ]
            heapq.heapify(self._room_expiries)
            self._checks = [entry for entry in self._checks if entry[1] in self._watched]
            heapq.heapify(self._checks)
