"""Fan-out over wss:// against ws://: what TLS costs roomcast's write path.

    .venv/bin/python bench/tls.py [--sizes 100 1000] [--reps 5] [--seconds 2]
                                  [--baseline DIR]

The same roomcast peer (bench/peers/roomcast_peer.py, pinned to core 0) twice: plain,
and with a self-signed certificate (ROOMCAST_TLS_CERT/_KEY); the same raw-socket load
generator (bench/loadgen.py, here with an ssl.SSLObject per connection) on core 1.
Repetitions alternate between the servers. `--baseline DIR`: a third server, plain,
running the roomcast found in DIR (`git archive main | tar -x -C DIR`), to check that
the plain path did not move. The figure is deliveries per second of
the server's own CPU time (the steadier measure on a shared machine, docs/benchmarks.md),
with the wall-clock rate beside it; every frame is checked, in order, as in the suite.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmarks import ROOM, SECRET, fanout_round
from loadgen import Epoll, Loadgen, Server, mint_tokens

PAD = 100  # a notification frame of about 150 bytes, as in the suite


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A P-256 certificate for 127.0.0.1 and its key, as the tests make them."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roomcast bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Target:
    """One roomcast server and `size` clients in its room (what fanout_round needs)."""

    def __init__(self, size: int, sel: Epoll, cert: Path | None, key: Path | None,
                 source: str | None = None) -> None:
        with tls_environment(cert, key, source):
            self.server = Server("roomcast", SECRET, cpu=0)
        context = None if cert is None else ssl.create_default_context(cafile=str(cert))
        try:
            self.lg = Loadgen(self.server.dialect, self.server.port, sel, tls=context)
            self.conns = self.lg.open(mint_tokens(SECRET, range(1, size + 1)))
            self.server.wait_connections(size)
            self.lg.join(self.conns, ROOM)
        except BaseException:
            self.server.stop()
            raise
        self.seq = 0

    def close(self) -> None:
        try:
            self.lg.close_all(self.conns)
        finally:
            self.server.stop()


@contextlib.contextmanager
def tls_environment(cert: Path | None, key: Path | None, source: str | None) -> Iterator[None]:
    """The peer's process reads its TLS files (and where roomcast is, for a baseline:
    loadgen.Server) from the environment it starts with."""
    names = ("ROOMCAST_TLS_CERT", "ROOMCAST_TLS_KEY", "ROOMCAST_BENCH_SOURCE")
    saved = {name: os.environ.pop(name, None) for name in names}
    if cert is not None and key is not None:
        os.environ["ROOMCAST_TLS_CERT"], os.environ["ROOMCAST_TLS_KEY"] = str(cert), str(key)
    if source is not None:
        os.environ["ROOMCAST_BENCH_SOURCE"] = source
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def measure(size: int, reps: int, seconds: float, cert: Path, key: Path,
            baseline: str | None) -> dict[str, Any]:
    kinds: dict[str, tuple[Path | None, Path | None, str | None]] = {
        "plain": (None, None, None), "tls": (cert, key, None)}
    if baseline is not None:
        kinds["base"] = (None, None, baseline)
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    with contextlib.ExitStack() as stack:
        sel = Epoll()
        targets = {}
        for kind, files in kinds.items():
            target = Target(size, sel, *files)
            stack.callback(target.close)
            targets[kind] = target
        rates = [fanout_round(target, max(5, 20_000 // size), PAD)["deliveries_per_s"]
                 for target in targets.values()]  # warm-up, and calibration as in the suite
        # One message count for every server: the same work, so that CPU seconds compare.
        count = max(3, round(statistics.median(rates) * seconds / size))
        for rep in range(reps):
            order = list(targets.items())
            for kind, target in order[rep % len(order):] + order[:rep % len(order)]:
                run = fanout_round(target, count, PAD)
                run["per_cpu_s"] = run["deliveries"] / run["server_cpu_s"]
                runs[kind].append(run)
                print(f"  {kind:>5} room of {size:>5}: {run['per_cpu_s']:>10,.0f} per server "
                      f"CPU s, {run['deliveries_per_s']:>10,.0f} per s ({count} x "
                      f"{size}; CPU s: server {run['server_cpu_s']:.2f}, client "
                      f"{run['client_cpu_s']:.2f}, wall {run['wall_s']:.2f})", flush=True)
    return {kind: {"per_cpu_s": statistics.median(r["per_cpu_s"] for r in kind_runs),
                   "per_cpu_s_range": (min(r["per_cpu_s"] for r in kind_runs),
                                       max(r["per_cpu_s"] for r in kind_runs)),
                   "per_s": statistics.median(r["deliveries_per_s"] for r in kind_runs)}
            for kind, kind_runs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--baseline", default=None,
                        help="a folder holding another roomcast (a plain server of it too)")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    print(f"commit {commit}, load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        cert, key = self_signed(Path(folder))
        for size in args.sizes:
            figures = measure(size, args.reps, args.seconds, cert, key, args.baseline)
            plain, tls = figures["plain"], figures["tls"]
            print(f"room of {size}: plain {plain['per_cpu_s']:,.0f} "
                  f"({plain['per_cpu_s_range'][0]:,.0f} to {plain['per_cpu_s_range'][1]:,.0f}),"
                  f" TLS {tls['per_cpu_s']:,.0f} ({tls['per_cpu_s_range'][0]:,.0f} to "
                  f"{tls['per_cpu_s_range'][1]:,.0f}) deliveries per server CPU s: TLS "
                  f"{tls['per_cpu_s'] / plain['per_cpu_s']:.2f} x plain; per wall s "
                  f"{plain['per_s']:,.0f} / {tls['per_s']:,.0f}", flush=True)
            if "base" in figures:
                base = figures["base"]
                print(f"room of {size}: plain at the baseline {base['per_cpu_s']:,.0f} ("
                      f"{base['per_cpu_s_range'][0]:,.0f} to {base['per_cpu_s_range'][1]:,.0f})"
                      f": this plain {plain['per_cpu_s'] / base['per_cpu_s']:.2f} x the "
                      "baseline", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)


if __name__ == "__main__":
    main()
