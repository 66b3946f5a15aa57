"""Room actor: owns its member addresses and fans a published frame out to them.

Fan-out never awaits a socket: each member's `deliver` either hands the frame to the
kernel or queues it in that member's own outbox. One task wake-up per publish, none
per member.

A fan-out survives crashes. A member whose `deliver` raises is that member's fault: it
is closed with 1011 and the fan-out goes on. If the room itself crashes mid-fan-out,
its supervisor restarts it, and the restarted loop first finishes the interrupted
fan-out for the members not reached yet, then answers the publisher.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from time import perf_counter
from typing import TYPE_CHECKING, Any

import attrs

from roomcast.actors.base import MailboxActor, Reply
from roomcast.protocol import CloseCode, UserId

if TYPE_CHECKING:
    from roomcast.actors.connection import Connection

log = logging.getLogger(__name__)

# The room every connection is in: broadcasts are published to it. Not a valid
# client room name, so no client can join, leave or address it.
LOBBY = "*"


@attrs.frozen
class Delivery:
    users: int  # distinct users reached
    connections: int  # connections the frame was queued to
    user_ids: set[UserId] = attrs.field(factory=set, eq=False)  # who they are


@attrs.define
class Join:
    connection: Connection
    reply: Reply[None] | None = None


@attrs.define
class Leave:
    connection: Connection
    reply: Reply[None] | None = None


@attrs.define
class Publish:
    frame: bytes  # complete WebSocket frame bytes, built once by the publisher
    reply: Reply[Delivery] | None = None


@attrs.define
class _FanOut:
    """A fan-out in progress: what is left survives a crash of the room's loop."""

    publish: Publish
    pending: Iterator[Connection]
    users: set[UserId] = attrs.Factory(set)
    connections: int = 0


class Room(MailboxActor):
    def __init__(self, name: str, mailbox_size: int) -> None:
        super().__init__(f"room {name}", mailbox_size)
        self.room = name
        self.members: dict[int, Connection] = {}
        self.user_counts: Counter[UserId] = Counter()
        self._fan_out: _FanOut | None = None
        # Called when a user appears in or leaves the room (the backplane's presence).
        self.on_presence_change: Callable[[], None] | None = None
        self.fault_after: int | None = None  # fault injection: crash after N+1 members

    def member_users(self) -> set[UserId]:
        return set(self.user_counts)

    async def run(self) -> None:
        if self._fan_out is not None:  # restarted after a crash mid-fan-out
            self._continue_fan_out()
        await super().run()

    def on_crash(self, message: Any) -> None:
        if self._fan_out is not None and self._fan_out.publish is message:
            return  # the publisher is answered once the restarted loop has finished
        super().on_crash(message)

    async def handle(self, message: Join | Leave | Publish) -> None:
        if isinstance(message, Publish):
            # A snapshot: members joining or leaving meanwhile cannot disturb it.
            self._fan_out = _FanOut(message, iter(list(self.members.values())))
            self._continue_fan_out()
            return
        connection = message.connection
        if isinstance(message, Join):
            if connection.id not in self.members:
                self.members[connection.id] = connection
                self.user_counts[connection.user_id] += 1
                if self.user_counts[connection.user_id] == 1:
                    self._presence_changed()
        elif self.members.pop(connection.id, None) is not None:
            self.user_counts[connection.user_id] -= 1
            if not self.user_counts[connection.user_id]:
                del self.user_counts[connection.user_id]
                self._presence_changed()
        if message.reply is not None:
            message.reply.set(None)

    def _continue_fan_out(self) -> None:
        fan_out = self._fan_out
        assert fan_out is not None
        started = perf_counter()
        frame = fan_out.publish.frame
        for member in fan_out.pending:
            try:
                delivered = member.deliver(frame)
            except Exception:
                log.exception("conn %d user=%r: failed taking a frame; closing with 1011",
                              member.id, member.user_id)
                member.request_close(CloseCode.INTERNAL_ERROR, "internal error")
                continue
            if delivered:
                fan_out.users.add(member.user_id)
                fan_out.connections += 1
            if self.fault_after is not None:
                self._count_down_fault()
        self._fan_out = None
        self.metrics.fanned_out(frame, fan_out.connections, perf_counter() - started)
        if fan_out.publish.reply is not None:
            fan_out.publish.reply.set(
                Delivery(len(fan_out.users), fan_out.connections, fan_out.users)
            )

    def _presence_changed(self) -> None:
        if self.on_presence_change is not None:
            self.on_presence_change()

    def _count_down_fault(self) -> None:
        assert self.fault_after is not None
        if self.fault_after <= 0:
            self.fault_after = None
            raise RuntimeError(f"injected fault in {self.name} mid-fan-out")
        self.fault_after -= 1
