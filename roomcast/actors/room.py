"""Room actor: owns its member addresses and fans a published frame out to them.

Fan-out never awaits a socket: each member's `deliver` either hands the frame to the
kernel or queues it in that member's own outbox. One task wake-up per publish, none
per member. A big room defers its members' writes until no other publish follows at
once, then flushes: frames published back to back cost each member one system call.

A fan-out survives crashes. A member whose `deliver` raises is that member's fault: it
is closed with 1011 and the fan-out goes on. If the room itself crashes mid-fan-out,
its supervisor restarts it, and the restarted loop first finishes the interrupted
fan-out for the members not reached yet, then answers the publisher.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

import attrs
import trio

from roomcast.actors.base import MailboxActor, Reply
from roomcast.actors.streams import BackplaneUnavailable, Numbered
from roomcast.protocol import (
    CloseCode,
    Position,
    RecoveryFailure,
    UserId,
    positioned_frame,
    text_frame,
)

if TYPE_CHECKING:
    from roomcast.actors.backplane import Backplane
    from roomcast.actors.connection import Connection

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


@attrs.frozen
class Delivery:
    users: int  # distinct users reached
    connections: int  # connections the frame was queued to
    user_ids: set[UserId] = attrs.field(factory=set, eq=False)  # who they are


@attrs.frozen
class Recovery:
    """What a join learned about its position in the room."""

    offset: int  # the room's last offset: frames after the join have larger ones
    epoch: str
    recovered: bool | None = None  # None: no position was given
    reason: RecoveryFailure | None = None
    missed: int = 0  # frames sent right after the answer, before any new frame


@attrs.define
class Join:
    connection: Connection
    reply: Reply[None] | None = None
    position: Position | None = None  # the client's last position, to recover from
    # Builds the join's answer frame from its Recovery; the room sends it itself, so
    # that the answer, the recovered frames and new frames cannot be reordered.
    answer: Callable[[Recovery], bytes] | None = None
    welcome: bool = False  # the answer is the connection's welcome (its personal room)


@attrs.define
class Leave:
    connection: Connection
    reply: Reply[None] | None = None


@attrs.define
class Publish:
    body: bytes  # the frame's JSON, encoded once by the publisher; the room numbers it
    reply: Reply[Delivery] | None = None
    numbered: Numbered | None = None  # numbered in Redis already (a cluster's history)


@attrs.define
class _Entry:
    """One frame of a room's history."""

    offset: int
    at: float  # trio.current_time() when published
    frame: bytes
    delivered: bool = False  # reached a connection (else it waits for the user to come)


@attrs.define
class _FanOut:
    """A fan-out in progress: what is left survives a crash of the room's loop."""

    publish: Publish
    frame: bytes  # numbered and framed once, before the first member gets it
    pending: Iterator[Connection]
    later: bool  # deferred to the room's flush
    users: set[UserId] = attrs.Factory(set)
    connections: int = 0


@attrs.frozen
class HistoryPolicy:
    size: int = 100  # frames kept per room; 0 keeps none
    ttl: float = 300.0  # seconds a frame is kept


