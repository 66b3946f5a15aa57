"""The composition root: config in, actors started, listener bound, handle out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio

from roomcast.actors.gateway import Gateway
from roomcast.actors.registry import Registry
from roomcast.actors.supervisor import Supervisor
from roomcast.auth import Authenticator, JwtAuthenticator
from roomcast.config import Config
from roomcast.facade import NotificationService

log = logging.getLogger(__name__)


@attrs.define
class Service:
    """A running service: where it listens, and its notification facade."""

    config: Config
    port: int
    notifications: NotificationService
    registry: Registry
    gateway: Gateway
    supervisor: Supervisor

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}{self.config.path}"


@asynccontextmanager
async def open_service(
    config: Config | None = None, *, authenticator: Authenticator | None = None
) -> AsyncIterator[Service]:
    """Bind, start the actors, and yield a `Service`. On exit every client is closed
    with 1001 (within `config.shutdown_timeout`) before the actors stop."""
    config = config or Config()
    authenticate = authenticator or JwtAuthenticator(config)
    listeners = await trio.open_tcp_listeners(config.port, host=config.host)
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as actors:
        supervisor = Supervisor(actors)
        registry = Registry(config.mailbox_size, supervisor.start)
        supervisor.start(registry)
        gateway = Gateway(config, registry, authenticate)
        notifications = NotificationService(registry)
        token = notifications._bind()
        try:
            async with trio.open_nursery() as sockets:
                await sockets.start(gateway.serve, listeners)
                log.info("roomcast listening on ws://%s:%d%s", config.host, port, config.path)
                try:
                    yield Service(config, port, notifications, registry, gateway, supervisor)
                finally:
                    with trio.CancelScope(shield=True):
                        await gateway.drain(config.shutdown_timeout)
                    sockets.cancel_scope.cancel()
        finally:
            notifications._unbind(token)
            actors.cancel_scope.cancel()
    log.info("roomcast stopped")


async def serve(config: Config | None = None) -> None:
    """Run the service until cancelled."""
    async with open_service(config):
        await trio.sleep_forever()
