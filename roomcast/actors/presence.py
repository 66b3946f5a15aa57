"""Cluster presence: who is connected on each node, as Redis stores it, and this
node's view of the others. The keys, channels and scripts every node and worker share.

Key layout, under the configured prefix `P` (the prefix as a hash tag, so that on
Redis Cluster the presence of all nodes lives in one slot; channels carry none, so
that sharded pub/sub spreads rooms over the shards):

    {P}:nodes                  SET     ids of the nodes that may be alive
    {P}:node:ID                STRING  alive while it exists (expires after the lease);
                                       holds the seq of the node's last presence write
    {P}:node:ID:users          SET     user ids connected to node ID
    {P}:node:ID:rooms          SET     rooms (personal rooms and the lobby left out)
    {P}:node:ID:room:R         SET     user ids with a connection in room R on node ID
    {P}:user:U                 SET     ids of the nodes user U is connected to (index)
    {P}:members:R              SET     `ID|U` for each member U of room R on node ID (index)
    P:room:R                   channel frames for room R: 16 bytes of origin, then a frame
                                       (sharded: the slot of the room's keys, `{P:room:R}:...`
                                       in streams.py)
    P:presence                 channel presence changes, JSON, numbered per node (seq)
    P:node:ID:inbox            channel heard by node ID only: proves its pub/sub is up

A node writes its own sets and both indexes in one script (`WRITE`), with the seq and
the lease. A question (`HAS_USER`, `MEMBERS`, `USERS`) is one script that reads an
index and keeps the entries of nodes whose lease key exists: a dead node is out of
every answer the moment its lease ends, whoever has or has not cleaned up after it.
Its entries are removed by the next `LEASES` any node runs (every lease / 3).
The rules (which entries a change writes, the view kept from numbered changes) are
pure: `protocol/presence_rules.py`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs

from roomcast.actors.room import LOBBY
from roomcast.actors.streams import Malformed
from roomcast.protocol import UserId, jsontext, personal_room_owner
from roomcast.protocol.presence_rules import (
    NODE_ROOM,
    NODE_ROOMS,
    NODE_USERS,
    ROOM_MEMBERS,
    USER_NODES,
    Lease,
    Presence,
    PresenceChange,
    PresenceView,
    SetName,
    Write,
    presence_of,
    user_from_text,
)

__all__ = ["ClusterView", "Keys", "Lease", "Presence", "PresenceChange", "parse_change"]

# The longest node id a presence message may name (ours are 16 hex digits).
MAX_NODE_ID = 64

# Index writes per WRITE script, at most: a node's whole presence after a Redis restart
# goes in several bounded scripts (Redis runs one script at a time), the lease last.
WRITES_PER_SCRIPT = 2000


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

    def user_nodes(self, user: str) -> str:
        """The index: the nodes user `user` is connected to."""
        return f"{self.tag}:user:{user}"

    def room_index(self, room: str) -> str:
        """The index: `node|user` for each member of `room`, on any node."""
        return f"{self.tag}:members:{room}"

    def of(self, name: SetName) -> str:
        """The key of a set named by `presence_rules.index_writes`."""
        if name[0] == NODE_ROOM and len(name) == 3:
            return self.room_members(name[1], name[2])
        kind, what = name[0], name[1]
        if kind == NODE_USERS:
            return self.users(what)
        if kind == NODE_ROOMS:
            return self.rooms(what)
        if kind == USER_NODES:
            return self.user_nodes(what)
        if kind == ROOM_MEMBERS:
            return self.room_index(what)
        raise ValueError(f"no such presence set: {name!r}")

    def room_channel(self, room: str) -> str:
        return f"{self.prefix}:room:{room}"

    def presence_channel(self) -> str:
        return f"{self.prefix}:presence"

    def inbox(self, node: str) -> str:
        """A channel only node `node` hears: while Redis counts one subscriber there,
        that node's pub/sub connection is up (its rooms are resubscribed with it)."""
        return f"{self.prefix}:node:{node}:inbox"


def parse_change(data: bytes) -> PresenceChange:
    """The change a presence message carries; `Malformed` if it is not one (any bytes
    at all: not UTF-8, not JSON, nested too deeply, the wrong shape)."""
    try:
        value = jsontext.loads(data)
    except jsontext.JsonRefused as exc:
        raise Malformed("presence_not_json", str(exc)) from None
    if not isinstance(value, dict):
        raise Malformed("presence_shape", "not a JSON object")
    node, bye, seq = value.get("node"), value.get("bye", False), value.get("seq")
    if not isinstance(node, str) or not 0 < len(node) <= MAX_NODE_ID:
        raise Malformed("presence_shape", "no node id")
    if not isinstance(bye, bool):
        raise Malformed("presence_shape", "'bye' is not a boolean")
    if seq is not None and (type(seq) is not int or not 0 < seq < 2**63):
        raise Malformed("presence_shape", "'seq' is not a positive integer")
    try:
        full = Presence.from_json(value["full"]) if "full" in value else None
        add = Presence.from_json(value.get("add", {}))
        remove = Presence.from_json(value.get("del", {}))
    except (TypeError, ValueError) as exc:
        raise Malformed("presence_shape", str(exc)) from None
    return PresenceChange(node, bye, full, add, remove, seq)


