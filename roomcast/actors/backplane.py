"""Backplane actor: joins this node to the other nodes that share a Redis (or Valkey).

What crosses Redis, and why:

- Frames. A node subscribes to a room's channel only while it has local members
  there (personal rooms and the broadcast lobby included), so a publish reaches only
  the nodes that need it. A publisher delivers locally itself, then publishes the
  frame bytes it already built, prefixed with its node id; the other nodes hand those
  bytes to their own room actor, which fans them out as it does local frames.
- Presence. Each node writes who is connected to it, and who is in which room, under
  its own keys and in the cluster's indexes (one script), and renews a lease. Changes
  are published, numbered, so every node keeps a view of the others in memory: the
  facade's synchronous questions read that view without waiting. A node reloads
  another's presence only when it missed a change of it. A node that dies without a
  goodbye drops out when its lease ends.

The Redis keys and channels, and the presence records, are in `presence.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, TypeVarTuple

import anyio
import coredis
import coredis.exceptions
import trio
from coredis.retry import (
    CompositeRetryPolicy,
    ConstantRetryPolicy,
    ExponentialBackoffRetryPolicy,
)

from roomcast.actors import presence as cluster_presence
from roomcast.actors.base import Actor, ActorCrashed, Reply
from roomcast.actors.presence import ClusterView, Keys, Presence, parse_change
from roomcast.actors.room import LOBBY, Check, Delivery, Join, Publish, Room
from roomcast.actors.sequencer import Outgoing, Sequencer
from roomcast.actors.streams import (
    BackplaneUnavailable,
    Malformed,
    Numbered,
    PartlyNumbered,
    Streams,
)
from roomcast.protocol import (
    UserId,
    is_personal_room,
)
from roomcast.protocol.batch import BadFrame, BadHeader, RoomBatch
from roomcast.protocol.batch import parse_room_message as parse_batch
from roomcast.protocol.holdback import Fetch
from roomcast.protocol.presence_rules import diff, index_writes, normalised
from roomcast.protocol.roomlog import Stretch


class Directory(Protocol):
    """What the backplane needs of the registry: this node's users and rooms."""

    @property
    def users(self) -> Mapping[UserId, Mapping[int, object]]: ...

    def room(self, name: str) -> Room | None: ...

    def room_names(self) -> list[str]: ...

    async def hand(
        self, outgoing: Outgoing[Reply[Delivery] | None], numbered: Numbered | None
    ) -> None:
        """A frame from the sequencer to its room (numbered None: numbered there)."""
        ...

log = logging.getLogger(__name__)

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# What a lost or refused Redis connection raises, from coredis or the socket below it.
REDIS_ERRORS = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.ClosedResourceError,  # coredis's pubsub, cleaning up a connection already gone
    anyio.BrokenResourceError,
)


def new_node_id() -> str:
    return secrets.token_hex(8)  # 16 ASCII bytes: the origin prefix of a frame




def redis_client(url: str, sharded: bool) -> Any:
    if sharded:
        return coredis.RedisCluster.from_url(url, decode_responses=False)
    return coredis.Redis.from_url(url, decode_responses=False)


async def publish_to(client: Any, sharded: bool, channel: str, data: bytes) -> None:
    """PUBLISH, or SPUBLISH with sharded pub/sub (Redis Cluster: the message goes to the
    channel's shard only, not to every node of the Redis cluster)."""
    if sharded:
        await client.spublish(channel, data)
    else:
        await client.publish(channel, data)


async def publish_frame(client: Any, keys: Keys, sharded: bool, room: str, data: bytes) -> None:
    await publish_to(client, sharded, keys.room_channel(room), data)


