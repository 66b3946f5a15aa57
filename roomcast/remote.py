"""The notification facade for a process that runs no service: a Celery task, a cron
script, a shell. With ROOMCAST_REDIS_URL set, it publishes through Redis to the
nodes of the cluster, and answers presence questions from what the nodes wrote there.

- async code (asyncio or Trio): `await NotificationService.notify_user(...)`, as in the
  seed's Example 3 under `asyncio.run`;
- plain synchronous code: `SyncNotificationService.notify_user(...)`;
- a shell: `roomcast notify --user 42 --message "..."`.

Every call connects, publishes and disconnects: simple and safe in short-lived workers.
A worker that sends many opens the facade once instead (`async with remote:`): one
connection, the cluster's presence kept in memory (as a node keeps it), and calls that
queue their frame and return; a task numbers what was queued meanwhile in one round
trip (`Streams.sequence_batch`). A Redis that cannot be reached raises
`BackplaneUnavailable`, never a silent answer (with `async with`: from the next call,
or from the end of the block, for frames that were queued and then lost).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from roomcast.actors import presence
from roomcast.actors.backplane import REDIS_ERRORS, new_node_id, publish_frame, redis_client
from roomcast.actors.presence import Keys
from roomcast.actors.room import LOBBY
from roomcast.actors.streams import BackplaneUnavailable, Streams
from roomcast.config import Config
from roomcast.facade import NotificationService, look_elsewhere
from roomcast.protocol import UserId, personal_room_owner

T = TypeVar("T")


class RemoteNotificationService(NotificationService):
    """The facade's seven methods, carried out through Redis."""

    def __init__(
        self,
        redis_url: str,
        prefix: str = "roomcast",
        sharded: bool = False,
        history_size: int = 100,
        history_ttl: float = 300.0,
    ) -> None:
        self._url = redis_url
        self._keys = Keys(prefix)
        self._sharded = sharded
        self._streams = Streams(prefix, history_size, history_ttl, sharded)
        self._origin = new_node_id().encode()  # never any node's: every node delivers
        self._session: _Session | None = None  # inside `async with`
        self._binding: list[Any] = []

    async def __aenter__(self) -> RemoteNotificationService:
        """One connection and one presence view for every call in the block; the calls
        queue their frames (the queue is sent in order, in batches) and return."""
        if self._session is not None:
            raise RuntimeError("this RemoteNotificationService is already open")
        session = _Session(self)
        await session.open()
        self._session = session
        self._binding.append(self._bind())  # class-level calls in the block use it
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Send what is queued, then close; BackplaneUnavailable if some was lost."""
        session, self._session = self._session, None
        self._unbind(self._binding.pop())
        assert session is not None
        await session.close()

    @classmethod
    def from_config(cls, config: Config) -> RemoteNotificationService:
        """The service's own Redis settings: same keys, same history limits."""
        if config.redis_url is None:
            raise ValueError("the configuration has no redis_url")
        return cls(config.redis_url, config.redis_prefix, config.redis_sharded,
                   config.history_size, config.history_ttl)

    @classmethod
    def from_environment(cls) -> RemoteNotificationService | None:
        config = Config.from_sources()
        return cls.from_config(config) if config.redis_url else None

    async def _with_redis(self, action: Callable[[Any], Awaitable[T]]) -> T:
        try:
            async with redis_client(self._url, self._sharded) as client:
                return await action(client)
        except* REDIS_ERRORS as group:
            raise BackplaneUnavailable(
                f"Redis at the configured URL is unreachable ({type(group.exceptions[0]).__name__})"
            ) from None

    async def _view(self, client: Any) -> presence.ClusterView:
        """The whole cluster's presence: a round trip per node, not per room."""
        return await presence.load_view(client, self._keys)

    async def _send(self, room: str, body: bytes) -> set[UserId]:
        if self._session is not None:
            return await self._session.send(room, body)

        async def publish(client: Any) -> set[UserId]:
            members = await presence.room_members(client, self._keys, room)
            if room != LOBBY:
                # Numbered and kept in the room's history, as a node would; a personal
                # notification that no node hears waits for the user. A node that hears
                # the user's room has a connection of theirs now, even if its presence
                # is not written yet.
                owner = personal_room_owner(room)
                [numbered] = await self._streams.sequence_batch(
                    client, [(room, body, owner)], self._origin)
                if owner is not None and numbered.heard:
                    members = members | {owner}
            else:
                await publish_frame(client, self._keys, self._sharded, room,
                                    self._origin + b"\n" + body)
            return members

        return await self._with_redis(publish)

    # The synchronous questions: a blocking round trip to Redis, from a worker thread,
    # so that they work the same inside an event loop and outside one. Each is one
    # script (actors/presence.py), whatever the number of rooms and nodes; only
    # `get_connected_users` reads every live node's users (still in one script).

    def _ask(self, question: Callable[[Any], Awaitable[T]]) -> T:
        async def ask() -> T:
            return await self._with_redis(question)

        return _run_in_thread(ask)

    def _has_user(self, user_id: UserId) -> bool:
        return self._ask(lambda client: presence.has_user(client, self._keys, user_id))

    def _users(self) -> set[UserId]:
        return self._ask(lambda client: presence.users(client, self._keys))

    def _members(self, room_name: str) -> set[UserId]:
        return self._ask(lambda client: presence.room_members(client, self._keys, room_name))


