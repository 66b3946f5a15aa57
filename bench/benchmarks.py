"""The benchmarks: each starts a peer server (its own process, pinned to the server
core), drives it from this process (pinned to the other core) and returns figures.

Every function takes a `Settings` and returns plain data (JSON-ready), with every
repetition kept, so the report can show the median and the spread.
"""

from __future__ import annotations

import contextlib
import random
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from loadgen import BenchError, Conn, Epoll, Loadgen, Server, mint_tokens

SECRET = "roomcast-bench-secret-0123456789abcdef-0123456789"
ROOM = "bench"
BG_ROOM = "background"
GIB_KIB = 1 << 20
# The load generator's pause between reads during a fan-out: frames gather in the
# kernel's buffers meanwhile and are read several at a time, which keeps the client
# cheaper than the server; the end time is late by at most this (0.5 % of a 2 s run).
FANOUT_PAUSE = 0.01


@attrs.frozen
class Settings:
    peers: tuple[str, ...]
    server_cpu: int | None
    fanout_sizes: tuple[int, ...]
    fanout_reps: int
    fanout_seconds: float  # aim of one repetition; the message count is calibrated
    fanout_messages: int | None  # fixed message count (tiny), else calibrated
    pad: int  # padding that makes a notification frame about 150 bytes
    latency_sizes: tuple[int, ...]
    latency_samples: int
    latency_seconds: float  # a series stops after this long, even short of its samples
    latency_reps: int
    bg_room: int  # members of the background room
    bg_rate: float  # background publishes per second
    memory_connections: int
    memory_reps: int
    handshakes: int
    handshake_concurrency: int
    handshake_reps: int
    capacity_cap: int
    capacity_step: int
    capacity_limit_kib: int
    log: Callable[[str], None] = print


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# interleaving ------------------------------------------------------------------------------
#
# This machine is shared, and its load drifts. So the peers are not measured one after
# the other: their servers run side by side (each pinned to the server core, idle
# while another is measured) and the repetitions take turns, the order rotating every
# round. Where one process cannot hold every peer's connections at once (its
# descriptor limit), roomcast is paired with each peer in turn, and each ratio is
# taken within its pair.


def groups_for(settings: Settings, size: int) -> list[list[str]]:
    peers = list(settings.peers)
    budget = resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500
    if size * len(peers) <= budget or "roomcast" not in peers or len(peers) < 3:
        return [peers]
    return [["roomcast", peer] for peer in peers if peer != "roomcast"]


def owned(group: list[str]) -> list[str]:
    """The peers whose runs this group alone holds: not roomcast when it is paired with
    each peer in turn, since its runs then come from every pair."""
    return [peer for peer in group if peer != "roomcast" or len(group) > 2]


def numbered_groups(settings: Settings, size: int,
                    group_of: dict[str, int]) -> Iterator[tuple[int, list[str]]]:
    """The groups for `size`, numbered, each peer's group recorded in `group_of` (for
    `with_ratios`; roomcast's is its first)."""
    for g, group in enumerate(groups_for(settings, size)):
        group_of.update(dict.fromkeys(owned(group), g))
        group_of.setdefault("roomcast", g)
        yield g, group


def rotate(items: list[Any], by: int) -> list[Any]:
    by %= max(1, len(items))
    return items[by:] + items[:by]


class Target:
    """One peer under test: its server, and a load generator holding `size` clients."""

    def __init__(self, settings: Settings, peer: str, size: int, sel: Epoll) -> None:
        self.peer = peer
        self.server = Server(peer, SECRET, settings.server_cpu)
        try:
            self.lg = Loadgen(self.server.dialect, self.server.port, sel)
            self.conns = self.lg.open(mint_tokens(SECRET, range(1, size + 1)))
            self.server.wait_connections(size)
        except BaseException:
            self.server.stop()
            raise
        self.seq = 0

    def close(self) -> None:
        try:
            self.lg.close_all(self.conns)
        finally:
            self.server.stop()


def open_targets(stack: contextlib.ExitStack, settings: Settings, peers: list[str],
                 size: int) -> list[Target]:
    targets = []
    sel = Epoll()
    for peer in peers:
        target = Target(settings, peer, size, sel)
        stack.callback(target.close)
        targets.append(target)
    return targets


@contextlib.contextmanager
def isolated(settings: Settings, failures: list[str], group: list[str],
             *results: dict[str, list[dict[str, Any]]]) -> Iterator[None]:
    """A group that fails (a check, a peer that drops its clients) is recorded, its
    runs are dropped, and the other groups go on."""
    try:
        yield
    except BenchError as exc:
        failures.append(f"{' + '.join(group)}: {exc}")
        settings.log(f"  FAILED {' + '.join(group)}: {exc}")
        for table in results:
            for peer in owned(group):
                table[peer] = []


