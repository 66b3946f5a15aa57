"""A whole roomcast node: the service (`roomcast.service`) with its HTTP port.

The one module that knows both: the service below it imports nothing of HTTP, and the
HTTP app below it knows the service only as a handle it is given.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from roomcast.auth import Authenticator, RoomAuthorizer
from roomcast.config import Config
from roomcast.http import serve_http
from roomcast.service import Service
from roomcast.service import open_service as open_service_without_http


@asynccontextmanager
async def open_service(
    config: Config | None = None,
    *,
    authenticator: Authenticator | None = None,
    room_authorizer: RoomAuthorizer | None = None,
) -> AsyncIterator[Service]:
    """Bind, start the actors and the HTTP port (unless `http_port` is -1), and yield
    a `Service`. However the body ends (cancelled included), every client is first
    closed with 1001, within `shutdown_timeout`. `authenticator`: your own check of a
    connection's token; `room_authorizer`: your say on a join that no other rule
    allowed (an async `(principal, room) -> bool`; docs/security.md)."""
    config = config or Config()
    ports = (serve_http,) if config.http_port >= 0 else ()
    async with open_service_without_http(config, authenticator=authenticator,
                                         room_authorizer=room_authorizer,
                                         ports=ports) as service:
        yield service


async def serve(config: Config | None = None) -> None:
    """Run the service until cancelled."""
    async with open_service(config):
        await trio.sleep_forever()
