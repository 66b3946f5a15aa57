"""The benchmark suite, tiny: bench/run.py --tiny runs every benchmark against every
peer with a handful of connections and one repetition, in a process of its own (it pins
itself to a core). Nothing is asserted about speed: only that each benchmark ran,
produced its figures, and that the clients' checks (every frame, once, in order) held."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

for _module in ("fastapi", "uvicorn", "socketio", "websockets", "matplotlib"):
    pytest.importorskip(_module)

pytestmark = pytest.mark.bench

RUN = Path(__file__).resolve().parent.parent / "bench" / "run.py"
PEERS = ["seed", "socketio", "websockets", "roomcast"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, str(RUN), "--tiny", "--out", str(out)],
        capture_output=True, text=True, timeout=170, check=False,
    )
    output = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    return json.loads((out / "benchmarks.json").read_text()), out, output


@pytest.mark.timeout(180)
def test_every_benchmark_ran_for_every_peer(tiny: tuple[dict, Path, str]) -> None:
    results, _, output = tiny
    assert results["errors"] == [], output
    for section in ("fanout", "latency"):
        assert "failures" not in json.dumps(results[section]), output
    for size, entry in results["fanout"].items():
        assert set(PEERS) <= set(entry), (size, output)
        for peer in PEERS:
            for run in entry[peer]["runs"]:
                assert run["checked"] and run["deliveries"] == int(size) * run["messages"]
                assert run["deliveries_per_s"] > 0 and run["server_cpu_s"] >= 0
        assert set(entry["ratios"]) == set(PEERS)
    for entry in results["latency"].values():
        for mode in ("idle", "load"):
            for key in ("p50_ms", "p99_ms", "max_ms"):
                for peer in PEERS:
                    assert entry[mode][key][peer]["median"] > 0, output
        for peer in PEERS:
            background = entry["load"]["p99_ms"][peer]["runs"][0]["background"]
            assert background["checked"] and background["published"] > 0
    for name in ("memory", "handshakes"):
        for peer in PEERS:
            assert results[name][peer]["runs"], (name, output)
    assert all(r["per_s"] > 0 for p in PEERS for r in results["handshakes"][p]["runs"])
    capacity = results["capacity"]
    assert capacity["held"] == capacity["cap"] > 0, output


@pytest.mark.timeout(180)
def test_report_and_chart_written(tiny: tuple[dict, Path, str]) -> None:
    _, out, _ = tiny
    text = (out / "benchmarks.md").read_text()
    for heading in ("## Fan-out", "## Notify latency, idle", "## Notify latency, under",
                    "## Memory per idle connection", "## Handshakes per second",
                    "## Capacity", "## Targets for roomcast"):
        assert heading in text
    assert "failed" not in text.split("## Fan-out", 1)[1].split("## Capacity")[0]
    assert (out / "benchmarks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
