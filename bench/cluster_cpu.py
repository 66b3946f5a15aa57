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
  Each round also counts the node's socket writes to clients (per delivery: how well
  frames published back to back share a write) and the room messages it heard from
  Redis (and the frames in them: how the worker's batches arrived).
- worker rate: `notify_room` calls a second from one worker process to a room of 100
  members: the open async facade (`async with`), a call per connection (no `async
  with`), and `SyncNotificationService` (a thread per call); wall clock, and per CPU
  second of the worker.
- two nodes against one: N connections all on node 1, or split over nodes 1 and 2
  (one core each), the worker publishing; rounds alternate one node / two nodes, in two
  setups (checked, saturated: `two_nodes` says how) and with the clients on any core.
  Wall-clock deliveries a second, and per CPU second of the busiest node (what the
  pair delivers when each node has its core: on this machine the clients, the worker
  and Redis share the two cores, so wall-clock rates show the sharing, not the
  nodes), with the CPU seconds the clients, the worker and Redis spent per round.

A worker process is started and has its facade open before a round's clock starts
(its interpreter's start is not timed). CPU time is read from /proc/PID/task/*/schedstat
(nanoseconds; /proc/PID/stat counts 10 ms ticks, too coarse for a round of 0.5 s).
Every table prints the load average before and after it.
- cross-node notify latency: `notify_user` on node 1 for a user on node 2, one at a
  time, while node 1 fans out to a background room of 1,000 (a frame every
  `--bg-pace-ms`, 10 by default: about half of what the node can deliver); p50 / p99
  from the command sent to the frame read.

    .venv/bin/python bench/cluster_cpu.py [--sizes 100,1000,5000] [--reps 5]
        [--only worker-rooms,worker-rate,two-nodes,latency] [--json PATH]

(`--only` also takes the old names fanout, worker, two; `bench/workers.py` compares
`roomcast serve --workers 2` with one process.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from loadgen import (  # noqa: E402
    BenchError,
    Conn,
    Epoll,
    Loadgen,
    die_with_parent,
    machine_seconds,
    mint_tokens,
)

SECRET = "roomcast-bench-secret-0123456789abcdef"
ROOM = "bench"
BURST = 16  # the worker's publishers in `burst` mode
CORES = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """CPU seconds the process's live threads have run, to the nanosecond (schedstat);
    the tick count of /proc/PID/stat where schedstat is missing."""
    total, read = 0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        tasks = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as schedstat:
                total += int(schedstat.read().split()[0])
                read = True
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    if read:
        return total / 1e9
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


FRAMES: int | None = None  # --frames: the same count for every room (a tiny run)


def frames_for(size: int) -> int:
    """Frames per round: about 400,000 deliveries (at least 80 frames)."""
    return FRAMES or max(80, min(2000, 400_000 // size))


class Node:
    """A node in its own process (bench/cluster_node.py), and its control port."""

    def __init__(self, redis_url: str, core: int) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cluster_node.py"), "--secret", SECRET,
             "--redis-url", redis_url, "--core", str(core)],
            stdout=subprocess.PIPE, text=True, env=env, preexec_fn=die_with_parent)
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

    def stats(self) -> tuple[int, int, int]:
        """Socket writes to clients, room messages heard from Redis, frames in them,
        since the last call."""
        writes, messages, frames = answer(self.command("stats")).split()[1:]
        return int(writes), int(messages), int(frames)

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


class ReadyProcess:
    """A bench process that says "ready" once set up, starts its work at `go`, and
    prints its figures as the last line of JSON: a worker here, a publisher in
    bench/workers.py."""

    def __init__(self, argv: list[str], what: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        self.process = subprocess.Popen(
            [sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env=env, preexec_fn=die_with_parent)
        assert self.process.stdout is not None and self.process.stdin is not None
        if self.process.stdout.readline().strip() != "ready":
            raise BenchError(f"the {what} did not start")

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def result(self) -> dict[str, float]:
        out, _ = self.process.communicate(timeout=600)
        figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
        return figures


class Worker(ReadyProcess):
    """A worker process (this script, `--worker`), started and ready (its facade open,
    for `open`) before `go` starts its calls."""

    def __init__(self, redis_url: str, room: str, count: int, mode: str) -> None:
        super().__init__([__file__, "--worker", redis_url, room, str(count), mode], "worker")


def run_worker(redis_url: str, room: str, count: int, mode: str) -> None:
    """The worker process: `count` notify_room calls, awaited one after another; prints
    calls per second and this process's CPU seconds."""
    import trio

    from roomcast.remote import RemoteNotificationService, SyncNotificationService

    os.environ["ROOMCAST_REDIS_URL"] = redis_url
    remote = RemoteNotificationService(redis_url)

    async def calls(service: RemoteNotificationService) -> None:
        if mode == "burst":  # 16 publishers in this process, each awaiting its calls
            async with trio.open_nursery() as nursery:
                for first in range(BURST):
                    nursery.start_soon(some, service, range(first, count, BURST))
        else:
            await some(service, range(count))

    async def some(service: RemoteNotificationService, seqs: range) -> None:
        for seq in seqs:
            await service.notify_room(room, "n", data={"t": time.monotonic_ns(), "seq": seq})

    def own_cpu() -> float:  # every thread's, those that ended too (a sync call's)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def ready() -> None:
        print("ready", flush=True)
        sys.stdin.readline()

    async def main() -> tuple[float, float]:
        if mode in ("open", "burst"):
            async with remote:
                ready()
                cpu0, began = own_cpu(), time.perf_counter()
                await calls(remote)
            # the end of the block sent every frame
            return time.perf_counter() - began, cpu0
        ready()
        cpu0, began = own_cpu(), time.perf_counter()
        await calls(remote)
        return time.perf_counter() - began, cpu0

    if mode == "sync":
        ready()
        cpu0, began = own_cpu(), time.perf_counter()
        for seq in range(count):
            SyncNotificationService.notify_room(room, "n", data={"t": 0, "seq": seq})
        elapsed = time.perf_counter() - began
    else:
        elapsed, cpu0 = trio.run(main)
    print(json.dumps({"calls_per_s": count / elapsed, "seconds": elapsed,
                      "cpu": own_cpu() - cpu0}), flush=True)


class Room:
    """N client connections in the benchmark room, on one node or spread over several."""

    def __init__(self, sel: Epoll, nodes: list[Node], size: int, first_user: int,
                 name: str = ROOM, counting: bool = False) -> None:
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
        self.counting = counting
        for conn in self.conns if counting else []:
            conn.counting = b'"seq":'

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
            if not self.counting:
                time.sleep(0.002)  # frames gather: one read takes several
        errors = sum(c.errors + (c.got != frames) for c in self.conns)
        dead = sum(c.state == 7 for c in self.conns)
        if errors or dead:
            raise BenchError(f"{errors} frames out of order or unexpected, {dead} closed")

    def close(self) -> None:
        for lg in self.lgs:
            lg.close_all([c for c in self.conns if c.lg is lg])


def fan_out_round(room: Room, publisher: Node, measured: list[Node], frames: int,
                  via_worker: bool, others: dict[str, int] | None = None,
                  mode: str = "open") -> dict[str, float]:
    """One round; `others` names more processes (pid) whose CPU the round reports;
    `mode`: the worker's calls awaited one after another (open) or 16 at a time (burst)."""
    room.expect(frames)
    for node in measured:
        node.stats()  # counted from here
    process = Worker(publisher.redis_url, room.name, frames, mode) if via_worker else None
    watched = {"bench": os.getpid(), **(others or {})}
    if process is not None:
        watched["worker"] = process.process.pid
    cpu0 = [n.cpu() for n in measured]
    other0 = {k: cpu_seconds(pid) for k, pid in watched.items()}
    machine0 = machine_seconds()
    began = time.perf_counter()
    if process is not None:
        process.go()
    else:
        control = publisher.command(f"room {room.name} {frames} 0")
    room.wait(frames)
    wall = time.perf_counter() - began
    machine = [after - before for after, before in zip(machine_seconds(), machine0,
                                                        strict=True)]
    cpu = [n.cpu() - c for n, c in zip(measured, cpu0, strict=True)]
    other = {f"{k}_cpu": cpu_seconds(pid) - other0[k] for k, pid in watched.items()}
    if process is not None:
        # its own count, from `go` to its last frame sent (not its exit)
        worker = process.result()
        other["worker_cpu"], other["worker_seconds"] = worker["cpu"], worker["seconds"]
    else:
        answer(control)
    deliveries = len(room.conns) * frames
    counts = [n.stats() for n in measured]
    return {"deliveries": deliveries, "wall": wall, "cpu": sum(cpu), "busiest_cpu": max(cpu),
            "per_cpu_s": deliveries / max(sum(cpu), 1e-6),
            "per_busiest_cpu_s": deliveries / max(max(cpu), 1e-6),
            "per_s": deliveries / wall,
            "writes_per_delivery": sum(c[0] for c in counts) / deliveries,
            "messages": sum(c[1] for c in counts), "frames_heard": sum(c[2] for c in counts),
            "machine_busy": machine[0], "softirq": machine[1], **other}


def median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def spread(runs: list[dict[str, float]], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{min(values):,.0f} to {max(values):,.0f}"


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
            load_before = load()
            runs: dict[str, list[dict[str, float]]] = {k: [] for k in
                                                       ("lone", "redis", "redis_worker")}
            for _ in range(reps):  # the setups alternate: the load falls on all alike
                runs["lone"].append(fan_out_round(rooms["lone"], lone, [lone], frames, False))
                runs["redis"].append(fan_out_round(rooms["redis"], clustered, [clustered],
                                                   frames, False))
                runs["redis_worker"].append(fan_out_round(rooms["redis"], clustered,
                                                          [clustered], frames, True))
            for room in rooms.values():
                room.close()
            base = median(runs["lone"], "per_cpu_s")
            results[str(size)] = {
                "frames": frames, "load_before": load_before, "load_after": load(),
                **{k: {"per_cpu_s": median(v, "per_cpu_s"), "per_s": median(v, "per_s"),
                       "ratio": median(v, "per_cpu_s") / base,
                       "writes_per_delivery": median(v, "writes_per_delivery"),
                       "runs": v}
                   for k, v in runs.items()},
            }
            row = results[str(size)]
            print(f"room {size:>5} x {frames:>4} frames (load {load_before} -> {load()}), "
                  f"deliveries per node CPU s, median of {reps} (min to max):", flush=True)
            for key, title in (("lone", "lone node"), ("redis", "Redis, node publishing"),
                               ("redis_worker", "Redis, worker publishing")):
                v = runs[key]
                heard = (f", {median(v, 'messages'):.0f} Redis messages of "
                         f"{median(v, 'frames_heard'):.0f} frames" if key == "redis_worker"
                         else "")
                print(f"  {title:<26} {row[key]['per_cpu_s']:>10,.0f} ({spread(v, 'per_cpu_s')})"
                      f"  {row[key]['ratio']:.2f}x lone  wall {row[key]['per_s']:>9,.0f}/s"
                      f"  writes/delivery {row[key]['writes_per_delivery']:.4f}{heard}",
                      flush=True)
    finally:
        lone.stop()
        clustered.stop()
    return results


def worker_rate(redis_url: str, count: int) -> dict[str, Any]:
    node = Node(redis_url, 0)
    results: dict[str, Any] = {"load_before": load()}
    try:
        sel = Epoll()
        room = Room(sel, [node], 100, 200_000)
        time.sleep(0.5)
        for mode, calls in (("open", count), ("per_call", max(200, count // 20)),
                            ("sync", max(100, count // 50))):
            room.expect(calls)
            process = Worker(redis_url, ROOM, calls, "open" if mode == "open" else
                             ("sync" if mode == "sync" else "plain"))
            process.go()
            room.wait(calls)
            results[mode] = process.result()
            print(f"worker {mode:>8}: {results[mode]['calls_per_s']:>8,.0f} notify_room "
                  f"calls/s wall, {calls / results[mode]['cpu']:>8,.0f} per worker CPU s "
                  f"({calls} calls to a room of 100)   load {load()}", flush=True)
        room.close()
    finally:
        node.stop()
    results["load_after"] = load()
    return results


def two_nodes(redis_url: str, redis_pid: int, size: int, reps: int) -> dict[str, Any]:
    """Two setups, each one node against two: `checked` (the worker's calls awaited one
    after another, every client checking each frame's place: the pipeline's latency
    bounds the wall clock) and `saturated` (the worker's calls 16 at a time, so that
    the nodes run flat out, and clients that count frames in the bytes they read: a
    client parsing frames in Python costs about as much per delivery as a node, and
    on two cores it would be measured instead of the nodes)."""
    first, second = Node(redis_url, 0), Node(redis_url, 1)
    load_before = load()
    pinned = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if pinned is not None:
        # The clients on any core: pinned to node 2's, they ran only when node 2 let
        # them, node 1's sockets filled meanwhile, and node 1 waited (two nodes took
        # 3.2 s where one node with half the room takes 1.8 to 2.3; unpinned, 2.1 to 2.6).
        os.sched_setaffinity(0, range(CORES))
    try:
        frames = frames_for(size)
        sel = Epoll()
        rooms = {"one": Room(sel, [first], size, 300_000, "one"),
                 "two": Room(sel, [first, second], size, 400_000, "two"),
                 "one_saturated": Room(sel, [first], size, 500_000, "one-s", counting=True),
                 "two_saturated": Room(sel, [first, second], size, 600_000, "two-s",
                                       counting=True)}
        time.sleep(0.5)
        runs: dict[str, list[dict[str, float]]] = {key: [] for key in rooms}
        for _ in range(reps):  # interleaved: one node, two nodes, one node, ...
            for key, room in rooms.items():
                mode = "burst" if key.endswith("saturated") else "open"
                runs[key].append(fan_out_round(room, first, [first, second], frames, True,
                                               {"redis": redis_pid}, mode))
        for room in rooms.values():
            room.close()
    finally:
        first.stop()
        second.stop()
        if pinned is not None:
            os.sched_setaffinity(0, pinned)
    keys = ("per_busiest_cpu_s", "per_s", "per_cpu_s", "busiest_cpu", "cpu", "bench_cpu",
            "worker_cpu", "worker_seconds", "redis_cpu", "wall", "machine_busy", "softirq")
    figures: dict[str, Any] = {k: {key: median(v, key) for key in keys} | {"runs": v}
                               for k, v in runs.items()}
    print(f"two nodes against one: {size} connections x {frames} frames, a worker "
          f"publishing, median of {reps} interleaved rounds (load {load_before} -> "
          f"{load()}):", flush=True)
    ratios: dict[str, float] = {}
    for setup, suffix in (("checked", ""), ("saturated", "_saturated")):
        print(f" {setup}:", flush=True)
        for nodes, title in (("one", "one node"), ("two", "two nodes")):
            f, v = figures[nodes + suffix], runs[nodes + suffix]
            print(f"  {title:<9} per busiest-node CPU s {f['per_busiest_cpu_s']:>9,.0f} "
                  f"({spread(v, 'per_busiest_cpu_s')})  wall {f['per_s']:>8,.0f}/s "
                  f"({spread(v, 'per_s')})  CPU s: nodes {f['cpu']:.2f} (busiest "
                  f"{f['busiest_cpu']:.2f}), clients {f['bench_cpu']:.2f}, worker "
                  f"{f['worker_cpu']:.2f} (its calls took {f['worker_seconds']:.2f} s), Redis "
                  f"{f['redis_cpu']:.2f}, wall {f['wall']:.2f}; the machine busy "
                  f"{f['machine_busy'] / f['wall']:.2f} of {CORES} cores, softirq "
                  f"{f['softirq']:.2f} CPU s", flush=True)
        one, two = figures["one" + suffix], figures["two" + suffix]
        ratios[setup] = two["per_busiest_cpu_s"] / one["per_busiest_cpu_s"]
        ratios[setup + "_wall"] = two["per_s"] / one["per_s"]
        print(f"  two / one: {ratios[setup]:.2f}x per busiest-node CPU s, "
              f"{ratios[setup + '_wall']:.2f}x wall", flush=True)
    return {"size": size, "frames": frames, "ratio": ratios["checked"],
            "wall_ratio": ratios["checked_wall"], "saturated_ratio": ratios["saturated"],
            "saturated_wall_ratio": ratios["saturated_wall"], "load_before": load_before,
            "load_after": load(), **figures}


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
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--worker-calls", type=int, default=20_000)
    parser.add_argument("--two-size", type=int, default=1000)
    parser.add_argument("--bg-pace-ms", type=float, default=10.0)
    parser.add_argument("--only", default="worker-rooms,worker-rate,two-nodes,latency")
    parser.add_argument("--frames", type=int, default=0, help="per round (0: by size)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    global FRAMES
    FRAMES = args.frames or None
    from tests.cluster import RedisServer

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {CORES - 1})
    aliases = {"fanout": "worker-rooms", "worker": "worker-rate", "two": "two-nodes"}
    only = {aliases.get(name, name) for name in args.only.split(",")}
    redis = RedisServer()
    redis.start(die_with_parent)
    figures: dict[str, Any] = {"load_before": os.getloadavg()}
    print(f"load average before: {load()}", flush=True)
    try:
        if "worker-rooms" in only:
            figures["fanout"] = fan_out(redis.url, [int(s) for s in args.sizes.split(",")],
                                        args.reps)
        if "worker-rate" in only:
            figures["worker"] = worker_rate(redis.url, args.worker_calls)
        if "two-nodes" in only:
            figures["two_nodes"] = two_nodes(redis.url, redis.process.pid, args.two_size,
                                             args.reps)
        if "latency" in only:
            figures["latency"] = latency(redis.url, 1000, 300, args.bg_pace_ms)
    finally:
        redis.stop()
    figures["load_after"] = os.getloadavg()
    print(f"load average after: {load()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
