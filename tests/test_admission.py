"""The pending-handshake rule (protocol/admission.py), with plain values and a
hypothesis model: counts never negative, never past their bounds, no address kept
after its last socket left."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.admission import Admission, Admitted, Refusal, address_key


def test_a_socket_past_the_per_address_bound_is_refused():
    admission = Admission(total=100, per_address=2)
    first, second = admission.arrive("10.0.0.1"), admission.arrive("10.0.0.1")
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert admission.arrive("10.0.0.1") is Refusal.TOO_MANY_FROM_ADDRESS
    assert isinstance(admission.arrive("10.0.0.2"), Admitted)  # other addresses unaffected
    admission.release(first.ticket)
    assert isinstance(admission.arrive("10.0.0.1"), Admitted)


def test_past_the_total_the_oldest_pending_socket_makes_room():
    admission = Admission(total=2, per_address=0)
    old, middle = admission.arrive("a"), admission.arrive("b")
    assert isinstance(old, Admitted) and isinstance(middle, Admitted)
    new = admission.arrive("c")
    assert isinstance(new, Admitted) and new.evicted == old.ticket
    assert admission.pending == 2 and admission.pending_from("a") == 0
    assert admission.release(old.ticket) is False  # the eviction released it already
    assert admission.pending == 2


def test_no_per_address_limit_when_zero():
    admission = Admission(total=1000, per_address=0)
    assert all(isinstance(admission.arrive("a"), Admitted) for _ in range(1000))


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("not an address", "not an address"),
    ],
)
def test_address_key(host, key):
    assert address_key(host) == key


@given(
    total=st.integers(1, 6),
    per_address=st.integers(0, 4),
    steps=st.lists(
        st.tuples(st.sampled_from(["arrive", "release", "release_again"]),
                  st.sampled_from(["a", "b", "c"]), st.integers(0, 50)),
        max_size=80,
    ),
)
def test_counts_match_a_model_and_never_leak(total, per_address, steps):
    admission = Admission(total=total, per_address=per_address)
    live: list = []  # tickets pending, oldest first
    released: list = []
    for action, address, pick in steps:
        if action == "arrive":
            outcome = admission.arrive(address)
            from_address = sum(1 for t in live if t.address == address)
            if per_address and from_address >= per_address:
                assert outcome is Refusal.TOO_MANY_FROM_ADDRESS
                continue
            assert isinstance(outcome, Admitted)
            if len(live) >= total:
                assert outcome.evicted == live.pop(0)
                released.append(outcome.evicted)
            else:
                assert outcome.evicted is None
            live.append(outcome.ticket)
        elif action == "release" and live:
            ticket = live.pop(pick % len(live))
            assert admission.release(ticket) is True
            released.append(ticket)
        elif action == "release_again" and released:
            assert admission.release(released[pick % len(released)]) is False
        assert admission.pending == len(live) <= total
        counts = Counter(t.address for t in live)
        for name in "abc":
            assert admission.pending_from(name) == counts[name] >= 0
            assert not per_address or counts[name] <= per_address
        assert admission.addresses == len(counts)
    for ticket in list(live):
        admission.release(ticket)
    assert admission.pending == 0 and admission.addresses == 0
