"""The HTTP port: hypercorn's Trio worker serving the app, in the service's nursery."""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from roomcast.http.app import HttpApp
from roomcast.service import Service, cannot_listen

log = logging.getLogger("roomcast.http")


def listening_socket(host: str, port: int, *, shared: bool) -> socket.socket:
    """The HTTP port's socket, bound here (not by hypercorn) so that a port in use is one
    clear line (`CannotListen`), and so that the workers of `roomcast serve --workers N`
    can share the port (`shared`: SO_REUSEPORT)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise cannot_listen(host, port, error) from None
    return sock


def hypercorn_config(sock: socket.socket) -> HypercornConfig:
    """Hypercorn's settings; it serves `sock` (and closes it when it stops)."""
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]
    config.errorlog = log  # through the application's logging, not a handler of its own
    config.accesslog = None
    config.include_server_header = False
    return config


async def serve_http(
    service: Service, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled (the service cancels it after its drain, so `/readyz`
    answers 503 throughout the drain). Reports the bound port."""
    settings = service.config
    config = hypercorn_config(listening_socket(settings.host, settings.http_port,
                                               shared=settings.workers > 1))
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, HttpApp(service), config,
                                                       mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
