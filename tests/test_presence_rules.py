"""Cluster presence's pure rules (protocol/presence_rules.py), with plain values: the
index entries a change writes, and the view kept from numbered changes."""

from __future__ import annotations

import itertools
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

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
    diff,
    index_writes,
    member_entry,
    normalised,
)

USERS = st.sampled_from(["1", "2", "3", "x|y", "42"])
ROOMS = st.sampled_from(["a", "b", "c:d"])
PRESENCES = st.builds(
    lambda users, rooms: normalised(Presence(users, rooms)),
    st.sets(USERS, max_size=4),
    st.dictionaries(ROOMS, st.sets(USERS, min_size=1, max_size=3), max_size=3),
)


def apply_writes(store: dict[tuple[str, ...], set[str]], writes) -> None:
    for op, name, member in writes:
        if op == "add":
            store[name].add(member)
        else:
            store[name].discard(member)
            if not store[name]:
                del store[name]  # Redis drops an emptied set


def full_write(node: str, presence: Presence) -> dict[tuple[str, ...], set[str]]:
    store: dict[tuple[str, ...], set[str]] = defaultdict(set)
    apply_writes(store, index_writes(node, presence, Presence(), presence))
    return dict(store)


@given(st.lists(PRESENCES, min_size=1, max_size=8))
def test_the_writes_of_successive_changes_equal_one_write_of_the_last_presence(presences):
    store: dict[tuple[str, ...], set[str]] = defaultdict(set)
    old = Presence()
    for new in presences:
        add, remove = diff(old, new)
        apply_writes(store, index_writes("n1", add, remove, new))
        old = new
    assert {k: v for k, v in store.items() if v} == full_write("n1", presences[-1])


@given(PRESENCES, PRESENCES)
def test_the_indexes_say_what_the_nodes_own_sets_say(one, two):
    store = full_write("n1", one)
    for name, members in full_write("n2", two).items():
        store[name] = store.get(name, set()) | members
    for node, presence in (("n1", one), ("n2", two)):
        for user in presence.users:
            assert node in store[(USER_NODES, user)]
            assert user in store[(NODE_USERS, node)]
        for room, members in presence.rooms.items():
            assert room in store[(NODE_ROOMS, node)]
            for user in members:
                assert user in store[(NODE_ROOM, node, room)]
                assert member_entry(node, user) in store[(ROOM_MEMBERS, room)]
    indexed = {name[1] for name in store if name[0] == USER_NODES}
    assert indexed == one.users | two.users


def test_a_room_member_is_a_connected_user():
    assert normalised(Presence({"1"}, {"r": {"1", "2"}, "s": {"3"}})) == \
        Presence({"1"}, {"r": {"1"}})


# the view ---------------------------------------------------------------------------


def changes_of(node: str, presences: list[Presence]) -> list[PresenceChange]:
    """What a node publishes: its first presence whole, then diffs, numbered from 1."""
    changes = [PresenceChange(node, full=presences[0], seq=1)]
    for seq, (old, new) in enumerate(itertools.pairwise(presences), start=2):
        add, remove = diff(old, new)
        changes.append(PresenceChange(node, add=add, remove=remove, seq=seq))
    return changes


def reload_all(view: PresenceView, redis: dict[str, tuple[int, Presence]]) -> None:
    for node in view.reloads_wanted():
        seq, presence = redis[node]
        view.loaded(node, seq, Presence(set(presence.users),
                                        {r: set(m) for r, m in presence.rooms.items()}))


@settings(max_examples=300)
@given(st.lists(PRESENCES, min_size=1, max_size=10), st.data())
def test_a_view_from_any_changes_some_lost_equals_a_full_reload(presences, data):
    """Changes come in order, some lost; at any moment a reload may run, reading what
    Redis holds then (some changes later than those heard so far: the channel lags).
    Once the lease check has run and the reloads it asks for are done, the view is the
    node's last presence, as a full reload gives it."""
    changes = changes_of("b", presences)
    view = PresenceView()
    written = 0  # changes Redis holds (and has published)
    for index, change in enumerate(changes):
        written = max(written, index + 1)
        if data.draw(st.booleans(), label=f"reload before change {index + 1}"):
            written = data.draw(st.integers(written, len(changes)), label="redis is at")
            reload_all(view, {"b": (written, presences[written - 1])})
        if data.draw(st.integers(0, 3), label=f"lose change {index + 1}") != 0:
            view.apply(change)
    # The lease check (every lease / 3) tells a trailing change was missed.
    view.leases("me", {"b": Lease(len(changes), 1000)}, asked_at=0.0)
    reload_all(view, {"b": (len(changes), presences[-1])})
    assert view.reloads_wanted() == []
    assert view.presence("b") == presences[-1]
    assert view.nodes["b"].seq == len(changes)


