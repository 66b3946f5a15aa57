"""What every benchmark server shares: arguments, pinning, the notification payload,
process figures, and the control channel for the asyncio peers.

The control channel is a line protocol on its own loopback port: one JSON object per
line in, one JSON object per line out, answered in order. The load generator uses it
to make the server publish from inside its own process (as backend code would) and to
read the server's RSS and CPU time:

- `{"cmd": "stats"}` -> `{"rss_kib", "hwm_kib", "cpu_s", "connections"}`, where
  `connections` counts authenticated, registered connections;
- `{"cmd": "publish_room", "room": R, "start": s, "n": n, "pad": p}` publishes the
  notifications `seq = s .. s+n-1` to room R one after the other, each awaited as the
  peer's API allows, as fast as it can; answers `{"seconds": publishing time}`;
- `{"cmd": "notify_user", "user": U, "seq": k}` publishes one notification (data
  `{"lat": k}`) to user U; answers `{"ok": true}` once published;
- `{"cmd": "bg_start", "room": R, "rate": r, "pad": p}` starts a background task that
  publishes `{"bg": k}` to room R, r times a second (never catching up in bursts);
  `{"cmd": "bg_stop"}` stops it and answers `{"published": n}`;
- `{"cmd": "quit"}` answers `{}` and ends the process.

A peer prints one JSON line `{"port": P, "control": C}` on stdout once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

PATH = "/api/v1/ws"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--secret", required=True, help="HS256 secret for the JWTs")
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to a core")
    parser.add_argument("--max-connections", type=int, default=100_000)
    return parser.parse_args()


def setup_process(cpu: int | None) -> None:
    """Pin to one core (where the machine has it), and raise the descriptor limit."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    raise_fd_limit()


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_figures() -> dict[str, Any]:
    values: dict[str, int] = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "rss_kib": values.get("VmRSS", 0),
        "hwm_kib": values.get("VmHWM", 0),
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }


def pad_text(size: int) -> str:
    return "x" * max(0, size)


def room_payload(room: str, key: str, seq: int, pad: str) -> dict[str, Any]:
    """The frame roomcast's `notify_room` sends, built the same way by every peer."""
    return {
        "type": "room_message",
        "message": "bench",
        "data": {key: seq, "pad": pad, "level": "info", "notification": True},
        "room": room,
    }


def user_payload(seq: int) -> dict[str, Any]:
    """The frame roomcast's `notify_user` sends."""
    return {
        "type": "info",
        "message": "bench",
        "data": {"lat": seq, "level": "info", "notification": True},
    }


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def user_id_of(claims: dict[str, Any]) -> int:
    return int(claims["sub"])


def announce(port: int, control: int) -> None:
    sys.stdout.write(json.dumps({"port": port, "control": control}) + "\n")
    sys.stdout.flush()


class AsyncioBackend:
    """What an asyncio peer implements for the control channel."""

    def connections(self) -> int:
        raise NotImplementedError

    async def publish_room(self, room: str, key: str, seq: int, pad: str) -> None:
        raise NotImplementedError

    async def notify_user(self, user: int, seq: int) -> None:
        raise NotImplementedError


async def publish_series(
    publish: Callable[[str, str, int, str], Awaitable[None]], command: dict[str, Any]
) -> dict[str, Any]:
    """The `publish_room` command, for every peer (asyncio or Trio): the notifications
    `start .. start+n-1`, one after the other, timed."""
    pad = pad_text(command.get("pad", 0))
    room, start, n = command["room"], command["start"], command["n"]
    began = time.perf_counter()
    for seq in range(start, start + n):
        await publish(room, "seq", seq, pad)
    return {"seconds": time.perf_counter() - began}


async def serve_control(
    backend: AsyncioBackend, stop: Callable[[], None]
) -> asyncio.AbstractServer:
    """The control channel of an asyncio peer, on a free loopback port."""
    background: asyncio.Future[None] | None = None
    stop_background = asyncio.Event()
    published = 0

    async def background_loop(room: str, rate: float, pad: str) -> None:
        # Stopped only between publishes: a publish cut short could still reach some
        # clients without being counted, and be read as out of order in the next series.
        nonlocal published
        interval = 1.0 / rate
        due = time.perf_counter()
        while not stop_background.is_set():
            await backend.publish_room(room, "bg", published, pad)
            published += 1
            due = max(due + interval, time.perf_counter())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_background.wait(), max(0.0, due - time.perf_counter()))

    async def handle(command: dict[str, Any]) -> dict[str, Any]:
        nonlocal background, published
        cmd = command["cmd"]
        if cmd == "stats":
            return {**process_figures(), "connections": backend.connections()}
        if cmd == "publish_room":
            return await publish_series(backend.publish_room, command)
        if cmd == "notify_user":
            await backend.notify_user(command["user"], command["seq"])
            return {"ok": True}
        if cmd == "bg_start":
            published = 0
            stop_background.clear()
            background = asyncio.ensure_future(
                background_loop(command["room"], command["rate"], pad_text(command.get("pad", 0)))
            )
            return {"ok": True}
        if cmd == "bg_stop":
            if background is not None:
                stop_background.set()
                await background
                background = None
            return {"published": published}
        if cmd == "quit":
            stop()
            return {}
        return {"error": f"unknown command {cmd!r}"}

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await handle(json.loads(line))
                except Exception as exc:  # reported to the load generator, not fatal
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                writer.write((json.dumps(answer) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(client, "127.0.0.1", 0)


async def serve_uvicorn(app: Any, backend: AsyncioBackend) -> None:
    """Run an ASGI app on uvicorn at its defaults, on a free loopback port, with the
    control channel beside it; return once `quit` has stopped it."""
    import uvicorn  # here: the peers without uvicorn keep it out of their RSS

    sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off", backlog=4096))

    def stop() -> None:
        server.should_exit = True

    control = await serve_control(backend, stop)
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
        if serving.done():
            serving.result()  # it failed to start: raise why
    announce(sock.getsockname()[1], control.sockets[0].getsockname()[1])
    await serving
    control.close()
