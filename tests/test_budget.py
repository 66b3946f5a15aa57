"""The node's memory budget for kept history (roomcast.protocol.budget), shared by
every room's log: plain values and a fake clock, then a model driven by hypothesis."""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from roomcast.protocol import Position, RecoveryFailure
from roomcast.protocol.budget import HistoryBudget
from roomcast.protocol.roomlog import Retention, RoomLog


def keep(log: RoomLog, size: int, now: float) -> int:
    offset = log.next_offset()
    log.keep(offset, bytes([offset % 256]) * size, now, delivered=True)
    return offset


def held(*logs: RoomLog) -> int:
    return sum(len(entry.frame) for log in logs for entry in log.kept)


def test_past_the_budget_the_node_wide_oldest_frames_go_and_recovery_is_too_old() -> None:
    budget = HistoryBudget(limit=1000, ttl=60.0)
    retention = Retention(size=100, ttl=60.0, budget=budget)
    quiet, busy = RoomLog("q", retention, 0.0), RoomLog("b", retention, 0.0)
    keep(quiet, 300, 0.0)  # the oldest frame of the node
    keep(busy, 300, 1.0)
    keep(busy, 300, 2.0)
    assert budget.used == 900 == held(quiet, busy)
    keep(busy, 300, 3.0)  # 1200 > 1000: the quiet room's older frame goes first
    assert budget.used == 900 == held(quiet, busy)
    assert not quiet.kept and [e.offset for e in busy.kept] == [1, 2, 3]
    recovery, frames = quiet.recover(Position(0, "q"), 3.0)
    assert (recovery.recovered, recovery.reason, frames) == (False, RecoveryFailure.TOO_OLD, [])
    recovery, frames = busy.recover(Position(0, "b"), 3.0)
    assert recovery.recovered and len(frames) == 3


def test_a_frame_larger_than_the_budget_is_not_kept_and_its_loss_is_told() -> None:
    budget = HistoryBudget(limit=100, ttl=60.0)
    log = RoomLog("e", Retention(size=10, ttl=60.0, budget=budget), 0.0)
    keep(log, 50, 0.0)
    keep(log, 500, 1.0)
    assert budget.used == 0 and not log.kept
    recovery, frames = log.recover(Position(0, "e"), 1.0)
    assert (recovery.reason, frames) == (RecoveryFailure.TOO_OLD, [])


def test_frames_expire_on_the_budgets_timer_in_every_room_and_leave_it_empty() -> None:
    budget = HistoryBudget(limit=10_000, ttl=10.0)
    retention = Retention(size=100, ttl=10.0, budget=budget)
    first, second = RoomLog("a", retention, 0.0), RoomLog("b", retention, 0.0)
    keep(first, 10, 0.0)
    keep(second, 10, 4.0)
    assert budget.next_expiry() == 10.0
    budget.expire(9.9)
    assert budget.used == 20
    budget.expire(10.0)
    assert not first.kept and budget.used == 10 and budget.next_expiry() == 14.0
    budget.expire(14.0)
    assert budget.used == 0 and budget.frames == 0 and budget.next_expiry() == math.inf


def test_a_forgotten_log_leaves_the_budget_and_dropped_records_pin_no_bytes() -> None:
    budget = HistoryBudget(limit=10_000, ttl=10.0)
    log = RoomLog("a", Retention(size=2, ttl=10.0, budget=budget), 0.0)
    records = [log.keep(log.next_offset(), b"x" * 10, 0.0) for _ in range(5)]
    assert budget.used == 20 and all(r.frame == b"" for r in records[:3])
    log.close()
    assert budget.used == 0 and budget.frames == 0 and budget.next_expiry() == math.inf


def test_a_retention_and_its_budget_share_one_ttl() -> None:
    try:
        Retention(ttl=5.0, budget=HistoryBudget(100, ttl=6.0))
    except ValueError:
        return
    raise AssertionError("a budget with another ttl was accepted")


ROOMS = ("a", "b", "c")


class BudgetModel(RuleBasedStateMachine):
    """Logs of three rooms over one small budget. Whatever is kept, expires, or is
    forgotten: the total never passes the budget and is what the logs hold; a client
    that comes back either gets exactly the frames it missed, in order, once, or a
    refusal (always, when the budget dropped one of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.budget = HistoryBudget(limit=1000, ttl=10.0)
        self.retention = Retention(size=6, ttl=10.0, budget=self.budget)
        self.logs = {room: RoomLog(room, self.retention, 0.0) for room in ROOMS}
        self.epochs = dict.fromkeys(ROOMS, 0)
        self.frames: dict[str, dict[int, bytes]] = {room: {} for room in ROOMS}
        self.gone: dict[str, set[int]] = {room: set() for room in ROOMS}  # budget or ttl
        self.seen: dict[str, int] = dict.fromkeys(ROOMS, 0)

    def _note_drops(self) -> None:
        for room, log in self.logs.items():
            kept = {entry.offset for entry in log.kept}
            self.gone[room] |= set(self.frames[room]) - kept

    @rule(room=st.sampled_from(ROOMS), size=st.integers(1, 700))
    def keep(self, room: str, size: int) -> None:
        log = self.logs[room]
        offset = log.next_offset()
        frame = (b"%s%d:" % (room.encode(), offset)).ljust(size, b".")
        log.keep(offset, frame, self.now)
        self.frames[room][offset] = frame
        self._note_drops()

    @rule(dt=st.sampled_from([0.5, 3.0, 10.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        if self.budget.next_expiry() <= self.now:
            self.budget.expire(self.now)
        self._note_drops()

    @rule(room=st.sampled_from(ROOMS))
    def forget(self, room: str) -> None:
        self.logs[room].close()
        self.epochs[room] += 1
        epoch = f"{room}{self.epochs[room]}"
        self.logs[room] = RoomLog(epoch, self.retention, self.now)
        self.frames[room], self.gone[room], self.seen[room] = {}, set(), 0

    @precondition(lambda self: any(self.frames.values()))
    @rule(room=st.sampled_from(ROOMS), data=st.data())
    def come_back(self, room: str, data: st.DataObject) -> None:
        log = self.logs[room]
        if not self.frames[room]:
            return
        last = data.draw(st.integers(0, max(self.frames[room])))
        recovery, frames = log.recover(Position(last, log.epoch), self.now)
        self._note_drops()
        missed = [o for o in sorted(self.frames[room]) if o > last]
        if recovery.recovered:
            assert frames == [self.frames[room][o] for o in missed]
        else:
            assert frames == []
        if any(o in self.gone[room] for o in missed):
            assert not recovery.recovered
            assert recovery.reason in (RecoveryFailure.TOO_OLD, RecoveryFailure.TOO_MANY)

    @invariant()
    def the_total_fits_and_is_what_the_logs_hold(self) -> None:
        assert self.budget.used <= self.budget.limit
        assert self.budget.used == held(*self.logs.values())
        assert self.budget.frames == sum(len(log.kept) for log in self.logs.values())

    @invariant()
    def each_log_holds_its_frames_once_in_order(self) -> None:
        for room, log in self.logs.items():
            offsets = [entry.offset for entry in log.kept]
            assert offsets == sorted(set(offsets))
            assert all(entry.frame == self.frames[room][entry.offset] for entry in log.kept)


TestBudgetModel = BudgetModel.TestCase
TestBudgetModel.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
