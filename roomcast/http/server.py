"""The HTTP port: hypercorn's Trio worker serving the app, in the service's nursery."""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from roomcast.config import Config
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


def hypercorn_config(sock: socket.socket, config: Config) -> HypercornConfig:
    """Hypercorn's settings; it serves `sock` (and closes it when it stops)."""
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"fd://{sock.detach()}"]
    hypercorn.errorlog = log  # through the application's logging, not a handler of its own
    hypercorn.accesslog = None
    hypercorn.include_server_header = False
    # hypercorn closes a connection that has not sent a whole request head within its
    # keep-alive timeout (it runs from the accept until the head is parsed, and again
    # between requests); a head larger than h11_max_incomplete_size (16 KiB) is a 400.
    # The body's own time is the app's (asgi.read_body).
    hypercorn.keep_alive_timeout = config.http_timeout
    if config.tls_cert is not None and config.tls_key is not None:
        # https:// with the WebSocket port's files (checked at startup: roomcast.tls).
        hypercorn.certfile = str(config.tls_cert)
        hypercorn.keyfile = str(config.tls_key)
    return hypercorn


async def serve_http(
    service: Service, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled (the service cancels it after its drain, so `/readyz`
    answers 503 throughout the drain). Reports the bound port."""
    settings = service.config
    config = hypercorn_config(listening_socket(settings.host, settings.http_port,
                                               shared=settings.workers > 1), settings)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, HttpApp(service), config,
                                                       mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
