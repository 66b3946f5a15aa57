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
