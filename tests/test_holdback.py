"""The hold-back buffer (roomcast.protocol.holdback): a cluster room's frames released
in offset order. Plain values and a fake clock; then a model of several nodes over one
Redis, driven by hypothesis through random interleavings."""

from __future__ import annotations

import math
import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from roomcast.protocol.holdback import Fetch, HoldBack, Released

WAIT = 0.25
PATIENCE = 5.0


def offsets(released: list[Released]) -> list[int]:
    return [r.offset for r in released]


def test_in_order_frames_go_out_at_once():
    buffer = HoldBack(WAIT, PATIENCE)
    assert buffer.sync("e", 4, now=0.0) == []
    assert offsets(buffer.arrive("e", 5, b"5", 0.0)) == [5]
    assert offsets(buffer.arrive("e", 6, b"6", 0.0)) == [6]
    assert buffer.deadline() == float("inf")


def test_a_frame_ahead_waits_for_the_one_before_it():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, now=0.0)
    assert buffer.arrive("e", 2, b"2", 0.0) == []
    assert buffer.deadline() == WAIT
    assert buffer.due(0.1) is None  # not overdue yet
    assert offsets(buffer.arrive("e", 1, b"1", 0.1)) == [1, 2]
    assert buffer.deadline() == float("inf")


def test_frames_heard_before_the_sync_are_released_and_duplicates_dropped():
    buffer = HoldBack(WAIT, PATIENCE)
    assert buffer.arrive("e", 3, b"3", 0.0) == []  # held: where the room stands is unknown
    assert buffer.arrive("e", 4, b"4", 0.0) == []
    # The position was read after they were numbered: the members still get them.
    assert offsets(buffer.sync("e", 4, now=0.0)) == [3, 4]
    assert buffer.cursor == ("e", 4)
    assert buffer.arrive("e", 4, b"4", 0.0) == []


def test_an_overdue_gap_is_fetched_from_the_store():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, now=0.0)
    buffer.arrive("e", 4, b"4", 0.0)
    fetch = buffer.due(WAIT)
    assert fetch == Fetch("e", 0, 3)
    released = buffer.fill(fetch, [(1, b"1"), (2, b"2"), (3, b"3")], WAIT)
    assert offsets(released) == [1, 2, 3, 4] and not any(r.gap for r in released)
    assert buffer.cursor == ("e", 4)


def test_frames_the_store_no_longer_holds_are_waited_for_through_the_subscription():
    """The bug this replaces (CI, test_cluster_order under load): a burst of 2,000 frames
    outran the room's stream (it keeps 100), the subscription lagged a quarter second
    behind this node's own replies, the store no longer had the frames before them, and
    members got a gap, although the frames were still on their way."""
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, now=0.0)
    assert buffer.arrive("e", 4, b"4", 0.0) == []  # our own reply, ahead
    fetch = buffer.due(WAIT)
    assert fetch == Fetch("e", 0, 3)
    buffer.postpone(WAIT)
    assert buffer.fill(fetch, [(3, b"3")], WAIT) == []  # 1 and 2 trimmed: still coming
    assert buffer.due(2 * WAIT) == Fetch("e", 0, 2)  # read again a wait later
    buffer.postpone(2 * WAIT)
    assert buffer.fill(Fetch("e", 0, 2), [], 2 * WAIT) == []
    released = buffer.arrive("e", 1, b"1", 1.0) + buffer.arrive("e", 2, b"2", 1.0)
    assert [(r.offset, r.gap) for r in released] == [
        (1, False), (2, False), (3, False), (4, False)]


def test_what_the_store_lacks_is_skipped_as_a_gap_once_patience_runs_out():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, now=0.0)
    buffer.arrive("e", 4, b"4", 0.0)
    assert buffer.fill(Fetch("e", 0, 3), [(2, b"2"), (3, b"3")], PATIENCE - 0.01) == []
    released = buffer.fill(Fetch("e", 0, 3), [(2, b"2"), (3, b"3")], PATIENCE)
    assert [(r.offset, r.gap) for r in released] == [(2, True), (3, False), (4, False)]
    assert buffer.arrive("e", 1, b"1", PATIENCE) == []  # too late: dropped
    assert buffer.cursor == ("e", 4)


def test_what_an_interrupted_subscription_lost_is_skipped_at_once():
    """A `check` (the subscription came back) says frames up to the room's position may
    be lost: what the store lacks of those is never coming. Frames after it are."""
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, now=0.0)
    buffer.check("e", 3, now=1.0)
    buffer.arrive("e", 6, b"6", 1.0)
    fetch = buffer.due(1.0)
    assert fetch == Fetch("e", 0, 5)
    released = buffer.fill(fetch, [(3, b"3")], 1.0)
    assert [(r.offset, r.gap) for r in released] == [(3, True)]  # 1, 2 lost; 4, 5 coming
    assert offsets(buffer.arrive("e", 4, b"4", 1.1) + buffer.arrive("e", 5, b"5", 1.1)) == [
        4, 5, 6]


