"""bench/joins.py runs tiny: every rule it measures lets its joins through (a join it
refuses raises), and the HTTP cases report "not available" or figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_joins():
    spec = importlib.util.spec_from_file_location("bench_joins", ROOT / "bench" / "joins.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_join_benchmark_measures_every_rule():
    joins = load_joins()
    results = await joins.main(20, 2)
    assert list(results) == ["patterns", "claim", "room token", "in-process authorizer",
                             "HTTP authorizer, no cache", "HTTP authorizer, cached"]
    for name in ("patterns", "claim", "room token", "in-process authorizer"):
        figures = results[name]
        assert figures is not None and 0 < figures["p50"] <= figures["p99"], name
    text = joins.report(results, 20)
    assert "room token" in text and "p99" in text
