"""The node's memory budget for kept history: one accountant shared by every room's log.

Sans-IO, like the logs it serves: no clock of its own (the caller passes `now`).

- **What it counts.** The bytes each kept frame holds (`len()` of the one bytes object
  a log keeps per frame), across every room of the node: live rooms, personal rooms and
  the logs the registry remembers for rooms with no actor.
- **Past the budget, the oldest go.** When a keep would pass `limit`, the node-wide
  oldest kept frames are dropped, whichever rooms they are in, until the total fits
  again (a frame larger than the whole budget is not kept at all). The rooms they
  leave remember it: a recovery across them is refused with `too_old`, never a
  silent gap. Node-wide oldest first is the fair choice: a room that floods pushes out
  the frames that waited longest, its own first if they are the oldest, and a quiet
  room's recent frame outlives a busy room's old ones.
- **Expiry is one timer for every room.** Every log of a node keeps frames for the same
  `ttl`, so the order in which frames were kept is the order in which they expire: the
  head of one queue says when the next frame of any room is due (`next_expiry`), and
  `expire(now)` drops every frame past its time, in rooms with members or not.

Logs tell the budget what they keep (`kept`) and what they drop (`dropped`); the budget
asks a log to drop its oldest frame (`RoomLog.drop_oldest`) and never touches a log's
frames itself. A frame a log dropped on its own (size, ttl, a gap) stays in the queue
as an empty record until it reaches the head or the queue is compacted.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol

from roomcast.protocol.frames import RecoveryFailure


class Holder(Protocol):
    """What the budget asks of a log (`RoomLog`): to drop its oldest frame."""

    # `entry` is the holder's own kind of record (a log takes only its own `Kept`).
    def drop_oldest(self, entry: Any, reason: RecoveryFailure) -> None: ...


class Kept(Protocol):
    """What the budget reads of a kept frame (`roomlog.Kept`): its bytes, when it was
    kept, and the log holding it (None once dropped)."""

    @property
    def frame(self) -> bytes: ...

    @property
    def at(self) -> float: ...

    @property
    def log(self) -> Holder | None: ...


class HistoryBudget:
    """Bytes of kept frames across all rooms of a node, at most `limit`."""

    __slots__ = ("_held", "_order", "limit", "ttl", "used")

    def __init__(self, limit: int, ttl: float) -> None:
        if limit < 0:
            raise ValueError("a history budget is at least 0 bytes")
        self.limit = limit
        self.ttl = ttl
        self.used = 0  # bytes of the frames held now
        self._held = 0  # frames held now
        self._order: deque[Kept] = deque()  # every frame held, oldest first (and some dropped)

    @property
    def frames(self) -> int:
        return self._held

    def kept(self, entry: Kept) -> None:
        """A log kept `entry` (its `log` set): count it, then drop the oldest frames of
        the node (this one last) until the total fits."""
        self.used += len(entry.frame)
        self._held += 1
        self._order.append(entry)
        while self.used > self.limit and self._order:
            self._drop_head(RecoveryFailure.TOO_OLD)

    def dropped(self, entry: Kept) -> None:
        """A log dropped `entry` (before it clears the record)."""
        self.used -= len(entry.frame)
        self._held -= 1
        order = self._order
        if len(order) > 2 * self._held + 64:  # mostly records of dropped frames: compact
            self._order = deque(kept for kept in order if kept.log is not None)

    def expire(self, now: float) -> None:
        """Drop every frame kept `ttl` seconds ago or more, in whatever room."""
        order = self._order
        while order and (order[0].log is None or now - order[0].at >= self.ttl):
            self._drop_head(RecoveryFailure.TOO_OLD)

    def next_expiry(self) -> float:
        """When the oldest frame held is due (inf if none)."""
        order = self._order
        while order and order[0].log is None:
            order.popleft()
        return order[0].at + self.ttl if order else math.inf

    def _drop_head(self, reason: RecoveryFailure) -> None:
        entry = self._order.popleft()
        if entry.log is not None:
            entry.log.drop_oldest(entry, reason)
