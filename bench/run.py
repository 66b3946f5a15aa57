"""The benchmark suite's one entry point: roomcast side by side with its peers.

    .venv/bin/python bench/run.py --full     # about half an hour; writes docs/benchmarks.*
    .venv/bin/python bench/run.py --tiny     # a few seconds per benchmark; writes to a temp dir

Benchmarks (each prints every peer's figure and roomcast's ratio to each, as the median
of several repetitions with the spread): fan-out, notify latency (idle and under a
fan-out load), memory per idle connection, handshakes per second with JWT, and
roomcast's capacity within 1 GiB of RSS. See bench/README.md.

`--out DIR` writes DIR/benchmarks.md, DIR/benchmarks.png and DIR/benchmarks.json;
`--only fanout,latency,...` and `--peers seed,roomcast,...` narrow the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "peers")]

import benchmarks  # noqa: E402
import report  # noqa: E402
from benchmarks import GIB_KIB, Settings, safely  # noqa: E402
from loadgen import PEER_TITLES, PEERS  # noqa: E402
from peer_common import raise_fd_limit  # noqa: E402

BENCHMARKS = ("fanout", "latency", "memory", "handshakes", "capacity")
PACKAGES = ("trio", "trio-websocket", "wsproto", "pyjwt", "fastapi", "starlette", "uvicorn",
            "python-socketio", "python-engineio", "websockets")


def full_settings(peers: tuple[str, ...], server_cpu: int | None) -> Settings:
    return Settings(
        peers=peers, server_cpu=server_cpu,
        fanout_sizes=(100, 1000, 5000), fanout_reps=5, fanout_seconds=2.0,
        fanout_messages=None, pad=45,
        latency_sizes=(1000, 5000), latency_samples=1000, latency_seconds=15.0, latency_reps=3,
        bg_room=1000, bg_rate=10.0,
        memory_connections=5000, memory_reps=3,
        handshakes=3000, handshake_concurrency=50, handshake_reps=5,
        capacity_cap=100_000, capacity_step=1000, capacity_limit_kib=GIB_KIB,
    )


def tiny_settings(peers: tuple[str, ...], server_cpu: int | None) -> Settings:
    return Settings(
        peers=peers, server_cpu=server_cpu,
        fanout_sizes=(20,), fanout_reps=1, fanout_seconds=0.2, fanout_messages=20, pad=45,
        latency_sizes=(20,), latency_samples=20, latency_seconds=5.0, latency_reps=1,
        bg_room=10, bg_rate=50.0,
        memory_connections=50, memory_reps=1,
        handshakes=40, handshake_concurrency=10, handshake_reps=1,
        capacity_cap=200, capacity_step=100, capacity_limit_kib=GIB_KIB,
    )


def pin() -> tuple[int | None, int | None]:
    """The servers get the first core, this process (the load generator) the second."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    os.sched_setaffinity(0, {cores[1]})
    return cores[0], cores[1]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": memory_gib,
            "kernel": platform.release()}


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE.parent, capture_output=True, text=True,
                          check=True).stdout.strip()


