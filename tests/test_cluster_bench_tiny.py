"""The cluster benchmark, run tiny so that it keeps working; it asserts nothing about
speed, only that every setup ran and every client got every frame in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .cluster import needs_redis

ROOT = Path(__file__).resolve().parent.parent


@needs_redis
def test_cluster_benchmark_runs_tiny():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster.py"), "--clients", "20", "--frames",
         "10", "--samples", "20", "--repeat", "1"],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["setup"] for row in rows] == [
        "one node, no Redis", "one node, Redis", "two nodes, Redis",
        "two nodes, Redis, two publishers",
    ]
    assert "latency cross node" in rows[2]
    assert all(row["fan-out"]["deliveries_per_s"] > 0 for row in rows[:3])
    assert "| two nodes, Redis |" in result.stdout
    # Two publishers on two nodes: one order at every client, the offset order.
    both = rows[3]["two publishers"]
    assert both["deliveries_per_s"] > 0
    assert both["same order at every client"] is True
    assert (both["reversals"], both["gaps"], both["frames lost"]) == (0, 0, 0)


@needs_redis
def test_cluster_cpu_benchmark_runs_every_table_tiny(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster_cpu.py"), "--sizes", "20", "--reps",
         "1", "--frames", "20", "--worker-calls", "200", "--two-size", "20",
         "--only", "worker-rooms,worker-rate,two-nodes", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    row = figures["fanout"]["20"]
    for setup in ("lone", "redis", "redis_worker"):
        assert row[setup]["per_cpu_s"] > 0
        assert row[setup]["writes_per_delivery"] > 0
    assert row["redis_worker"]["runs"][0]["frames_heard"] == row["frames"]
    assert figures["worker"]["open"]["calls_per_s"] > 0
    assert figures["two_nodes"]["frames"] == 20
    assert figures["two_nodes"]["ratio"] > 0
    assert "load average after" in result.stdout


@needs_redis
def test_workers_benchmark_runs_tiny(tmp_path):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "workers.py"), "--size", "20", "--frames",
         "10", "--reps", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    for setup in ("one process, no Redis", "one process, Redis", "--workers 2, Redis"):
        assert figures[setup]["per_cpu_s"] > 0
        assert figures[setup]["server_cpu"] > 0
