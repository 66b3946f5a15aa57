"""`roomcast serve --workers 2` against one process: deliveries a second of wall clock,
and per CPU second of all the server's processes (the parent and its workers).

Setups, all started at once and measured in alternating rounds (the machine is
shared: what is measured together can be compared; the load average is printed with
every table):

- `roomcast serve` (one process, no Redis);
- `roomcast serve --redis-url URL` (one process, a node of a cluster of one);
- `roomcast serve --workers 2 --redis-url URL` (the parent and two worker processes on
  one port: the kernel spreads the connections between the workers).

The same clients for each: N connections in one room (bench/loadgen.py: raw sockets
on one epoll loop, every client checking every frame once, in order). The same
publisher for each: a process that POSTs F notifications to the room through the HTTP
API (`/api/v1/notifications`), one after another on one kept-alive connection (with
`--workers 2`, that connection is one worker's: it publishes through Redis to both).
A round runs from the first POST until every client holds the last frame. No process
is pinned: `--workers 2` puts its workers where the kernel likes, so the others do too.

    .venv/bin/python bench/workers.py [--size 1000] [--frames 400] [--reps 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cluster_cpu import SECRET, ReadyProcess, Room, cpu_seconds, load  # noqa: E402
from loadgen import BenchError, Epoll, die_with_parent  # noqa: E402

API_KEY = "roomcast-bench-api-key-0123456789abcdef"
ROOM = "bench"


class Server:
    """`roomcast serve` in a process of its own, on free ports (`--workers N` too)."""

    def __init__(self, title: str, redis_url: str | None, workers: int = 1) -> None:
        self.title = title
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
        command = [sys.executable, "-m", "roomcast.cli", "serve", "--port", "0",
                   "--http-port", "0", "--log-level", "WARNING"]
        if redis_url:  # a cluster of its own: its keys apart from the other setup's
            command += ["--redis-url", redis_url, "--redis-prefix", f"bench{workers}"]
        if workers > 1:
            command += ["--workers", str(workers)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            ROOMCAST_JWT_SECRET=SECRET, ROOMCAST_OPEN_ROOMS="*", ROOMCAST_API_KEY=API_KEY,
            ROOMCAST_MAX_HANDSHAKES_PER_ADDRESS="0", ROOMCAST_MAX_CONNECTIONS="100000")
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log,
                                        text=True, env=env, preexec_fn=die_with_parent)
        assert self.process.stdout is not None
        ws, http_line = self.process.stdout.readline(), self.process.stdout.readline()
        found_ws = re.search(r":(\d+)/", ws)
        found_http = re.search(r"http://[\d.]+:(\d+)", http_line)
        if found_ws is None or found_http is None:
            self.process.kill()
            self.log.seek(0)
            raise BenchError(f"{title} did not start: {ws!r} {self.log.read()}")
        self.ws_port, self.http_port = int(found_ws[1]), int(found_http[1])
        self.processes = self.pids()  # the workers do not change while all is well

    def pids(self) -> list[int]:
        """The process and its children (the workers of `--workers N`)."""
        parent = self.process.pid
        found = [parent]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == parent:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                continue
        return found

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.processes)

    def writes(self) -> int:
        """Write system calls of every server process (/proc/PID/io `syscw`: to the
        clients, and the few to Redis and to the publisher)."""
        total = 0
        for pid in self.processes:
            with open(f"/proc/{pid}/io") as io:
                total += next(int(line.split()[1]) for line in io
                              if line.startswith("syscw"))
        return total

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Publisher(ReadyProcess):
    """A process that POSTs `count` notifications to the room once told `go`."""

    def __init__(self, http_port: int, count: int) -> None:
        super().__init__([__file__, "--publish", str(http_port), str(count)], "publisher")


def publish(http_port: int, count: int) -> None:
    """The publisher process: `count` POSTs, one after another, on one connection."""
    connection = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    connection.connect()
    print("ready", flush=True)
    sys.stdin.readline()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    began = time.perf_counter()
    for seq in range(count):
        body = json.dumps({"room": ROOM, "message": "n", "data": {"t": 0, "seq": seq}})
        connection.request("POST", "/api/v1/notifications", body, headers)
        reply = connection.getresponse()
        reply.read()
        if reply.status != 200:
            raise SystemExit(f"the API answered {reply.status}")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": time.perf_counter() - began,
                      "cpu": usage.ru_utime + usage.ru_stime - cpu0}), flush=True)


def one_round(server: Server, room: Room, frames: int) -> dict[str, float]:
    room.expect(frames)
    publisher = Publisher(server.http_port, frames)
    cpu0, bench0, writes0 = server.cpu(), cpu_seconds(os.getpid()), server.writes()
    began = time.perf_counter()
    publisher.go()
    room.wait(frames)
    wall = time.perf_counter() - began
    cpu, clients = server.cpu() - cpu0, cpu_seconds(os.getpid()) - bench0
    writes = server.writes() - writes0
    published = publisher.result()
    deliveries = len(room.conns) * frames
    return {"deliveries": deliveries, "wall": wall, "server_cpu": cpu,
            "clients_cpu": clients, "publisher_cpu": published["cpu"],
            "per_s": deliveries / wall, "per_cpu_s": deliveries / max(cpu, 1e-6),
            "writes_per_delivery": writes / deliveries}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        publish(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from tests.cluster import RedisServer

    redis = RedisServer()
    redis.start(die_with_parent)
    load_before = load()
    print(f"load average before: {load_before}", flush=True)
    servers: list[Server] = []
    try:
        servers = [Server("one process, no Redis", None),
                   Server("one process, Redis", redis.url),
                   Server("--workers 2, Redis", redis.url, workers=2)]
        sel = Epoll()
        rooms = [Room(sel, [server], args.size, 10_000 + 100_000 * index)  # type: ignore[list-item]
                 for index, server in enumerate(servers)]
        time.sleep(1.0)  # presence written, channels heard
        runs: dict[str, list[dict[str, float]]] = {s.title: [] for s in servers}
        for _ in range(args.reps):  # alternating: the load falls on every setup alike
            for server, room in zip(servers, rooms, strict=True):
                runs[server.title].append(one_round(server, room, args.frames))
        for room in rooms:
            room.close()
    finally:
        for server in servers:
            server.stop()
        redis.stop()
    load_after = load()
    base = statistics.median(r["per_cpu_s"] for r in runs[servers[0].title])
    print(f"{args.size} connections x {args.frames} frames, published through the HTTP "
          f"API; median of {args.reps} alternating rounds (load {load_before} -> "
          f"{load_after}):", flush=True)
    figures: dict[str, Any] = {"size": args.size, "frames": args.frames,
                               "load_before": load_before, "load_after": load_after}
    for title, setup_runs in runs.items():
        row = {key: statistics.median(r[key] for r in setup_runs)
               for key in ("per_s", "per_cpu_s", "server_cpu", "clients_cpu",
                           "publisher_cpu", "wall", "writes_per_delivery")}
        figures[title] = {**row, "runs": setup_runs}
        low = min(r["per_cpu_s"] for r in setup_runs)
        high = max(r["per_cpu_s"] for r in setup_runs)
        print(f"  {title:<22} wall {row['per_s']:>9,.0f}/s  per server CPU s "
              f"{row['per_cpu_s']:>9,.0f} ({low:,.0f} to {high:,.0f}, "
              f"{row['per_cpu_s'] / base:.2f}x)  CPU s: server {row['server_cpu']:.2f}, "
              f"clients {row['clients_cpu']:.2f}, publisher {row['publisher_cpu']:.2f}; "
              f"writes/delivery {row['writes_per_delivery']:.3f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
