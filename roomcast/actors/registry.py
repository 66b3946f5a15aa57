"""Registry actor: the single writer of "which connections has user U" and "where is
room R". Joins and leaves pass through it so that it alone starts and stops rooms.

Reads (`connections_of`, `room`, `users`) are synchronous: safe in Trio, since no
other task runs between two checkpoints of the reader.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from roomcast.actors.base import MessageActor, Reply
from roomcast.actors.room import (
    LOBBY,
    NOBODY,
    ClusterHistory,
    Delivery,
    Join,
    Leave,
    Member,
    Publish,
    Room,
)
from roomcast.actors.sequencer import Outgoing
from roomcast.actors.streams import Numbered
from roomcast.protocol import Position, UserId, personal_room, personal_room_owner
from roomcast.protocol.roomlog import Recovery, Retention, RoomLog


class ClusterPresence(Protocol):
    """Who is connected on the other nodes, as this node last heard (never waits)."""

    def has_user(self, user_id: UserId) -> bool: ...

    def users(self) -> set[UserId]: ...

    def room_members(self, room: str) -> set[UserId]: ...


class Cluster(ClusterHistory, Protocol):
    """What the registry (and the rooms it starts) need of the cluster: the backplane."""

    @property
    def view(self) -> ClusterPresence: ...

    async def follow(self, room: str, first_join: tuple[Room, Join] | None = None) -> None:
        """Hear the room's channel; hand `first_join` to the room once heard."""
        ...

    def unfollow(self, room: str) -> None: ...

    def presence_changed(self) -> None: ...

    async def submit(self, outgoing: Outgoing[Reply[Delivery] | None]) -> None:
        """Queue a frame for the node's sequencer: numbered in Redis with the frames
        queued meanwhile, then handed to its room (`Registry.hand`), in queue order.
        Waits only while the sequencer's queue is full."""
        ...

    async def forward(self, room: str, body: bytes) -> None:
        """An unnumbered frame (a broadcast) to the other nodes."""
        ...


@attrs.define
class Connect:
    connection: Member
    reply: Reply[None]
    build_welcome: Callable[[Recovery], bytes]  # builds the welcome once the room answers
    position: Position | None = None  # where the client got to in its personal room


@attrs.define
class Disconnect:
    connection: Member
    rooms: tuple[str, ...]  # every room the connection was in, personal too (not the lobby)
    reply: Reply[None] | None = None


@attrs.define
class JoinRoom:
    connection: Member
    room: str
    reply: Reply[None]
    answer: Callable[[Recovery], bytes] | None = None
    position: Position | None = None


@attrs.define
class LeaveRoom:
    connection: Member
    room: str
    reply: Reply[None]


@attrs.define
class EnsureRoom:
    """A publish to a room with no actor: start one, so that its history keeps the
    frame for members to come (a user offline now, for instance)."""

    room: str
    reply: Reply[Room]


@attrs.define
class _RoomEntry:
    actor: Room
    refs: int = 0  # member connections, counted here to know when to stop the room


