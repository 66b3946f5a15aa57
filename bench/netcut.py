"""A TCP proxy that can be cut: the network failure between a client and the service,
on loopback. `cut()` drops every connection through it at once (both sides closed, no
WebSocket closing frame: what a client sees as 1006) and refuses new ones until
`restore()`. tests/test_client.py (through tests/proxy.py) and the soak's listeners
(bench/soak.py) use it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.is_cut = False
        self.accepted = 0
        self._pairs: set[trio.CancelScope] = set()

    async def _pipe(self, source: trio.SocketStream, sink: trio.SocketStream) -> None:
        try:
            while data := await source.receive_some(65536):
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _serve(self, downstream: trio.SocketStream) -> None:
        async with downstream:
            if self.is_cut:
                return  # refused: closed at once
            self.accepted += 1
            try:
                upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._pairs.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._pipe, downstream, upstream)
                            await self._pipe(upstream, downstream)
                            nursery.cancel_scope.cancel()
                    finally:
                        self._pairs.discard(scope)

    def cut(self) -> None:
        """Drop every connection now; refuse new ones until `restore()`."""
        self.is_cut = True
        for scope in list(self._pairs):
            scope.cancel()

    def restore(self) -> None:
        self.is_cut = False


@asynccontextmanager
async def tcp_proxy(target_port: int) -> AsyncIterator[Proxy]:
    """A proxy on a free loopback port to `target_port`, for the block."""
    proxy = Proxy(target_port)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, proxy._serve, 0, host="127.0.0.1"))
        proxy.port = listeners[0].socket.getsockname()[1]
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