def with_ratios(results: dict[str, list[dict[str, Any]]], key: str, group_of: dict[str, int],
                failures: list[str] | None = None) -> dict[str, Any]:
    """Summaries per peer, and roomcast's ratio to each peer, from the runs of the
    same group (interleaved with that peer's). Peers without runs are left out."""
    out: dict[str, Any] = {}
    for peer, runs in results.items():
        if runs:
            out[peer] = {"runs": runs, **summary([r[key] for r in runs])}
    if out.get("roomcast"):
        ratios = {}
        for peer, runs in results.items():
            ours = [r[key] for r in results["roomcast"] if r["group"] == group_of.get(peer)]
            if not runs or not ours:
                continue
            theirs = statistics.median(r[key] for r in runs)
            ratios[peer] = statistics.median(ours) / theirs if theirs else None
        out["ratios"] = ratios
    if failures:
        out["failures"] = failures
    return out


# fan-out ---------------------------------------------------------------------------------


def fanout_round(target: Target, n: int, pad: int) -> dict[str, Any]:
    server, lg, conns, start = target.server, target.lg, target.conns, target.seq
    target.seq += n
    for conn in conns:
        conn.next, conn.end, conn.got = start, start + n, 0
    errors_before = sum(c.errors for c in conns)
    closed_before = lg.closed
    lg.round_done = 0
    stats0 = server.stats()
    cpu0 = client_cpu()
    began = time.perf_counter()
    server.control.send({"cmd": "publish_room", "room": ROOM, "start": start, "n": n, "pad": pad})
    timeout = 60 + len(conns) * n / 2000
    lg.run_until(lambda: lg.round_done == len(conns) or lg.closed > closed_before, timeout,
                 f"waiting for {n} frames on {len(conns)} connections", pause=FANOUT_PAUSE)
    wall = lg.round_last - began
    reply = server.control.reply()
    cpu1 = client_cpu()
    stats1 = server.stats()
    lg.check_alive(conns)
    errors = sum(c.errors for c in conns) - errors_before
    short = sum(1 for c in conns if c.got != n)
    if errors or short:
        raise BenchError(f"fan-out check failed: {errors} frames out of order or unexpected, "
                         f"{short} connections without exactly {n} frames")
    deliveries = len(conns) * n
    return {
        "messages": n,
        "deliveries": deliveries,
        "wall_s": wall,
        "deliveries_per_s": deliveries / wall,
        "publish_s": reply["seconds"],
        "server_cpu_s": stats1["cpu_s"] - stats0["cpu_s"],
        "client_cpu_s": cpu1 - cpu0,
        "checked": True,
    }