class ClusterView(PresenceView):
    """The other nodes' presence, as this node last heard it; the lobby and personal
    rooms answered from their users."""

    def room_members(self, room: str) -> set[UserId]:
        if room == LOBBY:
            return self.users()
        owner = personal_room_owner(room)
        if owner is not None:
            return {owner} if self.has_user(owner) else set()
        return self.members(room)


# The scripts ----------------------------------------------------------------------
#
# Every script gets the tag (`{P}`) as ARGV[1] and the nodes set as KEYS[1] (or the
# index it reads), so that on Redis Cluster it runs on the slot of the presence keys.

_PRELUDE = """
local tag = ARGV[1]
local function node_key(node) return tag .. ':node:' .. node end
local function clear(node)
  local key = node_key(node)
  for _, user in ipairs(redis.call('SMEMBERS', key .. ':users')) do
    redis.call('SREM', tag .. ':user:' .. user, node)
  end
  for _, room in ipairs(redis.call('SMEMBERS', key .. ':rooms')) do
    local members = key .. ':room:' .. room
    for _, user in ipairs(redis.call('SMEMBERS', members)) do
      redis.call('SREM', tag .. ':members:' .. room, node .. '|' .. user)
    end
    redis.call('DEL', members)
  end
  redis.call('DEL', key .. ':users', key .. ':rooms')
end
local alive = {}
local function is_alive(node)
  if alive[node] == nil then alive[node] = redis.call('EXISTS', node_key(node)) == 1 end
  return alive[node]
end
"""

# KEYS: nodes; ARGV: tag, node, seq, lease ms, '1' to clear the node's presence first,
# '1' to set the lease and seq (the last script of a write), then (op, key, member)
# triples, op 'a' (SADD) or 'r' (SREM). Sets emptied go with their last member.
WRITE = _PRELUDE + """
local node = ARGV[2]
if ARGV[5] == '1' then clear(node) end
for i = 7, #ARGV, 3 do
  if ARGV[i] == 'a' then redis.call('SADD', ARGV[i + 1], ARGV[i + 2])
  else redis.call('SREM', ARGV[i + 1], ARGV[i + 2]) end
end
if ARGV[6] == '1' then
  redis.call('SET', node_key(node), ARGV[3], 'PX', ARGV[4])
  redis.call('SADD', KEYS[1], node)
end
return 1
"""

# KEYS: nodes; ARGV: tag, node. A goodbye: the node's presence and lease go.
LEAVE = _PRELUDE + """
clear(ARGV[2])
redis.call('DEL', node_key(ARGV[2]))
redis.call('SREM', KEYS[1], ARGV[2])
return 1
"""

# KEYS: nodes; ARGV: tag, the asking node. Every node with a lease: id, seq and the
# lease's milliseconds left; a node without one (but the asker) is cleaned up.
LEASES = _PRELUDE + """
local found = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local seq = redis.call('GET', node_key(node))
  if seq then
    found[#found + 1] = node
    found[#found + 1] = seq
    found[#found + 1] = redis.call('PTTL', node_key(node))
  elseif node ~= ARGV[2] then
    clear(node)
    redis.call('SREM', KEYS[1], node)
  end
end
return found
"""

# KEYS: nodes; ARGV: tag, node. The node's seq, users and rooms with their members,
# from one moment; false if its lease has ended.
LOAD = _PRELUDE + """
local key = node_key(ARGV[2])
local seq = redis.call('GET', key)
if not seq then return false end
local rooms = {}
for _, room in ipairs(redis.call('SMEMBERS', key .. ':rooms')) do
  rooms[#rooms + 1] = room
  rooms[#rooms + 1] = redis.call('SMEMBERS', key .. ':room:' .. room)
end
return {seq, redis.call('SMEMBERS', key .. ':users'), rooms}
"""

# KEYS: the user's index; ARGV: tag. 1 if a node with a lease has the user.
HAS_USER = _PRELUDE + """
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if is_alive(node) then return 1 end
end
return 0
"""

# KEYS: the room's index; ARGV: tag. The room's members on nodes with a lease.
MEMBERS = _PRELUDE + """
local users, found = {}, {}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local bar = string.find(entry, '|', 1, true)
  if bar and is_alive(string.sub(entry, 1, bar - 1)) then
    local user = string.sub(entry, bar + 1)
    if not found[user] then found[user] = true; users[#users + 1] = user end
  end
end
return users
"""