def test_a_new_epoch_starts_once_the_old_one_has_nothing_to_wait_for():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e1", 7, now=0.0)
    released = buffer.arrive("e2", 1, b"n1", 0.0)
    assert [(r.epoch, r.offset) for r in released] == [("e2", 1)]
    assert buffer.arrive("e1", 8, b"late", 0.0) == []  # an older epoch


def test_a_new_epoch_whose_start_was_missed_is_fetched_from_its_first_frame():
    """The bug this replaces: a member who joined at offset K missed the first K frames
    of the next epoch."""
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e1", 50, now=0.0)
    assert buffer.arrive("e2", 3, b"n3", 0.0) == []
    fetch = buffer.due(WAIT)
    assert fetch == Fetch("e2", 0, 2)
    released = buffer.fill(fetch, [(1, b"n1"), (2, b"n2")], WAIT)
    assert [(r.epoch, r.offset, r.gap) for r in released] == [
        ("e2", 1, False), ("e2", 2, False), ("e2", 3, False)]


def test_a_check_catches_up_on_frames_lost_with_no_later_frame():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e1", 5, now=0.0)
    buffer.check("e1", 7, now=1.0)  # the subscription was lost meanwhile
    fetch = buffer.due(1.0)
    assert fetch == Fetch("e1", 5, 7)
    assert offsets(buffer.fill(fetch, [(6, b"6"), (7, b"7")], 1.0)) == [6, 7]
    assert buffer.deadline() == float("inf")
    buffer.check("e1", 7, now=2.0)  # up to date: nothing to do
    assert buffer.deadline() == float("inf")


def test_epochs_sort_by_when_they_began():
    from roomcast.protocol.roomlog import new_epoch
    assert new_epoch(1_000.0, "ffffffff") < new_epoch(1_000.001, "00000000")


def test_a_check_past_a_gap_still_catches_up_after_the_gap_is_filled():
    # Found by the model below (CI's derandomized run): frames 1 and 3 lost from the
    # subscription, our own 2 held; the store says 3. Filling the gap (1) must not
    # forget that 3 is still to be read.
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.sync("e", 0, 0.0)
    assert buffer.arrive("e", 2, b"2", 0.0) == []
    buffer.check("e", 3, 0.0)
    fetch = buffer.due(0.0)
    assert fetch == Fetch("e", 0, 1)
    buffer.postpone(0.0)
    assert [r.offset for r in buffer.fill(fetch, [(1, b"1")], 0.0)] == [1, 2]
    fetch = buffer.due(WAIT)
    assert fetch == Fetch("e", 2, 3)
    assert [r.offset for r in buffer.fill(fetch, [(3, b"3")], WAIT)] == [3]
    assert buffer.due(10.0) is None


def test_postpone_moves_the_next_attempt():
    buffer = HoldBack(WAIT, PATIENCE)
    buffer.arrive("e", 2, b"2", 0.0)  # not synced: the driver syncs at the deadline
    assert buffer.deadline() == WAIT
    buffer.postpone(1.0)
    assert buffer.deadline() == 1.0 + WAIT


# A model: nodes over one Redis ------------------------------------------------------