class Room(MailboxActor):
    """Also the room's sequencer and history: every frame gets the next `offset` in
    this room's `epoch`, and the last frames are kept for clients that reconnect."""

    inline_may_wait = False  # an inline room never defers, yields or reads Redis

    def __init__(
        self,
        name: str,
        mailbox_size: int,
        history: HistoryPolicy | None = None,
        *,
        inline: bool = False,
    ) -> None:
        # Inline (a personal room, see Registry): no task of its own, and its fan-outs
        # neither defer nor yield, so that handling a message never waits.
        super().__init__(f"room {name}", mailbox_size, inline=inline)
        self.room = name
        self.numbered = name != LOBBY  # broadcasts are live only
        self.epoch = secrets.token_hex(4)  # new with every actor: its history is new too
        self.last_offset = 0
        self._policy = history or HistoryPolicy()
        self.history: deque[_Entry] = deque()
        self._evicted_by: RecoveryFailure | None = None
        self.members: dict[int, Connection] = {}
        self.user_counts: Counter[UserId] = Counter()
        self._fan_out: _FanOut | None = None
        # Called when a user appears in or leaves the room (the backplane's presence).
        self.on_presence_change: Callable[[], None] | None = None
        self.fault_after: int | None = None  # fault injection: crash after N+1 members
        # In a cluster the history lives in Redis, and this reads it (None: on this node).
        self.cluster: Backplane | None = None
        # Members that recovered up to an offset: frames up to it may still arrive from
        # Redis after the recovery, and must not reach them twice.
        self._floors: dict[int, int] = {}
        self._epoch_from_redis = False
        self._unflushed: dict[int, Connection] = {}  # members with deferred frames

    def enter_lobby(self, connection: Connection) -> None:
        """The lobby's members come and go by plain calls from the registry, not by
        messages (two task switches per connection, for nothing): every connection is
        in the lobby from its registration to its departure, and a fan-out works on a
        snapshot of the members, so no order is lost."""
        self._add_member(connection)

    def leave_lobby(self, connection: Connection) -> None:
        self._remove_member(connection)

    def _add_member(self, connection: Connection) -> bool:
        """Add a member; True if its user is new to the room."""
        if connection.id in self.members:
            return False
        self.members[connection.id] = connection
        self.user_counts[connection.user_id] += 1
        return self.user_counts[connection.user_id] == 1

    def _remove_member(self, connection: Connection) -> bool:
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

    async def run(self) -> None:
        await self.recover()
        await super().run()

    async def recover(self) -> None:
        if self._fan_out is not None:  # restarted after a crash mid-fan-out
            await self._continue_fan_out()

    def on_crash(self, message: Any) -> None:
        if self._fan_out is not None and self._fan_out.publish is message:
            return  # the publisher is answered once the restarted loop has finished
        super().on_crash(message)

    def retained_until(self) -> float:
        """When the newest frame of the history expires (0 with no history)."""
        return self.history[-1].at + self._policy.ttl if self.history else 0.0

    async def handle(self, message: Join | Leave | Publish) -> None:
        if isinstance(message, Publish):
            frame = self._number(message)
            members = self.members.values()
            if self._floors:
                members = self._beyond_floors(message.numbered, members)
            # A snapshot: members joining or leaving meanwhile cannot disturb it.
            snapshot = list(members)
            later = len(snapshot) > WRITE_NOW_UP_TO and not self.inline
            self._fan_out = _FanOut(message, frame, iter(snapshot), later)
            await self._continue_fan_out()
            return
        connection = message.connection
        if isinstance(message, Join):
            if message.answer is not None:
                await self._answer(message)
            if self._add_member(connection):
                self._presence_changed()
        elif self._remove_member(connection):
            self._presence_changed()
        if message.reply is not None:
            message.reply.set(None)

    async def _continue_fan_out(self) -> None:
        fan_out = self._fan_out
        assert fan_out is not None
        started = perf_counter()
        deadline = started + SLICE_SECONDS
        frame, later, unflushed = fan_out.frame, fan_out.later, self._unflushed
        may_yield = not self.inline
        for count, member in enumerate(fan_out.pending, 1):
            try:
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
            if self.fault_after is not None:
                self._count_down_fault()
            if may_yield and count % 16 == 0 and perf_counter() >= deadline:
                # This room's own next frame still waits: its order holds.
                await trio.lowlevel.checkpoint()
                deadline = perf_counter() + SLICE_SECONDS
        self._fan_out = None
        self.metrics.fanned_out(frame, fan_out.connections, perf_counter() - started)
        if fan_out.connections and self.history and self.history[-1].frame is frame:
            self.history[-1].delivered = True
        if fan_out.publish.reply is not None:
            fan_out.publish.reply.set(
                Delivery(len(fan_out.users), fan_out.connections, fan_out.users)
            )

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

    # numbering, history, recovery ----------------------------------------------------

    def _number(self, publish: Publish) -> bytes:
        body, numbered = publish.body, publish.numbered
        if numbered is not None:
            self.last_offset, self.epoch = numbered.offset, numbered.epoch
            self._epoch_from_redis = True
            return text_frame(numbered.frame)
        if not self.numbered:
            return text_frame(body)
        if self._epoch_from_redis:
            # Redis is out of reach: number here, in an epoch of our own, so that no
            # offset can mean two frames once Redis numbers again.
            self.epoch, self.last_offset, self._epoch_from_redis = secrets.token_hex(4), 0, False
            self.history.clear()
        self.last_offset += 1
        frame = positioned_frame(body, self.last_offset, self.epoch)
        if self._policy.size > 0:
            now = trio.current_time()
            self.history.append(_Entry(self.last_offset, now, frame))
            self._evict(now)
        return frame

    def _evict(self, now: float) -> None:
        history, policy = self.history, self._policy
        while len(history) > policy.size:
            history.popleft()
            self._evicted_by = RecoveryFailure.TOO_MANY
        while history and now - history[0].at > policy.ttl:
            history.popleft()
            self._evicted_by = RecoveryFailure.TOO_OLD

    def _beyond_floors(
        self, numbered: Numbered | None, members: Iterable[Connection]
    ) -> list[Connection]:
        offset = numbered.offset if numbered is not None else math.inf
        if offset > max(self._floors.values()):
            self._floors.clear()  # every recovered member is past its floor now
            return list(members)
        return [m for m in members if offset > self._floors.get(m.id, -1)]

    async def _answer(self, join: Join) -> None:
        """Send the join's answer, then what the client missed, before any new frame."""
        recovery, missed = None, []
        if self.cluster is not None and self.cluster.cluster_history:
            try:
                recovery, missed = await self._recover_from_redis(join, self.cluster)
            except BackplaneUnavailable:
                recovery = None  # Redis just went away: what this node knows, honestly
        if recovery is None:
            recovery, missed = self._recover(join)
        assert join.answer is not None
        answer = join.answer(recovery)
        connection = join.connection
        self.metrics.answered(answer, missed)
        if join.welcome:
            connection.deliver_welcome(answer, missed)
        else:
            for frame in (answer, *missed):
                connection.deliver(frame)

    def _recover(self, join: Join) -> tuple[Recovery, list[bytes]]:
        recovery, missed = self._recover_position(join)
        if join.welcome and not recovery.recovered:
            # A user coming online gets the personal notifications that reached nobody,
            # whether or not its position could be recovered.
            waiting = [entry for entry in self.history if not entry.delivered]
            recovery = attrs.evolve(recovery, missed=len(waiting))
            missed = self._take(waiting)
        return recovery, missed

    def _recover_position(self, join: Join) -> tuple[Recovery, list[bytes]]:
        self._evict(trio.current_time())
        position, last, epoch = join.position, self.last_offset, self.epoch
        if position is None or position.offset is None:
            return Recovery(last, epoch), []
        if position.epoch != epoch or position.offset > last:
            return Recovery(last, epoch, False, RecoveryFailure.EPOCH_CHANGED), []
        first = self.history[0].offset if self.history else last + 1
        if position.offset + 1 < first:
            reason = self._evicted_by or RecoveryFailure.TOO_MANY
            return Recovery(last, epoch, False, reason), []
        missed = [entry for entry in self.history if entry.offset > position.offset]
        return Recovery(last, epoch, True, missed=len(missed)), self._take(missed)

    async def _recover_from_redis(
        self, join: Join, cluster: Backplane
    ) -> tuple[Recovery, list[bytes]]:
        recovery, missed = await self._recover_position_from_redis(join, cluster)
        if not join.welcome:
            return recovery, [text_frame(f) for f in missed]
        # What reached nobody while the user was away: taken once, whatever the
        # recovery gave (the frames it already gave are not given twice).
        given = {json.loads(frame)["offset"] for frame in missed}
        waiting = [f for f in await cluster.take_pending(join.connection.user_id)
                   if json.loads(f)["offset"] not in given]
        frames = missed + waiting
        return attrs.evolve(recovery, missed=len(frames)), [text_frame(f) for f in frames]

    async def _recover_position_from_redis(
        self, join: Join, cluster: Backplane
    ) -> tuple[Recovery, list[bytes]]:
        """The recovery, and the missed frames' JSON (unframed)."""
        position = join.position
        if position is None or position.offset is None:
            epoch, last = await cluster.position(self.room)
            self._floors[join.connection.id] = last
            return Recovery(last, epoch), []
        stretch = await cluster.since(self.room, position.offset)
        if stretch.epoch != position.epoch or position.offset > stretch.last:
            epoch, last = await cluster.position(self.room)
            self._floors[join.connection.id] = last
            return Recovery(last, epoch, False, RecoveryFailure.EPOCH_CHANGED), []
        self._floors[join.connection.id] = stretch.last
        recovery = Recovery(stretch.last, stretch.epoch, True, missed=len(stretch.entries))
        missing = stretch.last - position.offset
        if len(stretch.entries) < missing:  # trimmed by the stream's length
            return attrs.evolve(recovery, recovered=False, reason=RecoveryFailure.TOO_MANY,
                                missed=0), []
        oldest = time.time() - self._policy.ttl
        if stretch.entries and stretch.entries[0][1] < oldest:
            return attrs.evolve(recovery, recovered=False, reason=RecoveryFailure.TOO_OLD,
                                missed=0), []
        return recovery, [frame for _, _, frame in stretch.entries]

    @staticmethod
    def _take(entries: list[_Entry]) -> list[bytes]:
        for entry in entries:
            entry.delivered = True
        return [entry.frame for entry in entries]

    def _presence_changed(self) -> None:
        if self.on_presence_change is not None:
            self.on_presence_change()

    def _count_down_fault(self) -> None:
        assert self.fault_after is not None
        if self.fault_after <= 0:
            self.fault_after = None
            raise RuntimeError(f"injected fault in {self.name} mid-fan-out")
        self.fault_after -= 1
