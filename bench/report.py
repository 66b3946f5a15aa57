"""Turn a results dict (bench/run.py) into docs/benchmarks.md and docs/benchmarks.png."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from loadgen import PEER_TITLES


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def cell(stats: dict[str, Any] | None, digits: int = 0) -> str:
    """Median, and the spread (min to max) when there was more than one run."""
    if not stats:
        return "failed"
    text = fmt(stats["median"], digits)
    if len(stats.get("runs", ())) > 1:
        text += f" ({fmt(stats['min'], digits)} to {fmt(stats['max'], digits)})"
    return text


def ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if value >= 0.1 else f"{value:.3f}"


def peers_of(results: dict[str, Any]) -> list[str]:
    return list(results["meta"]["peers"])


def per_size_table(results: dict[str, Any], section: dict[str, Any], sizes: list[str],
                   size_label: str, digits: int, pick: Any = None) -> list[str]:
    """Rows: peers; columns: one figure per size, then roomcast's ratio per size."""
    pick = pick or (lambda entry: entry)
    entries = [pick(section[s]) if section.get(s) else None for s in sizes]
    head = ["server", *[f"{size_label} {int(s):,}" for s in sizes],
            *[f"roomcast ÷ this, {int(s):,}" for s in sizes]]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for peer in peers_of(results):
        row = [PEER_TITLES[peer]]
        for entry in entries:
            row.append(cell(entry.get(peer) if entry else None, digits))
        for entry in entries:
            value = entry.get("ratios", {}).get(peer) if entry else None
            row.append("" if peer == "roomcast" else ratio(value))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def single_table(results: dict[str, Any], entry: dict[str, Any] | None, label: str,
                 digits: int) -> list[str]:
    lines = [f"| server | {label} | roomcast ÷ this |", "| --- | ---: | ---: |"]
    for peer in peers_of(results):
        stats = entry.get(peer) if entry else None
        value = entry.get("ratios", {}).get(peer) if entry else None
        lines.append(f"| {PEER_TITLES[peer]} | {cell(stats, digits)} | "
                     f"{'' if peer == 'roomcast' else ratio(value)} |")
    return lines


def derived(entry: dict[str, Any] | None, value: Any) -> dict[str, Any] | None:
    """A figure computed from each run (`value(run)`), summarized like the others, with
    roomcast's ratios taken within the same interleaving group."""
    if not entry:
        return None
    out: dict[str, Any] = {}
    for peer, stats in entry.items():
        if peer in ("ratios", "failures") or not stats:
            continue
        values = [value(run) for run in stats["runs"]]
        out[peer] = {"runs": stats["runs"], "median": statistics.median(values),
                     "min": min(values), "max": max(values)}
    if "roomcast" in out:
        ratios = {}
        for peer, stats in out.items():
            groups = {run.get("group", 0) for run in stats["runs"]}
            ours = [value(run) for run in out["roomcast"]["runs"]
                    if run.get("group", 0) in groups]
            ratios[peer] = statistics.median(ours) / stats["median"] if stats["median"] else None
        out["ratios"] = ratios
    return out


def per_cpu(run: dict[str, Any]) -> float:
    return run["deliveries"] / run["server_cpu_s"] if run["server_cpu_s"] > 0 else 0.0


def failures_of(section: dict[str, Any]) -> list[str]:
    """Groups that could not be measured (a failed check, a peer dropping clients)."""
    lines = []
    for size, entry in section.items():
        for failure in (entry or {}).get("failures", ()):
            lines.append(f"- not measured at {int(size):,}: {failure}")
    return ["", "Failures:", "", *lines, ""] if lines else []


