"""A cluster room's frames put back in offset order: the hold-back buffer.

Sans-IO. In a cluster, Redis numbers every frame of a room (one atomic script takes the
next offset and publishes the frame), so the offset order is the room's one order. A
node learns frames from two streams that nothing keeps in step: the replies to its own
publishes, and the subscription that carries the other nodes' frames. This buffer
takes both, in whatever order they come, and releases frames to the room's members in
offset order only, each once:

- a frame right after the last one released goes out at once, with any held frames
  that follow it;
- a frame further ahead is held; if the missing ones have not come after `wait`
  seconds, `due` names them, the driver reads them from the room's stream and `fill`s
  them in. What the stream no longer holds (it keeps the last `history_size` frames: a
  burst outruns it) is still on its way through the subscription, which loses nothing
  while it stays connected: it is waited for, read again every `wait`, and skipped only
  when it is known lost (a `check` after the subscription was interrupted covers it)
  or after `patience` seconds without progress. The release says so: members get a
  gap, which recovery then refuses rather than hides;
- a frame at or before the last released one, or of an older epoch, is a duplicate
  or stale: dropped (epochs are named so that a newer one sorts after an older one:
  `roomcast.protocol.roomlog.new_epoch`);
- a frame of a new epoch (Redis lost the room's keys: a restart, or retention) starts
  that epoch once the current one has nothing left to wait for; the new epoch's first
  frames are fetched too if they were missed, so nobody misses the start of an epoch.

A lost frame with no later one shows no gap: after its subscription was interrupted, a
node `check`s each room against the store, and catches up to it the same way.

Until `sync` tells it where the room stands (the first local member's join reads that
from Redis), the buffer holds everything.
"""

from __future__ import annotations

import math

import attrs


@attrs.frozen
class Fetch:
    """Frames the buffer is missing: offsets `after + 1` to `upto` of `epoch`."""

    epoch: str
    after: int
    upto: int


@attrs.frozen
class Released:
    epoch: str
    offset: int
    frame: bytes
    gap: bool = False  # frames before this one in its epoch were never received


