"""A room's log: numbering, epochs, retention and the answer to a recovery request.

Sans-IO, like h11: no Trio, no sockets, no clock of its own. The room actor passes the
time in (`now`, in the seconds of whatever clock it uses), and any randomness (a new
epoch's name), and carries out what the log decides.

The rules it holds:

- **Numbering.** Every frame gets the next `offset` in the log's `epoch`; offsets grow
  by one within an epoch. An epoch is a name chosen by the caller when the log starts
  (or, in a cluster, by Redis); a new epoch means the history before it is gone.
- **Retention.** The last `size` frames are kept for `ttl` seconds each, within the
  node's memory budget (`protocol.budget`, shared by every log of the node: past it
  the node's oldest frames go). What was dropped is remembered as the reason a
  recovery fails (`too_many`, `too_old`; a frame the budget dropped is `too_old`).
- **Kept once.** A log keeps one bytes object per frame (the caller's, opaque here),
  and the budget counts its `len()`.
- **Lifetime.** A room lives on for `ttl` seconds after its last frame *or* its last
  member's departure, whichever is later, even with nothing retained: a client that
  reconnects within that time finds the same epoch and recovers. Past it, the room is
  forgotten and its next life is a new epoch: `epoch_changed` means what it says.
- **Recovery is exact or refused.** Given a client's last position, the answer is
  either every frame after it, in order, once, or a refusal with its reason and no
  frame at all.
- **Offline frames are opt-in.** A frame that reached no connection is kept like any
  other and marked undelivered; it is replayed only to a client that asks (a position,
  or `recover` with no position: then the undelivered frames are what it missed), once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import attrs

from roomcast.protocol.budget import HistoryBudget
from roomcast.protocol.frames import Position, RecoveryFailure


def new_epoch(now: float, salt: str) -> str:
    """An epoch's name: the wall-clock time it began (ms, hex) and a random `salt`, so
    that a newer epoch sorts after an older one and two that begin together differ."""
    return f"{int(now * 1000):011x}{salt}"


@attrs.frozen
class Retention:
    size: int = 100  # frames kept per room; 0 keeps none
    ttl: float = 300.0  # seconds a frame is kept, and an idle room remembered
    # The node's accountant, shared by every log built with this retention (None: no
    # limit but size and ttl, for tests of one log).
    budget: HistoryBudget | None = attrs.field(default=None, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.budget is not None and self.budget.ttl != self.ttl:
            raise ValueError("a history budget expires frames at its rooms' ttl")


@attrs.frozen
class Recovery:
    """A join's answer about its position in the room."""

    offset: int  # the room's last offset: frames after the join have larger ones
    epoch: str
    recovered: bool | None = None  # None: no position was given
    reason: RecoveryFailure | None = None
    missed: int = 0  # frames sent right after the answer, before any new frame


@attrs.define(slots=True)
class Kept:
    """One retained frame (`frame` is opaque to the log: the actor's bytes)."""

    offset: int
    at: float
    frame: bytes  # emptied once dropped: a record the budget still holds pins nothing
    delivered: bool = False  # reached a connection when it was published
    # The log holding the frame; None once dropped (what the budget's queue checks).
    log: RoomLog | None = attrs.field(default=None, eq=False, repr=False)