# Frames a worker's open facade queues at most (a call waits while the queue is full),
# and numbers in one round trip at most.
QUEUE_SIZE = 4096
BATCH_SIZE = 512
# Rooms whose members an open facade keeps answered until the view changes, at most.
MEMBERS_KEPT = 1024


class _Session:
    """An open `RemoteNotificationService`: its connection, its view of the cluster's
    presence (loaded once, then kept by the presence channel, and reloaded every few
    seconds as a node does), and its sender task."""

    RELOAD_SECONDS = 3.0

    def __init__(self, remote: RemoteNotificationService) -> None:
        self._remote = remote
        self._view = presence.ClusterView()
        # Each room's members as the view answers them, until the view changes: a call
        # reads them, and reading the view costs a user id parsed per member (a room
        # of 100 made that 80 % of a worker's CPU per call, profiled).
        self._members: dict[str, set[UserId]] = {}
        self._client: Any = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._queue: MemoryObjectSendStream[tuple[str, bytes]]
        self._queued: MemoryObjectReceiveStream[tuple[str, bytes]]
        self._queue, self._queued = anyio.create_memory_object_stream[tuple[str, bytes]](
            QUEUE_SIZE)
        self._sent = anyio.Event()
        self.failure: BackplaneUnavailable | None = None

    async def open(self) -> None:
        remote = self._remote
        try:
            client = redis_client(remote._url, remote._sharded)
            self._client = await client.__aenter__()
            self.view = await remote._view(self._client)
        except REDIS_ERRORS as error:
            raise BackplaneUnavailable(
                f"Redis at the configured URL is unreachable ({type(error).__name__})"
            ) from None
        self._tasks = anyio.create_task_group()
        await self._tasks.__aenter__()
        self._tasks.start_soon(self._keep_view)
        self._tasks.start_soon(self._send_queued)

    @property
    def view(self) -> presence.ClusterView:
        return self._view

    @view.setter
    def view(self, view: presence.ClusterView) -> None:
        self._view = view
        self._members.clear()

    def _applied(self, change: presence.PresenceChange) -> None:
        self._view.apply(change)
        self._members.clear()

    def room_members(self, room: str) -> set[UserId]:
        """The room's members in the view (the facade only counts or tests them)."""
        members = self._members.get(room)
        if members is None:
            if len(self._members) >= MEMBERS_KEPT:
                self._members.clear()
            members = self._members[room] = self._view.room_members(room)
        return members

    async def send(self, room: str, body: bytes) -> set[UserId]:
        if self.failure is not None:
            raise self.failure
        try:
            self._queue.send_nowait((room, body))
        except anyio.WouldBlock:
            await self._queue.send((room, body))  # full: wait for the sender
        else:
            # A checkpoint once a batch is queued, not per call: a worker's calls back
            # to back fill the next batch while the sender waits for Redis.
            if self._queue.statistics().current_buffer_used >= BATCH_SIZE:
                await anyio.lowlevel.checkpoint()
        return self.room_members(room)

    async def close(self) -> None:
        self._queue.close()  # the sender ends once it has sent what was queued
        await self._sent.wait()
        assert self._tasks is not None
        self._tasks.cancel_scope.cancel()
        await self._tasks.__aexit__(None, None, None)
        await self._client.__aexit__(None, None, None)
        if self.failure is not None:
            raise self.failure

    async def _send_queued(self) -> None:
        try:
            while True:
                try:
                    batch = [await self._queued.receive()]
                except anyio.EndOfStream:
                    return
                while len(batch) < BATCH_SIZE:
                    try:
                        batch.append(self._queued.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                try:
                    await self._send_batch(batch)
                except REDIS_ERRORS as error:
                    self.failure = BackplaneUnavailable(
                        f"Redis failed while sending queued notifications "
                        f"({type(error).__name__}): some may not have been delivered")
        finally:
            self._sent.set()

    async def _send_batch(self, batch: list[tuple[str, bytes]]) -> None:
        """In queue order: runs of numbered frames in one script call each, frames
        that are not numbered (broadcasts) published one by one."""
        remote, client = self._remote, self._client
        numbered: list[tuple[str, bytes, UserId | None]] = []
        for room, body in batch:
            if room != LOBBY:
                numbered.append((room, body, personal_room_owner(room)))
                continue
            if numbered:
                await remote._streams.sequence_batch(client, numbered, remote._origin)
                numbered = []
            await publish_frame(client, remote._keys, remote._sharded, room,
                                remote._origin + b"\n" + body)
        if numbered:
            await remote._streams.sequence_batch(client, numbered, remote._origin)

    async def _keep_view(self) -> None:
        """The presence channel's changes, and a reload every few seconds (Redis away:
        the sender reports it; the view is kept as it was)."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self._follow_presence()

    async def _follow_presence(self) -> None:
        remote = self._remote
        channel = remote._keys.presence_channel()
        pubsub = (self._client.sharded_pubsub() if remote._sharded
                  else self._client.pubsub())
        async with pubsub:
            await pubsub.subscribe(channel)
            self.view = await remote._view(self._client)  # what changed meanwhile
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._reload)
                async for message in pubsub:
                    if message.get("type") in ("message", "smessage"):
                        # A malformed change (Malformed, a ValueError) is skipped:
                        # the next reload reads Redis.
                        with contextlib.suppress(ValueError):
                            self._applied(presence.parse_change(bytes(message["data"])))

    async def _reload(self) -> None:
        while True:
            await anyio.sleep(self.RELOAD_SECONDS)
            # Redis away: the sender reports it; the view is kept meanwhile.
            with contextlib.suppress(*REDIS_ERRORS):
                self.view = await self._remote._view(self._client)


# Outside a service, `NotificationService.current()` (and so the class-level calls of
# the facade) reaches the cluster through Redis when ROOMCAST_REDIS_URL is set.
look_elsewhere(RemoteNotificationService.from_environment)


def _run_in_thread(function: Callable[[], Awaitable[T]]) -> T:
    """Run an async function to completion on a fresh thread and event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(anyio.run(function))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="roomcast-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class SyncNotificationService:
    """The facade for plain synchronous code (a Celery task, a Django view): the same
    seven methods, blocking until Redis has answered. Needs ROOMCAST_REDIS_URL."""

    @staticmethod
    def _remote() -> RemoteNotificationService:
        remote = RemoteNotificationService.from_environment()
        if remote is None:
            raise BackplaneUnavailable("set ROOMCAST_REDIS_URL to reach the roomcast cluster")
        return remote

    @classmethod
    def _call(cls, call: Callable[[RemoteNotificationService], Awaitable[T]]) -> T:
        remote = cls._remote()
        return _run_in_thread(lambda: call(remote))

    @classmethod
    def notify_user(cls, *args: Any, **kwargs: Any) -> bool:
        return cls._call(lambda remote: remote.notify_user(*args, **kwargs))

    @classmethod
    def notify_room(cls, *args: Any, **kwargs: Any) -> int:
        return cls._call(lambda remote: remote.notify_room(*args, **kwargs))

    @classmethod
    def broadcast(cls, *args: Any, **kwargs: Any) -> int:
        return cls._call(lambda remote: remote.broadcast(*args, **kwargs))

    @classmethod
    def notify_user_in_room(cls, *args: Any, **kwargs: Any) -> bool:
        return cls._call(lambda remote: remote.notify_user_in_room(*args, **kwargs))

    @classmethod
    def is_user_connected(cls, user_id: UserId) -> bool:
        return cls._remote().is_user_connected(user_id)

    @classmethod
    def get_connected_users(cls) -> set[UserId]:
        return cls._remote().get_connected_users()

    @classmethod
    def get_room_members(cls, room_name: str) -> set[UserId]:
        return cls._remote().get_room_members(room_name)