# KEYS: nodes; ARGV: tag. Every user of a node with a lease (O(nodes) reads, one trip).
USERS = _PRELUDE + """
local users, found = {}, {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if is_alive(node) then
    for _, user in ipairs(redis.call('SMEMBERS', node_key(node) .. ':users')) do
      if not found[user] then found[user] = true; users[#users + 1] = user end
    end
  end
end
return users
"""


def _text(value: Any, what: str) -> str:
    if not isinstance(value, bytes | bytearray | memoryview | str):
        raise Malformed("presence_reply", f"{what} is not a string")
    try:
        return value if isinstance(value, str) else bytes(value).decode()
    except UnicodeDecodeError:
        raise Malformed("presence_reply", f"{what} is not UTF-8") from None


def _texts(value: Any, what: str) -> list[str]:
    if not isinstance(value, list | tuple | set):
        raise Malformed("presence_reply", f"{what} is not a list")
    return [_text(item, what) for item in value]


def _number(value: Any, what: str) -> int:
    try:
        return int(_text(value, what) if not isinstance(value, int) else value)
    except ValueError:
        raise Malformed("presence_reply", f"{what} is not a number") from None


async def write(client: Any, keys: Keys, node: str, seq: int, lease_ms: int,
                writes: Sequence[Write], *, clear: bool) -> None:
    """A node's presence change in Redis: its sets, the indexes, then its lease and seq
    (after `clear`, everything it had goes first). One script, or a few for a large one."""
    flat = [item for op, name, member in writes
            for item in ("a" if op == "add" else "r", keys.of(name), member)]
    step = 3 * WRITES_PER_SCRIPT
    chunks = [flat[start:start + step] for start in range(0, len(flat), step)] or [[]]
    for index, chunk in enumerate(chunks):
        first, last = index == 0, index == len(chunks) - 1
        await client.eval(WRITE, [keys.nodes()],
                          [keys.tag, node, str(seq), str(lease_ms),
                           "1" if clear and first else "0", "1" if last else "0", *chunk])


async def leave(client: Any, keys: Keys, node: str) -> None:
    await client.eval(LEAVE, [keys.nodes()], [keys.tag, node])


async def leases(client: Any, keys: Keys, asking: str) -> dict[str, Lease]:
    """Every node with a lease (its seq, the ms left); the others are cleaned up."""
    reply = await client.eval(LEASES, [keys.nodes()], [keys.tag, asking])
    items = reply if isinstance(reply, list | tuple) else None
    if items is None or len(items) % 3:
        raise Malformed("presence_reply", "not a list of leases")
    found = {}
    for start in range(0, len(items), 3):
        node = _text(items[start], "a node id")
        found[node] = Lease(_number(items[start + 1], "a seq"),
                            _number(items[start + 2], "a lease's time"))
    return found


async def load(client: Any, keys: Keys, node: str) -> tuple[int, Presence] | None:
    """A node's seq and presence, from one moment; None if its lease has ended."""
    reply = await client.eval(LOAD, [keys.nodes()], [keys.tag, node])
    if reply is None or reply is False:
        return None
    if not isinstance(reply, list | tuple) or len(reply) != 3 or \
            not isinstance(reply[2], list | tuple) or len(reply[2]) % 2:
        raise Malformed("presence_reply", "not a node's presence")
    seq, users, flat = reply
    rooms = {_text(flat[i], "a room"): _texts(flat[i + 1], "room members")
             for i in range(0, len(flat), 2)}
    return _number(seq, "a seq"), presence_of(_texts(users, "users"), rooms)


async def load_view(client: Any, keys: Keys) -> ClusterView:
    """Every live node's whole presence: one script for the leases, then one per node,
    whatever the number of rooms (a process that keeps a view of its own)."""
    view = ClusterView()
    view.leases("", await leases(client, keys, ""), time.monotonic())
    for node in view.reloads_wanted():
        view.loaded(node, *(await load(client, keys, node) or (None, None)))
    return view


async def has_user(client: Any, keys: Keys, user: UserId) -> bool:
    """Whether a node with a lease has `user`: one round trip, whatever the size."""
    reply = await client.eval(HAS_USER, [keys.user_nodes(str(user))], [keys.tag])
    return bool(reply == 1)


async def users(client: Any, keys: Keys) -> set[UserId]:
    """Every user of a node with a lease: one round trip, O(nodes) work in Redis."""
    reply = await client.eval(USERS, [keys.nodes()], [keys.tag])
    return {user_from_text(u) for u in _texts(reply, "users")}


async def room_members(client: Any, keys: Keys, room: str) -> set[UserId]:
    """The members of `room` on the nodes with a lease (the lobby: every user; a
    personal room: its owner, if connected): one round trip."""
    if room == LOBBY:
        return await users(client, keys)
    owner = personal_room_owner(room)
    if owner is not None:
        return {owner} if await has_user(client, keys, owner) else set()
    reply = await client.eval(MEMBERS, [keys.room_index(room)], [keys.tag])
    return {user_from_text(u) for u in _texts(reply, "room members")}