class Backplane(Actor):
    """The node's link to the cluster. It has no mailbox: `follow` and `unfollow`
    (from the registry) only record which rooms this node wants to hear
    and wakes the task that follows them, so no sender ever waits on Redis, on a full
    mailbox, or on this actor while it waits for Redis itself."""

    def __init__(self, config: Any, registry: Directory) -> None:
        self.name = "backplane"
        self.node_id = new_node_id()
        self._origin = self.node_id.encode()
        self._url: str = config.redis_url
        self._sharded: bool = config.redis_sharded
        self._lease = config.presence_lease
        self.keys = Keys(config.redis_prefix)
        self.streams = Streams(config.redis_prefix, config.history_size, config.history_ttl,
                               sharded=self._sharded)
        self.streams.on_malformed = self.dropped
        self._malformed_told: set[str] = set()  # kinds of malformed message logged once
        self._registry = registry
        self.view = ClusterView()
        self.healthy = False
        self._client: Any = None
        self._pubsub: Any = None  # set while the subscriber's connection is open
        self._wanted: set[str] = set()  # rooms whose channel this node should hear
        # First local joins waiting until their room's channel is heard, in order.
        self._joins: list[tuple[Room, Join]] = []
        self._rooms_changed = trio.Event()  # wakes `_follow_rooms`
        self._following = trio.CancelScope()  # its subscribing, cut short by an outage
        self._written: Presence | None = None  # our presence as Redis holds it; None: unknown
        self._seq = 0  # the number of our last presence write (Redis holds it in our lease)
        self._presence_changed = trio.Event()
        self._connected = trio.Event()  # Redis answered: the subscriber may connect
        self._outage_told = False  # "delivering locally only" is logged once per outage
        # Redis is known to be out of reach (an attempt failed): first joins go on at
        # once. Until the first attempt ends, they wait, as they do for a subscription.
        self._away = False
        # Outages noticed so far: a presence round that saw one begin under it (a publish
        # refused while its reads went through) does not call Redis healthy.
        self._outages = 0
        # Frames to number in Redis, in one round trip per batch (its task runs below).
        self.sequencer: Sequencer[Reply[Delivery] | None] = Sequencer(
            self.sequence_batch, registry.hand)

    # called by other actors, never waiting -------------------------------------------

    def presence_changed(self) -> None:
        self._presence_changed.set()

    async def follow(self, room: str, first_join: tuple[Room, Join] | None = None) -> None:
        """Hear a room's channel. Its first local join (`first_join`) is handed to the
        room once this node hears the channel; while Redis is out of reach, at once
        (this node serves its own clients meanwhile, and subscribes when Redis is back).
        Never waits for room in a mailbox (`tell`): the registry calls it shielded."""
        self._wanted.add(room)
        if first_join is not None:
            if self._away and not self._listening():
                actor, join = first_join
                await actor.tell(join)
            else:
                self._joins.append(first_join)
        self._rooms_changed.set()

    def unfollow(self, room: str) -> None:
        """Stop hearing a room's channel (its last local member left)."""
        self._wanted.discard(room)
        self._rooms_changed.set()
        self._rooms_changed.set()

    def _listening(self) -> bool:
        return self.healthy and self._pubsub is not None

    def _lost_redis(self) -> None:
        """Redis failed us: deliver locally; joins waiting for a channel go on at once."""
        self.healthy = False
        self._away = True
        self._outages += 1
        self.view.interrupted()  # changes may be missed: reloaded once Redis answers
        self._following.cancel()
        self._rooms_changed.set()

    @property
    def cluster_history(self) -> bool:
        """Rooms are numbered, and their history kept, in Redis (with sharded pub/sub
        too: a room's keys share its channel's slot, and its script SPUBLISHes)."""
        return self.healthy and self._client is not None

    async def forward(self, room: str, body: bytes) -> None:
        """Forward a frame's JSON, unnumbered, to the other nodes with members in `room`."""
        await self._redis(publish_frame, self.keys, self._sharded, room,
                          self._origin + b"\n" + body)

    async def submit(self, outgoing: Outgoing[Reply[Delivery] | None]) -> None:
        await self.sequencer.submit(outgoing)

    async def sequence_batch(
        self, frames: Sequence[tuple[str, bytes, UserId | None]]
    ) -> list[Numbered]:
        """Number frames of several rooms in one round trip (the sequencer's batch);
        the outage, if Redis fails it, is logged once."""
        try:
            return await self._redis(self.streams.sequence_batch, frames, self._origin)
        except PartlyNumbered as partly:
            # Sharded: a master failed its rooms' scripts, the others answered. Not an
            # outage of the node: its presence task tells whether Redis is there.
            if isinstance(partly.cause, Malformed):
                self.dropped(partly.cause)
            else:
                self._tell_outage(f"{type(partly.cause).__name__}: {partly.cause}")
            raise
        except BackplaneUnavailable as exc:
            self._tell_outage(str(exc))
            raise

    async def position(self, room: str) -> tuple[str, int]:
        return await self._redis(self.streams.position, room)

    async def since(self, room: str, offset: int, *, entries: bool = True) -> Stretch:
        return await self._redis(self.streams.since, room, offset, entries)

    async def fetch(self, room: str, fetch: Fetch) -> list[tuple[int, bytes]]:
        return await self._redis(self.streams.fetch, room, fetch)

    async def take_pending(self, user: UserId) -> tuple[list[bytes], bool]:
        return await self._redis(self.streams.take_pending, user)

    async def _redis(self, operation: Callable[[Any, *Ts], Awaitable[T]], *args: *Ts) -> T:
        client = self._client
        if client is None:
            raise BackplaneUnavailable("the backplane has not connected to Redis yet")
        try:
            return await operation(client, *args)
        except REDIS_ERRORS as exc:
            self._lost_redis()
            self._tell_outage(f"{type(exc).__name__}: {exc}")  # once, as the loops do
            raise BackplaneUnavailable(f"Redis is unreachable ({type(exc).__name__})") from exc
        except Malformed as malformed:
            # Redis answered, but not in our format: no answer, as if it had not.
            self.dropped(malformed)
            raise BackplaneUnavailable(f"Redis answered {malformed.kind}") from None
        except Exception as exc:
            if self._client is client:
                raise
            # Our connection closed under the call (the node stopping, or the backplane
            # reconnecting): coredis then raises what it likes (a RuntimeError from its
            # pool, for one). The caller hears what it means: Redis is not there.
            raise BackplaneUnavailable("the connection to Redis closed") from exc

    def dropped(self, malformed: Malformed) -> None:
        """A message or reply from Redis broke its format and was dropped: counted, and
        logged the first time of its kind only (a flood costs no log)."""
        self.metrics.dropped_from_redis(malformed.kind)
        if malformed.kind not in self._malformed_told:
            self._malformed_told.add(malformed.kind)
            log.warning("backplane: dropped a malformed message from Redis (%s: %s); "
                        "more of this kind are counted, not logged", malformed.kind,
                        malformed.detail)

    # the actor ------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow the rooms' channels, connect, then run the subscriber and the presence
        writer. Whether Redis is there or not, the node serves its own clients from the
        start; coredis reconnects and resubscribes by itself, and we rebuild presence
        after it. Whatever Redis does, this actor does not crash: it retries."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_rooms)
            nursery.start_soon(self.sequencer.run)
            while True:
                try:
                    await self._run_connected()
                except* REDIS_ERRORS as group:
                    self._lost_redis()
                    self._tell_outage("; ".join(repr(e) for e in _leaves(group)))
                await trio.sleep(1.0)

    async def _run_connected(self) -> None:
        async with redis_client(self._url, self._sharded) as client:
            self._client = client
            # coredis backs off up to 16 s between reconnects; a node should hear its
            # rooms again within about a second of Redis coming back.
            retry = CompositeRetryPolicy(
                ExponentialBackoffRetryPolicy(
                    (coredis.exceptions.ConnectionError,), retries=None,
                    base_delay=0.1, max_delay=1.0, jitter=True,
                ),
                ConstantRetryPolicy((TimeoutError,), retries=2, delay=0.1),
            )
            pubsub = (client.sharded_pubsub(retry_policy=retry) if self._sharded
                      else client.pubsub(retry_policy=retry))
            self._connected = trio.Event()
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keep_presence, client)
                    await self._connected.wait()
                    async with pubsub:
                        # One SUBSCRIBE for the rooms wanted so far too: once Redis
                        # counts our inbox's subscriber, they are heard as well.
                        channels = [self.keys.presence_channel(), self.keys.inbox(self.node_id)]
                        channels += [self.keys.room_channel(r) for r in sorted(self._wanted)]
                        with trio.move_on_after(10.0) as subscribing:
                            await pubsub.subscribe(*channels)
                        if subscribing.cancelled_caught:
                            raise TimeoutError("subscribing took too long")
                        self._pubsub = pubsub
                        self._presence_changed.set()  # the presence task checks, then healthy
                        # Rooms that lived through an outage: what was published while we
                        # did not hear them is read from their streams.
                        await self._check_rooms()
                        await self._consume(pubsub)
            finally:
                self._pubsub = None
                self._client = None

    async def _follow_rooms(self) -> None:
        """Keep the subscriptions to the rooms wanted (the pub/sub connection resubscribes
        what it had after a reconnect; rooms wanted or left meanwhile are settled here),
        and hand each waiting first join to its room once its channel is heard, or once
        Redis turned out to be away."""
        while True:
            # Replaced before reading the state: a change from now on wakes another round.
            self._rooms_changed = trio.Event()
            joins, self._joins = self._joins, []
            if self._listening():
                with trio.CancelScope() as self._following:
                    await self._subscribe_wanted()
            elif not self._away:  # connecting: they wait for their channel
                self._joins[:0] = joins
                joins = []
            for room, join in joins:
                try:
                    await room.send(join)
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    if join.reply is not None:  # the room stopped: nobody waits for ever
                        join.reply.fail(ActorCrashed(f"room {room.room} has stopped"))
            await self._rooms_changed.wait()

    async def _subscribe(self, rooms: Iterable[str]) -> None:
        channels = [self.keys.room_channel(r) for r in rooms]
        if not channels:
            return
        with trio.move_on_after(2.0):
            try:
                # SUBSCRIBE, or SSUBSCRIBE when the pubsub is coredis's ShardedPubSub
                await self._pubsub.subscribe(*channels)
            except REDIS_ERRORS as exc:
                log.warning("backplane: subscribing failed (%s); retried on reconnect",
                            type(exc).__name__)

    async def _unsubscribe(self, rooms: Iterable[str]) -> None:
        rooms = list(rooms)  # read twice: the channels, then the keys to renew
        channels = [self.keys.room_channel(r) for r in rooms]
        if not channels:
            return
        with trio.move_on_after(1.0):
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pubsub.unsubscribe(*channels)
                if self.cluster_history:
                    # The last local member left: the room's epoch lives `history_ttl`
                    # from now in Redis, so that a short reconnect recovers.
                    await self.streams.touch(self._client, *(r for r in rooms if r != LOBBY))

    async def _subscribe_wanted(self) -> None:
        """Subscribe to the rooms wanted and not heard, unsubscribe from those heard and
        no longer wanted (left while Redis was away, or while we subscribed)."""
        heard = {bytes(c).decode() if isinstance(c, bytes | bytearray) else c
                 for c in self._pubsub.channels}
        prefix = self.keys.room_channel("")
        rooms_heard = {c[len(prefix):] for c in heard if c.startswith(prefix)}
        await self._subscribe(sorted(self._wanted - rooms_heard))
        if self._pubsub is not None:
            await self._unsubscribe(sorted(rooms_heard - self._wanted))

    async def _consume(self, pubsub: Any) -> None:
        presence = self.keys.presence_channel().encode()
        room_prefix = self.keys.room_channel("").encode()
        while True:
            # coredis ends the iteration while it reconnects; we keep listening.
            async for message in pubsub:
                if message.get("type") not in ("message", "smessage"):
                    continue
                try:
                    channel, data = bytes(message["channel"]), bytes(message["data"])
                    if channel == presence:
                        self._on_presence(data)
                    elif channel.startswith(room_prefix) and data[:16] != self._origin:
                        room = channel[len(room_prefix):].decode(errors="replace")
                        await self._deliver(room, data[16:])
                except Malformed as malformed:
                    self.dropped(malformed)
                except (ValueError, TypeError, KeyError, AttributeError,
                        RecursionError) as exc:
                    # A rule above missed a way to be malformed: still one message lost,
                    # not the node (logged once, with where it broke).
                    if "unexpected" not in self._malformed_told:
                        log.exception("backplane: a message from Redis broke an assumption")
                    self.dropped(Malformed("unexpected", type(exc).__name__))
            # The subscription is reconnecting: what was published meanwhile is lost
            # to it. Each room asks Redis where it is and catches up from its stream;
            # the other nodes' presence is reloaded at the presence task's next round
            # (not woken here: `healthy` would come before the rooms' checks).
            self.view.interrupted()
            await self._check_rooms()
            await trio.sleep(0.05)

    async def _check_rooms(self) -> None:
        for name in list(self._wanted):
            room = self._registry.room(name)
            if room is not None and room.positioned:
                with contextlib.suppress(trio.ClosedResourceError, trio.EndOfChannel,
                                         trio.BrokenResourceError):
                    await room.send(Check())

    async def _deliver(self, room_name: str, message: bytes) -> None:
        room = self._registry.room(room_name)
        if room is None:
            return  # our last member left since; the unsubscribe is on its way
        # Anything with access to Redis can publish here: not our format, not sent
        # (Malformed, which the subscriber counts and logs once).
        parsed = parse_channel_message(message, broadcast=room_name == LOBBY)
        # In order: frames from one publisher keep their order here too (numbered ones
        # are put in offset order by the room's hold-back buffer, so nobody waits here
        # for a frame that is held until the next one on this channel comes).
        with contextlib.suppress(trio.ClosedResourceError, trio.EndOfChannel,
                                 trio.BrokenResourceError):
            if isinstance(parsed, RoomBatch):
                for offset, epoch, frame in parsed.numbered():
                    await room.send(Publish(frame, None, Numbered(offset, epoch, frame)))
            else:
                with contextlib.suppress(ActorCrashed):
                    await room.call(Publish(parsed, Reply(), None))

    def _on_presence(self, data: bytes) -> None:
        change = parse_change(data)  # Malformed: dropped by the subscriber
        if change.node != self.node_id:
            self.view.apply(change)
            # A change was missed (the presence task reloads that node), or a node is
            # new (its lease is read, so that its end drops the node).
            if self.view.reloads_wanted() or self.view.untimed():
                self._presence_changed.set()

    # presence -------------------------------------------------------------------------

    def local_presence(self) -> Presence:
        registry = self._registry
        presence = Presence(users={str(u) for u in registry.users})
        for name in registry.room_names():
            if name == LOBBY or is_personal_room(name):
                continue  # derived from `users`, not stored twice
            room = registry.room(name)
            if room is not None and room.user_counts:
                presence.rooms[name] = {str(u) for u in room.user_counts}
        return presence

    async def _keep_presence(self, client: Any) -> None:
        """Renew the lease, write presence changes, keep the view of the others, and
        notice Redis going away and coming back. Idle, it costs a few commands every
        `presence_lease / 3`: the view is kept from the channel's numbered changes, and
        a node is read whole only when a change of it was missed."""
        tick = self._lease / 3
        next_check = next_touch = 0.0
        while True:
            # Replaced before the state is read: a change during the write below sets
            # this one, and the next round writes it at once (not a tick later).
            self._presence_changed = trio.Event()
            outages = self._outages
            try:
                await self._renew(client)
                self._connected.set()
                await self._write_presence(client)
                now = trio.current_time()
                if now >= next_touch:
                    await self._renew_rooms(client)
                    next_touch = now + tick
                lease_end = self.view.next_lease_end()
                if now >= (next_check if lease_end is None else min(next_check, lease_end)) \
                        or self.view.untimed():
                    await self._check_leases(client)
                    next_check = now + tick
                await self._reload_missed(client)
                if self._pubsub is None:
                    pass  # the subscriber is connecting: healthy once it hears its inbox
                elif not await self._hearing(client):
                    raise TimeoutError("the pub/sub connection is not back yet")
                elif not self.healthy and self._outages == outages:
                    log.info("backplane: connected to Redis as node %s", self.node_id)
                    self.healthy = True
                    self._away = self._outage_told = False
                    self._rooms_changed.set()  # rooms wanted or left meanwhile
            except REDIS_ERRORS as exc:
                self._lost_redis()
                self._tell_outage(f"{type(exc).__name__}: {exc}")
                self._written = None  # rewrite everything once Redis is back
                next_check = 0.0
            except Malformed as malformed:  # Redis answered a presence script oddly
                self.dropped(malformed)
            now = trio.current_time()
            wake = now + 0.5  # Redis away or not heard yet: retried twice a second
            if self.healthy:
                wake = min(now + tick, next_check)
                # Woken when the first lease it knows ends, unless renewed: a dead node
                # leaves the view one round trip after its lease key expires.
                if (lease_end := self.view.next_lease_end()) is not None:
                    wake = min(wake, max(lease_end, now + 0.01))
            with trio.move_on_at(wake):
                await self._presence_changed.wait()
                await trio.sleep(0.005)  # let the rooms apply the joins that woke us

    async def _renew_rooms(self, client: Any) -> None:
        """The rooms this node has members in keep their epoch in Redis while they do,
        frames or not (else a quiet room's epoch would expire under its members, and a
        reconnect would be told `epoch_changed`)."""
        if self.cluster_history:
            rooms = sorted(r for r in self._wanted if r != LOBBY)
            if rooms:
                await self.streams.touch(client, *rooms)

    def _tell_outage(self, why: str) -> None:
        """Log an outage once (at startup too), not once per retry."""
        if not self._outage_told:
            self._outage_told = True
            log.error("backplane: Redis unreachable (%s); delivering locally only, "
                      "retrying in the background", why)

    async def _hearing(self, client: Any) -> bool:
        inbox = self.keys.inbox(self.node_id)
        if self._sharded:
            try:
                # coredis asks every master and merges; with one out of reach its merge
                # raises TypeError (it iterates the ConnectionError): a master is away.
                counts = await client.pubsub_shardnumsub(inbox)
            except TypeError:
                raise coredis.exceptions.ConnectionError("a master is out of reach") from None
        else:
            counts = await client.pubsub_numsub(inbox)
        return any(count > 0 for count in counts.values())

    async def _renew(self, client: Any) -> None:
        renewed = await client.pexpire(self.keys.node(self.node_id), int(self._lease * 1000))
        if not renewed:
            self._written = None  # new, expired or Redis restarted: write it all again

    async def _write_presence(self, client: Any) -> None:
        current = normalised(self.local_presence())
        if self._written is None:
            await self._store(client, None, current)
            change: dict[str, Any] = {"node": self.node_id, "seq": self._seq,
                                      "full": current.to_json()}
        else:
            add, remove = diff(self._written, current)
            if add.empty() and remove.empty():
                return
            await self._store(client, self._written, current)
            change = {"node": self.node_id, "seq": self._seq, "add": add.to_json(),
                      "del": remove.to_json()}
        self._written = current
        await publish_to(client, self._sharded, self.keys.presence_channel(),
                         json.dumps(change).encode())

    async def _store(self, client: Any, old: Presence | None, new: Presence) -> None:
        """Write the change from `old` (None: unknown, cleared first) to `new`: our
        sets, the cluster's indexes, our lease and the change's seq, in one script."""
        self._seq += 1
        add, remove = diff(old or Presence(), new)
        await cluster_presence.write(
            client, self.keys, self.node_id, self._seq, int(self._lease * 1000),
            index_writes(self.node_id, add, remove, new), clear=old is None)

    async def _check_leases(self, client: Any) -> None:
        """The other nodes' leases, in one round trip: a node without one is dropped
        (and its keys cleaned up), a node new to us or whose last change we missed is
        marked for a reload."""
        asked_at = trio.current_time()
        found = await cluster_presence.leases(client, self.keys, self.node_id)
        for node in self.view.leases(self.node_id, found, asked_at):
            log.info("backplane: node %s stopped renewing its lease; dropping it", node)

    async def _reload_missed(self, client: Any) -> None:
        """Read whole, one round trip each, the nodes whose changes the view missed."""
        for node in self.view.reloads_wanted():
            loaded = await cluster_presence.load(client, self.keys, node)
            seq, presence = loaded if loaded is not None else (None, None)
            self.view.loaded(node, seq, presence)

    async def leave_cluster(self) -> None:
        """A clean goodbye: our keys go, and the others drop us at once."""
        client = self._client
        if client is None or not self.healthy:
            return
        with trio.move_on_after(2.0, shield=True):
            try:
                await cluster_presence.leave(client, self.keys, self.node_id)
                bye = {"node": self.node_id, "bye": True}
                await publish_to(client, self._sharded, self.keys.presence_channel(),
                                 json.dumps(bye).encode())
            except REDIS_ERRORS:
                pass


def parse_channel_message(message: bytes, *, broadcast: bool = False) -> bytes | RoomBatch:
    """A room channel's message (after the publisher's 16-byte origin), as
    `protocol.batch` reads it; a broadcast is never numbered. `Malformed` otherwise."""
    channel = "broadcast" if broadcast else "room"
    if broadcast and message[:1] != b"\n":
        raise Malformed("broadcast_header", "a broadcast is never numbered")
    try:
        parsed = parse_batch(message)
    except BadHeader as exc:
        raise Malformed(f"{channel}_header", str(exc)) from None
    except BadFrame as exc:
        raise Malformed(f"{channel}_frame", str(exc)) from None
    return parsed


def _leaves(group: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, for a log line."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for inner in group.exceptions for leaf in _leaves(inner)]
    return [group]
