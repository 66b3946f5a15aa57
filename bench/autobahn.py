"""Autobahn|Testsuite against roomcast's own WebSocket layer. On demand, never in CI.

Starts an echo server made of roomcast's WebSocket code (actors/websocket.py over
actors/outbox.py: the same handshake, frame parsing, pongs, limits and closing
handshake as the service, without auth or rooms), runs the suite's fuzzing client
(`wstest -m fuzzingclient`) against it, and prints a summary per case group from the
JSON reports.

    .venv/bin/python bench/autobahn.py --install      # once: .autobahn/venv (Python 2.7)
    .venv/bin/python bench/autobahn.py                # every case but 12.* and 13.*
    .venv/bin/python bench/autobahn.py --max-message-size 16777216   # 9.* echoed too
    .venv/bin/python bench/autobahn.py --cases '7.*'

The suite (`autobahntestsuite` on PyPI) needs Python 2.7; `--install` builds a
virtualenv for it under .autobahn/ with ~/.pyenv/versions/2.7.18 (override with
--python27). Cases 12.* and 13.* test permessage-deflate, which roomcast does not
negotiate: they are left out. Cases 9.* send messages up to 16 MiB: past
`--max-message-size` (the service's 64 KiB by default) the server closes with 1009, as
the service does; the summary counts those as "1009 (limit)", not as failures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from roomcast.actors.outbox import Outbox  # noqa: E402
from roomcast.actors.websocket import ConnectionClosed, Handshake  # noqa: E402
from roomcast.config import Config  # noqa: E402
from roomcast.protocol.wsframe import text_frame  # noqa: E402

VENV = ROOT / ".autobahn" / "venv"
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
DEFAULTS = Config(jwt_secret="x" * 32)


def binary_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x82, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x82, 126, n)
    else:
        header = struct.pack("!BBQ", 0x82, 127, n)
    return header + payload


# --- the echo server: roomcast's WebSocket layer, nothing else ----------------------------


async def echo(
    stream: trio.SocketStream, nursery: trio.Nursery, args: argparse.Namespace
) -> None:
    outbox = Outbox(stream, args.outbox_limit)
    outbox.writers = nursery
    try:
        handshake = Handshake(outbox)
        with trio.move_on_after(DEFAULTS.handshake_timeout):
            request = await handshake.request()
        if request is None:
            return
        ws = handshake.accept(args.max_message_size)
        outbox.flush()  # the 101 waits for the service's welcome; here nothing follows it
        code, reason = 1000, "bye"
        try:
            while True:
                message = await ws.get_message()
                if isinstance(message, str):
                    outbox.write_nowait(text_frame(message.encode()))
                else:
                    outbox.write_nowait(binary_frame(message))
                if outbox.overflowed:
                    code, reason = 4009, "slow consumer"
                    break
        except ConnectionClosed:
            pass
        await ws.close(code, reason, args.close_timeout)
    finally:
        outbox.close_now()


async def serve(
    args: argparse.Namespace, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:

        async def handler(stream: trio.SocketStream) -> None:
            await echo(stream, nursery, args)

        port = listeners[0].socket.getsockname()[1]
        nursery.start_soon(trio.serve_listeners, handler, listeners)
        task_status.started(port)


# --- the suite ---------------------------------------------------------------------------


def install(python27: str) -> Path:
    """A virtualenv for autobahntestsuite under .autobahn/. Python 2.7 has no venv
    module: virtualenv (its last line that builds 2.7 environments) is installed
    beside it first."""
    tools = VENV.parent / "virtualenv-tools"
    run = subprocess.run
    run([python27, "-m", "pip", "install", "--quiet", "--target", str(tools),
         "virtualenv<20.22"], check=True)
    run([python27, "-m", "virtualenv", "-p", python27, str(VENV)], check=True,
        env={**os.environ, "PYTHONPATH": str(tools)})
    run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
         "autobahntestsuite"], check=True)
    return VENV / "bin" / "wstest"


def find_wstest(args: argparse.Namespace) -> str:
    for candidate in (args.wstest, os.environ.get("AUTOBAHN_WSTEST"),
                      str(VENV / "bin" / "wstest"), shutil.which("wstest")):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("wstest not found: run with --install (or --wstest PATH)")


async def run_suite(args: argparse.Namespace, wstest: str, outdir: Path) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve, args)
        spec = {
            "outdir": str(outdir),
            "servers": [{"agent": "roomcast", "url": f"ws://127.0.0.1:{port}"}],
            "cases": args.cases.split(","),
            "exclude-cases": args.exclude.split(",") if args.exclude else [],
            "exclude-agent-cases": {},
        }
        spec_file = outdir / "fuzzingclient.json"
        spec_file.write_text(json.dumps(spec, indent=2))
        log = outdir / "wstest.log"
        print(f"echo server on 127.0.0.1:{port}; wstest log: {log}", flush=True)
        with log.open("wb") as out:
            await trio.run_process(
                [wstest, "-m", "fuzzingclient", "-s", str(spec_file)],
                stdout=out, stderr=subprocess.STDOUT, cwd=str(outdir),
            )
        nursery.cancel_scope.cancel()


# The suite's own names for its case groups.
GROUPS = {
    "1": "Framing", "2": "Pings/Pongs", "3": "Reserved Bits", "4": "Opcodes",
    "5": "Fragmentation", "6": "UTF-8 Handling", "7": "Close Handling",
    "9": "Limits/Performance", "10": "Miscellaneous", "12": "Compression",
    "13": "Compression",
}


def group_of(case: str) -> str:
    """'6.4.3' -> '6'."""
    return case.split(".")[0]


def summarize(outdir: Path, max_message_size: int) -> int:
    index = json.loads((outdir / "index.json").read_text())["roomcast"]
    columns = [*BEHAVIORS, "1009 (limit)", "UNCLEAN"]
    groups: dict[str, Counter[str]] = defaultdict(Counter)
    failed: list[str] = []

    def key(case: str) -> list[int]:
        return [int(part) for part in case.split(".")]

    for case in sorted(index, key=key):
        result: dict[str, Any] = index[case]
        counts = groups[group_of(case)]
        behavior = result["behavior"]
        if case.startswith("9.") and result.get("remoteCloseCode") == 1009:
            behavior = "1009 (limit)"  # a message past --max-message-size, as expected
        counts[behavior] += 1
        if result.get("behaviorClose") == "UNCLEAN":
            counts["UNCLEAN"] += 1
        if behavior == "FAILED" or result.get("behaviorClose") == "UNCLEAN":
            failed.append(f"{case}: {result['behavior']} / close {result['behaviorClose']}"
                          f" (remote code {result.get('remoteCloseCode')})")
    width = max(len(c) for c in columns)
    print(f"\nmax message size {max_message_size} bytes; "
          f"{len(index)} cases; reports in {outdir}\n")
    print(f"{'group':<24}" + " ".join(c.rjust(width) for c in columns))
    total: Counter[str] = Counter()
    for group in sorted(groups, key=key):
        total.update(groups[group])
        name = f"{group} {GROUPS.get(group, '')}"
        print(f"{name:<24}" + " ".join(str(groups[group][c]).rjust(width) for c in columns))
    print(f"{'all':<24}" + " ".join(str(total[c]).rjust(width) for c in columns))
    if failed:
        print("\nFAILED or UNCLEAN:")
        for line in failed:
            print("  " + line)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-message-size", type=int, default=DEFAULTS.max_message_size,
                        help="the server's limit; larger messages close with 1009")
    parser.add_argument("--outbox-limit", type=int, default=None,
                        help="bytes queued per client (default: the service's, or twice "
                             "the message size if that is more)")
    parser.add_argument("--close-timeout", type=float, default=DEFAULTS.close_timeout)
    parser.add_argument("--cases", default="*", help="comma-separated, e.g. '1.*,7.*'")
    parser.add_argument("--exclude", default="12.*,13.*",
                        help="left out (default: compression, which roomcast lacks)")
    parser.add_argument("--outdir", type=Path, default=None,
                        help="where the reports go (default: a temporary folder)")
    parser.add_argument("--wstest", default=None, help="the suite's wstest script")
    parser.add_argument("--install", action="store_true",
                        help="build .autobahn/venv with autobahntestsuite, then run")
    parser.add_argument("--python27",
                        default=str(Path.home() / ".pyenv/versions/2.7.18/bin/python"))
    args = parser.parse_args()
    if args.outbox_limit is None:
        args.outbox_limit = max(DEFAULTS.outbox_limit, 2 * args.max_message_size)
    wstest = str(install(args.python27)) if args.install else find_wstest(args)
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="roomcast-autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    trio.run(run_suite, args, wstest, outdir)
    sys.exit(summarize(outdir, args.max_message_size))


if __name__ == "__main__":
    main()
