"""The service: config in, actors started, the WebSocket listener bound, a handle out.

The ports beside the WebSocket gateway (the HTTP port) are started by the module that
composes a whole node, `roomcast.node`, through `ports`: this module imports nothing
above it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from roomcast.actors.backplane import Backplane
from roomcast.actors.gateway import Gateway
from roomcast.actors.keeper import Keeper
from roomcast.actors.registry import Registry
from roomcast.actors.supervisor import Escalation, Supervisor
from roomcast.auth import Authenticator, JwtAuthenticator, checked
from roomcast.config import Config
from roomcast.facade import NotificationService
from roomcast.metrics import Metrics
from roomcast.protocol.budget import HistoryBudget
from roomcast.protocol.roomlog import Retention

log = logging.getLogger(__name__)


class Port(Protocol):
    """Another server of the node (the HTTP port), started in the actors' nursery once
    the service runs, cancelled after the drain; reports the port it bound."""

    async def __call__(self, service: Service, *, task_status: trio.TaskStatus[int]) -> None:
        ...


class ServiceFailed(Exception):
    """The service stopped itself: an actor failed past its restart policy. Every
    client was told 1001 first."""


@attrs.define
class Service:
    """A running service: where it listens, and its notification facade."""

    config: Config
    port: int
    notifications: NotificationService
    registry: Registry
    gateway: Gateway
    supervisor: Supervisor
    metrics: Metrics = attrs.field(repr=False)
    _scope: trio.CancelScope
    http_port: int | None = None  # None: no HTTP port (http_port = -1)
    backplane: Backplane | None = None  # with a Redis URL: this node's link to the others

    @property
    def ready(self) -> bool:
        """Accepting clients, and (in a cluster) connected to Redis."""
        return not self.unready_reasons()

    def unready_reasons(self) -> list[str]:
        """Why the node is not ready (`/readyz` shows them); empty when it is."""
        reasons = ["draining"] if self.gateway.draining else []
        backplane = self.backplane
        if backplane is not None and not backplane.healthy:
            reasons.append("redis_unavailable")
        return reasons

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{self.config.path}"


@asynccontextmanager
async def open_service(
    config: Config | None = None,
    *,
    authenticator: Authenticator | None = None,
    ports: Sequence[Port] = (),
) -> AsyncIterator[Service]:
    """Bind, start the actors (and `ports`), and yield a `Service`. However the body
    ends (cancelled included), every client is first closed with 1001, within
    `shutdown_timeout`. `roomcast.open_service` is this with the HTTP port."""
    config = config or Config()
    authenticate = checked(authenticator or JwtAuthenticator(config))
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    try:
        async with trio.open_nursery() as nursery:
            service: Service = await nursery.start(_run, config, authenticate, listeners,
                                                   ports)
            token = service.notifications._bind()
            try:
                yield service
            finally:
                service.notifications._unbind(token)
                with trio.CancelScope(shield=True):
                    await service.gateway.drain(config.shutdown_timeout)
                    if service.backplane is not None:
                        await service.backplane.leave_cluster()
                service._scope.cancel()
    except* ServiceFailed as group:
        raise group.exceptions[0] from None
    finally:
        log.info("roomcast stopped")


async def _run(
    config: Config,
    authenticate: Authenticator,
    listeners: list[trio.SocketListener],
    ports: Sequence[Port],
    task_status: trio.TaskStatus[Service],
) -> None:
    # Shielded: cancelling the caller must not cut the connections before `drain`
    # has told each client 1001; `open_service` cancels this scope right after.
    failures: list[Escalation] = []
    failed = trio.Event()

    def escalate(failure: Escalation) -> None:
        failures.append(failure)
        failed.set()

    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as actors:
            metrics = Metrics()
            supervisor = Supervisor(
                actors, config.restart_intensity, config.restart_period, escalate, metrics
            )
            history = Retention(size=config.history_size, ttl=config.history_ttl,
                                budget=HistoryBudget(config.history_memory, config.history_ttl))
            registry = Registry(config.mailbox_size, supervisor.start, history)
            keeper = Keeper(config.ping_interval, config.ping_timeout, config.jwt_leeway)
            supervisor.start(registry)
            supervisor.start(keeper)
            backplane = None
            if config.redis_url:
                backplane = registry.backplane = Backplane(config, registry)
                supervisor.start(backplane)
            gateway = Gateway(config, registry, keeper, authenticate)
            notifications = NotificationService(registry)
            # Connection tasks inherit the context, so the facade finds this service.
            token = notifications._bind()
            await actors.start(gateway.serve, listeners)
            notifications._unbind(token)
            port = listeners[0].socket.getsockname()[1]
            log.info("roomcast listening on ws://%s:%d%s", config.host, port, config.path)
            service = Service(
                config, port, notifications, registry, gateway, supervisor, metrics, scope,
                backplane=backplane,
            )
            for port in ports:
                # In this nursery: it stops with the actors, after the drain.
                service.http_port = await actors.start(port, service)
            task_status.started(service)
            await failed.wait()
            log.critical("stopping the service: %s", failures[0])
            await gateway.drain(config.shutdown_timeout)
            scope.cancel()
    registry.stop()  # a stale handle's calls now answer "nobody" instead of waiting
    if failures:
        raise ServiceFailed(str(failures[0])) from failures[0]