def cpu_table(results: dict[str, Any]) -> list[str]:
    lines = ["| server | room | messages x members | wall s | server CPU s | client CPU s |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for size, entry in results.get("fanout", {}).items():
        if not entry:
            continue
        for peer in peers_of(results):
            stats = entry.get(peer)
            if not stats:
                continue
            runs = sorted(stats["runs"], key=lambda r: r["deliveries_per_s"])
            run = runs[len(runs) // 2]
            lines.append(f"| {PEER_TITLES[peer]} | {int(size):,} | {run['messages']} x "
                         f"{int(size):,} | {run['wall_s']:.2f} | {run['server_cpu_s']:.2f} | "
                         f"{run['client_cpu_s']:.2f} |")
    return lines


def targets(results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """The targets roomcast is held to: (target, measured, met)."""
    out: list[tuple[str, str, bool | None]] = []

    def add(name: str, value: float | None, threshold: float, higher: bool, unit: str = "x"):
        if value is None:
            out.append((name, "not measured", None))
            return
        met = value >= threshold if higher else value <= threshold
        shown = f"{value:.2f}{unit}" if unit == "x" else f"{value:.2f} {unit}"
        out.append((name, shown, met))

    fanout = results.get("fanout", {})
    for size in ("1000", "5000"):
        for how, entry in (("", fanout.get(size)),
                           (" (per server CPU second)", derived(fanout.get(size), per_cpu))):
            ratios = (entry or {}).get("ratios", {})
            add(f"fan-out {int(size):,}{how}: ≥ 1.5 x the FastAPI design (seed)",
                ratios.get("seed"),
                1.5, True)
            add(f"fan-out {int(size):,}{how}: ≥ 1.2 x websockets.broadcast()",
                ratios.get("websockets"), 1.2, True)
            add(f"fan-out {int(size):,}{how}: ≥ 5 x python-socketio", ratios.get("socketio"),
                5.0, True)
    memory = results.get("memory") or {}
    add("memory per idle connection ≤ 20 KiB",
        (memory.get("roomcast") or {}).get("median"), 20.0, False, "KiB")
    shakes = (results.get("handshakes") or {}).get("ratios", {})
    add("handshakes/s ≥ the FastAPI design (seed)", shakes.get("seed"), 1.0, True)
    latency = results.get("latency", {})
    idle = ((latency.get("5000") or {}).get("idle") or {}).get("p99_ms") or {}
    add("notify p99, 5,000 idle: ≤ 1.25 x the FastAPI design (seed)",
        idle.get("ratios", {}).get("seed"), 1.25, False)
    for size in ("1000", "5000"):
        load = ((latency.get(size) or {}).get("load") or {}).get("p99_ms") or {}
        add(f"notify p99 under fan-out load, {int(size):,} connections: < 5 ms",
            (load.get("roomcast") or {}).get("median"), 5.0, False, "ms")
    return out


def _source(source: dict[str, Any]) -> str:
    commit = source.get("commit", "unknown")
    if source.get("uncommitted"):
        return f"the working tree on top of commit {commit}, with uncommitted changes"
    return f"commit {commit}"


def markdown(results: dict[str, Any], chart_name: str) -> str:
    meta = results["meta"]
    s = meta["settings"]
    lines = [
        "# Benchmarks: roomcast side by side with the peers",
        "",
        f"Run on {meta['date']} with `{meta['command']}` ({meta['duration_min']:.0f} "
        "minutes). Reproduce with the same command; bench/README.md says how it works.",
        "",
        f"![benchmark chart]({chart_name})",
        "",
        "## Machine and versions",
        "",
        f"- {meta['machine']['cpu']}, {meta['machine']['cores']} cores, "
        f"{meta['machine']['memory_gib']:.0f} GiB; Linux {meta['machine']['kernel']}; "
        f"Python {meta['python']}",
        f"- servers pinned to core {meta['server_cpu']}, the load generator to core "
        f"{meta['client_cpu']}; load average {meta['load_before']} before the run and "
        f"{meta['load_after']} after (this machine is shared: other work ran meanwhile)",
        "- " + ", ".join(f"{name} {version}" for name, version in meta["versions"].items()),
        f"- roomcast: {_source(meta.get('roomcast_source') or {})}",
        *[f"- measured again on {u['date']} with `{u['command']}` (roomcast "
          f"{_source(u.get('roomcast_source') or {})}; load average {u['load_before']}): "
          f"{', '.join(u['benchmarks'])}; the figures below are that run's"
          for u in meta.get("updates", ())],
        "",
        "## How it was measured",
        "",
        "- Each server runs in its own process, pinned to one core; the load generator "
        "(bench/loadgen.py: raw non-blocking sockets on one epoll loop, minimal RFC 6455 "
        "client framing) runs in another, pinned to the other core. The figures list both "
        "processes' CPU seconds.",
        "- The peers (bench/peers/) are written from their descriptions: the FastAPI "
        "design roomcast replaces (`seed` in the tables: FastAPI + uvicorn, a dict user "
        "id → socket, rooms as sets, sequential "
        "`await ws.send_text` per member, a pyjwt check in the endpoint); python-socketio's "
        "`AsyncServer` on uvicorn (rooms, `emit`, the JWT checked in `connect`); a plain "
        "`websockets` server using `websockets.broadcast()`; roomcast through "
        "`roomcast.open_service` with its JWT authenticator and a publisher calling the "
        "facade. Every peer at its library's defaults (uvicorn: h11, websockets-sansio, "
        "the asyncio loop).",
        "- Publishing happens inside the server process: the load generator asks for it on "
        "a control channel (a JSON line protocol on another loopback port), which also "
        "reports the server's RSS and CPU time.",
        "- Notifications are JSON of about 150 bytes, encoded once per publish everywhere. "
        "Every client checks that it got every fan-out frame, once, in order; a failed check "
        "fails the benchmark.",
        "- The peers' repetitions are interleaved (their servers run side by side, idle "
        "while another is measured, the order rotating each round), so that the shared "
        "machine's drifting load falls on all of them alike. Where one client process "
        "cannot hold every peer's connections at once (its descriptor limit), roomcast is "
        "paired with each peer in turn and each ratio is taken within its pair.",
        f"- Figures are the median of {s['fanout_reps']} (fan-out), {s['latency_reps']} "
        f"(latency), {s['memory_reps']} (memory) and {s['handshake_reps']} (handshakes) "
        "repetitions, with the spread (min to max) in parentheses. Ratios are roomcast's "
        "figure divided by the peer's: above 1 is better for roomcast in deliveries and "
        "handshakes, below 1 is better in latency and memory.",
        "",
        "## Targets for roomcast",
        "",
        "| target | measured | met |",
        "| --- | ---: | :---: |",
    ]
    for name, measured, met in targets(results):
        verdict = "n/a" if met is None else "yes" if met else "**no**"
        lines.append(f"| {name} | {measured} | {verdict} |")

    fanout = results.get("fanout", {})
    sizes = [k for k in fanout if fanout[k]]
    lines += [
        "",
        "## Fan-out: deliveries per second (higher is better)",
        "",
        "A room of N connections; the server publishes notifications to it one after the "
        "other, each awaited as the peer's API allows, as fast as it can. Deliveries per "
        "second count from the publish command to the moment the last client holds the "
        "last frame. The message count per repetition is calibrated so that one lasts about "
        f"{s['fanout_seconds']:.0f} s.",
        "",
        *per_size_table(results, fanout, sizes, "room of", 0),
        "",
        "The same runs counted per second of the server's own CPU time (deliveries divided "
        "by the CPU seconds the server process used meanwhile). On this shared machine "
        "other programs take turns on the server's core, which stretches wall-clock time "
        "but not CPU time, so this figure is the steadier measure of the server's cost:",
        "",
        *per_size_table(results, {k: derived(v, per_cpu) for k, v in fanout.items()}, sizes,
                        "room of", 0),
        "",
        "CPU seconds of the median repetition (the client must stay below the wall time "
        "for the server to be the bottleneck):",
        "",
        *cpu_table(results),
    ]

    lines += failures_of(fanout)

    latency = results.get("latency", {})
    lsizes = [k for k in latency if latency[k]]
    for mode, title in (("idle", "idle"), ("load", "under fan-out load")):
        lines += ["", f"## Notify latency, {title} (ms, lower is better)", ""]
        if mode == "idle":
            lines += [
                "N idle authenticated connections; the control channel asks the server "
                "for `notify_user` to one of them, chosen at random; the round trip runs from "
                "the command written to the frame read by that client. "
                f"{s['latency_samples']} samples per repetition, or as many as fit in "
                f"{s.get('latency_seconds', 15):.0f} s.",
                "",
            ]
        else:
            lines += [
                f"The same, while the server publishes {s['bg_rate']:.0f} notifications a "
                f"second to a room of {s['bg_room']:,} of those connections (a background "
                "fan-out of "
                f"{s['bg_rate'] * s['bg_room']:,.0f} deliveries a second, checked for order "
                "by its clients). A peer that cannot keep up with it falls behind, and its "
                "latency shows it.",
                "",
            ]
        for key in ("p50_ms", "p99_ms", "max_ms"):
            lines += [f"**{key[:-3]}**", ""]
            lines += per_size_table(
                results, latency, lsizes, "connections", 3,
                pick=lambda entry, m=mode, k=key: (entry.get(m) or {}).get(k) or {},
            )
            lines.append("")

    lines += failures_of({k: (v or {}).get("idle", {}).get("p50_ms") for k, v in latency.items()})
    lines += ["## Memory per idle connection (KiB, lower is better)", "",
              f"Server RSS with {s['memory_connections']:,} idle authenticated connections, "
              "minus its RSS before them (after a warm-up of 100 connections), divided by "
              "their number. Kernel socket buffers are not in RSS. A fresh server each "
              "repetition.", ""]
    lines += single_table(results, results.get("memory"), "KiB per connection", 1)
    lines += ["", "## Handshakes per second, JWT verified (higher is better)", "",
              f"{s['handshakes']:,} connections per repetition, {s['handshake_concurrency']} "
              "at a time: TCP connect, upgrade with a fresh JWT (roomcast, the FastAPI design and "
              "websockets: `?token=`, checked before the upgrade is accepted; socketio: "
              "the CONNECT packet's auth payload, checked in `connect`), wait for the "
              "welcome (socketio: the CONNECT answer), close.", ""]
    lines += single_table(results, results.get("handshakes"), "handshakes/s", 0)

    cap = results.get("capacity")
    lines += ["", "## Capacity: connections one roomcast process holds within 1 GiB RSS", ""]
    if cap:
        limit_mib = cap["limit_kib"] // 1024
        if cap["stopped_by"] == "memory":
            verdict = f"RSS passed {limit_mib} MiB after {cap['held']:,} connections"
        else:
            verdict = (f"the attempt stopped at its cap of {cap['cap']:,} connections with "
                       f"RSS still under {limit_mib} MiB")
        lines += [
            f"- held **{cap['held']:,}** connections at {cap['rss_kib'] / 1024:,.0f} MiB RSS "
            f"({cap['base_rss_kib'] / 1024:,.0f} MiB before any), "
            f"{cap['kib_per_connection']:.1f} KiB each; {verdict}.",
            f"- The cap: this machine's descriptor limit (RLIMIT_NOFILE {cap['fd_limit']:,}, "
            f"hard {cap['fd_hard_limit']:,}, which a process cannot raise here) bounds both "
            "the server and the single client process; the suite raises the soft limit to "
            "the hard one and stops 200 short of it. Clients bind source ports below the "
            "kernel's ephemeral range, so that other programs keep theirs.",
            f"- At that slope, {limit_mib} MiB would hold about "
            f"**{cap['projected_within_limit']:,}** connections (an extrapolation, not a "
            "measurement).",
            f"- It took {cap['seconds']:.0f} s.",
        ]
    else:
        lines.append("Not measured.")

    if results.get("errors"):
        lines += ["", "## Failures", ""] + [f"- {e}" for e in results["errors"]]
    lines.append("")
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = peers_of(results)
    colors = {"seed": "#8c8c8c", "socketio": "#d08c3c", "websockets": "#4c7fbf",
              "roomcast": "#2f9e44"}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))

    def grouped(ax: Any, section: dict[str, Any], sizes: list[str], pick: Any, title: str,
                ylabel: str, log: bool = False) -> None:
        width = 0.8 / max(1, len(peers))
        for i, peer in enumerate(peers):
            values, lows, highs = [], [], []
            for s in sizes:
                stats = (pick(section.get(s) or {}) or {}).get(peer)
                values.append(stats["median"] if stats else 0)
                lows.append(stats["median"] - stats["min"] if stats else 0)
                highs.append(stats["max"] - stats["median"] if stats else 0)
            xs = [j + (i - (len(peers) - 1) / 2) * width for j in range(len(sizes))]
            ax.bar(xs, values, width, yerr=[lows, highs], capsize=2, label=peer,
                   color=colors.get(peer))
        ax.set_xticks(range(len(sizes)), [f"{int(s):,}" for s in sizes])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)

    fanout = results.get("fanout", {})
    grouped(axes[0][0], fanout, [k for k in fanout if fanout[k]], lambda e: e,
            "Fan-out (higher is better)", "deliveries/s (room size below)")
    latency = results.get("latency", {})
    lsizes = [k for k in latency if latency[k]]
    grouped(axes[0][1], latency, lsizes, lambda e: (e.get("idle") or {}).get("p99_ms"),
            "notify_user p99, idle (lower is better)", "ms (connections below)")
    grouped(axes[0][2], latency, lsizes, lambda e: (e.get("load") or {}).get("p99_ms"),
            "notify_user p99 under fan-out load", "ms (connections below)", log=True)

    def single(ax: Any, entry: dict[str, Any] | None, title: str, ylabel: str) -> None:
        values = [((entry or {}).get(p) or {}).get("median", 0) for p in peers]
        ax.bar(peers, values, color=[colors.get(p) for p in peers])
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)

    single(axes[1][0], results.get("memory"), "Memory per idle connection (lower is better)",
           "KiB")
    single(axes[1][1], results.get("handshakes"), "Handshakes with JWT (higher is better)",
           "per second")
    ax = axes[1][2]
    cap = results.get("capacity")
    if cap and cap["steps"]:
        xs = [step["connections"] for step in cap["steps"]]
        ys = [step["rss_kib"] / 1024 for step in cap["steps"]]
        ax.plot(xs, ys, marker="o", color=colors["roomcast"], label="roomcast RSS")
        ax.axhline(cap["limit_kib"] / 1024, color="red", linestyle="--", label="1 GiB")
        ax.set_xlabel("connections")
        ax.set_ylabel("RSS, MiB")
        ax.legend(fontsize=8)
    ax.set_title("Capacity: roomcast RSS by connections", fontsize=10)
    ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    meta = results["meta"]
    fig.suptitle(f"roomcast and peers, one server core each ({meta['date']}, "
                 f"{meta['machine']['cpu']}, Python {meta['python']})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
