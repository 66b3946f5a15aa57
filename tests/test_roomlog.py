"""A room's log (roomcast.protocol.roomlog): numbering, retention, lifetime, recovery.
Plain values and a fake clock; then a reference model driven by hypothesis."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from roomcast.protocol import Position, RecoveryFailure
from roomcast.protocol.roomlog import Retention, RoomLog, Stretch, recover_from_stretch


def publish(log: RoomLog, now: float, delivered: bool = True) -> int:
    offset = log.next_offset()
    log.keep(offset, b"f%d" % offset, now, delivered=delivered)
    return offset


def test_offsets_grow_by_one():
    log = RoomLog("e", Retention(), now=0.0)
    assert [publish(log, 0.0) for _ in range(3)] == [1, 2, 3]
    assert log.position().offset == 3


def test_recovery_gives_exactly_what_was_missed():
    log = RoomLog("e", Retention(), now=0.0)
    for _ in range(5):
        publish(log, 0.0)
    recovery, frames = log.recover(Position(2, "e"), now=1.0)
    assert (recovery.recovered, recovery.offset, recovery.missed) == (True, 5, 3)
    assert frames == [b"f3", b"f4", b"f5"]


def test_a_plain_join_gets_nothing_and_recover_true_gets_positions_only():
    log = RoomLog("e", Retention(), now=0.0)
    publish(log, 0.0, delivered=False)
    assert log.recover(None, 0.0) == (log.position(), [])
    recovery, frames = log.recover(Position(), 0.0)
    assert (recovery.recovered, frames) == (None, [])


def test_offline_frames_go_once_and_only_to_a_client_that_asks():
    log = RoomLog("e", Retention(), now=0.0)
    publish(log, 0.0, delivered=False)
    publish(log, 0.0, delivered=True)
    assert log.recover(None, 0.0, offline=True)[1] == []  # a seed client: nothing
    recovery, frames = log.recover(Position(), 0.0, offline=True)
    assert frames == [b"f1"] and recovery.missed == 1
    assert log.recover(Position(), 0.0, offline=True)[1] == []  # once


def test_more_offline_frames_than_kept_are_told_before_the_ones_kept():
    log = RoomLog("e", Retention(size=2), now=0.0)
    for _ in range(4):
        publish(log, 0.0, delivered=False)
    recovery, frames = log.recover(Position(), 0.0, offline=True)
    assert (recovery.recovered, recovery.reason) == (False, RecoveryFailure.TOO_MANY)
    assert frames == [b"f3", b"f4"]


def test_refusals_name_their_reason_and_give_no_frame():
    log = RoomLog("e", Retention(size=2, ttl=10.0), now=0.0)
    for _ in range(4):
        publish(log, 0.0)
    assert log.recover(Position(0, "e"), 0.0)[0].reason is RecoveryFailure.TOO_MANY
    assert log.recover(Position(1, "other"), 0.0)[0].reason is RecoveryFailure.EPOCH_CHANGED
    assert log.recover(Position(9, "e"), 0.0)[0].reason is RecoveryFailure.EPOCH_CHANGED
    recovery, frames = log.recover(Position(3, "e"), 11.0)  # f4 expired
    assert (recovery.reason, frames) == (RecoveryFailure.TOO_OLD, [])


def test_a_room_lives_ttl_after_its_last_frame_or_member():
    log = RoomLog("e", Retention(size=0, ttl=10.0), now=0.0)
    assert log.expires_at() == 10.0
    publish(log, 5.0)  # nothing kept (size 0), but the room was active
    assert log.expires_at() == 15.0
    log.touch(12.0)  # the last member left
    assert log.expires_at() == 22.0
    # A reconnect within that time, with nothing missed, recovers.
    assert log.recover(Position(1, "e"), 20.0)[0].recovered is True


def test_a_cluster_recovery_stops_where_the_node_has_released():
    stretch = Stretch("e", 9, tuple((o, 100.0, b"f%d" % o) for o in range(4, 10)))
    recovery, frames = recover_from_stretch(Position(3, "e"), stretch, upto=7, epoch="e",
                                            retention=Retention(), now=100.0)
    assert (recovery.recovered, recovery.offset) == (True, 7)
    assert frames == [b"f4", b"f5", b"f6", b"f7"]  # 8 and 9 come live, in order


def test_a_cluster_recovery_is_refused_when_the_stream_was_trimmed_or_is_old():
    trimmed = Stretch("e", 9, tuple((o, 100.0, b"") for o in range(7, 10)))
    recovery, frames = recover_from_stretch(Position(3, "e"), trimmed, 9, "e", Retention(), 100.0)
    assert (recovery.reason, frames) == (RecoveryFailure.TOO_MANY, [])
    old = Stretch("e", 4, ((4, 0.0, b""),))
    recovery, _ = recover_from_stretch(Position(3, "e"), old, 4, "e", Retention(ttl=5), 100.0)
    assert recovery.reason is RecoveryFailure.TOO_OLD
    moved = Stretch("e2", 1, ())
    recovery, _ = recover_from_stretch(Position(3, "e"), moved, 5, "e", Retention(), 100.0)
    assert recovery.reason is RecoveryFailure.EPOCH_CHANGED


class LogModel(RuleBasedStateMachine):
    """A reference: every frame ever published, with its time. A client that drops
    and comes back with its last position either gets exactly the frames it missed or
    a refusal with no frame; a connected client sees every frame once, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.retention = Retention(size=5, ttl=10.0)
        self.log = RoomLog("e", self.retention, self.now)
        self.published: list[tuple[int, float]] = []  # (offset, at)
        self.clients: dict[int, list[int] | None] = {0: [], 1: [], 2: []}  # None: away
        self.positions: dict[int, int] = {0: 0, 1: 0, 2: 0}

    @rule(count=st.integers(1, 4))
    def publish(self, count: int) -> None:
        for _ in range(count):
            offset = publish(self.log, self.now)
            self.published.append((offset, self.now))
            for client, seen in self.clients.items():
                if seen is not None:
                    seen.append(offset)
                    self.positions[client] = offset

    @rule(client=st.sampled_from([0, 1, 2]))
    def drop(self, client: int) -> None:
        self.clients[client] = None

    @rule(client=st.sampled_from([0, 1, 2]))
    def come_back(self, client: int) -> None:
        if self.clients[client] is not None:
            return
        last = self.positions[client]
        recovery, frames = self.log.recover(Position(last, "e"), self.now)
        missed = [(o, at) for o, at in self.published if o > last]
        if recovery.recovered:
            assert frames == [b"f%d" % o for o, _ in missed]
        else:
            assert frames == []
            # Refused only when something it missed is really gone.
            assert len(missed) > self.retention.size or any(
                self.now - at >= self.retention.ttl for _, at in missed)
        if missed and len(missed) <= self.retention.size and all(
                self.now - at < self.retention.ttl for _, at in missed):
            assert recovery.recovered, recovery
        self.clients[client] = [o for o, _ in missed] if recovery.recovered else []
        self.positions[client] = recovery.offset

    @rule(dt=st.sampled_from([0.5, 3.0, 11.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @invariant()
    def connected_clients_see_every_frame_once_in_order(self) -> None:
        for seen in self.clients.values():
            if seen:
                assert seen == list(range(seen[0], seen[0] + len(seen)))


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)


# What a client may do: rate and strikes (roomcast.protocol.policing) ---------------

def test_the_bucket_refuses_past_the_burst_and_refills_at_the_rate():
    from roomcast.protocol.policing import Policing
    policing = Policing(rate=2.0, burst=3, max_strikes=5, now=0.0)
    assert [policing.admit(0.0) for _ in range(4)] == [True, True, True, False]
    assert policing.admit(0.5) is True  # one token back after half a second
    assert policing.admit(0.5) is False


def test_strikes_in_a_row_close_and_an_accepted_frame_clears_them():
    from roomcast.protocol.policing import Policing, Verdict
    policing = Policing(rate=1.0, burst=1, max_strikes=3, now=0.0)
    assert [policing.refused(), policing.refused()] == [Verdict.GO_ON, Verdict.GO_ON]
    policing.accepted()
    assert [policing.refused() for _ in range(3)] == [Verdict.GO_ON, Verdict.GO_ON,
                                                      Verdict.CLOSE]
