"""What cluster presence costs: an idle node's upkeep, and a worker's questions.

Runs on this machine only (127.0.0.1): a Redis server, two roomcast nodes in their own
processes (tests/cluster.py's `Node`, the real CLI, the default `presence_lease` of
10 s), and the clients and the worker here.

- idle upkeep: node A holds R rooms (one client joins them all); node B holds none.
  Nobody sends anything for `--idle` seconds: the CPU time nodes A and B and Redis
  spend meanwhile (utime + stime from /proc), as a share of one core;
- a worker's questions (`RemoteNotificationService` from Redis's URL, as a Celery task
  would): `is_user_connected`, `notify_user` and `get_room_members`, with 1 room and
  with R rooms on node A: the Redis commands each call sends (the client's
  `execute_command` counted, the connection's handshake aside) and the median
  latency over `--samples` calls.

    .venv/bin/python bench/presence_upkeep.py [--rooms 800] [--idle 30] [--samples 10]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomcast import mint_token  # noqa: E402
from roomcast.remote import RemoteNotificationService  # noqa: E402
from tests.cluster import Node, RedisServer, counted_commands  # noqa: E402

USER = 42


def cpu_seconds(pid: int) -> float:
    """The process's user + system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(what: str, call: Callable[[], Any], samples: int) -> dict[str, Any]:
    with counted_commands() as sent:
        await call()
    commands = list(sent)
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        await call()
        times.append(time.perf_counter() - start)
    median_ms = statistics.median(times) * 1000
    print(f"  {what:<20} {len(commands):>3} commands ({', '.join(sorted(set(commands)))}), "
          f"median {median_ms:8.2f} ms", flush=True)
    return {"commands": len(commands), "names": commands, "median_ms": median_ms}


async def worker_questions(redis_url: str, room: str, samples: int) -> dict[str, Any]:
    worker = RemoteNotificationService(redis_url)
    return {
        "is_user_connected": await measure(
            "is_user_connected", lambda: trio.to_thread.run_sync(
                worker.is_user_connected, USER), samples),
        "notify_user": await measure(
            "notify_user", lambda: worker.notify_user(USER, "ping"), samples),
        "get_room_members": await measure(
            "get_room_members", lambda: trio.to_thread.run_sync(
                worker.get_room_members, room), samples),
    }


async def join(ws: Any, rooms: list[str]) -> None:
    for room in rooms:
        await ws.send_message(json.dumps({"type": "join_room", "room": room}))
    joined = 0
    while joined < len(rooms):  # the answers, and whatever notifications came between
        frame = json.loads(await ws.get_message())
        joined += str(frame.get("message", "")).startswith("Joined room:")


async def main(args: argparse.Namespace) -> dict[str, Any]:
    redis = RedisServer()
    redis.start()
    settings = {"max_rooms_per_connection": args.rooms + 10, "rate_limit": 1e6,
                "rate_burst": 1_000_000, "max_message_size": 1 << 20}
    a = b = None
    try:
        a = Node(redis.url, lease=10.0, **settings)
        b = Node(redis.url, lease=10.0, **settings)
        token = mint_token(a.config, USER)
        rooms = [f"room{i}" for i in range(args.rooms)]
        results: dict[str, Any] = {"rooms": args.rooms}
        async with open_websocket_url(f"{a.url}?token={token}") as ws:
            await ws.get_message()  # the welcome
            await join(ws, rooms[:1])
            await trio.sleep(1.0)  # presence settles (a measurement, not a test)
            print("worker, 1 room on node A:", flush=True)
            results["worker_1_room"] = await worker_questions(redis.url, rooms[0], args.samples)
            await join(ws, rooms[1:])
            await trio.sleep(1.0)
            print(f"worker, {args.rooms} rooms on node A:", flush=True)
            results["worker_many_rooms"] = await worker_questions(
                redis.url, rooms[0], args.samples)
            for _ in range(args.samples * 2 + 2):  # the notifications sent above
                with trio.move_on_after(0.2):
                    await ws.get_message()
            await trio.sleep(2.0)
            pids = {"node_a": a.process.pid, "node_b": b.process.pid,
                    "redis": redis.process.pid if redis.process else 0}
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            start = time.monotonic()
            await trio.sleep(args.idle)
            elapsed = time.monotonic() - start
            idle = {name: 100 * (cpu_seconds(pid) - before[name]) / elapsed
                    for name, pid in pids.items()}
            print(f"idle for {elapsed:.0f} s with {args.rooms} rooms on node A: "
                  + ", ".join(f"{name} {share:.2f} % of a core" for name, share in idle.items()),
                  flush=True)
            results["idle_cpu_percent"] = idle
        return results
    finally:
        for node in (a, b):
            if node is not None:
                node.stop()
        redis.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=800)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    figures = trio.run(main, arguments)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
