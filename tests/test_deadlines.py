"""The keeper's rule (roomcast/protocol/deadlines.py) with plain values: times are
floats on one clock, the jitter is a given function, nothing waits."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol.deadlines import GRANULARITY, JITTER, Deadlines, Heartbeat, TokenExpiry


def deadlines(jitter: float = 0.0, ping_interval: float = 10.0,
              ping_timeout: float = 5.0) -> Deadlines:
    return Deadlines(ping_interval, ping_timeout, jitter=lambda: jitter)


def due(rule: Deadlines, now: float) -> list[int]:
    popped = []
    while (conn_id := rule.pop_due(now)) is not None:
        popped.append(conn_id)
    return popped


def test_nothing_watched_never_wakes():
    assert deadlines().next_wakeup() == math.inf


def test_first_look_is_an_interval_plus_the_jitter_after_watch():
    rule = deadlines(jitter=0.5)
    rule.watch(1, now=100.0)
    look = 100.0 + 10.0 * (1 + JITTER * 0.5)
    assert rule.next_wakeup() == look + GRANULARITY
    assert due(rule, look - 0.001) == []
    assert due(rule, look) == [1]


def test_quiet_connection_is_pinged_then_times_out():
    rule = deadlines()
    rule.watch(1, now=0.0)
    assert due(rule, 10.0) == [1]
    assert rule.check(1, now=10.0, last_received=0.0) is Heartbeat.PING
    assert rule.next_wakeup() == 15.0 + GRANULARITY
    assert due(rule, 15.0) == [1]
    assert rule.check(1, now=15.0, last_received=0.0) is Heartbeat.TIMEOUT
    assert rule.next_wakeup() == math.inf  # no look after a timeout: it is to be closed


def test_a_look_before_the_timeout_waits_for_it():
    rule = deadlines()
    rule.watch(1, now=0.0)
    due(rule, 10.0)
    assert rule.check(1, now=10.0, last_received=0.0) is Heartbeat.PING
    # looked at again early (a coarse wake-up): still waiting for the pong
    assert rule.check(1, now=12.0, last_received=0.0) is None
    assert due(rule, 15.0) == [1, 1]


def test_a_pong_clears_the_ping_and_the_next_look_is_an_interval_after_it():
    rule = deadlines(jitter=1.0)
    rule.watch(1, now=0.0)
    due(rule, 12.5)
    assert rule.check(1, now=12.5, last_received=0.0) is Heartbeat.PING
    assert due(rule, 17.5) == [1]
    assert rule.check(1, now=17.5, last_received=13.0) is None  # the pong came at 13
    assert rule.next_wakeup() == 13.0 + 12.5 + GRANULARITY


def test_traffic_defers_the_ping():
    rule = deadlines()
    rule.watch(1, now=0.0)
    assert due(rule, 10.0) == [1]
    assert rule.check(1, now=10.0, last_received=4.0) is None  # a frame at 4
    assert due(rule, 13.9) == []
    assert due(rule, 14.0) == [1]
    assert rule.check(1, now=14.0, last_received=14.0 - 10.0) is Heartbeat.PING


def test_unwatched_connections_are_not_due():
    rule = deadlines()
    rule.watch(1, now=0.0)
    rule.watch(2, now=0.0)
    rule.expire_at(2, 3.0)
    rule.unwatch(2)
    assert rule.expired(100.0) == []
    assert due(rule, 100.0) == [1]
    assert 2 not in rule and len(rule) == 1


def test_watching_again_adds_no_second_look():
    rule = deadlines()
    rule.watch(1, now=0.0)
    rule.watch(1, now=5.0)
    assert due(rule, 100.0) == [1]


def test_expiry_is_due_once_at_its_deadline():
    rule = deadlines(ping_interval=1000.0)
    rule.watch(1, now=0.0)
    rule.expire_at(1, 30.0)
    assert rule.next_wakeup() == 30.0
    assert rule.expired(29.999) == []
    assert rule.expired(30.0) == [1]
    assert rule.expired(60.0) == []


def test_a_new_expiry_replaces_the_old_one_later_or_earlier():
    rule = deadlines(ping_interval=1000.0)
    rule.watch(1, now=0.0)
    rule.expire_at(1, 30.0)
    rule.expire_at(1, 120.0)  # refreshed
    assert rule.expired(60.0) == []
    assert rule.expired(120.0) == [1]
    rule.expire_at(1, 500.0)
    rule.expire_at(1, 200.0)  # refreshed to a shorter token
    assert rule.next_wakeup() == 200.0
    assert rule.expired(200.0) == [1]
    assert rule.expired(500.0) == []


def test_an_expiry_of_none_drops_the_deadline():
    rule = deadlines(ping_interval=1000.0)
    rule.watch(1, now=0.0)
    rule.expire_at(1, 30.0)
    rule.expire_at(1, None)
    assert rule.expired(1e9) == []


def test_refresh_floods_and_churn_keep_the_heaps_small():
    rule = deadlines()
    for conn_id in range(100):
        rule.watch(conn_id, now=0.0)
    for n in range(10_000):
        rule.expire_at(n % 100, 1000.0 + n)  # a refresh flood
    for conn_id in range(100, 10_100):  # churn
        rule.watch(conn_id, now=0.0)
        rule.unwatch(conn_id)
    assert len(rule._checks) + len(rule._expiries) <= 4 * len(rule) + 1
    assert sorted(rule.expired(1e9)) == list(range(100))


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1000)), max_size=60))
def test_each_watched_connection_expires_once_at_its_last_deadline(settings):
    rule = deadlines(ping_interval=1e9)
    last: dict[int, float] = {}
    for conn_id, deadline in settings:
        rule.watch(conn_id, now=0.0)
        rule.expire_at(conn_id, deadline)
        last[conn_id] = deadline
    seen: dict[int, float] = {}
    for now in sorted({*last.values(), 1000.0}):
        for conn_id in rule.expired(now):
            assert conn_id not in seen
            seen[conn_id] = now
    assert seen == last


def test_a_token_closes_its_connection_at_expiry_only_with_token_expiry_close() -> None:
    assert TokenExpiry.CLOSE.closes_at(1_700_000_000.0) == 1_700_000_000.0
    assert TokenExpiry.CONNECT.closes_at(1_700_000_000.0) is None
    assert TokenExpiry.CLOSE.closes_at(None) is None  # a token without exp
    assert TokenExpiry("connect") is TokenExpiry.CONNECT  # the setting's text
