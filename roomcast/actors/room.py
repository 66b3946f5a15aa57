"""Room actor: owns its member addresses and fans a published frame out to them.

Fan-out never awaits a socket: each member's `deliver` either hands the frame to the
kernel or queues it in that member's own outbox. One task wake-up per publish, none
per member. A big room defers its members' writes until no other publish follows at
once, then flushes: frames published back to back cost each member one system call.

What the frames mean (numbering, epochs, retention, recovery, the order in a cluster)
is decided by the pure state machines in `roomcast.protocol.roomlog` and
`roomcast.protocol.holdback`; this actor feeds them the frames, the joins and the
time, and carries out what they decide.

A fan-out survives crashes. A member whose `deliver` raises is that member's fault: it
is closed with 1011 and the fan-out goes on. If the room itself crashes mid-fan-out,
its supervisor restarts it, and the restarted loop first finishes the interrupted
fan-out for the members not reached yet, then answers the publisher.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import Any, Protocol

import attrs
import trio

from roomcast.actors.base import MessageActor, Reply
from roomcast.actors.streams import BackplaneUnavailable, Numbered
from roomcast.protocol import (
    CloseCode,
    Position,
    RecoveryFailure,
    UserId,
    positioned_frame,
    text_frame,
)
from roomcast.protocol.deflate import deflated_frame
from roomcast.protocol.holdback import Fetch, HoldBack, Released
from roomcast.protocol.roomlog import (
    Kept,
    Recovery,
    Retention,
    RoomLog,
    Stretch,
    new_epoch,
    recover_from_stretch,
)


class Member(Protocol):
    """What a room needs of a member (a connection): never waits."""

    @property
    def id(self) -> int: ...

    @property
    def user_id(self) -> UserId: ...

    @property
    def deflate(self) -> bool:
        """It negotiated permessage-deflate: it gets frames' compressed variants."""
        ...

    def deliver(self, frame: bytes, *, later: bool = False) -> bool:
        """Queue complete frame bytes; False if they were dropped."""
        ...

    def flush(self) -> None:
        """Write the frames delivered `later`."""
        ...

    def deliver_welcome(self, welcome: bytes, missed: list[bytes]) -> None:
        """The welcome, then what was missed, then whatever came meanwhile."""
        ...

    def request_close(self, code: CloseCode, reason: str) -> None: ...


class ClusterHistory(Protocol):
    """What a room needs of the cluster (the backplane): its history in Redis."""

    @property
    def cluster_history(self) -> bool:
        """Rooms are numbered, and their history kept, in Redis (now)."""
        ...

    async def position(self, room: str) -> tuple[str, int]: ...

    async def since(self, room: str, offset: int, *, entries: bool = True) -> Stretch: ...

    async def fetch(self, room: str, fetch: Fetch) -> list[tuple[int, bytes]]: ...

    async def take_pending(self, user: UserId) -> tuple[list[bytes], bool]: ...

log = logging.getLogger(__name__)

# The room every connection is in: broadcasts are published to it. Not a valid
# client room name, so no client can join, leave or address it.
LOBBY = "*"

# A fan-out (or a flush) yields after this long, so that other rooms' frames (a
# notification to one user, say) do not wait for all of a big room's members.
SLICE_SECONDS = 0.0005
# Fan-outs to more members than this defer their writes to the room's flush; smaller
# ones write at once (a user's own tabs, a small room: no wait for the flush).
WRITE_NOW_UP_TO = 16
# In a cluster, how long a frame that came ahead of its turn waits for the ones before
# it (they are on their way through the other stream) before they are read from Redis.
GAP_WAIT_SECONDS = 0.25
# How long frames Redis no longer holds (a burst past `history_size`) are waited for
# through a subscription that was not interrupted, before members get a gap.
GAP_PATIENCE_SECONDS = 5.0


@attrs.frozen
class Delivery:
    users: int  # distinct users reached
    connections: int  # connections the frame was queued to
    user_ids: set[UserId] = attrs.field(factory=set, eq=False)  # who they are


NOBODY = Delivery(users=0, connections=0)


@attrs.define
class Join:
    connection: Member
    reply: Reply[None] | None = None
    position: Position | None = None  # the client's last position, to recover from
    # Builds the join's answer frame from its Recovery; the room sends it itself, so
    # that the answer, the recovered frames and new frames cannot be reordered.
    answer: Callable[[Recovery], bytes] | None = None
    is_welcome: bool = False  # the answer is the connection's welcome (its personal room)


