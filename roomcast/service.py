"""The service: config in, actors started, the WebSocket listener bound, a handle out.

The ports beside the WebSocket gateway (the HTTP port) are started by the module that
composes a whole node, `roomcast.node`, through `ports`: this module imports nothing
above it."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from roomcast.actors.backplane import Backplane
from roomcast.actors.connection import JoinRules
from roomcast.actors.gateway import Gateway
from roomcast.actors.keeper import Keeper
from roomcast.actors.registry import Registry
from roomcast.actors.supervisor import Escalation, Supervisor
from roomcast.auth import Authenticator, JwtAuthenticator, RoomAuthorizer, checked
from roomcast.config import Config
from roomcast.facade import NotificationService
from roomcast.join_proxy import HttpJoinAuthorizer
from roomcast.limits import fit_descriptors
from roomcast.metrics import Metrics
from roomcast.protocol.access import RoomAccess
from roomcast.protocol.budget import HistoryBudget
from roomcast.protocol.deadlines import TokenExpiry
from roomcast.protocol.roomlog import Retention
from roomcast.tls import server_context

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
        scheme = "ws" if self.config.tls_cert is None else "wss"
        return f"{scheme}://{self.config.host}:{self.port}{self.config.path}"


@asynccontextmanager
async def open_service(
    config: Config | None = None,
    *,
    authenticator: Authenticator | None = None,
    room_authorizer: RoomAuthorizer | None = None,
    ports: Sequence[Port] = (),
) -> AsyncIterator[Service]:
    """Bind, start the actors (and `ports`), and yield a `Service`. However the body
    ends (cancelled included), every client is first closed with 1001, within
    `shutdown_timeout`. `roomcast.open_service` is this with the HTTP port.
    `room_authorizer`: asked about a join no other rule allowed (docs/security.md)."""
    config = config or Config()
    fit_descriptors(config)
    authenticate = checked(authenticator or JwtAuthenticator(config))
    tls = server_context(config)  # a bad certificate or key: TlsUnavailable, nothing bound
    listeners = await open_listeners(config)  # a port in use: nothing to close yet
    http_authorizer = HttpJoinAuthorizer(config) if config.join_url else None
    rules = join_rules(config, room_authorizer, http_authorizer)
    try:
        async with trio.open_nursery() as nursery:
            service: Service = await nursery.start(_run, config, authenticate, rules,
                                                   listeners, ports, tls)
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
        if http_authorizer is not None:
            with trio.CancelScope(shield=True):
                await http_authorizer.aclose()
        log.info("roomcast stopped")


def join_rules(config: Config, authorizer: RoomAuthorizer | None,
               http_authorizer: RoomAuthorizer | None) -> JoinRules:
    """Who may join which room: the open patterns (every room in demo mode, which says
    so), the `rooms` claim, room tokens (with the JWT settings), then the authorizers."""
    open_patterns = config.open_rooms
    if config.demo and not open_patterns:
        open_patterns = ("*",)
        log.warning("demo mode: every room is open to every signed-in user "
                    "(as with --open-rooms '*')")
    elif open_patterns:
        log.info("rooms open to every signed-in user: %s", " ".join(open_patterns))
    room_tokens = None
    if config.jwt_secret or config.jwt_public_key:
        room_tokens = JwtAuthenticator(config)
    return JoinRules(
        access=RoomAccess(open_patterns),
        rooms_claim=config.rooms_claim,
        room_tokens=room_tokens,
        authorizer=authorizer,
        http_authorizer=http_authorizer,
        timeout=config.join_timeout,
    )


async def _run(
    config: Config,
    authenticate: Authenticator,
    rules: JoinRules,
    listeners: list[trio.SocketListener],
    ports: Sequence[Port],
    tls: ssl.SSLContext | None,
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
            keeper = Keeper(config.ping_interval, config.ping_timeout, config.jwt_leeway,
                            token_expiry=TokenExpiry(config.token_expiry))
            supervisor.start(registry)
            supervisor.start(keeper)
            backplane = None
            if config.redis_url:
                backplane = registry.backplane = Backplane(config, registry)
                supervisor.start(backplane)
            gateway = Gateway(config, registry, keeper, authenticate, rules, tls)
            notifications = NotificationService(registry)
            # Connection tasks inherit the context, so the facade finds this service.
            token = notifications._bind()
            await actors.start(gateway.serve, listeners)
            notifications._unbind(token)
            port = listeners[0].socket.getsockname()[1]
            log.info("roomcast listening on %s://%s:%d%s", "ws" if tls is None else "wss",
                     config.host, port, config.path)
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


class CannotListen(OSError):
    """A port could not be bound (in use, not permitted); its text is one clear line."""


def cannot_listen(host: str, port: int, error: OSError) -> CannotListen:
    reason = (error.strerror or str(error)).lower()
    return CannotListen(error.errno, f"cannot listen on {host}:{port}: {reason}")


async def open_listeners(config: Config) -> list[trio.SocketListener]:
    """The WebSocket listeners on `config.host`:`config.port`. With more than one worker
    (`roomcast serve --workers N`) each process binds the same port with SO_REUSEPORT,
    and the kernel spreads new connections across them; alone, a port in use is refused
    (two services on one port by mistake would silently share it)."""
    try:
        if config.workers <= 1:
            return await trio.open_tcp_listeners(config.port, host=config.host)
        return await _shared_port_listeners(config.host, config.port)
    except OSError as error:
        raise cannot_listen(config.host, config.port, error) from None


async def _shared_port_listeners(host: str, port: int) -> list[trio.SocketListener]:
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = trio.socket.socket(family, kind, proto)
            try:
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(0xFFFF)  # the kernel caps it at net.core.somaxconn
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
