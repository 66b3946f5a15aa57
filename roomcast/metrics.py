"""What the service counts, and its Prometheus exposition.

The actors count into a `Metrics` with plain integer adds: a frame in, a publish or a
refused delivery costs tens of nanoseconds, where a prometheus-client counter takes a
lock (microseconds, measured). A collector turns the counts into metric families when
`/metrics` is scraped, into a `CollectorRegistry` of the service's own, so that several
services in one process (tests) never share or collide.

No label carries a token, a user id or a room name: labels are frame types, error
codes, handshake causes, close codes and actor kinds, all from fixed sets.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from roomcast.protocol.wsframe import frame_type

if TYPE_CHECKING:
    from roomcast.service import Service

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
        cumulative, out = 0, []
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

    def restarted(self, actor_name: str) -> None:
        # "room project_42" counts as "room": room names are not labels.
        self.restarts[actor_name.split(" ", 1)[0]] += 1


# Where actors count when no service started them (unit tests): read by nobody.
UNCOUNTED = Metrics()


def _counter(name: str, doc: str, label: str, counts: Counter[str] | Counter[int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([str(value)], count)
    return family


class _Collector:
    """Reads the service's state and counters at scrape time."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        service, m = self._service, self._service.metrics
        registry = service.registry
        gauges = {
            "roomcast_connections": ("open WebSocket connections on this node",
                                     sum(map(len, registry.users.values()))),
            "roomcast_users": ("distinct users connected to this node", len(registry.users)),
            "roomcast_rooms": ("live rooms on this node, personal rooms and the lobby included",
                               len(registry.room_names())),
            "roomcast_ready": ("1 while the node accepts clients (see /readyz)",
                               int(service.ready)),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        yield _counter("roomcast_frames_in", "client frames handled, by type", "type",
                       m.frames_in)
        yield _counter("roomcast_frames_out", "frames queued to clients, by type", "type",
                       m.frames_out)
        yield CounterMetricFamily("roomcast_deliveries",
                                  "published frames handed to a connection by a room",
                                  value=m.deliveries)
        yield _counter("roomcast_drops", "frames refused or not delivered, by reason",
                       "reason", m.drops)
        yield _counter("roomcast_handshake_failures", "refused or unfinished handshakes, "
                       "by cause", "cause", m.handshake_failures)
        yield _counter("roomcast_closes", "connections closed, by the close code the "
                       "service sent (4009 slow consumer, 4008 policy...)", "code", m.closes)
        yield _counter("roomcast_actor_restarts", "actor restarts by the supervisor, by "
                       "actor kind", "actor", m.restarts)
        yield HistogramMetricFamily("roomcast_fan_out_seconds",
                                    "time a room actor spends on one publish",
                                    buckets=m.fan_out.buckets(), sum_value=m.fan_out.total)


def prometheus_registry(service: Service) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(service))
    return registry


# What prometheus-client's own server sends with this format (every Prometheus reads it).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


def exposition(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format."""
    return generate_latest(registry)

