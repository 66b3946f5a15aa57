"""Cluster presence as pure rules: who is on a node, the index entries a change of it
writes to Redis, and a node's view of the others kept from their numbered changes.

No Redis, no clock of its own (times are passed in): `actors/presence.py` holds the
keys and the Lua that apply `index_writes`, `actors/backplane.py` drives `PresenceView`.

The view's promise: built from any sequence of a node's changes (full presences and
diffs, each numbered by the node, `seq`), some lost, some arriving after a reload that
already held them, it equals what a full reload from Redis gives, once the reloads it
asks for (`reloads_wanted`) are done.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from roomcast.protocol.codec import converter, structure
from roomcast.protocol.rules import UserId, user_id_or_none

# Changes held for a node while its reload is under way, at most; past it they are
# dropped, and the reload's seq tells whether another one is needed.
MAX_BUFFERED = 1024


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

    def empty(self) -> bool:
        return not self.users and not self.rooms


def normalised(presence: Presence) -> Presence:
    """Room members who are connected users only, and no empty room: a snapshot taken
    mid-disconnect may list a user in a room after it left `users`."""
    rooms = {room: members & presence.users for room, members in presence.rooms.items()}
    return Presence(set(presence.users), {room: m for room, m in rooms.items() if m})


def diff(old: Presence, new: Presence) -> tuple[Presence, Presence]:
    """What to add and what to remove to turn `old` into `new`."""
    add = Presence(new.users - old.users)
    remove = Presence(old.users - new.users)
    for room in new.rooms.keys() | old.rooms.keys():
        now, before = new.rooms.get(room, set()), old.rooms.get(room, set())
        if now - before:
            add.rooms[room] = now - before
        if before - now:
            remove.rooms[room] = before - now
    return add, remove


def apply_diff(presence: Presence, add: Presence, remove: Presence) -> None:
    """`presence` changed in place by a diff (`diff`'s two halves)."""
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


# The index entries ------------------------------------------------------------------
#
# Beside a node's own sets (its users, its rooms, each room's members), two indexes
# answer a worker's question in one step whatever the number of rooms and nodes:
# per user, the nodes that have them; per room, `node|user` for each member. An entry
# names a set by kind and name; `actors/presence.py` turns it into a key.

NODE_USERS = "node_users"  # name: the node         members: user ids
NODE_ROOMS = "node_rooms"  # name: the node         members: room names
NODE_ROOM = "node_room"  # name: (node, room)       members: user ids
USER_NODES = "user_nodes"  # name: the user id      members: node ids
ROOM_MEMBERS = "room_members"  # name: the room     members: member_entry(node, user)

SetName = tuple[str, str] | tuple[str, str, str]  # (kind, name) or (NODE_ROOM, node, room)
Write = tuple[str, SetName, str]  # ("add" or "remove", the set, the member)


def member_entry(node: str, user: str) -> str:
    """A room index's entry: node ids never hold `|` (ours are hex), user ids may."""
    return f"{node}|{user}"


def index_writes(node: str, add: Presence, remove: Presence, after: Presence) -> list[Write]:
    """What the diff (`add`, `remove`, leading to `after`) writes: the node's own sets
    and both indexes, removals first. Applied in order to what an earlier list of
    writes left, it leaves exactly what `index_writes(node, after, Presence(), after)`
    writes to empty sets."""
    writes: list[Write] = []
    for user in sorted(remove.users):
        writes.append(("remove", (NODE_USERS, node), user))
        writes.append(("remove", (USER_NODES, user), node))
    for room, members in sorted(remove.rooms.items()):
        for user in sorted(members):
            writes.append(("remove", (NODE_ROOM, node, room), user))
            writes.append(("remove", (ROOM_MEMBERS, room), member_entry(node, user)))
        if room not in after.rooms:
            writes.append(("remove", (NODE_ROOMS, node), room))
    for user in sorted(add.users):
        writes.append(("add", (NODE_USERS, node), user))
        writes.append(("add", (USER_NODES, user), node))
    for room, members in sorted(add.rooms.items()):
        writes.append(("add", (NODE_ROOMS, node), room))
        for user in sorted(members):
            writes.append(("add", (NODE_ROOM, node, room), user))
            writes.append(("add", (ROOM_MEMBERS, room), member_entry(node, user)))
    return writes


# The view of the other nodes --------------------------------------------------------


@attrs.frozen
class PresenceChange:
    """One message on the presence channel, checked: a node's goodbye, its whole
    presence, or what to add and remove; `seq` numbers a node's changes (1, 2, ...;
    the full presence written after a start or a Redis restart takes the next number
    too). A change without `seq` (a node of an older version) is applied as it comes."""

    node: str
    bye: bool = False
    full: Presence | None = None
    add: Presence = attrs.Factory(Presence)
    remove: Presence = attrs.Factory(Presence)
    seq: int | None = None


@attrs.frozen
class Lease:
    """A node's lease as Redis holds it: the seq of its last presence write, and the
    milliseconds before the lease key expires unless renewed."""

    seq: int
    ttl_ms: int


@attrs.define
class NodeState:
    presence: Presence = attrs.Factory(Presence)
    seq: int = 0
    # Local clock time its lease key ends, at the latest (None: not timed).
    expires: float | None = None
    timed: bool = False  # its lease was read at least once
    # A reload is wanted: a change was missed; the changes since are held here.
    stale: bool = False
    held: list[PresenceChange] = attrs.Factory(list)


class PresenceView:
    """The other nodes' presence, as this node last heard: kept from their changes on
    the presence channel, reloaded from Redis for a node only when a change of it was
    missed (a gap in its seq), and dropped when its lease ends."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeState] = {}

    # questions (never wait) ---------------------------------------------------------

    def users(self) -> set[UserId]:
        return {user_from_text(u)
                for state in self.nodes.values() for u in state.presence.users}

    def has_user(self, user_id: UserId) -> bool:
        text = str(user_id)
        return any(text in state.presence.users for state in self.nodes.values())

    def members(self, room: str) -> set[UserId]:
        """Members of a named room (neither the lobby nor a personal room)."""
        return {user_from_text(u) for state in self.nodes.values()
                for u in state.presence.rooms.get(room, ()) if u in state.presence.users}

    def presence(self, node: str) -> Presence | None:
        state = self.nodes.get(node)
        return None if state is None else state.presence

    # what changes it ---------------------------------------------------------------

    def apply(self, change: PresenceChange) -> None:
        """A change heard on the presence channel. A gap in a node's seq, or a diff of
        a node not held, makes that node stale (see `reloads_wanted`)."""
        node = change.node
        if change.bye:
            self.nodes.pop(node, None)
            return
        state = self.nodes.get(node)
        if change.seq is None:  # unnumbered: as it comes
            if change.full is not None:
                self.nodes[node] = NodeState(normalised(change.full))
            elif state is not None:
                _apply(state, change)
            return
        if state is None:
            state = self.nodes[node] = NodeState(stale=change.full is None)
        if state.stale:
            if change.full is not None and change.seq > state.seq:
                self._take(state, change)
                state.stale = False
                state.held = [held for held in state.held if held.seq and held.seq > state.seq]
                self._release(state)
            elif len(state.held) < MAX_BUFFERED:
                state.held.append(change)
            return
        if change.seq <= state.seq:
            return  # held already (a reload read it)
        if change.full is not None or change.seq == state.seq + 1:
            self._take(state, change)
        else:
            state.stale = True
            state.held.append(change)

    def reloads_wanted(self) -> list[str]:
        """The nodes to read whole from Redis (`loaded`), in name order."""
        return sorted(node for node, state in self.nodes.items() if state.stale)

    def loaded(self, node: str, seq: int | None, presence: Presence | None) -> None:
        """What Redis held for `node` (`None`: its lease had ended). Applied if the node
        is still wanted; then the changes held since, in order, while they follow on."""
        state = self.nodes.get(node)
        if state is None or not state.stale:
            return  # a goodbye or a full presence came meanwhile
        if presence is None or seq is None:
            del self.nodes[node]
            return
        if seq >= state.seq:
            state.presence, state.seq = normalised(presence), seq
        state.stale = False
        self._release(state)

    def interrupted(self) -> None:
        """The channel was not heard for a while: every node's changes may be missed."""
        for state in self.nodes.values():
            state.stale = True

    def leases(self, me: str, found: Mapping[str, Lease], asked_at: float) -> list[str]:
        """The lease keys as Redis held them at `asked_at` (local clock) or later: a node
        with no lease is dropped (the names returned), a new one, or one whose last
        write this view missed, is to be reloaded; each node's lease end is noted."""
        dropped = [node for node in self.nodes if node not in found]
        for node in dropped:
            del self.nodes[node]
        for node, lease in found.items():
            if node == me:
                continue
            state = self.nodes.get(node)
            if state is None:
                state = self.nodes[node] = NodeState(stale=True)
            elif lease.seq > state.seq:
                state.stale = True  # a change was missed (or is on its way: harmless)
            # A lease key without an expiry (-1: not one of ours) is not timed.
            state.expires = asked_at + lease.ttl_ms / 1000 if lease.ttl_ms >= 0 else None
            state.timed = True
        return dropped

    def untimed(self) -> bool:
        """A node heard of whose lease was never read (it wants a `leases` soon: its
        lease's end is what drops it, whatever this node's own tick)."""
        return any(not state.timed for state in self.nodes.values())

    def next_lease_end(self) -> float | None:
        """When the first lease known to this view ends, unless renewed meanwhile."""
        ends = [state.expires for state in self.nodes.values() if state.expires is not None]
        return min(ends, default=None)

    # inside ------------------------------------------------------------------------

    @staticmethod
    def _take(state: NodeState, change: PresenceChange) -> None:
        assert change.seq is not None
        if change.full is not None:
            state.presence = normalised(change.full)
        else:
            _apply(state, change)
        state.seq = change.seq

    def _release(self, state: NodeState) -> None:
        """Apply the held changes that follow on from `state.seq`; stale again at a gap."""
        held = sorted((c for c in state.held if c.seq is not None and c.seq > state.seq),
                      key=lambda c: c.seq or 0)
        state.held = []
        for position, change in enumerate(held):
            assert change.seq is not None
            if change.seq <= state.seq:
                continue
            if change.full is None and change.seq != state.seq + 1:
                state.stale = True
                state.held = held[position:]
                return
            self._take(state, change)


def _apply(state: NodeState, change: PresenceChange) -> None:
    # Not normalised again (a node's whole presence per change): the writer's diffs are
    # between normalised presences, and `members` asks for connected users anyway.
    apply_diff(state.presence, change.add, change.remove)


def user_from_text(text: str) -> UserId:
    """A user id as Redis stores it (text) back to the id (an int where it is one)."""
    user = user_id_or_none(text)
    return text if user is None else user


def presence_of(users: Iterable[str], rooms: Mapping[str, Iterable[str]]) -> Presence:
    """A Presence from plain iterables (what Redis answered, decoded)."""
    return normalised(Presence(set(users), {room: set(m) for room, m in rooms.items()}))
