"""The Prometheus exposition of what the service counts (`roomcast.metrics`).

A collector turns the counts into metric families when `/metrics` is scraped, into a
`CollectorRegistry` of the service's own, so that several services in one process
(tests) never share or collide. No label carries a token, a user id or a room name.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from roomcast.service import Service


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
        backplane = service.backplane
        node = GaugeMetricFamily("roomcast_node", "1, labelled with the process that "
                                 "answered (a worker of --workers N) and its cluster node id",
                                 labels=["pid", "node"])
        node.add_metric([str(os.getpid()), backplane.node_id if backplane else ""], 1)
        yield node
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
        yield _counter("roomcast_redis_dropped", "malformed messages and replies from "
                       "Redis, dropped, by kind", "kind", m.redis_dropped)
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

