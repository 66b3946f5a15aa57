"""Cluster benchmark: what the Redis backplane costs and what a second node buys.

Runs on this machine only (127.0.0.1): a Redis server, then roomcast nodes in their own
processes (bench/cluster_node.py), each pinned to a core, and the clients here.

- notify latency: `notify_user` called on one node, for a user connected to the same
  node or to the other one; p50 / p99 / max from publish to receipt (one monotonic
  clock, shared by the processes);
- fan-out: a room of N connections (on one node, or split over two), `notify_room`
  called on the first node as fast as it goes; deliveries per second until the last
  client holds the last frame; every client checks it got every frame, in order;
- two publishers, cross node: two nodes, a room of N connections split over both, and
  `notify_room` called on each node at once (F frames each, neither waiting for the
  other); deliveries per second (2F x N over the time until the last client holds the
  last frame) and per CPU second of the nodes and Redis, p50 / p99 from publish to
  receipt over every frame and client (flat out, that is mostly the backlog waiting for
  the clients; `--pace-ms` spaces each publisher's frames), and the order each client
  saw: every client records each frame's (epoch, offset), and the run counts clients
  whose order differs from the most common one, offset reversals (an offset lower than
  the previous one in the same epoch), gaps (an offset more than one past the previous
  one), frames missing or received twice, and frames numbered differently at different
  clients. These are figures, not checks: the run goes on whatever they are, and
  prints them in a block of their own.

    .venv/bin/python bench/cluster.py [--clients 400] [--frames 200] [--samples 300]
        [--repeat 3] [--only single,two-publishers] [--pace-ms 0] [--json PATH]

Setups: one node without Redis; one node with Redis; two nodes with Redis. On a
2-core machine two nodes and the clients share the cores, so the two-node fan-out shows
what the backplane costs more than what a second core buys; on a machine with a core
per node the second node adds its core.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
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

from loadgen import die_with_parent  # noqa: E402  (bench/, the script's own folder)

from roomcast import Config, mint_token  # noqa: E402
from tests.cluster import RedisServer  # noqa: E402

SECRET = "roomcast-bench-secret-0123456789abcdef"
CONFIG = Config(jwt_secret=SECRET)


class Node:
    def __init__(self, redis_url: str, core: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "cluster_node.py"), "--secret", SECRET,
             "--redis-url", redis_url, "--core", str(core)],
            stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent,
        )
        ws_port, control_port = self.process.stdout.readline().split()
        self.ws_port, self.control_port = int(ws_port), int(control_port)
        self.redis_pid: int | None = None  # the Redis this node uses, if it is ours

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextmanager
def setup(kind: str):
    with ExitStack() as stack:
        redis_url = ""
        if kind != "one node, no Redis":
            redis = RedisServer()
            redis.start(die_with_parent)
            stack.callback(redis.stop)
            redis_url = redis.url
        count = 2 if kind.startswith("two") else 1
        nodes = [Node(redis_url, core) for core in range(count)]
        for node in nodes:
            stack.callback(node.stop)
            if redis_url:
                node.redis_pid = redis.process.pid
        time.sleep(0.5 if redis_url else 0.1)  # presence and subscriptions settle
        yield nodes


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds the processes have used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


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


TWO_PUBLISHERS = "two nodes, Redis, two publishers"
STALL_SECONDS = 10  # no frame for this long at any client: the rest are lost


async def publish_together(
    nodes: list[Node], room: str, frames: int, pace_ms: float = 0
) -> list[float]:
    """`room ROOM FRAMES PACE_MS TAG` on every node at once: the control connections are open
    before either command is written, and neither waits for the other's answer."""
    streams = [await trio.open_tcp_stream("127.0.0.1", node.control_port) for node in nodes]
    seconds = [math.nan] * len(nodes)

    async def one(index: int) -> None:
        stream = streams[index]
        async with stream:
            await stream.send_all(f"room {room} {frames} {pace_ms} {index}\n".encode())
            answer = b""
            while not answer.endswith(b"\n"):
                answer += await stream.receive_some(100)
        seconds[index] = float(answer.split()[1])

    async with trio.open_nursery() as nursery:
        for index in range(len(nodes)):
            nursery.start_soon(one, index)
    return seconds


