"""permessage-deflate: bytes on the wire and fan-out deliveries per CPU second of the
service, with and without it (docs/benchmarks.md, "Compression").

The service runs in a child process (`--child`) that also publishes, through the
facade, `--frames` notifications to one room, each awaited; this process holds the
room's members as raw sockets (loadgen's frame helpers), all offering
permessage-deflate, reads every frame, inflates the compressed ones and checks that
each decodes to the JSON published. Figures: the service's CPU seconds from the
first publish until every member holds the last frame (user + system), deliveries per
CPU second, and bytes received per delivery.

    PYTHONPATH=. .venv/bin/python bench/deflate.py --members 100 --sizes 200 2000 \
        --frames 500 --repeat 5
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import resource
import selectors
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import client_frame, die_with_parent, mint_tokens

SECRET = "bench-secret-0123456789abcdef0123456789"
ROOM = "bench_room"
OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def message_of(size: int, k: int) -> str:
    """A notification text making a frame of about `size` bytes: words drawn at random
    (seeded by `k`, so each frame differs), ids and numbers, as a real one has."""
    rng = random.Random(k)
    words = ("build", "report", "project", "review", "finished", "warnings", "screening",
             "results", "available", "team", "uploaded", "draft", "export", "ready",
             "sample", "batch", "failed", "passed", "queue", "owner")
    parts = [f"#{k}"]
    length = len(parts[0]) + 1
    while length < size - 150:
        parts.append(rng.choice(words) if rng.random() < 0.7 else str(rng.randrange(10**6)))
        length += len(parts[-1]) + 1
    return " ".join(parts)


async def child(args: argparse.Namespace) -> None:
    import trio

    from roomcast import Config, open_service

    settings: dict[str, Any] = dict(host="127.0.0.1", port=0, http_port=-1,
                                    jwt_secret=SECRET, open_rooms=("*",),
                                    max_connections_per_user=10_000)
    if args.compression is not None:
        settings["compression"] = args.compression == "on"
    async with open_service(Config(**settings)) as service:
        print(service.port, flush=True)
        messages = [message_of(args.size, k) for k in range(args.frames)]  # not timed
        await trio.to_thread.run_sync(sys.stdin.readline)  # the members have joined
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        for k in range(args.frames):
            await service.notifications.notify_room(ROOM, messages[k], data={"k": k})
        # Until every member holds the last frame: a backlog written after the last
        # publish returned is part of the fan-out's cost.
        await trio.to_thread.run_sync(sys.stdin.readline)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(json.dumps({"cpu": cpu, "wall": time.perf_counter() - started}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)


class Member:
    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /api/v1/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n".encode() + OFFER + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        self.deflate = b"permessage-deflate" in head.lower()
        self.sock.setblocking(False)
        self.buffer = b""
        self.bytes = 0
        self.frames: list[bytes] = []
        self.feed(rest)  # the welcome, sent with the 101

    def feed(self, data: bytes) -> None:
        self.bytes += len(data)
        buf = self.buffer + data if self.buffer else data
        at, end = 0, len(buf)  # frames are cut by position: no copy of the rest per frame
        while end - at >= 2:
            size = buf[at + 1] & 0x7F
            header = {126: 4, 127: 10}.get(size, 2)
            if end - at < header:
                break
            if size >= 126:
                size = int.from_bytes(buf[at + 2:at + header], "big")
            if end - at < header + size:
                break
            # Kept as it came: inflated after the run, so that a member's own work
            # does not slow its reading (a slow reader costs the service a backlog).
            self.frames.append(buf[at:at + header + size])
            at += header + size
        self.buffer = buf[at:]


def payload_of(frame: bytes) -> bytes:
    """A server frame's payload, inflated when RSV1 says it is compressed."""
    size = frame[1] & 0x7F
    payload = frame[{126: 4, 127: 10}.get(size, 2):]
    if frame[0] & 0x40:
        payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
    return payload


def read_until(members: list[Member], count: int, timeout: float = 120) -> None:
    sel = selectors.DefaultSelector()
    for m in members:
        sel.register(m.sock, selectors.EVENT_READ, m)
    deadline = time.monotonic() + timeout
    left = {id(m) for m in members if len(m.frames) < count}
    while left:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {len(left)} members short")
        for key, _ in sel.select(1):
            m = key.data
            m.feed(m.sock.recv(1 << 20))
            if len(m.frames) >= count:
                left.discard(id(m))
    sel.close()


def run(members: int, size: int, frames: int, compression: str | None,
        pythonpath: str) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--size", str(size), "--frames", str(frames)]
    if compression is not None:
        cmd += ["--compression", compression]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": pythonpath},
                            preexec_fn=die_with_parent)
    assert proc.stdin and proc.stdout
    port = int(proc.stdout.readline())
    tokens = mint_tokens(SECRET, range(1, members + 1))
    conns = [Member(port, tokens[u]) for u in range(1, members + 1)]
    read_until(conns, 1)  # the welcome
    for m in conns:
        m.sock.setblocking(True)
        m.sock.sendall(client_frame(1, json.dumps({"type": "join_room", "room": ROOM}).encode()))
        m.sock.setblocking(False)
    read_until(conns, 2)  # the join's answer
    for m in conns:
        m.bytes = 0
    proc.stdin.write("\n")
    proc.stdin.flush()
    read_until(conns, 2 + frames)
    proc.stdin.write("\n")  # every member holds the last frame: the clock stops
    proc.stdin.flush()
    result = json.loads(proc.stdout.readline())
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)
    published = [message_of(size, k) for k in range(frames)]
    for m in conns:  # every frame decodes to what was published
        for k, raw in enumerate(m.frames[2:]):
            frame = json.loads(payload_of(raw))
            assert frame["data"].get("k") == k, frame
            assert frame["message"] == published[k]
        m.sock.close()
    deliveries = members * frames
    return {
        "members": members, "size": size,
        "compression": compression or "n/a",
        "negotiated": sum(m.deflate for m in conns),
        "bytes_per_delivery": round(sum(m.bytes for m in conns) / deliveries, 1),
        "deliveries_per_cpu_s": round(deliveries / result["cpu"]),
        "cpu_s": round(result["cpu"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--members", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--size", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--compression", choices=["on", "off"], default=None,
                        help="one setting only (default: both)")
    parser.add_argument("--pythonpath", default=os.environ.get("PYTHONPATH", "."),
                        help="the roomcast to measure (e.g. main's checkout, without "
                             "the setting: --compression omitted)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median kept)")
    args = parser.parse_args()
    if args.child:
        import trio

        trio.run(child, args)
        return
    settings = [args.compression] if args.compression else ["off", "on"]
    if "compression" not in Path(args.pythonpath, "roomcast", "config.py").read_text():
        settings = [None]  # a roomcast without the setting (before permessage-deflate)
    for members in args.members:
        for size in args.sizes:
            # The settings' runs interleaved, so that a change in the machine's load
            # falls on both alike; the median is kept, with the range.
            runs: dict[str | None, list[dict[str, Any]]] = {s: [] for s in settings}
            for _ in range(args.repeat):
                for setting in settings:
                    runs[setting].append(run(members, size, args.frames, setting,
                                             args.pythonpath))
            for setting in settings:
                ordered = sorted(runs[setting], key=lambda r: r["deliveries_per_cpu_s"])
                median = dict(ordered[len(ordered) // 2])
                median["range"] = [ordered[0]["deliveries_per_cpu_s"],
                                   ordered[-1]["deliveries_per_cpu_s"]]
                print(json.dumps(median), flush=True)


if __name__ == "__main__":
    main()