class RoomLog:
    """The numbered history of one room in one epoch."""

    __slots__ = ("_evicted_by", "_lost_undelivered", "active_at", "epoch", "kept", "last",
                 "retention")

    def __init__(self, epoch: str, retention: Retention, now: float, last: int = 0) -> None:
        self.epoch = epoch
        self.last = last  # the last offset numbered in this epoch
        self.retention = retention
        self.kept: deque[Kept] = deque()
        self._evicted_by: RecoveryFailure | None = None
        self._lost_undelivered: RecoveryFailure | None = None  # an offline frame was dropped
        self.active_at = now  # the last frame, join or departure

    # numbering and retention --------------------------------------------------------

    def next_offset(self) -> int:
        """The offset the next frame gets; `keep` it once built."""
        return self.last + 1

    def keep(self, offset: int, frame: bytes, now: float, *, delivered: bool = False) -> Kept:
        """Record frame `offset` (the next one, or a later one: a cluster's log learns
        offsets from Redis) as published now; returns its record so the caller can
        mark it delivered after the fan-out."""
        if offset <= self.last:
            raise ValueError(f"offset {offset} is not after {self.last}")
        if offset > self.last + 1 and self.kept:
            # A gap we will never fill: older frames cannot be recovered past it.
            self._drop_all(RecoveryFailure.TOO_MANY)
        self.last = offset
        self.active_at = now
        entry = Kept(offset, now, frame, delivered)
        if self.retention.size > 0:
            entry.log = self
            self.kept.append(entry)
            budget = self.retention.budget
            if budget is not None:
                budget.kept(entry)  # may drop the node's oldest frames, this one last
            self.evict(now)
        return entry

    def evict(self, now: float) -> None:
        kept, retention = self.kept, self.retention
        while len(kept) > retention.size:
            self._drop(kept.popleft(), RecoveryFailure.TOO_MANY)
        while kept and now - kept[0].at >= retention.ttl:
            self._drop(kept.popleft(), RecoveryFailure.TOO_OLD)

    def drop_oldest(self, entry: Kept, reason: RecoveryFailure) -> None:
        """The budget's call: drop `entry`, this log's oldest frame."""
        if not self.kept or self.kept[0] is not entry:
            raise ValueError("the budget drops a log's oldest frame only")
        self._drop(self.kept.popleft(), reason)

    def close(self) -> None:
        """The log is forgotten (its room's next life is a new epoch): its frames leave
        the budget."""
        self._drop_all(RecoveryFailure.EPOCH_CHANGED)

    def _drop_all(self, reason: RecoveryFailure) -> None:
        while self.kept:
            self._drop(self.kept.popleft(), reason)

    def _drop(self, entry: Kept, reason: RecoveryFailure) -> None:
        self._evicted_by = reason
        if not entry.delivered:
            self._lost_undelivered = reason
        if entry.log is not None:
            budget = self.retention.budget
            if budget is not None:
                budget.dropped(entry)
            entry.log = None
        entry.frame = b""

    def touch(self, now: float) -> None:
        """A member came or went: the room is remembered for `ttl` from now."""
        self.active_at = max(self.active_at, now)

    def expires_at(self) -> float:
        """When an idle room may be forgotten (its next life is a new epoch)."""
        newest = self.kept[-1].at if self.kept else self.active_at
        return max(newest, self.active_at) + self.retention.ttl

    # recovery ----------------------------------------------------------------------

    def position(self) -> Recovery:
        return Recovery(self.last, self.epoch)

    def recover(
        self, position: Position | None, now: float, *, offline: bool = False
    ) -> tuple[Recovery, list[bytes]]:
        """The answer to a join from `position`, and the frames that follow it.

        `position` None: a plain join, nothing replayed. A position with no offset
        (`recover: true`): positions only (`recovered` stays None). A refused
        position: the reason, and no frame. Frames handed out count as delivered.

        `offline` (a user's personal room, at its welcome): a client that asks (any
        position) also gets the frames that reached no connection, once, even after a
        refusal: the refusal (or `too_many`/`too_old` if some of them were dropped)
        comes first, then they follow."""
        self.evict(now)
        if position is None:
            return self.position(), []
        if position.offset is not None:
            refusal = self.refusal(position)
            if refusal is None:
                missed = [entry for entry in self.kept if entry.offset > position.offset]
                if offline:
                    self._lost_undelivered = None  # whatever it missed, it has now
                return (attrs.evolve(self.position(), recovered=True, missed=len(missed)),
                        self._mark(missed))
            answer = attrs.evolve(self.position(), recovered=False, reason=refusal)
        else:
            answer = self.position()  # nothing seen yet: nothing to recover or refuse
        if not offline:
            return answer, []
        waiting = [entry for entry in self.kept if not entry.delivered]
        if self._lost_undelivered is not None:
            if answer.recovered is not False:
                answer = attrs.evolve(answer, recovered=False, reason=self._lost_undelivered)
            self._lost_undelivered = None
        return attrs.evolve(answer, missed=len(waiting)), self._mark(waiting)

    def refusal(self, position: Position) -> RecoveryFailure | None:
        """Why the frames after `position` cannot all be given, or None if they can."""
        assert position.offset is not None
        if position.epoch != self.epoch or position.offset > self.last:
            return RecoveryFailure.EPOCH_CHANGED
        first = self.kept[0].offset if self.kept else self.last + 1
        if position.offset + 1 < first:
            return self._evicted_by or RecoveryFailure.TOO_MANY
        return None

    @staticmethod
    def _mark(entries: Iterable[Kept]) -> list[bytes]:
        frames = []
        for entry in entries:
            entry.delivered = True
            frames.append(entry.frame)
        return frames


@attrs.frozen
class Stretch:
    """What a cluster's store (Redis) holds of a room after some offset, read in one
    atomic step."""

    epoch: str | None  # None: the room has no history at all (new, or lost)
    last: int  # the room's last offset
    entries: tuple[tuple[int, float, bytes], ...]  # (offset, published at, frame)


def recover_from_stretch(
    position: Position, stretch: Stretch, upto: int, epoch: str, retention: Retention,
    now: float,
) -> tuple[Recovery, list[bytes]]:
    """A cluster room's answer to a join from `position`, given what the store holds
    after it, where this node's room has released frames to (`epoch`, `upto`), and the
    wall-clock `now`. Frames past `upto` reach the member live, in order, so the
    answer stops there: nothing twice, nothing skipped."""
    assert position.offset is not None
    here = Recovery(upto, epoch)
    if (position.epoch != epoch or stretch.epoch != epoch or position.offset > upto):
        return attrs.evolve(here, recovered=False, reason=RecoveryFailure.EPOCH_CHANGED), []
    wanted = [e for e in stretch.entries if position.offset < e[0] <= upto]
    if len(wanted) < upto - position.offset:  # trimmed by the stream's length
        return attrs.evolve(here, recovered=False, reason=RecoveryFailure.TOO_MANY), []
    if wanted and wanted[0][1] < now - retention.ttl:
        return attrs.evolve(here, recovered=False, reason=RecoveryFailure.TOO_OLD), []
    return attrs.evolve(here, recovered=True, missed=len(wanted)), [f for _, _, f in wanted]
