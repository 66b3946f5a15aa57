"""The notification facade for a process that runs no service: a Celery task, a cron
script, a shell. With ROOMCAST_REDIS_URL set, it publishes through Redis to the
nodes of the cluster, and answers presence questions from what the nodes wrote there.

- async code (asyncio or Trio): `await NotificationService.notify_user(...)`, as in the
  seed's Example 3 under `asyncio.run`;
- plain synchronous code: `SyncNotificationService.notify_user(...)`;
- a shell: `roomcast notify --user 42 --message "..."`.

Every call connects, publishes and disconnects: simple and safe in short-lived workers.
A Redis that cannot be reached raises `BackplaneUnavailable`, never a silent answer.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

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
        self._streams = Streams(prefix, history_size, history_ttl)
        self._origin = new_node_id().encode()  # never any node's: every node delivers

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
        async def publish(client: Any) -> set[UserId]:
            members = await presence.room_members(client, self._keys, room)
            if room != LOBBY and not self._sharded:
                # Numbered and kept in the room's history, as a node would; a personal
                # notification that no node hears waits for the user. A node that hears
                # the user's room has a connection of theirs now, even if its presence
                # is not written yet.
                owner = personal_room_owner(room)
                numbered = await self._streams.sequence(client, room, body, self._origin, owner)
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
