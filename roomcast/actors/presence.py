"""Cluster presence: who is connected on each node, as Redis stores it, and this
node's view of the others. The keys and channels every node and worker share.

Key layout, under the configured prefix `P` (the prefix as a hash tag, so that on
Redis Cluster the presence of all nodes lives in one slot; channels carry none, so
that sharded pub/sub spreads rooms over the shards):

    {P}:nodes                  SET     ids of the nodes that may be alive
    {P}:node:ID                STRING  alive while it exists (expires after the lease)
    {P}:node:ID:users          SET     user ids connected to node ID
    {P}:node:ID:rooms          SET     rooms (personal rooms and the lobby left out)
    {P}:node:ID:room:R         SET     user ids with a connection in room R on node ID
    P:room:R                   channel frames for room R: 16 bytes of origin, then a frame
                                       (sharded: the slot of the room's keys, `{P:room:R}:...`
                                       in streams.py)
    P:presence                 channel presence changes, JSON
    P:node:ID:inbox            channel heard by node ID only: proves its pub/sub is up
"""

from __future__ import annotations

from typing import Any

import attrs

from roomcast.actors.room import LOBBY
from roomcast.actors.streams import Malformed
from roomcast.protocol import (
    UserId,
    converter,
    jsontext,
    personal_room_owner,
    structure,
    user_id_or_none,
)

# The longest node id a presence message may name (ours are 16 hex digits).
MAX_NODE_ID = 64


@attrs.define
class Keys:
    """Every Redis key and channel name, in one place.

    Keys carry the prefix as a hash tag (`{P}`), so that on Redis Cluster the presence
    of all nodes lives in one slot and multi-key commands work; channels do not, so
    that sharded pub/sub spreads the rooms over the shards.
    """

    prefix: str

    @property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    def nodes(self) -> str:
        return f"{self.tag}:nodes"

    def node(self, node: str) -> str:
        return f"{self.tag}:node:{node}"

    def users(self, node: str) -> str:
        return f"{self.tag}:node:{node}:users"

    def rooms(self, node: str) -> str:
        return f"{self.tag}:node:{node}:rooms"

    def room_members(self, node: str, room: str) -> str:
        return f"{self.tag}:node:{node}:room:{room}"

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def presence_channel(self) -> str:
        return f"{self.prefix}:presence"

    def inbox(self, node: str) -> str:
        """A channel only node `node` hears: while Redis counts one subscriber there,
        that node's pub/sub connection is up (its rooms are resubscribed with it)."""
        return f"{self.prefix}:node:{node}:inbox"