def roomcast_source(rev: str | None) -> dict[str, Any]:
    """Which roomcast the servers run: the working tree, or a commit extracted to a
    temporary folder that the peer processes find first on their path."""
    try:
        if rev is None:
            dirty = bool(git("status", "--porcelain", "--", "roomcast"))
            return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": dirty}
        commit = git("rev-parse", "--short", rev)
    except (OSError, subprocess.CalledProcessError) as exc:
        if rev is not None:
            raise SystemExit(f"--roomcast-at {rev}: {exc}") from None
        return {"commit": "unknown", "uncommitted": None}
    folder = tempfile.mkdtemp(prefix="roomcast-at-")
    archive = subprocess.run(["git", "archive", commit, "roomcast"], cwd=HERE.parent,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    os.environ["ROOMCAST_BENCH_SOURCE"] = folder
    return {"commit": commit, "uncommitted": False}


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def show(title: str, entry: dict[str, Any] | None, peers: tuple[str, ...], digits: int,
         unit: str) -> None:
    """Every peer's figure, and roomcast's ratio to each."""
    print(f"  -- {title}")
    if not entry:
        print("     failed")
        return
    for peer in peers:
        stats = entry.get(peer)
        if not stats:
            print(f"     {PEER_TITLES[peer]:<42} failed")
            continue
        ratio = entry.get("ratios", {}).get(peer)
        line = (f"     {PEER_TITLES[peer]:<42} {stats['median']:>12,.{digits}f} {unit} "
                f"({stats['min']:,.{digits}f} to {stats['max']:,.{digits}f})")
        if peer != "roomcast" and ratio is not None:
            line += f"   roomcast ÷ this: {ratio:.2f}"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full suite (default)")
    size.add_argument("--tiny", action="store_true", help="small N, one repetition each")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: docs/ for --full, a temp dir for --tiny)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma separated, from {', '.join(PEERS)}")
    parser.add_argument("--only", default=",".join(BENCHMARKS),
                        help=f"comma separated, from {', '.join(BENCHMARKS)}")
    parser.add_argument("--roomcast-at", metavar="REV", default=None,
                        help="measure roomcast as committed at REV (e.g. HEAD), from a copy "
                        "extracted with git archive, instead of the working tree")
    parser.add_argument("--update", type=Path, default=None, metavar="JSON",
                        help="measure only the --only benchmarks again, keep the other "
                        "figures of this benchmarks.json, and rewrite its report")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="only redraw the report and chart from a benchmarks.json")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        results = json.loads(args.from_json.read_text())
        out = args.out or args.from_json.parent
        (out / "benchmarks.md").write_text(report.markdown(results, "benchmarks.png"))
        if not args.no_chart:
            report.chart(results, out / "benchmarks.png")
        print(f"wrote {out}/benchmarks.md and .png")
        return 0

    peers = tuple(p for p in PEERS if p in args.peers.split(","))
    only = [b for b in BENCHMARKS if b in args.only.split(",")]
    if not peers or not only:
        parser.error("nothing to run")
    if args.out is None and args.update is not None:
        args.out = args.update.parent
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="roomcast-bench-")) if args.tiny
                    else HERE.parent / "docs")
    args.out.mkdir(parents=True, exist_ok=True)
    source = roomcast_source(args.roomcast_at)
    server_cpu, client_cpu = pin()
    fd_limit = raise_fd_limit()
    make = tiny_settings if args.tiny else full_settings
    settings = make(peers, server_cpu)
    command = "bench/run.py " + ("--tiny" if args.tiny else "--full")
    if args.roomcast_at:
        command += f" --roomcast-at {args.roomcast_at}"
    print(f"roomcast benchmarks ({command}); servers on core {server_cpu}, load generator "
          f"on core {client_cpu}; descriptors {fd_limit:,}; load average {load_average()}")
    began = time.perf_counter()
    errors: list[str] = []
    results: dict[str, Any] = {"errors": errors}
    meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command, "peers": list(peers), "machine": machine(),
        "python": platform.python_version(), "versions": versions(),
        "server_cpu": server_cpu, "client_cpu": client_cpu, "load_before": load_average(),
        "roomcast_source": source,
        "settings": _settings_dict(settings),
    }
    if args.update is not None:
        results = json.loads(args.update.read_text())
        names = {"fanout": "fan-out"}  # the others' errors start with their own name
        errors = results["errors"] = [
            e for e in results.get("errors", ())
            if not any(e.startswith(names.get(b, b)) for b in only)
        ]
        results["meta"].setdefault("updates", []).append({
            "benchmarks": only, "date": meta["date"], "command": command + " --only "
            + ",".join(only) + " --update", "roomcast_source": source,
            "load_before": meta["load_before"],
        })
    else:
        results["meta"] = meta

    def save() -> None:  # after every benchmark, so that a stopped run keeps its figures
        (args.out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")

    if "fanout" in only:
        print("\n== fan-out: deliveries per second")
        results["fanout"] = {}
        for n in settings.fanout_sizes:
            entry = safely(settings, errors, f"fan-out {n}",
                           lambda n=n: benchmarks.fanout(settings, n))
            results["fanout"][str(n)] = entry
            show(f"room of {n:,}: deliveries/s", entry, peers, 0, "/s")
            save()
    if "latency" in only:
        print("\n== notify latency")
        results["latency"] = {}
        for n in settings.latency_sizes:
            entry = safely(settings, errors, f"latency {n}",
                           lambda n=n: benchmarks.latency(settings, n))
            results["latency"][str(n)] = entry
            for mode in ("idle", "load"):
                for key in ("p50_ms", "p99_ms", "max_ms"):
                    show(f"{n:,} connections, {mode}, {key[:-3]}",
                         (entry or {}).get(mode, {}).get(key), peers, 3, "ms")
            save()
    if "memory" in only:
        print("\n== memory per idle connection")
        results["memory"] = safely(settings, errors, "memory",
                                   lambda: benchmarks.memory(settings))
        show(f"{settings.memory_connections:,} idle connections: KiB each",
             results["memory"], peers, 1, "KiB")
        save()
    if "handshakes" in only:
        print("\n== handshakes per second with JWT")
        results["handshakes"] = safely(settings, errors, "handshakes",
                                       lambda: benchmarks.handshakes(settings))
        show("handshakes/s", results["handshakes"], peers, 0, "/s")
        save()
    if "capacity" in only and "roomcast" in peers:
        print("\n== capacity: roomcast connections within 1 GiB RSS")
        results["capacity"] = safely(settings, errors, "capacity",
                                     lambda: benchmarks.capacity(settings))

    if args.update is None:
        results["meta"]["load_after"] = load_average()
        results["meta"]["duration_min"] = (time.perf_counter() - began) / 60
    save()
    (args.out / "benchmarks.md").write_text(report.markdown(results, "benchmarks.png"))
    if not args.no_chart:
        report.chart(results, args.out / "benchmarks.png")
    print("\n== issue 4's targets for roomcast")
    for name, measured, met in report.targets(results):
        print(f"  {'n/a ' if met is None else 'met ' if met else 'MISS'} {name}: {measured}")
    print(f"\nwrote {args.out}/benchmarks.md, .png, .json in "
          f"{(time.perf_counter() - began) / 60:.1f} min")
    if errors:
        print(f"{len(errors)} benchmark(s) failed:")
        for error in errors:
            print(f"  {error}")
        return 1
    return 0


def _settings_dict(settings: Settings) -> dict[str, Any]:
    return attrs.asdict(settings, filter=lambda field, _: field.name != "log")


if __name__ == "__main__":
    sys.exit(main())
