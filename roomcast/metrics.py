"""What the service counts.

The actors count into a `Metrics` with plain integer adds: a frame in, a publish or a
refused delivery costs tens of nanoseconds, where a prometheus-client counter takes a
lock (microseconds, measured). `roomcast.http.prometheus` turns the counts into metric
families when `/metrics` is scraped.

No label carries a token, a user id or a room name: labels are frame types, error
codes, handshake causes, close codes and actor kinds, all from fixed sets.
"""

from __future__ import annotations

import bisect
from collections import Counter

import attrs

from roomcast.protocol.wsframe import frame_type

# Seconds a room actor spends on one publish: from microseconds (a few members) to
# tens of milliseconds (tens of thousands).
FAN_OUT_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)


@attrs.define
class Histogram:
    """Counts per bucket (not cumulative) and their sum; cumulated at scrape time."""

    bounds: tuple[float, ...] = FAN_OUT_BUCKETS
    counts: list[int] = attrs.field(init=False)
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            cumulative += count
            out.append((bound, cumulative))
        return out


@attrs.define
class Metrics:
    """The service's counters. The actors call these methods; nothing else writes."""

    frames_in: Counter[str] = attrs.Factory(Counter)  # by client frame type
    frames_out: Counter[str] = attrs.Factory(Counter)  # by server frame type
    deliveries: int = 0  # (published frame, connection) pairs handed over by rooms
    drops: Counter[str] = attrs.Factory(Counter)  # by reason
    handshake_failures: Counter[str] = attrs.Factory(Counter)  # by cause
    closes: Counter[int] = attrs.Factory(Counter)  # by the close code the service chose
    restarts: Counter[str] = attrs.Factory(Counter)  # by actor kind
    # Messages and replies from Redis dropped for breaking their format, by kind
    # (`presence_not_json`, `room_frame`...: a fixed set, see actors/streams.py).
    redis_dropped: Counter[str] = attrs.Factory(Counter)
    fan_out: Histogram = attrs.Factory(Histogram)

    def received(self, type_: str) -> None:
        self.frames_in[type_] += 1

    def replied(self, type_: str) -> None:
        self.frames_out[type_] += 1

    def refused(self, code: str) -> None:
        """A client frame refused (its error code: rate_limited, invalid_message...)."""
        self.drops[code] += 1

    def not_delivered(self, reason: str) -> None:
        """A frame for a client not queued: `closed` or `slow_consumer`."""
        self.drops[reason] += 1

    def fanned_out(self, frame: bytes, connections: int, seconds: float) -> None:
        self.deliveries += connections
        self.frames_out[frame_type(frame)] += connections
        self.fan_out.observe(seconds)

    def answered(self, answer: bytes, recovered: list[bytes]) -> None:
        """A join's answer (or a welcome), sent by the room with the frames recovered."""
        for frame in (answer, *recovered):
            self.frames_out[frame_type(frame)] += 1

    def handshake_failed(self, cause: str) -> None:
        self.handshake_failures[cause] += 1

    def closed(self, code: int) -> None:
        self.closes[int(code)] += 1

    def dropped_from_redis(self, kind: str) -> None:
        self.redis_dropped[kind] += 1

    def restarted(self, actor_name: str) -> None:
        # "room project_42" counts as "room": room names are not labels.
        self.restarts[actor_name.split(" ", 1)[0]] += 1


# Where actors count when no service started them (unit tests): read by nobody.
UNCOUNTED = Metrics()