class Cluster(RuleBasedStateMachine):
    """Redis numbers frames atomically and publishes them; each node hears the others'
    frames through its subscription (FIFO; when it reconnects, what was in flight is
    lost, and the node `check`s where the room is) and its own through the replies to
    its publishes (in any order). Redis can lose everything (a restart: a new epoch),
    and its stream can keep as few as 3 frames (a burst outruns it). Invariant: every
    node releases every frame of the current epoch once, in offset order; a gap only
    where the frames are gone from Redis too and are not on their way to the node.

    Two limits, both needing a stream outrun while a subscription reconnects: a node's
    own frame whose reply was still on its way when its subscription came back may be
    skipped (the buffer cannot tell it from a lost one); and the check here reads the
    position at the moment the subscription is back, where the service reads it a round
    trip later (a frame published in between would be skipped the same way)."""

    NODES = 3
    PATIENCE = math.inf  # no giving up on a frame on its way: the invariant says so

    def __init__(self) -> None:
        super().__init__()
        self.rng = random.Random(0)
        self.now = 0.0
        self.epochs = 0
        self.epoch = "e0000"
        self.last = 0
        self.stream: dict[int, bytes] = {}  # the current epoch's frames
        self.stream_size = 10_000
        self.subscription: list[list[tuple[str, int, bytes]]] = [[] for _ in range(self.NODES)]
        self.replies: list[list[tuple[str, int, bytes]]] = [[] for _ in range(self.NODES)]
        self.buffers = [HoldBack(WAIT, self.PATIENCE) for _ in range(self.NODES)]
        self.released: list[list[Released]] = [[] for _ in range(self.NODES)]
        self.lost: set[tuple[str, int]] = set()  # frames Redis no longer has
        # Own frames whose reply was on its way when the node's subscription came back.
        self.crossed: list[set[tuple[str, int]]] = [set() for _ in range(self.NODES)]
        for buffer in self.buffers:
            buffer.sync(self.epoch, 0, self.now)

    def _publish(self, node: int) -> None:
        self.last += 1
        frame = f"{self.epoch}:{self.last}".encode()
        self.stream[self.last] = frame
        for old in [o for o in self.stream if o <= self.last - self.stream_size]:
            self.lost.add((self.epoch, old))
            del self.stream[old]
        for other in range(self.NODES):
            target = self.replies if other == node else self.subscription
            target[other].append((self.epoch, self.last, frame))

    @rule(node=st.integers(0, NODES - 1), count=st.integers(1, 5))
    def publish(self, node: int, count: int) -> None:
        for _ in range(count):
            self._publish(node)

    @rule(node=st.integers(0, NODES - 1))
    def hear(self, node: int) -> None:
        if self.subscription[node]:
            self._arrive(node, self.subscription[node].pop(0))

    @rule(node=st.integers(0, NODES - 1), pick=st.integers(0, 10**6))
    def reply(self, node: int, pick: int) -> None:
        if self.replies[node]:
            self._arrive(node, self.replies[node].pop(pick % len(self.replies[node])))

    @rule(node=st.integers(0, NODES - 1))
    def resubscribe(self, node: int) -> None:
        """The node's subscription broke and came back: what was in flight is lost, and
        the node asks Redis where the room is."""
        self.subscription[node].clear()
        self.crossed[node].update((e, o) for e, o, _ in self.replies[node])
        self.check(node)

    def check(self, node: int) -> None:
        self.buffers[node].check(self.epoch, self.last, self.now)

    @rule()
    def redis_restart(self) -> None:
        self.lost.update((self.epoch, o) for o in self.stream)
        self.epochs += 1
        self.epoch, self.last, self.stream = f"e{self.epochs:04d}", 0, {}

    @rule()
    def small_stream(self) -> None:
        self.stream_size = 3

    @rule(dt=st.sampled_from([0.01, 0.1, WAIT, 1.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        for node, buffer in enumerate(self.buffers):
            fetch = buffer.due(self.now)
            buffer.postpone(self.now)
            if fetch is None:
                continue
            frames = ([(o, f) for o, f in self.stream.items() if fetch.after < o <= fetch.upto]
                      if fetch.epoch == self.epoch else [])
            self.released[node] += buffer.fill(fetch, frames, self.now)

    def _arrive(self, node: int, message: tuple[str, int, bytes]) -> None:
        epoch, offset, frame = message
        self.released[node] += self.buffers[node].arrive(epoch, offset, frame, self.now)

    @invariant()
    def released_in_offset_order_once_per_epoch(self) -> None:
        for node, released in enumerate(self.released):
            heard = {(e, o) for e, o, _ in self.subscription[node]}
            replies = {(e, o) for e, o, _ in self.replies[node]} - self.crossed[node]
            seen: dict[str, int] = {}
            for item in released:
                assert item.frame == f"{item.epoch}:{item.offset}".encode()
                previous = seen.get(item.epoch, 0)
                assert item.offset > previous, (item, previous)
                if item.offset != previous + 1:
                    # A gap is only ever what Redis lost, and is marked as one.
                    assert item.gap, (item, previous)
                    skipped = {(item.epoch, o) for o in range(previous + 1, item.offset)}
                    assert skipped <= self.lost or previous == 0, (item, previous)
                    if math.isinf(self.PATIENCE):
                        assert not skipped & (heard | replies), (item, sorted(skipped & (
                            heard | replies)))
                seen[item.epoch] = item.offset

    @invariant()
    def nodes_agree_on_the_order(self) -> None:
        orders = [[(r.epoch, r.offset) for r in released] for released in self.released]
        for order in orders[1:]:
            common = set(order) & set(orders[0])
            assert [p for p in order if p in common] == [p for p in orders[0] if p in common]

    @precondition(lambda self: True)
    @rule()
    def everything_settles(self) -> None:
        """Deliver everything still on its way and let the waits run out: every node
        then has every frame Redis still holds, in the current epoch."""
        for node in range(self.NODES):
            while self.subscription[node]:
                self.hear(node)
            while self.replies[node]:
                self.reply(node, 0)
            self.check(node)
        for _ in range(3):
            self.time_passes(WAIT)
        for node, released in enumerate(self.released):
            if self.last and not self.buffers[node].held:
                have = {r.offset for r in released if r.epoch == self.epoch}
                assert set(self.stream) <= have, (node, sorted(set(self.stream) - have))


TestCluster = Cluster.TestCase
TestCluster.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)


class ImpatientCluster(Cluster):
    """The same with a patience the model's clock runs out: a frame still on its way may
    then be skipped, but only one Redis no longer holds, and still in one order."""

    PATIENCE = 2.0


TestImpatientCluster = ImpatientCluster.TestCase
TestImpatientCluster.settings = settings(max_examples=200, stateful_step_count=60,
                                         deadline=None)
