"""Cluster benchmark per server CPU second: what a Redis URL costs a node, and what a
second node buys. One run, every setup side by side (the machine is shared: ratios
measured together are what can be trusted; the load average is printed with them).

Processes: a Redis server; roomcast nodes (bench/cluster_node.py), the first pinned to
core 0, the second to core 1; the clients here, as raw sockets on one epoll loop
(bench/loadgen.py: cheap enough that the server is measured, not the client), pinned
to the last core; a worker process for the worker figures (this script, `--worker`).

- fan-out: a room of N connections on one node, F `notify_room` calls awaited one
  after another, published by the node's own facade or by a worker (its open
  `RemoteNotificationService`); deliveries (N x F) per CPU second of the node, from
  the command until the last client holds the last frame; every client checks it got
  every frame once, in order. Setups: a lone node, the same node with a Redis URL
  (node publishing, worker publishing). Rounds alternate between setups.
- worker rate: `notify_room` calls a second from one worker process to a room of 100
  members: the open async facade (`async with`), a call per connection (no `async
  with`), and `SyncNotificationService` (a thread per call).
- two nodes against one: N connections all on node 1, or split over nodes 1 and 2
  (one core each), the worker publishing; deliveries per second of the busiest node's
  CPU (what the pair delivers when each node has its core: on this machine the
  clients share the cores, so wall-clock rates show the sharing, not the nodes).
- cross-node notify latency: `notify_user` on node 1 for a user on node 2, one at a
  time, while node 1 fans out to a background room of 1,000 (a frame every
  `--bg-pace-ms`, 10 by default: about half of what the node can deliver); p50 / p99
  from the command sent to the frame read.

    .venv/bin/python bench/cluster_cpu.py [--sizes 100,1000,5000] [--reps 3]
        [--only fanout,worker,two,latency] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import BenchError, Conn, Epoll, Loadgen, mint_tokens  # noqa: E402

SECRET = "roomcast-bench-secret-0123456789abcdef"
ROOM = "bench"
CORES = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frames_for(size: int) -> int:
    """Frames per round: about 200,000 deliveries (at least 40 frames)."""
    return max(40, min(1000, 200_000 // size))


class Node:
    """A node in its own process (bench/cluster_node.py), and its control port."""

    def __init__(self, redis_url: str, core: int) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cluster_node.py"), "--secret", SECRET,
             "--redis-url", redis_url, "--core", str(core)],
            stdout=subprocess.PIPE, text=True, env=env)
        ws_port, control_port = self.process.stdout.readline().split()  # type: ignore[union-attr]
        self.ws_port, self.control_port = int(ws_port), int(control_port)
        self.redis_url = redis_url

    def command(self, line: str) -> socket.socket:
        """Send a control command; the answer is read with `answer`."""
        sock = socket.create_connection(("127.0.0.1", self.control_port), timeout=600)
        sock.sendall(line.encode() + b"\n")
        return sock

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=15)


def answer(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            break
        data += chunk
    sock.close()
    return data.decode()


def worker(redis_url: str, room: str, count: int, mode: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", redis_url, room, str(count), mode],
        stdout=subprocess.PIPE, text=True, env=env)


def run_worker(redis_url: str, room: str, count: int, mode: str) -> None:
    """The worker process: `count` notify_room calls, awaited one after another; prints
    calls per second and this process's CPU seconds."""
    import trio

    from roomcast.remote import RemoteNotificationService, SyncNotificationService

    os.environ["ROOMCAST_REDIS_URL"] = redis_url
    remote = RemoteNotificationService(redis_url)

    async def calls(service: RemoteNotificationService) -> None:
        for seq in range(count):
            await service.notify_room(room, "n", data={"t": time.monotonic_ns(), "seq": seq})

    async def main() -> float:
        if mode == "open":
            async with remote:
                began = time.perf_counter()
                await calls(remote)
            return time.perf_counter() - began  # the end of the block sent every frame
        began = time.perf_counter()
        await calls(remote)
        return time.perf_counter() - began

    cpu0 = cpu_seconds(os.getpid())
    if mode == "sync":
        began = time.perf_counter()
        for seq in range(count):
            SyncNotificationService.notify_room(room, "n", data={"t": 0, "seq": seq})
        elapsed = time.perf_counter() - began
    else:
        elapsed = trio.run(main)
    print(json.dumps({"calls_per_s": count / elapsed, "seconds": elapsed,
                      "cpu": cpu_seconds(os.getpid()) - cpu0}), flush=True)