def fanout(settings: Settings, size: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in settings.peers}
    group_of: dict[str, int] = {}
    failures: list[str] = []
    for g, group in numbered_groups(settings, size, group_of):
        with contextlib.ExitStack() as stack, isolated(settings, failures, group, results):
            targets = open_targets(stack, settings, group, size)
            counts = {}
            for target in targets:
                target.lg.join(target.conns, ROOM)
                if settings.fanout_messages is not None:
                    counts[target.peer] = settings.fanout_messages
                else:  # warm-up, and calibration of the message count
                    warm = max(5, 20_000 // size)
                    rate = fanout_round(target, warm, settings.pad)["deliveries_per_s"]
                    counts[target.peer] = max(3, round(rate * settings.fanout_seconds / size))
            for rep in range(settings.fanout_reps):
                for target in rotate(targets, rep):
                    peer, n = target.peer, counts[target.peer]
                    run = fanout_round(target, n, settings.pad)
                    run["group"] = g
                    results[peer].append(run)
                    settings.log(
                        f"  {peer:>10} room of {size:>5}: {run['deliveries_per_s']:>10,.0f}"
                        f" deliveries/s ({n} x {size}, {run['wall_s']:.2f} s; CPU s: server "
                        f"{run['server_cpu_s']:.2f}, client {run['client_cpu_s']:.2f})"
                    )
    return with_ratios(results, "deliveries_per_s", group_of, failures)


# notify latency -----------------------------------------------------------------------------


def probe_series(target: Target, samples: int, rng: random.Random,
                 seconds: float = 15.0) -> dict[str, float]:
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < samples and (len(times) < 20 or time.perf_counter() < deadline):
        conn = rng.choice(target.conns)
        times.append(target.lg.probe(target.server.control, conn, target.seq) * 1000.0)
        target.seq += 1
        target.lg.pump(rng.random() * 0.001)  # decorrelate from the server's rhythms
    times.sort()
    return {"p50_ms": percentile(times, 0.50), "p99_ms": percentile(times, 0.99),
            "max_ms": times[-1], "samples": len(times)}


def loaded_series(settings: Settings, target: Target, members: list[Conn],
                  rng: random.Random) -> dict[str, Any]:
    """A probe series while the server fans out to the background room."""
    server, lg = target.server, target.lg
    for conn in members:
        conn.bg_next, conn.bg_errors = 0, 0
    server.control.call({"cmd": "bg_start", "room": BG_ROOM, "rate": settings.bg_rate,
                         "pad": settings.pad})
    stats0 = server.stats()
    cpu0, began = client_cpu(), time.perf_counter()
    try:
        figures: dict[str, Any] = probe_series(target, settings.latency_samples, rng,
                                               settings.latency_seconds)
    finally:
        published = server.control.call({"cmd": "bg_stop"})["published"]
    wall, cpu1 = time.perf_counter() - began, client_cpu()
    stats1 = server.stats()
    lg.run_until(lambda: all(c.bg_next >= published for c in members), 60,
                 "waiting for the background frames")
    bg_errors = sum(c.bg_errors for c in members)
    if bg_errors or published == 0:
        raise BenchError(f"background fan-out check failed: {bg_errors} frames out of "
                         f"order, {published} published")
    figures["background"] = {
        "room": len(members), "rate": settings.bg_rate, "published": published,
        "achieved_rate": published / wall, "server_cpu_s": stats1["cpu_s"] - stats0["cpu_s"],
        "client_cpu_s": cpu1 - cpu0, "wall_s": wall, "checked": True,
    }
    return figures


def latency(settings: Settings, size: int) -> dict[str, Any]:
    idle: dict[str, list[dict[str, Any]]] = {peer: [] for peer in settings.peers}
    loaded: dict[str, list[dict[str, Any]]] = {peer: [] for peer in settings.peers}
    group_of: dict[str, int] = {}
    failures: list[str] = []
    for g, group in numbered_groups(settings, size, group_of):
        with contextlib.ExitStack() as stack, \
                isolated(settings, failures, group, idle, loaded):
            targets = open_targets(stack, settings, group, size)
            rng = random.Random(size + g)
            members = {}
            for target in targets:
                probe_series(target, min(100, settings.latency_samples), rng)  # warm-up
                members[target.peer] = target.conns[: min(settings.bg_room, size)]
                target.lg.join(members[target.peer], BG_ROOM)
            for rep in range(settings.latency_reps):
                for target in rotate(targets, rep):
                    figures = probe_series(target, settings.latency_samples, rng,
                                           settings.latency_seconds)
                    figures["group"] = g
                    idle[target.peer].append(figures)
                    settings.log(_latency_line(target.peer, size, "idle", figures))
            for rep in range(settings.latency_reps):
                for target in rotate(targets, rep):
                    figures = loaded_series(settings, target, members[target.peer], rng)
                    figures["group"] = g
                    loaded[target.peer].append(figures)
                    settings.log(_latency_line(target.peer, size, "under load", figures))
            for target in targets:
                target.lg.check_alive(target.conns)
    return {
        "idle": {key: with_ratios(idle, key, group_of, failures)
                 for key in ("p50_ms", "p99_ms", "max_ms")},
        "load": {key: with_ratios(loaded, key, group_of, failures)
                 for key in ("p50_ms", "p99_ms", "max_ms")},
    }


def _latency_line(peer: str, size: int, name: str, figures: dict[str, Any]) -> str:
    line = (f"  {peer:>10} {size:>5} {name:>10}: p50 {figures['p50_ms']:.3f} ms, "
            f"p99 {figures['p99_ms']:.3f} ms, max {figures['max_ms']:.3f} ms")
    bg = figures.get("background")
    if bg:
        line += (f"; background {bg['achieved_rate']:.1f} publishes/s to {bg['room']}, "
                 f"CPU s: server {bg['server_cpu_s']:.2f}, client {bg['client_cpu_s']:.2f}"
                 f" of {bg['wall_s']:.1f} s")
    return line


# memory ----------------------------------------------------------------------------------


def memory_run(settings: Settings, peer: str) -> dict[str, Any]:
    n = settings.memory_connections
    with Server(peer, SECRET, settings.server_cpu) as server:
        lg = Loadgen(server.dialect, server.port)
        # Warm-up: the code paths of a connection, and their one-time allocations.
        warm = lg.open(mint_tokens(SECRET, range(1_000_001, 1_000_101)))
        server.wait_connections(len(warm))
        lg.close_all(warm)
        server.wait_connections(0)
        time.sleep(0.5)
        before = server.stats()
        conns = lg.open(mint_tokens(SECRET, range(1, n + 1)))
        server.wait_connections(n)
        time.sleep(1.0)
        after = server.stats()
        lg.check_alive(conns)
        lg.close_all(conns)
    per = (after["rss_kib"] - before["rss_kib"]) / n
    settings.log(f"  {peer:>10}: {per:.1f} KiB per idle connection "
                 f"(RSS {before['rss_kib'] / 1024:.1f} -> {after['rss_kib'] / 1024:.1f} MiB)")
    return {"kib_per_connection": per, "rss_before_kib": before["rss_kib"],
            "rss_after_kib": after["rss_kib"], "connections": n, "group": 0}


def memory(settings: Settings) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in settings.peers}
    for rep in range(settings.memory_reps):
        for peer in rotate(list(settings.peers), rep):
            results[peer].append(memory_run(settings, peer))
    return with_ratios(results, "kib_per_connection", dict.fromkeys(settings.peers, 0))


