"""Autobahn|Testsuite against roomcast's own WebSocket layer. On demand, never in CI.

Starts an echo server made of roomcast's WebSocket code (actors/websocket.py over
actors/outbox.py: the same handshake, frame parsing, pongs, limits, closing handshake
and permessage-deflate as the service, without auth or rooms), runs the suite's fuzzing
client (`wstest -m fuzzingclient`) against it, and prints a summary per case group from
the JSON reports.

    .venv/bin/python bench/autobahn.py --install      # once: .autobahn/venv (Python 2.7)
    .venv/bin/python bench/autobahn.py                # every case, 12.* and 13.* too
    .venv/bin/python bench/autobahn.py --no-compression   # deflate declined, 12/13 out
    .venv/bin/python bench/autobahn.py --max-message-size 16777216   # 9.* echoed too
    .venv/bin/python bench/autobahn.py --cases '12.*,13.*'

The suite (`autobahntestsuite` on PyPI) needs Python 2.7; `--install` builds a
virtualenv for it under .autobahn/ with ~/.pyenv/versions/2.7.18 (override with
--python27). Cases 12.* and 13.* test permessage-deflate: the server answers an offer
with the service's `negotiate` (always no context takeover either way; an offer of
`server_max_window_bits` below 15 is declined, which the suite reports as
UNIMPLEMENTED: 13.3.* and 13.5.*), and its echoes are built as the service builds its
frames, compressed by `deflated_frame` (plain below 128 bytes or when they would not
shrink), so the suite checks what browsers get. Cases 9.*, and the 12.*/13.* cases of
128 KiB messages (64 KiB of multi-byte text in 12.4.9 and 12.4.14), send messages past
`--max-message-size` (the service's 64 KiB by default): the server closes with 1009, as
the service does, and the summary counts those as "1009 (limit)", not as failures.

Last run (2026-12-02, commit 6bb1976, 64 KiB limit, 517 cases): 386 OK, 3 INFORMATIONAL (7.1.6: the
256 KiB message closed with 1009 before the close; 7.13.1/2: close codes 5000 and
65535 answered with 1002), 36 UNIMPLEMENTED (the declined 13.3/13.5 offers), 92 at the
limit (9: 40, 12: 27, 13: 25), nothing NON-STRICT, FAILED or UNCLEAN.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
from roomcast.protocol.deflate import deflated_frame  # noqa: E402
from roomcast.protocol.wsframe import text_frame  # noqa: E402

VENV = ROOT / ".autobahn" / "venv"
BEHAVIORS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]
DEFAULTS = Config(jwt_secret="x" * 32)


_TEXT_TO_BINARY = 0x81 ^ 0x82  # flips a final frame's opcode from text (1) to binary (2)


def echo_frame(message: str | bytes, deflate: bool) -> bytes:
    """The echo of one message, built as the service builds its frames: a prebuilt text
    frame, and, on a connection that negotiated permessage-deflate, its compressed
    variant by the service's own rule (`deflated_frame`: plain below its size threshold
    or when it would not shrink). The service sends only text; a binary message is
    framed the same way with the opcode changed (RSV1 and the payload untouched)."""
    payload = message.encode() if isinstance(message, str) else message
    frame = text_frame(payload)
    if deflate:
        frame = deflated_frame(frame)
    if isinstance(message, bytes):
        frame = bytes((frame[0] ^ _TEXT_TO_BINARY,)) + frame[1:]
    return frame


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
        ws = handshake.accept(args.max_message_size, compression=args.compression)
        outbox.flush()  # the 101 waits for the service's welcome; here nothing follows it
        code, reason = 1000, "bye"
        try:
            while True:
                message = await ws.get_message()
                outbox.write_nowait(echo_frame(message, ws.deflate))
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


def over_limit(case: str, outdir: Path, max_message_size: int) -> bool:
    """Whether the case sends messages past the server's limit, so that a 1009 is the
    answer expected: every 9.* case (their sizes are in their descriptions in several
    forms), and a 12.* or 13.* case whose "payload size" is at least the limit. That
    size counts characters for the suite's text data (12.1, 12.4, 13.*), which UTF-8
    makes longer where they are not ASCII: at 64 KiB, the HTML of 12.4.9 and 12.4.14
    has 65,563-byte messages, the JSON of 12.1.9 none (it is echoed)."""
    if case.startswith("9."):
        return True
    report = json.loads((outdir / f"roomcast_case_{case.replace('.', '_')}.json").read_text())
    size = re.search(r"payload size (\d+)", report["description"])
    return size is not None and int(size.group(1)) >= max_message_size


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
        if result.get("remoteCloseCode") == 1009 and over_limit(case, outdir, max_message_size):
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
    parser.add_argument("--exclude", default="",
                        help="comma-separated cases left out (default: none)")
    parser.add_argument("--no-compression", dest="compression", action="store_false",
                        help="decline permessage-deflate (the service's --no-compression) "
                             "and leave out its cases, 12.* and 13.*")
    parser.add_argument("--outdir", type=Path, default=None,
                        help="where the reports go (default: a temporary folder)")
    parser.add_argument("--wstest", default=None, help="the suite's wstest script")
    parser.add_argument("--install", action="store_true",
                        help="build .autobahn/venv with autobahntestsuite, then run")
    parser.add_argument("--python27",
                        default=str(Path.home() / ".pyenv/versions/2.7.18/bin/python"))
    args = parser.parse_args()
    if not args.compression:
        args.exclude = ",".join(filter(None, [args.exclude, "12.*", "13.*"]))
    if args.outbox_limit is None:
        args.outbox_limit = max(DEFAULTS.outbox_limit, 2 * args.max_message_size)
    wstest = str(install(args.python27)) if args.install else find_wstest(args)
    outdir = args.outdir or Path(tempfile.mkdtemp(prefix="roomcast-autobahn-"))
    outdir.mkdir(parents=True, exist_ok=True)
    trio.run(run_suite, args, wstest, outdir)
    sys.exit(summarize(outdir, args.max_message_size))


if __name__ == "__main__":
    main()
