"""The TCP proxy a test can cut, `tcp_proxy(port)`: it lives in bench/netcut.py, where
the soak (bench/soak.py) cuts its listeners with it too; bench never imports tests."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.append(BENCH)  # appended: bench's scripts never shadow another module

from netcut import Proxy, tcp_proxy  # noqa: E402

__all__ = ["Proxy", "tcp_proxy"]