class Registry(MessageActor):
    def __init__(
        self,
        mailbox_size: int,
        start_room: Callable[[Room], None],
        retention: Retention | None = None,
    ) -> None:
        # Inline: registering, joining and leaving cost a connection no task switch to
        # a registry task; they are still handled one at a time, in order.
        super().__init__("registry", None)
        self._mailbox_size = mailbox_size
        self._start_room = start_room
        self._retention = retention or Retention()
        # Rooms with no members stay `history_ttl` after their last frame or member, so
        # that a short reconnect finds the same epoch; swept this often.
        self.sweep_every = max(1.0, min(30.0, self._retention.ttl / 4))
        self.tick_interval = self.sweep_every
        # Every room's log counts its kept frames here (rooms remembered below too); past
        # `history_memory` the node's oldest go, and each frame goes at its `history_ttl`
        # on this actor's deadline, with or without members, actor or publish.
        self.budget = self._retention.budget
        self.users: dict[UserId, dict[int, Member]] = {}
        self._rooms: dict[str, _RoomEntry] = {}
        self._vacant: set[str] = set()  # actors without members (started by a publish)
        # The logs of rooms without an actor, for `history_ttl` after their last frame or
        # member: a small record (epoch, offsets, retained frames) instead of an actor.
        self._remembered: dict[str, RoomLog] = {}
        self.backplane: Cluster | None = None  # set when the node is part of a cluster

    # synchronous reads ------------------------------------------------------------

    def connections_of(self, user_id: UserId) -> dict[int, Member]:
        return self.users.get(user_id, {})

    def room(self, name: str) -> Room | None:
        entry = self._rooms.get(name)
        return entry.actor if entry is not None else None

    def knows(self, name: str) -> bool:
        """The room has an actor, or its log is remembered (its epoch lives on)."""
        return name in self._rooms or name in self._remembered

    def room_names(self) -> list[str]:
        return list(self._rooms)

    # Who is where, on this node and (by the cluster's presence) on the others: what
    # the facade asks. Synchronous reads, as above.

    def is_connected(self, user_id: UserId) -> bool:
        if self.connections_of(user_id):
            return True
        return self.backplane is not None and self.backplane.view.has_user(user_id)

    def connected_users(self) -> set[UserId]:
        users = set(self.users)
        return users | self.backplane.view.users() if self.backplane is not None else users

    def room_members(self, name: str) -> set[UserId]:
        room = self.room(name)
        members = room.member_users() if room is not None else set()
        return members | self.members_elsewhere(name)

    def members_elsewhere(self, name: str) -> set[UserId]:
        """Users with a connection in room `name` on the other nodes."""
        return self.backplane.view.room_members(name) if self.backplane is not None else set()

    def all_connections(self) -> list[Member]:
        return [c for conns in self.users.values() for c in conns.values()]

    async def publish(self, room: str, body: bytes, *, wait: bool = True) -> Delivery:
        """Fan a frame's JSON out through the room's actor (which numbers and frames
        it), on this node and the others. With `wait`, return once this node's room has
        handed it to its members (a client's own copy of its `room_message` then comes
        before the replies to its next frames); callers that await each publish keep
        their frames in order either way.

        In a cluster the room is numbered in Redis, so that every node agrees on its
        positions: the frame joins the node's sequencer, which numbers the frames
        queued meanwhile in one round trip. Without `wait`, the answer is the room's
        members on this node now, and the call returns once the frame is queued; not
        for a personal room, whose answer is whether a connection had the frame (a
        user connecting meanwhile would get a frame the answer says reached nobody)."""
        backplane = self.backplane
        if backplane is not None and room != LOBBY and backplane.cluster_history:
            # A personal frame that no node hears waits in the user's pending list
            # (Redis decides, in the same step that publishes it).
            pending = personal_room_owner(room)
            if not wait and pending is None:
                await backplane.submit(Outgoing(room, body, pending, None))
                return self._members_here(room)
            reply: Reply[Delivery] = Reply()
            await backplane.submit(Outgoing(room, body, pending, reply))
            return await reply.wait()
        delivery = await self._publish_here(room, body)
        if backplane is not None:
            await backplane.forward(room, body)
        return delivery

    def _members_here(self, room: str) -> Delivery:
        """Who a frame queued now reaches on this node: the room's members."""
        actor = self.room(room)
        if actor is None:
            return NOBODY
        users = actor.member_users()
        return Delivery(len(users), len(actor.members), users)

    async def hand(
        self, outgoing: Outgoing[Reply[Delivery] | None], numbered: Numbered | None
    ) -> None:
        """The sequencer's frame to its room, in queue order: numbered in Redis, or (the
        batch failed) numbered here, as during an outage."""
        reply = outgoing.reply
        if numbered is None:
            delivery = await self._publish_here(outgoing.room, outgoing.body)
            if reply is not None:
                reply.set(delivery)
            return
        for _ in range(2):  # again, once, if the room stopped meanwhile
            actor = self.room(outgoing.room)
            if actor is None:
                break  # nobody here: its history lives in Redis
            try:
                await actor.send(Publish(outgoing.body, reply, numbered))
                return
            except trio.ClosedResourceError:
                continue
            except (trio.BrokenResourceError, trio.EndOfChannel):
                break  # the service has stopped
        if reply is not None:
            reply.set(NOBODY)

    async def _publish_here(
        self, room: str, body: bytes, numbered: Numbered | None = None
    ) -> Delivery:
        for _ in range(2):  # again, once, if the room was retired meanwhile
            actor = self.room(room)
            if actor is None:
                # Numbered in Redis: the history lives there. Otherwise a room starts to
                # keep the frame for members to come (a user offline now, for one).
                if numbered is not None or room == LOBBY or self._retention.size == 0:
                    return NOBODY
                try:
                    actor = await self.call(EnsureRoom(room, Reply()))
                except trio.BrokenResourceError:
                    return NOBODY  # the service has stopped
            try:
                delivery: Delivery = await actor.call(Publish(body, Reply(), numbered))
                return delivery
            except trio.ClosedResourceError:
                continue  # retired (its log remembered) between look-up and send
            except (trio.BrokenResourceError, trio.EndOfChannel):
                return NOBODY  # the service has stopped
        return NOBODY

    def _presence_changed(self) -> None:
        if self.backplane is not None:
            self.backplane.presence_changed()

    # messages ---------------------------------------------------------------------

    async def handle(
        self, message: Connect | Disconnect | JoinRoom | LeaveRoom | EnsureRoom
    ) -> None:
        if isinstance(message, EnsureRoom):
            entry = self._rooms.get(message.room)
            if entry is None:
                entry = self._start(message.room, refs=0)
                self._vacant.add(message.room)
            message.reply.set(entry.actor)
            return
        connection = message.connection
        if isinstance(message, Connect):
            conns = self.users.setdefault(connection.user_id, {})
            conns[connection.id] = connection
            if len(conns) == 1:
                self._presence_changed()
            (await self._lobby()).enter_lobby(connection)
            # The reply waits for the personal room: once the client is told it is
            # connected, `get_room_members("user_U")` already lists it.
            greeting = Join(connection, message.reply, message.position, message.build_welcome,
                            is_welcome=True)
            await self._join(greeting, personal_room(connection.user_id))
        elif isinstance(message, JoinRoom):
            join = Join(connection, message.reply, message.position, message.answer)
            await self._join(join, message.room)
        elif isinstance(message, LeaveRoom):
            await self._leave(connection, message.room, message.reply)
        else:
            theirs = self.users.get(connection.user_id)
            if theirs is not None and theirs.pop(connection.id, None) is not None and not theirs:
                del self.users[connection.user_id]
                self._presence_changed()
            await self._leave_lobby(connection)
            for room in message.rooms:
                await self._leave(connection, room, None)
            if message.reply is not None:
                message.reply.set(None)

    def _start(self, room: str, refs: int) -> _RoomEntry:
        mailbox = None if self._inline(room) else self._mailbox_size
        actor = Room(room, mailbox, self._retention, self._remembered.pop(room, None))
        entry = self._rooms[room] = _RoomEntry(actor, refs)
        self._start_room(actor)
        if self.backplane is not None:
            entry.actor.on_presence_change = self.backplane.presence_changed
            entry.actor.cluster = self.backplane
        return entry

    def stop(self) -> None:
        """The service has stopped: the registry and every room it kept (the lobby,
        rooms kept for their history) answer a stale handle at once, not never."""
        super().stop()
        for entry in self._rooms.values():
            entry.actor.stop()

    async def _lobby(self) -> Room:
        """The room every connection is in: it lives (and, in a cluster, listens to
        its channel) while this node has a connection."""
        entry = self._rooms.get(LOBBY)
        if entry is None:
            entry = self._start(LOBBY, refs=0)
            if self.backplane is not None:
                await self.backplane.follow(LOBBY)
        return entry.actor

    async def _leave_lobby(self, connection: Member) -> None:
        entry = self._rooms.get(LOBBY)
        if entry is None:
            return
        entry.actor.leave_lobby(connection)
        if not entry.actor.members:
            if self.backplane is not None:
                self.backplane.unfollow(LOBBY)
            self._stop(LOBBY, entry)

    def _inline(self, room: str) -> bool:
        """A personal room runs in its senders' tasks (no task, no mailbox: a few KiB
        and two task switches less per user and message), since handling its messages
        never waits: it has few members, so its fan-out never yields. Not when its
        history lives in Redis: a join then waits for Redis to recover from."""
        clustered = self.backplane is not None and self.backplane.cluster_history
        return personal_room_owner(room) is not None and not clustered

    async def _join(self, join: Join, room: str) -> None:
        entry = self._rooms.get(room) or self._start(room, refs=0)
        entry.refs += 1
        self._vacant.discard(room)
        if entry.refs > 1 or self.backplane is None:
            # The room answers the caller itself; the registry does not wait for it.
            await entry.actor.tell(join)
            return
        # The first local member: its join is answered once this node hears the
        # room's channel.
        await self.backplane.follow(room, first_join=(entry.actor, join))

    async def _leave(self, connection: Member, room: str, reply: Reply[None] | None) -> None:
        entry = self._rooms.get(room)
        if entry is None:
            if reply is not None:
                reply.set(None)
            return
        entry.refs -= 1
        await entry.actor.tell(Leave(connection, reply))
        if entry.refs <= 0:
            backplane = self.backplane
            if backplane is not None:
                backplane.unfollow(room)
            if backplane is not None and backplane.cluster_history:
                self._stop(room, entry)  # its epoch and history live on in Redis
                entry.actor.log.close()
            else:
                self._retire(room, entry)  # its log is remembered: see `tick`

    def _stop(self, room: str, entry: _RoomEntry) -> None:
        # Publishers that still hold the address find the mailbox closed, which means
        # what it says: nobody is in the room, and it keeps no history any more.
        del self._rooms[room]
        self._vacant.discard(room)
        entry.actor.close_mailbox()

    def _retire(self, room: str, entry: _RoomEntry) -> None:
        """Stop a room with no member, and remember its log (unless it numbers
        nothing): its next actor, started by a join or a publish, goes on with it."""
        self._stop(room, entry)
        if entry.actor.positioned:
            self._remembered[room] = entry.actor.log
        else:
            entry.actor.log.close()

    async def tick(self) -> None:
        """Retire the actors a publish started for a room with no member, and forget
        the rooms that have had no member and no frame for `history_ttl`: their next
        life is a new epoch."""
        now = trio.current_time()
        for room in list(self._vacant):
            entry = self._rooms[room]
            # Not one a publish has just started: it may not have reached it yet.
            if now - entry.actor.log.active_at >= self.sweep_every:
                self._retire(room, entry)
        for room, log in list(self._remembered.items()):
            if log.expires_at() <= now:
                del self._remembered[room]
                log.close()

    def deadline(self) -> float:
        """When the node's oldest kept frame is due, in whatever room."""
        return self.budget.next_expiry() if self.budget is not None else math.inf

    async def at_deadline(self) -> None:
        """Frames go at their `history_ttl`, with no publish or join to notice it."""
        if self.budget is not None:
            self.budget.expire(trio.current_time())

    def kept_bytes(self) -> int:
        """Bytes of the frames every room of the node keeps (0 without a budget)."""
        return self.budget.used if self.budget is not None else 0
