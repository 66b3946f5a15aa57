"""Cluster benchmark: what the Redis backplane costs and what a second node buys.

Runs on this machine only (127.0.0.1): a Redis server, then roomcast nodes in their own
processes (bench/cluster_node.py), each pinned to a core, and the clients here.

- notify latency: `notify_user` called on one node, for a user connected to the same
  node or to the other one; p50 / p99 / max from publish to receipt (one monotonic
  clock, shared by the processes);
- fan-out: a room of N connections (on one node, or split over two), `notify_room`
  called on the first node as fast as it goes; deliveries per second until the last
  client holds the last frame; every client checks it got every frame, in order.

    .venv/bin/python bench/cluster.py [--clients 400] [--frames 200] [--samples 300]

Setups: one node without Redis; one node with Redis; two nodes with Redis. On a
2-core machine two nodes and the clients share the cores, so the two-node fan-out shows
what the backplane costs more than what a second core buys; on a machine with a core
per node the second node adds its core.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomcast import Config, mint_token  # noqa: E402
from tests.cluster import RedisServer  # noqa: E402

SECRET = "roomcast-bench-secret-0123456789abcdef"
CONFIG = Config(jwt_secret=SECRET)


class Node:
    def __init__(self, redis_url: str, core: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cluster_node.py"), "--secret", SECRET,
             "--redis-url", redis_url, "--core", str(core)],
            stdout=subprocess.PIPE, text=True,
        )
        ws_port, control_port = self.process.stdout.readline().split()
        self.ws_port, self.control_port = int(ws_port), int(control_port)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def setup(kind: str):
    with ExitStack() as stack:
        redis_url = ""
        if kind != "one node, no Redis":
            redis = RedisServer()
            redis.start()
            stack.callback(redis.stop)
            redis_url = redis.url
        count = 2 if kind.startswith("two") else 1
        nodes = [Node(redis_url, core) for core in range(count)]
        for node in nodes:
            stack.callback(node.stop)
        time.sleep(0.5 if redis_url else 0.1)  # presence and subscriptions settle
        yield nodes


async def command(node: Node, line: str) -> float:
    stream = await trio.open_tcp_stream("127.0.0.1", node.control_port)
    async with stream:
        await stream.send_all(line.encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            answer += await stream.receive_some(100)
    return float(answer.split()[1])


def url(node: Node, user: int) -> str:
    return f"ws://127.0.0.1:{node.ws_port}/api/v1/ws?token={mint_token(CONFIG, user)}"


async def latency(publisher: Node, target: Node, samples: int) -> dict[str, float]:
    async with open_websocket_url(url(target, 1)) as ws:
        await ws.get_message()  # welcome
        await trio.sleep(0.3)  # the publisher's view sees user 1
        delays: list[float] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(command, publisher, f"notify 1 {samples} 2")
            for seq in range(samples):
                frame = json.loads(await ws.get_message())
                assert frame["data"]["seq"] == seq, frame
                delays.append((time.monotonic_ns() - frame["data"]["t"]) / 1e6)
    delays.sort()
    return {"p50_ms": delays[len(delays) // 2], "p99_ms": delays[int(len(delays) * 0.99)],
            "max_ms": delays[-1]}


async def fan_out(nodes: list[Node], clients: int, frames: int) -> dict[str, float]:
    done = trio.Event()
    finished = 0
    ready = 0
    all_ready = trio.Event()

    async def client(index: int) -> None:
        nonlocal finished, ready
        node = nodes[index % len(nodes)]
        async with open_websocket_url(url(node, 1000 + index), message_queue_size=64) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "join_room", "room": "bench"}))
            await ws.get_message()
            ready += 1
            if ready == clients:
                all_ready.set()
            for seq in range(frames):
                frame = json.loads(await ws.get_message())
                assert frame["data"]["seq"] == seq, (index, frame)
            finished += 1
            if finished == clients:
                done.set()

    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, index)
        await all_ready.wait()
        await trio.sleep(0.5 if len(nodes) > 1 else 0.1)  # presence settles
        started = time.perf_counter()
        await command(nodes[0], f"room bench {frames} 0")
        await done.wait()
        elapsed = time.perf_counter() - started
    return {"deliveries_per_s": clients * frames / elapsed, "seconds": elapsed}


async def run(args: argparse.Namespace) -> list[dict]:
    results = []
    for kind in ("one node, no Redis", "one node, Redis", "two nodes, Redis"):
        with setup(kind) as nodes:
            row: dict = {"setup": kind}
            row["latency same node"] = await latency(nodes[0], nodes[0], args.samples)
            if len(nodes) > 1:
                row["latency cross node"] = await latency(nodes[0], nodes[1], args.samples)
            row["fan-out"] = await fan_out(nodes, args.clients, args.frames)
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def report(results: list[dict], clients: int, frames: int) -> str:
    lines = [
        f"| setup | notify p50 / p99 / max, same node (ms) | cross node (ms) | "
        f"fan-out to {clients} ({frames} frames), deliveries/s |",
        "| --- | --- | --- | ---: |",
    ]
    for row in results:
        same = row["latency same node"]
        cross = row.get("latency cross node")
        cross_text = (f"{cross['p50_ms']:.2f} / {cross['p99_ms']:.2f} / {cross['max_ms']:.2f}"
                      if cross else "-")
        lines.append(
            f"| {row['setup']} | {same['p50_ms']:.2f} / {same['p99_ms']:.2f} / "
            f"{same['max_ms']:.2f} | {cross_text} | {row['fan-out']['deliveries_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {os.cpu_count() - 1})
    runs = [trio.run(run, args) for _ in range(args.repeat)]
    medians = []
    for index, first in enumerate(runs[0]):
        row = {"setup": first["setup"]}
        for key in first:
            if key == "setup":
                continue
            row[key] = {k: statistics.median(r[index][key][k] for r in runs) for k in first[key]}
        medians.append(row)
    print()
    print(f"median of {args.repeat} runs:")
    print(report(medians, args.clients, args.frames))


if __name__ == "__main__":
    main()