def order_figures(seen: list[list[tuple]], starts: list[tuple], expected: int) -> dict:
    """What the clients saw. `seen[i]` is client i's frames in arrival order, each
    (epoch, offset, publisher, seq); `starts[i]` the (epoch, offset) its join answered.
    Orders are compared between the clients that got every frame (`expected`)."""
    orders = collections.Counter(
        tuple((p, q) for _, _, p, q in frames)
        for frames in seen
        if len({(p, q) for _, _, p, q in frames}) == expected
    )
    complete = sum(orders.values())
    labels: dict[tuple, set] = collections.defaultdict(set)
    reversals = gaps = missing = duplicates = lost = epochs = 0
    for frames, (epoch, offset) in zip(seen, starts, strict=True):
        previous: tuple = (epoch, offset)
        got: dict[str, set[int]] = collections.defaultdict(set)
        ids = set()
        for frame_epoch, frame_offset, p, q in frames:
            labels[(p, q)].add((frame_epoch, frame_offset))
            if (p, q) in ids:
                duplicates += 1
            ids.add((p, q))
            got[frame_epoch].add(frame_offset)
            if frame_epoch == previous[0]:
                if frame_offset < previous[1]:
                    reversals += 1
                elif frame_offset > previous[1] + 1:
                    gaps += 1
            previous = (frame_epoch, frame_offset)
        lost += expected - len(ids)
        epochs += len(got)
        for frame_epoch, offsets in got.items():
            # offsets after the join's position (or the epoch's first seen) never received
            low = offset if frame_epoch == epoch else min(offsets) - 1
            missing += max(offsets) - low - sum(o > low for o in offsets)
    return {
        "clients": len(seen),
        "same order at every client": len(orders) == 1 and complete == len(seen),
        "distinct orders": len(orders),
        "clients off the most common order": complete - max(orders.values(), default=0),
        "clients incomplete": len(seen) - complete,
        "reversals": reversals,
        "gaps": gaps,
        "offsets missing": missing,
        "frames lost": lost,
        "frames duplicated": duplicates,
        "frames numbered differently": sum(len(v) > 1 for v in labels.values()),
        "epochs per client": epochs / max(len(seen), 1),
    }