@given(st.lists(PRESENCES, min_size=2, max_size=8))
def test_every_change_heard_in_order_needs_no_reload(presences):
    view = PresenceView()
    for change in changes_of("b", presences):
        view.apply(change)
        assert view.reloads_wanted() == []
    assert view.presence("b") == presences[-1]


def test_a_gap_asks_for_a_reload_and_the_changes_held_meanwhile_follow_it():
    p1, p2, p3, p4 = (Presence({"1"}), Presence({"1", "2"}), Presence({"2"}),
                      Presence({"2", "3"}))
    c1, _, c3, c4 = changes_of("b", [p1, p2, p3, p4])
    view = PresenceView()
    view.apply(c1)
    view.apply(c3)  # the change to p2 was lost
    assert view.reloads_wanted() == ["b"]
    view.apply(c4)  # held
    view.loaded("b", 2, p2)  # Redis held p2 when the reload ran; 3 and 4 follow on
    assert view.reloads_wanted() == []
    assert view.presence("b") == p4
    assert view.users() == {2, 3}


def test_a_change_a_reload_already_held_is_not_applied_twice():
    p1, p2 = Presence({"1"}), Presence({"1", "2"})
    _c1, c2 = changes_of("b", [p1, p2])
    view = PresenceView()
    view.apply(PresenceChange("b", add=Presence({"9"}), seq=5))  # a node not held yet
    view.loaded("b", 7, Presence({"1", "2", "3"}))
    view.apply(c2)  # late: seq 2 <= 7
    assert view.presence("b") == Presence({"1", "2", "3"})


def test_a_goodbye_or_an_ended_lease_drops_the_node_and_a_late_reload_does_not_revive_it():
    view = PresenceView()
    view.apply(PresenceChange("b", full=Presence({"1"}), seq=1))
    view.apply(PresenceChange("b", add=Presence({"2"}), seq=3))  # a gap: reload wanted
    view.apply(PresenceChange("b", bye=True))
    view.loaded("b", 3, Presence({"1", "2"}))  # read before the goodbye, answered after
    assert view.nodes == {}
    view.apply(PresenceChange("c", full=Presence({"3"}), seq=1))
    view.apply(PresenceChange("c", add=Presence({"4"}), seq=3))
    view.loaded("c", None, None)  # its lease had ended
    assert view.users() == set()


def test_leases_drop_the_missing_time_the_others_and_reload_the_new_and_the_behind():
    view = PresenceView()
    view.apply(PresenceChange("b", full=Presence({"1"}), seq=4))
    view.apply(PresenceChange("c", full=Presence({"2"}), seq=1))
    view.apply(PresenceChange("gone", full=Presence({"3"}), seq=1))
    assert view.untimed()
    found = {"me": Lease(9, 900), "b": Lease(4, 1500), "c": Lease(2, 300), "d": Lease(1, -1)}
    assert view.leases("me", found, asked_at=100.0) == ["gone"]
    assert "me" not in view.nodes
    assert view.reloads_wanted() == ["c", "d"]  # c missed a change; d is new
    assert view.nodes["b"].expires == 101.5 and view.nodes["d"].expires is None
    assert view.next_lease_end() == 100.3
    assert not view.untimed()
    assert view.users() == {1, 2}


def test_a_view_that_was_not_listening_reloads_every_node():
    view = PresenceView()
    view.apply(PresenceChange("b", full=Presence({"1"}), seq=1))
    view.apply(PresenceChange("c", full=Presence({"2"}), seq=1))
    view.interrupted()
    assert view.reloads_wanted() == ["b", "c"]
    view.apply(PresenceChange("b", full=Presence({"5"}), seq=2))  # a whole one will do
    assert view.reloads_wanted() == ["c"]
    assert view.presence("b") == Presence({"5"})


def test_members_are_connected_users_of_the_room_on_any_node():
    view = PresenceView()
    view.apply(PresenceChange("b", full=Presence({"1", "2"}, {"r": {"1"}}), seq=1))
    view.apply(PresenceChange("c", full=Presence({"x"}, {"r": {"x"}, "s": {"x"}}), seq=1))
    view.apply(PresenceChange("c", remove=Presence({"x"}), seq=2))  # left, rooms not yet
    assert view.members("r") == {1}
    assert view.has_user(2) and view.has_user("2") and not view.has_user("x")
