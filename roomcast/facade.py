"""`NotificationService`: the seed's facade for backend code.

Two ways to call it:

- the seed's way, on the class: `await NotificationService.notify_user(...)`, from
  any Trio task inside a running service, or in the body of `open_service(...)`;
  the running service is found through a context variable;
- on an explicit handle: `await service.notifications.notify_user(...)`.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from roomcast.actors.room import LOBBY
from roomcast.protocol import (
    Broadcast,
    MessageType,
    NotificationLevel,
    RoomNotification,
    UserId,
    UserNotification,
    personal_room,
    user_id_or_none,
)

if TYPE_CHECKING:
    from roomcast.actors.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


class ServiceNotRunning(RuntimeError):
    """The facade was called where no roomcast service runs."""


_current: contextvars.ContextVar[NotificationService] = contextvars.ContextVar("roomcast_service")


class _either:
    """A method callable on an instance, or on the class: then it is bound to the
    service running in the caller's context."""

    def __init__(self, function: F) -> None:
        self._function = function
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is not None:
            return self._function.__get__(instance, owner)

        @functools.wraps(self._function)
        def on_current_service(*args: Any, **kwargs: Any) -> Any:
            return self._function(owner.current(), *args, **kwargs)

        return on_current_service


class NotificationService:
    """Send notifications to users, rooms or everyone, and ask who is connected."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    @classmethod
    def current(cls) -> NotificationService:
        """The service running in this context; else, with ROOMCAST_REDIS_URL set, the
        cluster reached through Redis (a worker process: Celery, a script)."""
        try:
            return _current.get()
        except LookupError:
            pass
        from roomcast.remote import RemoteNotificationService

        remote = RemoteNotificationService.from_environment()
        if remote is not None:
            return remote
        raise ServiceNotRunning(
                "no roomcast service is running here: call NotificationService from "
                "inside `async with roomcast.open_service(...)` or a task it runs, "
                "use the handle's `service.notifications`, or set ROOMCAST_REDIS_URL "
                "to reach a cluster of nodes through Redis"
            )

    def _bind(self) -> contextvars.Token[NotificationService]:
        return _current.set(self)

    @staticmethod
    def _unbind(token: contextvars.Token[NotificationService]) -> None:
        _current.reset(token)

    # Where the answers come from: this node, plus the cluster's view when it has one.
    # A process that runs no service answers from Redis instead (roomcast.remote).

    async def _publish(self, room: str, frame: bytes) -> set[UserId]:
        """Publish everywhere; the users reached, on this node and (by the cluster's
        presence) on the others. Raises BackplaneUnavailable, after delivering here,
        when the other nodes could not be reached."""
        delivery = await self._registry.publish(room, frame)
        backplane = self._registry.backplane
        if backplane is None:
            return delivery.user_ids
        return delivery.user_ids | backplane.view.room_members(room)

    def _has_user(self, user_id: UserId) -> bool:
        if self._registry.connections_of(user_id):
            return True
        backplane = self._registry.backplane
        return backplane is not None and backplane.view.has_user(user_id)

    def _users(self) -> set[UserId]:
        users = set(self._registry.users)
        backplane = self._registry.backplane
        return users | backplane.view.users() if backplane is not None else users

    def _members(self, room_name: str) -> set[UserId]:
        room = self._registry.room(room_name)
        members = room.member_users() if room is not None else set()
        backplane = self._registry.backplane
        return members | backplane.view.room_members(room_name) if backplane else members

    @_either
    async def notify_user(
        self,
        user_id: UserId,
        message: str,
        level: NotificationLevel = NotificationLevel.INFO,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """Every connection of the user gets an `info` frame; True if a connection
        got it now. The frame is also kept in the personal room's history (for
        `history_ttl`), and replayed to a client that reconnects asking for what it
        missed (a position or `recover=1`); a plain client is not sent it later."""
        note = UserNotification(message, level, data, user_id=user_id)
        frame = note.body(MessageType.INFO)
        return bool(await self._publish(personal_room(note.user_id), frame))

    @_either
    async def notify_room(
        self,
        room_name: str,
        message: str,
        level: NotificationLevel = NotificationLevel.INFO,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Every connection in the room gets a `room_message`; returns distinct users."""
        note = RoomNotification(message, level, data, room=room_name)
        frame = note.body(MessageType.ROOM_MESSAGE, note.room)
        return len(await self._publish(note.room, frame))

    @_either
    async def broadcast(
        self,
        message: str,
        level: NotificationLevel = NotificationLevel.INFO,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Every connection gets a `broadcast`; returns distinct users reached."""
        frame = Broadcast(message, level, data).body(MessageType.BROADCAST)
        return len(await self._publish(LOBBY, frame))

    @_either
    async def notify_user_in_room(
        self,
        user_id: UserId,
        message: str,
        level: NotificationLevel = NotificationLevel.INFO,
        data: dict[str, Any] | None = None,
    ) -> bool:
        """As `notify_room` on the user's personal room; True if anyone was reached."""
        note = UserNotification(message, level, data, user_id=user_id)
        room = personal_room(note.user_id)
        return bool(await self._publish(room, note.body(MessageType.ROOM_MESSAGE, room)))

    @_either
    def is_user_connected(self, user_id: UserId) -> bool:
        uid = user_id_or_none(user_id)
        return uid is not None and self._has_user(uid)

    @_either
    def get_connected_users(self) -> set[UserId]:
        return self._users()

    @_either
    def get_room_members(self, room_name: str) -> set[UserId]:
        """Users with a connection in the room; empty for an unknown room."""
        if not isinstance(room_name, str) or room_name == LOBBY:
            return set()
        return self._members(room_name)
