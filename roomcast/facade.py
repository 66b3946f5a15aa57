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
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar

from roomcast.actors.registry import Registry
from roomcast.actors.room import LOBBY
from roomcast.protocol import (
    Broadcast,
    MessageType,
    Notification,
    NotificationLevel,
    RoomNotification,
    UserId,
    UserNotification,
    jsontext,
    personal_room,
    user_id_or_none,
)

P = ParamSpec("P")
R = TypeVar("R")


def _body(note: Notification, type_: MessageType, room: str | None = None) -> bytes:
    """The frame's JSON, held to the strict JSON rule (protocol/jsontext.py) that every
    client is held to: a lone surrogate or data nested past MAX_NESTING levels is a
    `JsonRefused` (a ValueError) saying so. Checked where the frame is encoded anyway:
    the usual frame costs two byte counts more, not a second encoding."""
    try:
        body = note.body(type_, room)
    except (UnicodeEncodeError, RecursionError):
        # [message, data]: `data` at the depth its keys have in the frame (level 2)
        jsontext.check_value([note.message, note.data])
        raise
    if body.count(b"[") + body.count(b"{") > jsontext.MAX_NESTING:
        jsontext.check_nesting([note.data])
    return body


class ServiceNotRunning(RuntimeError):
    """The facade was called where no roomcast service runs."""


_current: contextvars.ContextVar[NotificationService] = contextvars.ContextVar("roomcast_service")
# Where `current()` looks when no service runs in this context: `roomcast.remote` adds
# the cluster reached through Redis (ROOMCAST_REDIS_URL). A hook, so that this module
# does not import the one above it that subclasses it.
_elsewhere: list[Callable[[], NotificationService | None]] = []


def look_elsewhere(find: Callable[[], NotificationService | None]) -> None:
    """Let `NotificationService.current()` fall back on `find` outside a service."""
    _elsewhere.append(find)


class _either(Generic[P, R]):
    """A method callable on an instance, or on the class: then it is bound to the
    service running in the caller's context."""

    def __init__(self, function: Callable[Concatenate[NotificationService, P], R]) -> None:
        self._function = function
        # the descriptor takes the method's name and docstring; typeshed wants a callable
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    def __get__(
        self, instance: NotificationService | None, owner: type[NotificationService]
    ) -> Callable[P, R]:
        if instance is not None:
            bound: Callable[P, R] = self._function.__get__(instance, owner)
            return bound

        @functools.wraps(self._function)
        def on_current_service(*args: P.args, **kwargs: P.kwargs) -> R:
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
        for elsewhere in _elsewhere:
            remote = elsewhere()
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

    async def _send(self, room: str, frame: bytes) -> set[UserId]:
        """Publish everywhere; the users reached, on this node and (by the cluster's
        presence) on the others. Raises BackplaneUnavailable, after delivering here,
        when the other nodes could not be reached (Redis known down at call time). In
        a cluster, returns once the frame is queued for numbering (it goes out in
        queue order); the users are the room's members when it was queued (a personal
        room waits until its frame is handed out: see `Registry.publish`)."""
        delivery = await self._registry.publish(room, frame, wait=False)
        return delivery.user_ids | self._registry.members_elsewhere(room)

    def _has_user(self, user_id: UserId) -> bool:
        return self._registry.is_connected(user_id)

    def _users(self) -> set[UserId]:
        return self._registry.connected_users()

    def _members(self, room_name: str) -> set[UserId]:
        return self._registry.room_members(room_name)

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
        frame = _body(note, MessageType.INFO)
        return bool(await self._send(personal_room(note.user_id), frame))

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
        frame = _body(note, MessageType.ROOM_MESSAGE, note.room)
        return len(await self._send(note.room, frame))

    @_either
    async def broadcast(
        self,
        message: str,
        level: NotificationLevel = NotificationLevel.INFO,
        data: dict[str, Any] | None = None,
    ) -> int:
        """Every connection gets a `broadcast`; returns distinct users reached."""
        frame = _body(Broadcast(message, level, data), MessageType.BROADCAST)
        return len(await self._send(LOBBY, frame))

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
        return bool(await self._send(room, _body(note, MessageType.ROOM_MESSAGE, room)))

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