# handshakes ------------------------------------------------------------------------------


def handshakes(settings: Settings) -> dict[str, Any]:
    results: dict[str, list[dict[str, Any]]] = {peer: [] for peer in settings.peers}
    total, concurrency = settings.handshakes, settings.handshake_concurrency
    with contextlib.ExitStack() as stack:
        servers = {}
        sel = Epoll()
        for peer in settings.peers:
            server = stack.enter_context(Server(peer, SECRET, settings.server_cpu))
            lg = Loadgen(server.dialect, server.port, sel)
            lg.churn(mint_tokens(SECRET, range(1_000_001, 1_000_001 + min(200, total))),
                     concurrency)
            server.wait_connections(0)
            servers[peer] = (server, lg)
        for rep in range(settings.handshake_reps):
            for peer in rotate(list(settings.peers), rep):
                server, lg = servers[peer]
                first = 1 + rep * total
                tokens = mint_tokens(SECRET, range(first, first + total))
                stats0, cpu0 = server.stats(), client_cpu()
                elapsed = lg.churn(tokens, concurrency)
                cpu1 = client_cpu()
                stats1 = server.wait_connections(0)
                run = {"handshakes": total, "wall_s": elapsed, "per_s": total / elapsed,
                       "server_cpu_s": stats1["cpu_s"] - stats0["cpu_s"],
                       "client_cpu_s": cpu1 - cpu0, "group": 0}
                results[peer].append(run)
                settings.log(f"  {peer:>10}: {run['per_s']:,.0f} handshakes/s ({total} in "
                             f"{elapsed:.2f} s; CPU s: server {run['server_cpu_s']:.2f}, "
                             f"client {run['client_cpu_s']:.2f})")
    return with_ratios(results, "per_s", dict.fromkeys(settings.peers, 0))


# capacity --------------------------------------------------------------------------------


def capacity(settings: Settings) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = min(settings.capacity_cap, soft - 200)
    # Source ports below the kernel's ephemeral range: thousands of client sockets then
    # cannot starve other programs on this machine of ephemeral ports.
    ports = iter(range(12_000, 32_000))
    steps = []
    began = time.perf_counter()
    with Server("roomcast", SECRET, settings.server_cpu, max_connections=cap + 100) as server:
        lg = Loadgen(server.dialect, server.port)
        base = server.stats()
        conns: list[Conn] = []
        held, held_rss, stopped_by = 0, base["rss_kib"], "cap"
        while len(conns) < cap:
            step = min(settings.capacity_step, cap - len(conns))
            first = len(conns) + 1
            conns += lg.open(mint_tokens(SECRET, range(first, first + step)),
                             concurrency=100, source_ports=ports)
            stats = server.wait_connections(len(conns))
            steps.append({"connections": len(conns), "rss_kib": stats["rss_kib"]})
            if stats["rss_kib"] > settings.capacity_limit_kib:
                stopped_by = "memory"
                break
            held, held_rss = len(conns), stats["rss_kib"]
        lg.check_alive(conns)
        lg.close_all(conns, timeout=60)
    per = (held_rss - base["rss_kib"]) / held if held else 0.0
    projected = int((settings.capacity_limit_kib - base["rss_kib"]) / per) if per > 0 else 0
    result = {
        "held": held, "rss_kib": held_rss, "base_rss_kib": base["rss_kib"],
        "kib_per_connection": per, "limit_kib": settings.capacity_limit_kib,
        "cap": cap, "requested_cap": settings.capacity_cap, "fd_limit": soft,
        "fd_hard_limit": hard, "stopped_by": stopped_by, "steps": steps,
        "projected_within_limit": projected, "seconds": time.perf_counter() - began,
    }
    settings.log(f"    roomcast: held {held:,} connections at {held_rss / 1024:.0f} MiB RSS "
                 f"(stopped by the {stopped_by}; cap {cap:,}); {per:.1f} KiB each, so about "
                 f"{projected:,} would fit in {settings.capacity_limit_kib // 1024} MiB")
    return result


def safely(settings: Settings, errors: list[str], what: str,
           run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """Run one benchmark; a failure is recorded (and reported) instead of ending the suite."""
    try:
        return run()
    except Exception as exc:
        message = f"{what}: {type(exc).__name__}: {exc}"
        errors.append(message)
        settings.log(f"  FAILED {message}")
        return None
