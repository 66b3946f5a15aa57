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
  them in; what the stream no longer holds is skipped (the release says so: members
  get a gap, which recovery then refuses rather than hides);
- a frame at or before the last released one, or of an epoch left behind, is a
  duplicate or stale: dropped;
- a frame of a new epoch (Redis lost the room's keys: a restart, or retention) starts
  that epoch once the current one has nothing left to wait for; the new epoch's first
  frames are fetched too if they were missed, so nobody misses the start of an epoch.

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
    __slots__ = ("_left", "_since", "_wait", "cursor", "held")

    def __init__(self, wait: float) -> None:
        self._wait = wait
        self.cursor: tuple[str, int] | None = None  # the last released frame's position
        self.held: dict[tuple[str, int], bytes] = {}
        self._left: list[str] = []  # epochs left behind, newest last (a few)
        self._since: float | None = None  # when the buffer started waiting for a gap

    # where the room stands ----------------------------------------------------------

    def sync(self, epoch: str, last: int, now: float) -> list[Released]:
        """The room's position in the store: frames after it are released live."""
        if self.cursor is not None and self.cursor[0] != epoch:
            self._leave(self.cursor[0])
        self.cursor = (epoch, last)
        for key in [k for k in self.held if k[0] == epoch and k[1] <= last]:
            del self.held[key]
        return self._release(now)

    def unsync(self) -> None:
        """The node stopped hearing the room: forget where it was."""
        self.cursor = None
        self.held.clear()
        self._since = None

    @property
    def synced(self) -> bool:
        return self.cursor is not None

    # frames in ---------------------------------------------------------------------

    def arrive(self, epoch: str, offset: int, frame: bytes, now: float) -> list[Released]:
        """A frame from either stream; what may go out now, in order."""
        if epoch in self._left:
            return []
        cursor = self.cursor
        if cursor is not None and epoch == cursor[0] and offset <= cursor[1]:
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
        assert newer is not None  # else nothing would be held
        first = min(o for (e, o) in self.held if e == newer)
        return Fetch(newer, 0, first - 1)

    def fill(self, fetch: Fetch, frames: list[tuple[int, bytes]], now: float) -> list[Released]:
        """The frames the store had for `fetch` (maybe none). The rest of the range
        will never come: released past, marked as a gap."""
        out: list[Released] = []
        cursor = self.cursor
        if cursor is None:
            return out
        if fetch.epoch != cursor[0]:
            if fetch.epoch in self._left or not any(e == fetch.epoch for e, _ in self.held):
                return self._release(now)
            # The current epoch is over: what it still holds goes out, then the new one.
            out += self._flush_epoch(cursor[0])
            self._leave(cursor[0])
            self.cursor = cursor = (fetch.epoch, fetch.after)
        for offset, frame in frames:
            if cursor[1] < offset <= fetch.upto:
                self.held.setdefault((fetch.epoch, offset), frame)
        out += self._release(now)
        cursor = self.cursor
        if cursor[0] == fetch.epoch and cursor[1] < fetch.upto:
            # Never coming: skip to the first held frame after the hole.
            nxt = min((o for (e, o) in self.held if e == fetch.epoch and o > fetch.upto),
                      default=None)
            if nxt is not None:
                self.cursor = (fetch.epoch, nxt - 1)
                released = self._release(now)
                if released:
                    released[0] = attrs.evolve(released[0], gap=True)
                out += released
        return out

    # the rules -----------------------------------------------------------------------

    def _release(self, now: float) -> list[Released]:
        out: list[Released] = []
        cursor = self.cursor
        if cursor is None:
            self._since = self._since if self.held else None
            if self.held and self._since is None:
                self._since = now
            return out
        epoch, last = cursor
        held = self.held
        while True:
            frame = held.pop((epoch, last + 1), None)
            if frame is not None:
                last += 1
                out.append(Released(epoch, last, frame))
                continue
            if any(e == epoch for e, _ in held):
                break  # waiting for a gap in this epoch
            newer = self._newest_epoch()
            if newer is None or (newer, 1) not in held:
                break  # nothing held, or a new epoch whose start is missing
            self._leave(epoch)
            epoch, last = newer, 0
        self.cursor = (epoch, last)
        if not held:
            self._since = None
        elif self._since is None or out:
            self._since = now  # the wait starts from the last progress
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
        current = self.cursor[0] if self.cursor is not None else None
        for epoch, _ in self.held:
            if epoch != current:
                return epoch
        return None

    def _leave(self, epoch: str) -> None:
        if epoch not in self._left:
            self._left.append(epoch)
            del self._left[:-4]
        for key in [k for k in self.held if k[0] == epoch]:
            del self.held[key]
