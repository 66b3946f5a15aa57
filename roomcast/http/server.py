"""The HTTP port: hypercorn's Trio worker serving the app, in the service's nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from roomcast.config import Config
from roomcast.http.app import HttpApp
from roomcast.service import Service

log = logging.getLogger("roomcast.http")


def hypercorn_config(config: Config) -> HypercornConfig:
    host, port = config.host, config.http_port
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    hypercorn.errorlog = log  # through the application's logging, not a handler of its own
    hypercorn.accesslog = None
    hypercorn.include_server_header = False
    # hypercorn closes a connection that has not sent a whole request head within its
    # keep-alive timeout (it runs from the accept until the head is parsed, and again
    # between requests); a head larger than h11_max_incomplete_size (16 KiB) is a 400.
    # The body's own time is the app's (asgi.read_body).
    hypercorn.keep_alive_timeout = config.http_timeout
    return hypercorn


async def serve_http(
    service: Service, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled (the service cancels it after its drain, so `/readyz`
    answers 503 throughout the drain). Reports the bound port."""
    config = hypercorn_config(service.config)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, HttpApp(service), config,
                                                       mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
