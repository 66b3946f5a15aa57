"""Room actor: owns its member addresses and fans a published frame out to them.

Fan-out never awaits a socket: each member's `deliver` either hands the frame to the
kernel or queues it in that member's own outbox. One task wake-up per publish, none
per member.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import attrs

from roomcast.actors.base import MailboxActor, Reply
from roomcast.protocol import UserId

if TYPE_CHECKING:
    from roomcast.actors.connection import Connection

# The room every connection is in: broadcasts are published to it. Not a valid
# client room name, so no client can join, leave or address it.
LOBBY = "*"


@attrs.frozen
class Delivery:
    users: int  # distinct users reached
    connections: int  # connections the frame was queued to


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


class Room(MailboxActor):
    def __init__(self, name: str, mailbox_size: int) -> None:
        super().__init__(f"room {name}", mailbox_size)
        self.room = name
        self.members: dict[int, Connection] = {}
        self.user_counts: Counter[UserId] = Counter()

    def member_users(self) -> set[UserId]:
        return set(self.user_counts)

    async def handle(self, message: Join | Leave | Publish) -> None:
        if isinstance(message, Publish):
            delivery = self._fan_out(message.frame)
            if message.reply is not None:
                message.reply.set(delivery)
            return
        connection = message.connection
        if isinstance(message, Join):
            if connection.id not in self.members:
                self.members[connection.id] = connection
                self.user_counts[connection.user_id] += 1
        elif self.members.pop(connection.id, None) is not None:
            self.user_counts[connection.user_id] -= 1
            if not self.user_counts[connection.user_id]:
                del self.user_counts[connection.user_id]
        if message.reply is not None:
            message.reply.set(None)

    def _fan_out(self, frame: bytes) -> Delivery:
        users: set[UserId] = set()
        connections = 0
        for member in self.members.values():
            if member.deliver(frame):
                users.add(member.user_id)
                connections += 1
        return Delivery(users=len(users), connections=connections)