@attrs.define
class Leave:
    connection: Member
    reply: Reply[None] | None = None


@attrs.define
class Publish:
    body: bytes  # the frame's JSON, encoded once by the publisher; the room numbers it
    reply: Reply[Delivery] | None = None
    numbered: Numbered | None = None  # numbered in Redis already (a cluster's history)


@attrs.define
class Check:
    """This node's subscription was interrupted: frames may have been lost with no
    later frame to show it. Ask Redis where the room is, and catch up."""


# How soon after a Check the room asks Redis (the subscription is coming back), and
# how often it asks again while Redis cannot answer.
CHECK_AFTER_SECONDS = 0.2
CHECK_RETRY_SECONDS = 1.0


@attrs.define
class _FanOut:
    """A fan-out in progress: what is left survives a crash of the room's loop."""

    reply: Reply[Delivery] | None
    frame: bytes  # numbered and framed once, before the first member gets it
    pending: Iterator[Member]
    later: bool  # deferred to the room's flush
    kept: Kept | None  # its record in the room's log, marked once someone has it
    users: set[UserId] = attrs.Factory(set)
    connections: int = 0
    _deflated: bytes | None = attrs.field(default=None, init=False)

    def deflated(self) -> bytes:
        """The frame's compressed variant, for members that negotiated
        permessage-deflate: built once per publish, when the first of them is met."""
        if self._deflated is None:
            self._deflated = deflated_frame(self.frame)
        return self._deflated


