"""roomcast itself: `roomcast.open_service` with its JWT authenticator, and a
publisher that drives the facade (`service.notifications.notify_room` /
`notify_user`) from a task inside the same process, as backend code would.

    python bench/peers/roomcast_peer.py --secret S [--cpu 0] [--max-connections N]

Every setting at its default except the ones a benchmark needs: loopback, a free
port, the secret, and the connection limits (the suite opens thousands of sockets,
one user each). The control channel (see peer_common.py) is served by Trio here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any

import trio
from peer_common import (
    announce,
    pad_text,
    parse_args,
    process_figures,
    publish_series,
    setup_process,
)

from roomcast import Config, Service, open_service


class Control:
    def __init__(self, service: Service, nursery: trio.Nursery, done: trio.Event) -> None:
        self.service = service
        self.notifications = service.notifications
        self.nursery = nursery
        self.done = done
        # Set to stop the background publisher; its own event says it has stopped.
        self.background: tuple[trio.Event, trio.Event] | None = None
        self.background_count = 0

    def connections(self) -> int:
        return sum(len(conns) for conns in self.service.registry.users.values())

    async def publish_room(self, room: str, key: str, seq: int, pad: str) -> None:
        await self.notifications.notify_room(room, "bench", data={key: seq, "pad": pad})

    async def _background(self, room: str, rate: float, pad: str, stop: trio.Event,
                          stopped: trio.Event) -> None:
        # Stopped only between publishes: a publish cut short could still reach the
        # clients without being counted, and be read as out of order in the next series.
        interval = 1.0 / rate
        due = trio.current_time()
        try:
            while not stop.is_set():
                await self.publish_room(room, "bg", self.background_count, pad)
                self.background_count += 1
                due = max(due + interval, trio.current_time())
                with trio.move_on_at(due):
                    await stop.wait()
        finally:
            stopped.set()

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        cmd = command["cmd"]
        if cmd == "stats":
            return {**process_figures(), "connections": self.connections()}
        if cmd == "publish_room":
            return await publish_series(self.publish_room, command)
        if cmd == "notify_user":
            await self.notifications.notify_user(command["user"], "bench",
                                                 data={"lat": command["seq"]})
            return {"ok": True}
        if cmd == "bg_start":
            self.background_count = 0
            self.background = stop, stopped = trio.Event(), trio.Event()
            self.nursery.start_soon(self._background, command["room"], command["rate"],
                                    pad_text(command.get("pad", 0)), stop, stopped)
            return {"ok": True}
        if cmd == "bg_stop":
            if self.background is not None:
                stop, stopped = self.background
                stop.set()
                await stopped.wait()
                self.background = None
            return {"published": self.background_count}
        if cmd == "quit":
            self.done.set()
            return {}
        return {"error": f"unknown command {cmd!r}"}

    async def serve_client(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    try:
                        answer = await self.handle(json.loads(line))
                    except Exception as exc:  # reported to the load generator
                        answer = {"error": f"{type(exc).__name__}: {exc}"}
                    await stream.send_all((json.dumps(answer) + "\n").encode())


def tls_files() -> dict[str, str]:
    """wss:// for bench/tls.py, which sets ROOMCAST_TLS_CERT and _KEY; none otherwise."""
    files = {"tls_cert": os.environ.get("ROOMCAST_TLS_CERT"),
             "tls_key": os.environ.get("ROOMCAST_TLS_KEY")}
    return {name: path for name, path in files.items() if path}


async def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    setup_process(args.cpu)
    config = Config(
        host="127.0.0.1",
        port=0,
        jwt_secret=args.secret,
        open_rooms=("*",),  # the benchmark joins rooms as the seed let every user
        max_connections=args.max_connections,
        max_connections_per_user=args.max_connections,
        # Every benchmark client connects from 127.0.0.1, hundreds of handshakes at once.
        max_handshakes_per_address=0,
        http_port=-1,  # the benchmark needs no HTTP port; 8080 would collide across peers
        **tls_files(),
    )
    async with open_service(config) as service, trio.open_nursery() as nursery:
        done = trio.Event()
        control = Control(service, nursery, done)
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, control.serve_client, 0, host="127.0.0.1")
        )
        announce(service.port, listeners[0].socket.getsockname()[1])
        await done.wait()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(main)