@attrs.define
class Presence:
    """Who is on one node: user ids and room members, as Redis stores them (text)."""

    users: set[str] = attrs.Factory(set)
    rooms: dict[str, set[str]] = attrs.Factory(dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: sets as sorted lists (the protocol's converter)."""
        result: dict[str, Any] = converter.unstructure(self)
        return result

    @classmethod
    def from_json(cls, data: Any) -> Presence:
        """From `to_json`'s output; a missing key is empty. A malformed message raises
        TypeError or ValueError (a string where a list goes too: not a set of letters)."""
        if isinstance(data, dict):
            rooms = data.get("rooms", {})
            if not isinstance(data.get("users", []), list) or not isinstance(rooms, dict) or \
                    not all(isinstance(members, list) for members in rooms.values()):
                raise TypeError("users and room members are lists")
        return structure(data, cls)


@attrs.frozen
class PresenceChange:
    """One message on the presence channel, checked: a node's goodbye, its whole
    presence, or what to add and remove."""

    node: str
    bye: bool = False
    full: Presence | None = None
    add: Presence = attrs.Factory(Presence)
    remove: Presence = attrs.Factory(Presence)

    @classmethod
    def parse(cls, data: bytes) -> PresenceChange:
        """The change a presence message carries; `Malformed` if it is not one (any
        bytes at all: not UTF-8, not JSON, nested too deeply, the wrong shape)."""
        try:
            value = jsontext.loads(data)
        except jsontext.JsonRefused as exc:
            raise Malformed("presence_not_json", str(exc)) from None
        if not isinstance(value, dict):
            raise Malformed("presence_shape", "not a JSON object")
        node, bye = value.get("node"), value.get("bye", False)
        if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID:
            raise Malformed("presence_shape", "no node id")
        if not isinstance(bye, bool):
            raise Malformed("presence_shape", "'bye' is not a boolean")
        try:
            full = Presence.from_json(value["full"]) if "full" in value else None
            add = Presence.from_json(value.get("add", {}))
            remove = Presence.from_json(value.get("del", {}))
        except (TypeError, ValueError) as exc:
            raise Malformed("presence_shape", str(exc)) from None
        return cls(node, bye, full, add, remove)


def _user(text: str) -> UserId:
    """A user id as Redis stores it (text) back to the id (an int where it is one)."""
    user = user_id_or_none(text)
    return text if user is None else user


class ClusterView:
    """The other nodes' presence, as this node last heard it."""

    def __init__(self) -> None:
        self.nodes: dict[str, Presence] = {}

    def users(self) -> set[UserId]:
        return {_user(u) for presence in self.nodes.values() for u in presence.users}

    def has_user(self, user_id: UserId) -> bool:
        text = str(user_id)
        return any(text in presence.users for presence in self.nodes.values())

    def room_members(self, room: str) -> set[UserId]:
        if room == LOBBY:
            return self.users()
        owner = personal_room_owner(room)
        if owner is not None:
            return {owner} if self.has_user(owner) else set()
        # Only connected users: a node's snapshot taken mid-disconnect may still list
        # the user in a room after it left `users`.
        return {_user(u) for p in self.nodes.values() for u in p.rooms.get(room, ())
                if u in p.users}

    def apply(self, change: PresenceChange) -> None:
        node = change.node
        if change.bye:
            self.nodes.pop(node, None)
        elif change.full is not None:
            self.nodes[node] = change.full
        elif (presence := self.nodes.get(node)) is not None:
            # A change to a node we do not hold (dropped when its lease ended, not read
            # yet, or no node at all) is ignored: the next resync reads what Redis
            # holds, whole.
            _apply_diff(presence, change.add, change.remove)


def _apply_diff(presence: Presence, add: Presence, remove: Presence) -> None:
    presence.users |= add.users
    presence.users -= remove.users
    for room, members in add.rooms.items():
        presence.rooms.setdefault(room, set()).update(members)
    for room, members in remove.rooms.items():
        left = presence.rooms.get(room, set()) - members
        if left:
            presence.rooms[room] = left
        else:
            presence.rooms.pop(room, None)


def diff(old: Presence, new: Presence) -> tuple[dict[str, Any], dict[str, Any]]:
    """What to add and what to remove to turn `old` into `new`."""
    add: dict[str, Any] = {"users": sorted(new.users - old.users), "rooms": {}}
    remove: dict[str, Any] = {"users": sorted(old.users - new.users), "rooms": {}}
    for room in new.rooms.keys() | old.rooms.keys():
        now, before = new.rooms.get(room, set()), old.rooms.get(room, set())
        if now - before:
            add["rooms"][room] = sorted(now - before)
        if before - now:
            remove["rooms"][room] = sorted(before - now)
    return add, remove




async def load_presence(client: Any, keys: Keys, node: str) -> Presence:
    users = {bytes(u).decode() for u in await client.smembers(keys.users(node))}
    presence = Presence(users=users)
    for room in await client.smembers(keys.rooms(node)):
        name = bytes(room).decode()
        members = await client.smembers(keys.room_members(node, name))
        if members:
            presence.rooms[name] = {bytes(m).decode() for m in members}
    return presence


async def live_nodes(client: Any, keys: Keys) -> list[str]:
    nodes = sorted(bytes(n).decode() for n in await client.smembers(keys.nodes()))
    if not nodes:
        return []
    leases = await client.mget([keys.node(n) for n in nodes])
    return [n for n, lease in zip(nodes, leases, strict=True) if lease is not None]


