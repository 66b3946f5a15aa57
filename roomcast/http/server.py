"""The HTTP port: hypercorn's Trio worker serving the app, in the service's nursery."""

from __future__ import annotations

import logging
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from roomcast.http.app import HttpApp
from roomcast.service import Service

log = logging.getLogger("roomcast.http")


def hypercorn_config(host: str, port: int) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.errorlog = log  # through the application's logging, not a handler of its own
    config.accesslog = None
    config.include_server_header = False
    return config


async def serve_http(
    service: Service, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled (the service cancels it after its drain, so `/readyz`
    answers 503 throughout the drain). Reports the bound port."""
    config = hypercorn_config(service.config.host, service.config.http_port)
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(partial(serve, HttpApp(service), config,
                                                       mode="asgi"))
        task_status.started(int(binds[0].rsplit(":", 1)[1]))
