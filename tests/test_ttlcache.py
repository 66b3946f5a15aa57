"""The join authorizer's cache rule (roomcast/protocol/ttlcache.py) with plain values:
times are floats passed in, nothing waits; then its promises under hypothesis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.ttlcache import TtlCache


def test_an_answer_is_kept_for_ttl_seconds_then_forgotten():
    cache: TtlCache[str, bool] = TtlCache(ttl=5.0, max_entries=10)
    cache.put("a", False, now=100.0)
    assert cache.get("a", now=100.0) is False
    assert cache.get("a", now=104.999) is False
    assert cache.get("a", now=105.0) is None
    assert len(cache) == 0  # the expired entry went on the read


def test_a_new_put_restarts_the_time_and_replaces_the_value():
    cache: TtlCache[str, bool] = TtlCache(ttl=5.0, max_entries=10)
    cache.put("a", True, now=0.0)
    cache.put("a", False, now=4.0)
    assert cache.get("a", now=8.0) is False
    assert len(cache) == 1


def test_ttl_zero_keeps_nothing():
    cache: TtlCache[str, bool] = TtlCache(ttl=0.0, max_entries=10)
    cache.put("a", True, now=0.0)
    assert len(cache) == 0
    assert cache.get("a", now=0.0) is None


def test_past_the_bound_the_oldest_put_goes():
    cache: TtlCache[str, int] = TtlCache(ttl=60.0, max_entries=3)
    for i, key in enumerate("abcd"):
        cache.put(key, i, now=float(i))
    assert len(cache) == 3
    assert cache.get("a", now=4.0) is None
    assert [cache.get(key, now=4.0) for key in "bcd"] == [1, 2, 3]


def test_expired_entries_make_room_before_a_live_one_is_evicted():
    cache: TtlCache[str, int] = TtlCache(ttl=10.0, max_entries=2)
    cache.put("old", 0, now=0.0)
    cache.put("live", 1, now=5.0)
    cache.put("new", 2, now=11.0)  # "old" expired at 10: it goes, "live" stays
    assert cache.get("live", now=11.0) == 1
    assert cache.get("new", now=11.0) == 2


def test_a_key_put_again_counts_as_the_newest():
    cache: TtlCache[str, int] = TtlCache(ttl=60.0, max_entries=2)
    cache.put("a", 0, now=0.0)
    cache.put("b", 1, now=1.0)
    cache.put("a", 2, now=2.0)
    cache.put("c", 3, now=3.0)  # "b" is now the oldest put
    assert cache.get("b", now=3.0) is None
    assert cache.get("a", now=3.0) == 2


def test_expired_entries_go_at_the_next_put_not_only_when_read():
    cache: TtlCache[str, int] = TtlCache(ttl=10.0, max_entries=5)
    cache.put("a", 0, now=0.0)
    cache.put("b", 1, now=1.0)
    cache.put("c", 2, now=20.0)
    assert len(cache) == 1


def test_twenty_thousand_distinct_keys_stay_within_the_bound():
    cache: TtlCache[tuple[int, str], bool] = TtlCache(ttl=5.0, max_entries=10_000)
    for i in range(20_000):
        cache.put((1, f"room{i}"), i % 2 == 0, now=i * 1e-5)
        assert len(cache) <= 10_000
    assert len(cache) == 10_000
    assert cache.get((1, "room0"), now=0.2) is None
    assert cache.get((1, "room19999"), now=0.2) is False


def test_a_bound_below_one_is_refused():
    with pytest.raises(ValueError):
        TtlCache(ttl=1.0, max_entries=0)


# Any sequence of puts and gets, with time moving forward --------------------------------

_steps = st.lists(
    st.tuples(
        st.sampled_from(["put", "get"]),
        st.integers(0, 7),  # the key
        st.floats(0, 3, allow_nan=False),  # time passed before the step
    ),
    max_size=60,
)


@given(
    steps=_steps,
    ttl=st.floats(0, 5, allow_nan=False),
    max_entries=st.integers(1, 5),
)
def test_never_past_the_bound_never_stale_and_kept_while_it_can_be(
    steps: list[tuple[str, int, float]], ttl: float, max_entries: int
):
    """Held against a record of the puts: a get returns only the value of the key's
    last put, and only within `ttl` of it; it returns it whenever that put is within
    `ttl` and fewer than `max_entries` distinct keys were put since (itself included);
    the cache never holds more than `max_entries`."""
    cache: TtlCache[int, int] = TtlCache(ttl=ttl, max_entries=max_entries)
    puts: list[tuple[int, float, int]] = []  # (key, time, value), in order
    now = 0.0
    for serial, (action, key, elapsed) in enumerate(steps):
        now += elapsed
        if action == "put":
            cache.put(key, serial, now)
            puts.append((key, now, serial))
        else:
            got = cache.get(key, now)
            last = next((i for i in range(len(puts) - 1, -1, -1) if puts[i][0] == key), None)
            if last is None:
                assert got is None
                continue
            _, put_at, value = puts[last]
            fresh = now < put_at + ttl
            keys_since = {k for k, _, _ in puts[last:]}
            assert got in (None, value)
            if not fresh:
                assert got is None
            elif len(keys_since) <= max_entries:
                assert got == value
        assert len(cache) <= max_entries