class Room:
    """N client connections in the benchmark room, on one node or spread over several."""

    def __init__(self, sel: Epoll, nodes: list[Node], size: int, first_user: int,
                 name: str = ROOM) -> None:
        self.name = name
        self.lgs = [Loadgen("ws", node.ws_port, sel) for node in nodes]
        self.conns: list[Conn] = []
        share = -(-size // len(nodes))
        for index, lg in enumerate(self.lgs):
            users = range(first_user + index * share,
                          first_user + min(size, (index + 1) * share))
            conns = lg.open(mint_tokens(SECRET, users), concurrency=25)
            lg.join(conns, name)
            self.conns += conns
        self.sel = sel

    def expect(self, frames: int) -> None:
        for conn in self.conns:
            conn.next, conn.end, conn.got = 0, frames, 0

    def wait(self, frames: int, timeout: float = 600.0) -> None:
        deadline = time.perf_counter() + timeout
        lg = self.lgs[0]
        while any(c.got < frames for c in self.conns):
            if time.perf_counter() > deadline:
                raise BenchError("timed out waiting for the fan-out")
            lg.pump(0.05)
            time.sleep(0.002)  # frames gather: one read takes several
        errors = sum(c.errors for c in self.conns)
        dead = sum(c.state == 7 for c in self.conns)
        if errors or dead:
            raise BenchError(f"{errors} frames out of order or unexpected, {dead} closed")

    def close(self) -> None:
        for lg in self.lgs:
            lg.close_all([c for c in self.conns if c.lg is lg])


def fan_out_round(room: Room, publisher: Node, measured: list[Node], frames: int,
                  via_worker: bool) -> dict[str, float]:
    room.expect(frames)
    cpu0 = [n.cpu() for n in measured]
    began = time.perf_counter()
    if via_worker:
        process = worker(publisher.redis_url, room.name, frames, "open")
    else:
        control = publisher.command(f"room {room.name} {frames} 0")
    room.wait(frames)
    wall = time.perf_counter() - began
    cpu = [n.cpu() - c for n, c in zip(measured, cpu0, strict=True)]
    if via_worker:
        process.wait()
    else:
        answer(control)
    deliveries = len(room.conns) * frames
    return {"deliveries": deliveries, "wall": wall, "cpu": sum(cpu), "busiest_cpu": max(cpu),
            "per_cpu_s": deliveries / max(sum(cpu), 0.01),
            "per_busiest_cpu_s": deliveries / max(max(cpu), 0.01),
            "per_s": deliveries / wall}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def fan_out(redis_url: str, sizes: list[int], reps: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    lone, clustered = Node("", 0), Node(redis_url, 0)
    try:
        for size in sizes:
            frames = frames_for(size)
            sel = Epoll()
            try:
                rooms = {"lone": Room(sel, [lone], size, 10_000 + size),
                         "redis": Room(sel, [clustered], size, 100_000 + size)}
            except BenchError as error:
                results[str(size)] = {"error": str(error)}
                print(f"fan-out {size:>5}: {error}", flush=True)
                continue
            time.sleep(0.5)  # presence written
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in
                                                       ("lone", "redis", "redis_worker")}
            for _ in range(reps):
                runs["lone"].append(fan_out_round(rooms["lone"], lone, [lone], frames, False))
                runs["redis"].append(fan_out_round(rooms["redis"], clustered, [clustered],
                                                   frames, False))
                runs["redis_worker"].append(fan_out_round(rooms["redis"], clustered,
                                                          [clustered], frames, True))
            for room in rooms.values():
                room.close()
            base = median(runs["lone"], "per_cpu_s")
            results[str(size)] = {
                "frames": frames,
                **{k: {"per_cpu_s": median(v, "per_cpu_s"), "per_s": median(v, "per_s"),
                       "ratio": median(v, "per_cpu_s") / base, "runs": v}
                   for k, v in runs.items()},
            }
            row = results[str(size)]
            print(f"fan-out {size:>5} x {frames:>4}: lone {base:>10,.0f}/CPU s | redis "
                  f"{row['redis']['per_cpu_s']:>10,.0f} ({row['redis']['ratio']:.2f}x) | "
                  f"worker publishing {row['redis_worker']['per_cpu_s']:>10,.0f} "
                  f"({row['redis_worker']['ratio']:.2f}x)   load {os.getloadavg()[0]:.2f}",
                  flush=True)
    finally:
        lone.stop()
        clustered.stop()
    return results


def worker_rate(redis_url: str, count: int) -> dict[str, Any]:
    node = Node(redis_url, 0)
    results: dict[str, Any] = {}
    try:
        sel = Epoll()
        room = Room(sel, [node], 100, 200_000)
        time.sleep(0.5)
        for mode, calls in (("open", count), ("per_call", max(200, count // 20)),
                            ("sync", max(100, count // 50))):
            room.expect(calls)
            process = worker(redis_url, ROOM, calls, "open" if mode == "open" else
                             ("sync" if mode == "sync" else "plain"))
            room.wait(calls)
            out, _ = process.communicate()
            results[mode] = json.loads(out.strip().splitlines()[-1])
            print(f"worker {mode:>8}: {results[mode]['calls_per_s']:>8,.0f} notify_room "
                  f"calls/s ({calls} calls, worker CPU {results[mode]['cpu']:.2f} s)   "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        room.close()
    finally:
        node.stop()
    return results


def two_nodes(redis_url: str, size: int, reps: int) -> dict[str, Any]:
    first, second = Node(redis_url, 0), Node(redis_url, 1)
    try:
        frames = frames_for(size)
        sel = Epoll()
        one = Room(sel, [first], size, 300_000, "one")
        two = Room(sel, [first, second], size, 400_000, "two")
        time.sleep(0.5)
        runs: dict[str, list[dict[str, float]]] = {"one": [], "two": []}
        for _ in range(reps):
            runs["one"].append(fan_out_round(one, first, [first, second], frames, True))
            runs["two"].append(fan_out_round(two, first, [first, second], frames, True))
        one.close()
        two.close()
    finally:
        first.stop()
        second.stop()
    figures = {k: {"per_busiest_cpu_s": median(v, "per_busiest_cpu_s"),
                   "per_s": median(v, "per_s"), "runs": v} for k, v in runs.items()}
    ratio = figures["two"]["per_busiest_cpu_s"] / figures["one"]["per_busiest_cpu_s"]
    print(f"two nodes, room of {size} x {frames}: one node "
          f"{figures['one']['per_busiest_cpu_s']:,.0f} per busiest-node CPU s, two nodes "
          f"{figures['two']['per_busiest_cpu_s']:,.0f} ({ratio:.2f}x); wall "
          f"{figures['one']['per_s']:,.0f} vs {figures['two']['per_s']:,.0f}/s   "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    return {"size": size, "frames": frames, "ratio": ratio, **figures}


def latency(redis_url: str, background: int, samples: int, pace_ms: float) -> dict[str, Any]:
    first, second = Node(redis_url, 0), Node(redis_url, 1)
    try:
        sel = Epoll()
        room = Room(sel, [first], background, 500_000)
        probe_lg = Loadgen("ws", second.ws_port, sel)
        probe = probe_lg.open(mint_tokens(SECRET, [1]))[0]
        time.sleep(0.5)  # node 1 sees user 1 on node 2
        bg_frames = 10**6  # more than the probes take; stopped with the node
        room.expect(bg_frames)
        background_command = first.command(f"room {ROOM} {bg_frames} {pace_ms}")
        delays = []
        for _ in range(samples):
            probe.next, probe.end, probe.got = 0, 1, 0
            began = time.perf_counter()
            control = first.command("notify 1 1 0")
            while probe.got == 0:
                probe_lg.pump(0.01)
            delays.append((time.perf_counter() - began) * 1000)
            answer(control)
            time.sleep(0.005)
        background_command.close()
    finally:
        first.stop()
        second.stop()
    delays.sort()
    figures = {"p50_ms": delays[len(delays) // 2], "p99_ms": delays[int(len(delays) * 0.99)],
               "background": background, "samples": samples, "pace_ms": pace_ms}
    print(f"cross-node notify_user under a background fan-out to {background} "
          f"(a frame every {pace_ms:g} ms): p50 {figures['p50_ms']:.2f} ms, p99 "
          f"{figures['p99_ms']:.2f} ms   load {os.getloadavg()[0]:.2f}", flush=True)
    return figures


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        run_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--worker-calls", type=int, default=20_000)
    parser.add_argument("--two-size", type=int, default=1000)
    parser.add_argument("--bg-pace-ms", type=float, default=10.0)
    parser.add_argument("--only", default="fanout,worker,two,latency")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from tests.cluster import RedisServer

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CORES - 1})
    only = set(args.only.split(","))
    redis = RedisServer()
    redis.start()
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    try:
        if "fanout" in only:
            figures["fanout"] = fan_out(redis.url, [int(s) for s in args.sizes.split(",")],
                                        args.reps)
        if "worker" in only:
            figures["worker"] = worker_rate(redis.url, args.worker_calls)
        if "two" in only:
            figures["two_nodes"] = two_nodes(redis.url, args.two_size, args.reps)
        if "latency" in only:
            figures["latency"] = latency(redis.url, 1000, 300, args.bg_pace_ms)
    finally:
        redis.stop()
    figures["load_after"] = os.getloadavg()
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