class HoldBack:
    __slots__ = ("_expect", "_lost_upto", "_patience", "_since", "_skipped", "_stuck_since",
                 "_wait", "cursor", "held")

    def __init__(self, wait: float, patience: float) -> None:
        self._wait = wait
        self._patience = patience
        self.cursor: tuple[str, int] | None = None  # the last released frame's position
        self.held: dict[tuple[str, int], bytes] = {}
        self._since: float | None = None  # when the buffer started waiting for a gap
        self._stuck_since: float | None = None  # the same, not moved by `postpone`
        # Frames up to here may be lost (the subscription was interrupted before `check`
        # read this position): what the store lacks of them is never coming.
        self._lost_upto: tuple[str, int] | None = None
        self._expect: tuple[str, int] | None = None  # the store is there: catch up to it
        self._skipped = False  # frames were given up: the next one released is a gap

    # where the room stands ----------------------------------------------------------

    def sync(self, epoch: str, last: int, now: float) -> list[Released]:
        """The room's position in the store, read after this node subscribed: frames
        after it are released live. Frames held already (they came through the
        subscription before the position was read) are released too: the position is
        taken back to just before the first of them, so nothing heard is dropped."""
        older = [e for e, _ in self.held if e < epoch]
        if older:
            self._drop_epoch(max(older))
        first = min((o for e, o in self.held if e == epoch), default=None)
        if first is not None:
            last = min(last, first - 1)
        self.cursor = (epoch, last)
        self._expect = self._lost_upto = None
        return self._release(now)

    def check(self, epoch: str, last: int, now: float) -> None:
        """Where the store says the room is now (after the subscription was lost for a
        while, say: the last frames may have gone missing with no later frame to show
        the gap). If that is ahead of the buffer, the rest is due at once."""
        cursor = self.cursor
        if cursor is None or epoch < cursor[0]:
            return
        if epoch == cursor[0] and last <= cursor[1]:
            return
        if epoch != cursor[0] and last == 0:
            return
        self._expect = self._lost_upto = (epoch, last)
        self._since = now - self._wait

    @property
    def synced(self) -> bool:
        return self.cursor is not None

    # frames in ---------------------------------------------------------------------

    def arrive(self, epoch: str, offset: int, frame: bytes, now: float) -> list[Released]:
        """A frame from either stream; what may go out now, in order."""
        cursor = self.cursor
        if cursor is not None and (epoch < cursor[0]
                                   or (epoch == cursor[0] and offset <= cursor[1])):
            return []
        self.held[(epoch, offset)] = frame
        return self._release(now)

    def deadline(self) -> float:
        """When `due` will have something to fetch (inf: nothing is missing)."""
        return math.inf if self._since is None else self._since + self._wait

    def postpone(self, now: float) -> None:
        """An attempt to fill the gap (or to sync) was made: the next one waits."""
        if self._since is not None:
            self._since = now

    def due(self, now: float) -> Fetch | None:
        """The missing frames to read from the store, once they are overdue."""
        if self._since is None or now < self._since + self._wait or self.cursor is None:
            return None
        epoch, last = self.cursor
        ahead = [o for (e, o) in self.held if e == epoch]
        if ahead:
            return Fetch(epoch, last, min(ahead) - 1)
        newer = self._newest_epoch()
        if newer is not None:
            first = min(o for (e, o) in self.held if e == newer)
            return Fetch(newer, 0, first - 1)
        if self._expect is not None:
            target, upto = self._expect
            return Fetch(target, last if target == epoch else 0, upto)
        return None

    def fill(self, fetch: Fetch, frames: list[tuple[int, bytes]], now: float) -> list[Released]:
        """The frames the store had for `fetch` (maybe none). The rest of the range is
        released past, marked as a gap, once it is known lost or `patience` ran out;
        until then it is still on its way through the subscription."""
        out: list[Released] = []
        cursor = self.cursor
        if cursor is None or fetch.epoch < cursor[0]:
            return self._release(now)
        expect = self._expect
        if expect is not None and expect[0] == fetch.epoch and fetch.upto >= expect[1]:
            # This fetch is the catching up. A fetch that fills an earlier gap only
            # leaves it: the frames after that gap are still to be read.
            self._expect = None
        if fetch.epoch != cursor[0]:
            if not frames and not any(e == fetch.epoch for e, _ in self.held):
                return self._release(now)  # nothing of that epoch, after all
            # The current epoch is over: what it still holds goes out, then the new one.
            out += self._flush_epoch(cursor[0])
            self._drop_epoch(cursor[0])
            self.cursor = cursor = (fetch.epoch, fetch.after)
        for offset, frame in frames:
            if cursor[1] < offset <= fetch.upto:
                self.held.setdefault((fetch.epoch, offset), frame)
        out += self._release(now)
        cursor = self.cursor
        if cursor is not None and cursor[0] == fetch.epoch and cursor[1] < fetch.upto:
            lost = self._lost(fetch.epoch, fetch.upto, now)
            if lost > cursor[1]:
                # Never coming: skip to the first frame held after the hole, if any.
                after = [o for (e, o) in self.held if e == fetch.epoch and o > cursor[1]]
                self.cursor = (fetch.epoch, min(min(after) - 1 if after else lost, lost))
                self._skipped = True
                out += self._release(now)
        return out

    def _lost(self, epoch: str, upto: int, now: float) -> int:
        """Up to which offset (of `epoch`, at most `upto`) frames the store no longer
        holds are given up: all of them once `patience` ran out with no progress, else
        those an interruption may have lost; none otherwise (they are on their way)."""
        if self._stuck_since is not None and now - self._stuck_since >= self._patience:
            return upto
        lost = self._lost_upto
        if lost is not None and lost[0] == epoch:
            return min(upto, lost[1])
        return 0

    # the rules -----------------------------------------------------------------------

    def _release(self, now: float) -> list[Released]:
        out: list[Released] = []
        cursor = self.cursor
        held = self.held
        if cursor is None:
            if not held:
                self._since = None
            elif self._since is None:
                self._since = now
            return out
        epoch, last = cursor
        while True:
            frame = held.pop((epoch, last + 1), None)
            if frame is not None:
                last += 1
                out.append(Released(epoch, last, frame, self._skipped))
                self._skipped = False
                continue
            if any(e == epoch for e, _ in held):
                break  # waiting for a gap in this epoch
            newer = self._newest_epoch()
            if newer is None or (newer, 1) not in held:
                break  # nothing held, or a new epoch whose start is missing
            self._drop_epoch(epoch)
            epoch, last = newer, 0
            self._skipped = False
        self.cursor = (epoch, last)
        expect = self._expect
        if expect is not None and expect[0] == epoch and expect[1] <= last:
            self._expect = None
        if not held and self._expect is None:
            self._since = self._stuck_since = None
        else:
            if self._since is None or (out and held):
                self._since = now  # the wait starts from the last progress
            if self._stuck_since is None or out:
                self._stuck_since = now
        lost = self._lost_upto
        if lost is not None and (lost[0] < epoch or (lost[0] == epoch and lost[1] <= last)):
            self._lost_upto = None  # passed
        return out

    def _flush_epoch(self, epoch: str) -> list[Released]:
        offsets = sorted(o for (e, o) in self.held if e == epoch)
        out = []
        previous = self.cursor[1] if self.cursor is not None else 0
        for offset in offsets:
            out.append(Released(epoch, offset, self.held.pop((epoch, offset)),
                                gap=offset != previous + 1))
            previous = offset
        return out

    def _newest_epoch(self) -> str | None:
        """The next epoch after the current one that has frames held."""
        current = self.cursor[0] if self.cursor is not None else ""
        return min((e for e, _ in self.held if e > current), default=None)

    def _drop_epoch(self, epoch: str) -> None:
        for key in [k for k in self.held if k[0] <= epoch]:
            del self.held[key]