class Room(MessageActor):
    """Also the room's history: every frame gets the next `offset` in this room's
    `epoch` (on this node, or in Redis in a cluster), and the last frames are kept for
    clients that reconnect."""

    inline_may_wait = False  # an inline room never defers, yields or reads Redis

    def __init__(
        self,
        name: str,
        mailbox_size: int | None,
        retention: Retention | None = None,
        log: RoomLog | None = None,
    ) -> None:
        # `mailbox_size` None: inline (a personal room, see Registry): no task of its
        # own, and its fan-outs neither defer nor yield, so handling never waits.
        super().__init__(f"room {name}", mailbox_size)
        self.room = name
        self.positioned = name != LOBBY  # its frames carry positions; broadcasts do not
        self.retention = retention or Retention()
        # The log the registry remembered from the room's last actor (its last member
        # left less than `history_ttl` ago), or a new one: a room forgotten and started
        # again has a new history.
        self.log = log or RoomLog(new_epoch(time.time(), secrets.token_hex(4)),
                                  self.retention, trio.current_time())
        self.members: dict[int, Member] = {}
        self.user_counts: Counter[UserId] = Counter()
        self._fan_out: _FanOut | None = None
        # Frames the hold-back buffer let go, to fan out in order (a list: nearly always
        # empty, and an empty deque costs ten times the memory of a personal room's list).
        self._releasing: list[tuple[Released, Reply[Delivery] | None]] = []
        # Called when a user appears in or leaves the room (the backplane's presence).
        self.on_presence_change: Callable[[], None] | None = None
        self.fault_after: int | None = None  # test seam: the next fan-out crashes after N+1
        # In a cluster the history lives in Redis (None: on this node).
        self.cluster: ClusterHistory | None = None
        self._holdback: HoldBack | None = None  # made when the room first needs it
        # Our own publishes, numbered in Redis, waiting for their turn: their reply.
        self._awaiting: dict[tuple[str, int], Reply[Delivery]] = {}
        self._local_epoch_stale = False  # Redis numbered since we last numbered here
        self._check_at = math.inf  # when to ask Redis where the room is (after a Check)
        self._unflushed: dict[int, Member] = {}  # members with deferred frames

    def enter_lobby(self, connection: Member) -> None:
        """The lobby's members come and go by plain calls from the registry, not by
        messages (two task switches per connection, for nothing): every connection is
        in the lobby from its registration to its departure, and a fan-out works on a
        snapshot of the members, so no order is lost."""
        self._add_member(connection)

    def leave_lobby(self, connection: Member) -> None:
        self._remove_member(connection)

    def _add_member(self, connection: Member) -> bool:
        """Add a member; True if its user is new to the room."""
        if connection.id in self.members:
            return False
        self.members[connection.id] = connection
        self.user_counts[connection.user_id] += 1
        return self.user_counts[connection.user_id] == 1

    def _remove_member(self, connection: Member) -> bool:
        """Remove a member; True if its user has no connection left in the room."""
        if self.members.pop(connection.id, None) is None:
            return False
        self.user_counts[connection.user_id] -= 1
        if self.user_counts[connection.user_id]:
            return False
        del self.user_counts[connection.user_id]
        return True

    def member_users(self) -> set[UserId]:
        return set(self.user_counts)

    @property
    def holdback(self) -> HoldBack:
        """The hold-back buffer: only a cluster room has one (a lone node's rooms, and
        every personal room there, never pay for it)."""
        if self._holdback is None:
            self._holdback = HoldBack(GAP_WAIT_SECONDS, GAP_PATIENCE_SECONDS)
        return self._holdback

    @property
    def epoch(self) -> str:
        return self.log.epoch

    async def run(self) -> None:
        await self.recover()
        await super().run()

    async def recover(self) -> None:
        if self._fan_out is not None:  # restarted after a crash mid-fan-out
            await self._continue_fan_out()
        await self._release()

    def on_crash(self, message: Any) -> None:
        if self._fan_out is not None and self._fan_out.reply is getattr(message, "reply", 0):
            return  # the publisher is answered once the restarted loop has finished
        super().on_crash(message)

    def expires_at(self) -> float:
        """When the room, with no members, may be forgotten: `history_ttl` after its
        last frame or its last member's departure (its epoch lives that long)."""
        return self.log.expires_at()

    async def handle(self, message: Join | Leave | Publish | Check) -> None:
        if isinstance(message, Publish):
            await self._take(message)
            return
        if isinstance(message, Check):
            if self._holdback is not None and self._holdback.synced:
                self._check_at = min(self._check_at,
                                     trio.current_time() + CHECK_AFTER_SECONDS)
            return
        connection = message.connection
        self.log.touch(trio.current_time())
        if isinstance(message, Join):
            if message.answer is not None:
                await self._answer(message)
            if self._add_member(connection):
                self._presence_changed()
            await self._release()  # frames the answer's sync let go, after the answer
        elif self._remove_member(connection):
            self._presence_changed()
        if message.reply is not None:
            message.reply.set(None)

    # publishing -----------------------------------------------------------------------

    async def _take(self, publish: Publish) -> None:
        numbered = publish.numbered
        if numbered is None:
            frame, kept = self._number(publish.body)
            self._fan_out = self._start_fan_out(publish.reply, frame, kept)
            await self._continue_fan_out()
            return
        # Numbered in Redis: released in offset order, whichever stream brought it.
        key = (numbered.epoch, numbered.offset)
        if publish.reply is not None:
            self._awaiting[key] = publish.reply
        self._local_epoch_stale = True
        now = trio.current_time()
        released = self.holdback.arrive(numbered.epoch, numbered.offset, numbered.frame, now)
        self._queue_release(released)
        if key in self._awaiting and key not in self.holdback.held:
            # A duplicate, or a frame of an epoch left behind: nobody gets it here.
            self._awaiting.pop(key).set(NOBODY)
        await self._release()

    def _queue_release(self, released: list[Released]) -> None:
        for item in released:
            self._releasing.append((item, self._awaiting.pop((item.epoch, item.offset), None)))

    async def _release(self) -> None:
        """Fan out what the hold-back buffer let go, in order."""
        releasing = self._releasing
        while releasing:
            item, reply = releasing[0]
            frame = text_frame(item.frame)
            now = trio.current_time()
            if item.epoch != self.log.epoch:
                # A new epoch (or Redis's again after local numbering): a log of its own.
                # A gap within an epoch is the log's to handle (`keep` refuses recovery
                # across it).
                self.log.close()  # its frames leave the node's budget
                self.log = RoomLog(item.epoch, self.retention, now, item.offset - 1)
            kept = self.log.keep(item.offset, frame, now)
            releasing.pop(0)  # popped first: a crash loses nothing but this one
            self._fan_out = self._start_fan_out(reply, frame, kept)
            await self._continue_fan_out()

    def _number(self, body: bytes) -> tuple[bytes, Kept | None]:
        """Number a frame here: a lone node, or a cluster node while Redis is away."""
        if not self.positioned:
            return text_frame(body), None
        now = trio.current_time()
        if self._local_epoch_stale:
            # Redis is out of reach: number here, in an epoch of our own, so that no
            # offset can mean two frames once Redis numbers again.
            self.log.close()
            self.log = RoomLog(new_epoch(time.time(), secrets.token_hex(4)), self.retention, now)
            self._local_epoch_stale = False
        log_ = self.log
        offset = log_.next_offset()
        frame = positioned_frame(body, offset, log_.epoch)
        return frame, log_.keep(offset, frame, now)

    def _start_fan_out(
        self, reply: Reply[Delivery] | None, frame: bytes, kept: Kept | None
    ) -> _FanOut:
        # A snapshot: members joining or leaving meanwhile cannot disturb it.
        snapshot = list(self.members.values())
        later = len(snapshot) > WRITE_NOW_UP_TO and not self.inline
        pending: Iterator[Member] = iter(snapshot)
        if self.fault_after is not None:  # a test seam: checked per publish, not member
            pending, self.fault_after = _CrashAfter(pending, self.fault_after), None
        return _FanOut(reply, frame, pending, later, kept)

    async def _continue_fan_out(self) -> None:
        fan_out = self._fan_out
        assert fan_out is not None
        started = perf_counter()
        deadline = started + SLICE_SECONDS
        frame, later, unflushed = fan_out.frame, fan_out.later, self._unflushed
        may_yield = not self.inline
        deflated: bytes | None = None  # the compressed variant, once one member needs it
        for count, member in enumerate(fan_out.pending, 1):
            try:
                if member.deflate:
                    if deflated is None:
                        deflated = fan_out.deflated()
                    delivered = member.deliver(deflated, later=later)
                else:
                    delivered = member.deliver(frame, later=later)
            except Exception:
                log.exception("conn %d user=%r: failed taking a frame; closing with 1011",
                              member.id, member.user_id)
                member.request_close(CloseCode.INTERNAL_ERROR, "internal error")
                continue
            if delivered:
                fan_out.users.add(member.user_id)
                fan_out.connections += 1
                if later:
                    unflushed[member.id] = member
            if may_yield and count % 16 == 0 and perf_counter() >= deadline:
                # This room's own next frame still waits: its order holds.
                await trio.lowlevel.checkpoint()
                deadline = perf_counter() + SLICE_SECONDS
        self._fan_out = None
        self.metrics.fanned_out(frame, fan_out.connections, perf_counter() - started)
        if fan_out.connections and fan_out.kept is not None:
            fan_out.kept.delivered = True
        if fan_out.reply is not None:
            fan_out.reply.set(Delivery(len(fan_out.users), fan_out.connections, fan_out.users))

    async def idle(self) -> None:
        """Write the deferred frames, unless a publish is already on its way: a
        publisher that awaits each frame sends the next within a scheduler round or
        two of its answer, and consecutive frames then share one write per member."""
        for _ in range(2):
            if not self._unflushed or not self.mailbox_empty():
                return
            await trio.lowlevel.checkpoint()
        if self.mailbox_empty():
            await self._flush()

    async def _flush(self) -> None:
        unflushed = self._unflushed
        deadline = perf_counter() + SLICE_SECONDS
        while unflushed:
            _, member = unflushed.popitem()  # popped first: a crash leaves the rest
            member.flush()
            if perf_counter() >= deadline:
                await trio.lowlevel.checkpoint()
                deadline = perf_counter() + SLICE_SECONDS

    # the hold-back buffer's clock -------------------------------------------------------

    def deadline(self) -> float:
        holdback = self._holdback
        return self._check_at if holdback is None else min(holdback.deadline(), self._check_at)

    async def at_deadline(self) -> None:
        """Frames came ahead of their turn and the ones before them did not follow:
        read those from the room's stream (or, not synced yet, where the room stands)."""
        cluster, holdback = self.cluster, self.holdback
        now = trio.current_time()
        if now >= self._check_at and cluster is not None:
            try:
                stretch = await cluster.since(self.room, 0, entries=False)
                self._check_at = math.inf
                if stretch.epoch is not None:
                    holdback.check(stretch.epoch, stretch.last, trio.current_time())
            except BackplaneUnavailable:
                self._check_at = trio.current_time() + CHECK_RETRY_SECONDS
            now = trio.current_time()
        fetch = holdback.due(now)
        holdback.postpone(now)  # the next attempt, if this one does not fill the gap
        if cluster is None:
            self._check_at = math.inf
            return
        try:
            if not holdback.synced:
                epoch, last = await cluster.position(self.room)
                self._queue_release(holdback.sync(epoch, last, trio.current_time()))
            elif fetch is not None:
                try:
                    frames = await cluster.fetch(self.room, fetch)
                except BackplaneUnavailable:
                    frames = []  # read again at the next deadline, or given up
                self._queue_release(holdback.fill(fetch, frames, trio.current_time()))
        except BackplaneUnavailable:
            pass  # tried again at the next deadline
        await self._release()

    # recovery -------------------------------------------------------------------------

    async def _answer(self, join: Join) -> None:
        """Send the join's answer, then what the client missed, before any new frame."""
        missed: list[bytes]
        recovery, missed = None, []
        cluster = self.cluster
        if cluster is not None and cluster.cluster_history:
            try:
                recovery, missed = await self._recover_in_cluster(join, cluster)
            except BackplaneUnavailable:
                recovery = None  # Redis just went away: what this node knows, honestly
        if recovery is None:
            recovery, missed = self.log.recover(
                join.position, trio.current_time(), offline=join.is_welcome
            )
        assert join.answer is not None
        answer = join.answer(recovery)
        connection = join.connection
        self.metrics.answered(answer, missed)
        if join.is_welcome:
            connection.deliver_welcome(answer, missed)
        else:
            for frame in (answer, *missed):
                connection.deliver(frame)

    async def _recover_in_cluster(
        self, join: Join, cluster: ClusterHistory
    ) -> tuple[Recovery, list[bytes]]:
        """The answer from Redis, cut where this node's members stand: frames after
        that reach the joiner live, in order, through the hold-back buffer."""
        holdback, position = self.holdback, join.position
        after = position.offset if position is not None and position.offset is not None else None
        if not holdback.synced or after is not None:
            stretch = await cluster.since(self.room, after if after is not None else -1,
                                          entries=after is not None)
            if stretch.epoch is None:
                epoch, last = await cluster.position(self.room)
                stretch = attrs.evolve(stretch, epoch=epoch, last=last)
            if not holdback.synced:
                assert stretch.epoch is not None
                self._queue_release(holdback.sync(stretch.epoch, stretch.last,
                                                  trio.current_time()))
        assert holdback.cursor is not None
        epoch, upto = holdback.cursor
        if position is None:
            return Recovery(upto, epoch), []
        missed: list[bytes]
        if after is None:
            recovery, missed = Recovery(upto, epoch), []
        else:
            recovery, missed = recover_from_stretch(position, stretch, upto, epoch,
                                                    self.retention, time.time())
        frames = [text_frame(f) for f in missed]
        if join.is_welcome:
            # What reached nobody while the user was away, for a client that asks:
            # taken once (the frames the recovery already gave are not given twice),
            # after the answer, even when that refused the position.
            given = set(missed)
            pending, lost = await cluster.take_pending(join.connection.user_id)
            frames += [text_frame(f) for f in pending if f not in given]
            recovery = attrs.evolve(recovery, missed=len(frames))
            if lost and recovery.recovered is not False:
                recovery = attrs.evolve(recovery, recovered=False,
                                        reason=RecoveryFailure.TOO_MANY)
        return recovery, frames

    def _presence_changed(self) -> None:
        if self.on_presence_change is not None:
            self.on_presence_change()


class _CrashAfter:
    """Fault injection (`Room.fault_after`): the room's fan-out loop crashes once after
    `after` + 1 members had the frame, then goes on where it was (the restarted room
    finishes the fan-out from here)."""

    __slots__ = ("_after", "_members")

    def __init__(self, members: Iterator[Member], after: int) -> None:
        self._members = members
        self._after: int | None = after + 1

    def __iter__(self) -> _CrashAfter:
        return self

    def __next__(self) -> Member:
        if self._after is not None:
            if self._after <= 0:
                self._after = None
                raise RuntimeError("injected fault in a room mid-fan-out")
            self._after -= 1
        return next(self._members)