async def two_publishers(nodes: list[Node], clients: int, frames: int, pace_ms: float) -> dict:
    """A room of `clients` split over both nodes; `frames` notify_room calls on each
    node at once (each `pace_ms` after the previous one; 0: as fast as it goes). Never
    fails on what the clients see: it counts it."""
    room = "bench2p"
    expected = 2 * frames
    seen: list[list[tuple]] = [[] for _ in range(clients)]
    starts: list[tuple] = [("", 0)] * clients
    delays: list[float] = []
    finished_at: list[float] = [math.nan] * clients
    finished = ready = 0
    done, all_ready = trio.Event(), trio.Event()

    async def client(index: int) -> None:
        nonlocal finished, ready
        node = nodes[index % len(nodes)]
        async with open_websocket_url(url(node, 1000 + index), message_queue_size=64) as ws:
            await ws.get_message()
            await ws.send_message(json.dumps({"type": "join_room", "room": room}))
            answer = json.loads(await ws.get_message())["data"]
            starts[index] = (answer.get("epoch", ""), answer.get("offset", 0))
            ready += 1
            if ready == clients:
                all_ready.set()
            frames_seen, ids = seen[index], set()
            while len(ids) < expected:
                frame = json.loads(await ws.get_message())
                now = time.monotonic_ns()
                data = frame["data"]
                frames_seen.append((frame.get("epoch"), frame.get("offset"), data["p"],
                                    data["seq"]))
                ids.add((data["p"], data["seq"]))
                delays.append((now - data["t"]) / 1e6)
            finished_at[index] = time.perf_counter()
            finished += 1
            if finished == clients:
                done.set()

    async with trio.open_nursery() as nursery:
        for index in range(clients):
            nursery.start_soon(client, index)
        await all_ready.wait()
        await trio.sleep(0.5)  # presence settles
        pids = [node.process.pid for node in nodes] + [nodes[0].redis_pid]
        cpu_before, client_cpu_before = cpu_seconds(pids), time.process_time()
        started = time.perf_counter()
        publish_seconds = await publish_together(nodes, room, frames, pace_ms)
        # Frames lost for good: count them, do not hang. A loaded machine only slows the
        # clients down, so give up only when no client has received anything for a while.
        while not done.is_set():
            received = len(delays)
            with trio.move_on_after(STALL_SECONDS):
                await done.wait()
            if len(delays) == received:
                break
        nursery.cancel_scope.cancel()
    server_cpu = cpu_seconds(pids) - cpu_before
    client_cpu = time.process_time() - client_cpu_before
    complete = finished == clients
    ended = max(finished_at) if complete else time.perf_counter()
    elapsed = ended - started
    delays.sort()
    row = {
        "deliveries_per_s": sum(map(len, seen)) / elapsed,
        "seconds": elapsed,
        "p50_ms": delays[len(delays) // 2] if delays else math.nan,
        "p99_ms": delays[int(len(delays) * 0.99)] if delays else math.nan,
        "publish_seconds_max": max(publish_seconds),
        # the two nodes' and Redis's CPU from the publish command to the last receipt:
        # steadier than wall time on a shared machine, and it leaves out the clients
        "server_cpu_s": server_cpu,
        "deliveries_per_server_cpu_s": sum(map(len, seen)) / server_cpu,
        # this process's (the clients') CPU: near `seconds`, the clients were the bottleneck
        "client_cpu_s": client_cpu,
        "clients_complete": finished,
    }
    row.update(order_figures(seen, starts, expected))
    return row


SINGLE = ("one node, no Redis", "one node, Redis", "two nodes, Redis")


async def run(args: argparse.Namespace) -> list[dict]:
    results = []
    kinds = (SINGLE if "single" in args.only else ()) + (
        (TWO_PUBLISHERS,) if "two-publishers" in args.only else ())
    for kind in kinds:
        with setup(kind) as nodes:
            row: dict = {"setup": kind}
            if kind == TWO_PUBLISHERS:
                row["two publishers"] = await two_publishers(
                    nodes, args.clients, args.frames, args.pace_ms
                )
            else:
                row["latency same node"] = await latency(nodes[0], nodes[0], args.samples)
                if len(nodes) > 1:
                    row["latency cross node"] = await latency(nodes[0], nodes[1], args.samples)
                row["fan-out"] = await fan_out(nodes, args.clients, args.frames)
            row["loadavg_1min"] = os.getloadavg()[0]
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


def summarize(runs: list[list[dict]]) -> list[dict]:
    """Per setup and figure: the median, and the spread as [min, max], over the runs."""
    summary = []
    for index, first in enumerate(runs[0]):
        row: dict = {"setup": first["setup"]}
        for key, value in first.items():
            if not isinstance(value, dict):
                continue
            row[key] = {}
            for figure, sample in value.items():
                values = [r[index][key][figure] for r in runs]
                if isinstance(sample, bool):
                    row[key][figure] = {"runs true": sum(values), "runs": len(values)}
                else:
                    row[key][figure] = {"median": statistics.median(values),
                                        "min": min(values), "max": max(values)}
        row["loadavg_1min"] = [r[index]["loadavg_1min"] for r in runs]
        summary.append(row)
    return summary


def report(summary: list[dict], clients: int, frames: int, pace_ms: float = 0) -> str:
    def m(figure: dict) -> float:
        return figure["median"]

    lines = []
    single = [row for row in summary if "fan-out" in row]
    if single:
        lines += [
            f"| setup | notify p50 / p99 / max, same node (ms) | cross node (ms) | "
            f"fan-out to {clients} ({frames} frames), deliveries/s (min-max) |",
            "| --- | --- | --- | ---: |",
        ]
        for row in single:
            same = row["latency same node"]
            cross = row.get("latency cross node")
            cross_text = (f"{m(cross['p50_ms']):.2f} / {m(cross['p99_ms']):.2f} / "
                          f"{m(cross['max_ms']):.2f}" if cross else "-")
            fan = row["fan-out"]["deliveries_per_s"]
            lines.append(
                f"| {row['setup']} | {m(same['p50_ms']):.2f} / {m(same['p99_ms']):.2f} / "
                f"{m(same['max_ms']):.2f} | {cross_text} | {fan['median']:,.0f} "
                f"({fan['min']:,.0f}-{fan['max']:,.0f}) |"
            )
    for row in summary:
        if "two publishers" not in row:
            continue
        two = row["two publishers"]
        if lines:
            lines.append("")
        lines += [
            f"two publishers, cross node: a room of {clients} over 2 nodes, {frames} frames "
            f"from each node at once"
            + (f", {pace_ms:g} ms apart" if pace_ms else ", flat out")
            + f" ({2 * frames * clients:,} deliveries a run)",
            "",
            "| figure | median | min | max |",
            "| --- | ---: | ---: | ---: |",
        ]
        for figure, label, form in (
            ("deliveries_per_s", "deliveries/s", "{:,.0f}"),
            ("p50_ms", "latency p50 (ms)", "{:.2f}"),
            ("p99_ms", "latency p99 (ms)", "{:.2f}"),
            ("server_cpu_s", "server CPU s (2 nodes + Redis)", "{:.2f}"),
            ("deliveries_per_server_cpu_s", "deliveries per server CPU s", "{:,.0f}"),
            ("seconds", "wall s", "{:.2f}"),
            ("client_cpu_s", "client CPU s (this process)", "{:.2f}"),
        ):
            value = two[figure]
            lines.append(f"| {label} | " + " | ".join(
                form.format(value[k]) for k in ("median", "min", "max")) + " |")
        same = two["same order at every client"]
        lines += [
            "",
            "=" * 72,
            "ORDER, two publishers (figures summed over clients; min-max over runs):",
            f"  every client saw the same order:  in {same['runs true']} of "
            f"{same['runs']} runs",
        ]
        for figure in ("clients incomplete", "distinct orders",
                       "clients off the most common order", "reversals", "gaps",
                       "offsets missing", "frames lost", "frames duplicated",
                       "frames numbered differently", "epochs per client"):
            value = two[figure]
            flag = "   <-- NOT ZERO" if figure not in ("distinct orders", "epochs per client") \
                and value["max"] > 0 else ""
            lines.append(f"  {figure + ':':34} {value['min']:g}-{value['max']:g}{flag}")
        lines.append("=" * 72)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=400)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="single,two-publishers",
                        help="single (the three one-publisher setups), two-publishers")
    parser.add_argument(
        "--pace-ms", type=float, default=0,
        help="two publishers: each waits this long before each publish (0: flat out, "
        "so the latency is mostly the backlog of frames waiting for the clients)",
    )
    parser.add_argument("--json", metavar="PATH",
                        help="also write every run's figures and the summary here")
    args = parser.parse_args()
    args.only = set(args.only.split(","))
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {os.cpu_count() - 1})
    runs = [trio.run(run, args) for _ in range(args.repeat)]
    summary = summarize(runs)
    print()
    print(f"median of {args.repeat} runs (1-min load average at each setup: "
          + "; ".join(f"{row['setup']}: {', '.join(f'{x:.2f}' for x in row['loadavg_1min'])}"
                      for row in summary) + ")")
    print(report(summary, args.clients, args.frames, args.pace_ms))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"clients": args.clients, "frames": args.frames, "samples": args.samples,
             "pace_ms": args.pace_ms,
             "runs": runs, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
