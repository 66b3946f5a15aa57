"""One roomcast node for the cluster benchmark: the service, plus a line-based control
port on which the benchmark asks this node's facade to publish.

    notify USER COUNT PACE_MS   -> COUNT notify_user calls, PACE_MS apart
    room ROOM COUNT PACE_MS [TAG]  -> COUNT notify_room calls
    stats                       -> `stats WRITES MESSAGES FRAMES`: since the last stats,
                                   socket writes to clients (the outboxes' system calls),
                                   room messages heard from Redis, and frames in them
    profile on | profile off PATH  -> cProfile this node from now; write the stats to PATH
Each notification carries `data.t`, the monotonic clock in ns when it was published
(the clock is shared by the processes of one machine), and `data.seq`; with TAG also
`data.p` = TAG, so that a client can tell two publishers' frames apart. The answer is
`ok SECONDS`.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import time

import trio

from roomcast import Config, open_service
from roomcast.actors import backplane, outbox

COUNTS = {"writes": 0, "messages": 0, "frames": 0}
PROFILE = cProfile.Profile()


def count_writes_and_batches() -> None:
    """Count the outboxes' socket writes and the room messages heard from Redis (a
    counter each, in this benchmark process only)."""
    write_through, append = outbox.Outbox._write_through, outbox.Outbox._append
    parse = backplane.parse_channel_message

    def counted_write(self: outbox.Outbox, data: bytes) -> None:
        COUNTS["writes"] += 1
        write_through(self, data)

    def counted_append(self: outbox.Outbox, data: bytes) -> None:
        COUNTS["writes"] += 1  # written by the writer task, a call per append at most
        append(self, data)

    def counted_parse(message: bytes, *, broadcast: bool = False):  # type: ignore[no-untyped-def]
        parsed = parse(message, broadcast=broadcast)
        COUNTS["messages"] += 1
        COUNTS["frames"] += len(parsed.frames) if hasattr(parsed, "frames") else 1
        return parsed

    outbox.Outbox._write_through = counted_write  # type: ignore[method-assign]
    outbox.Outbox._append = counted_append  # type: ignore[method-assign]
    backplane.parse_channel_message = counted_parse


async def control(stream: trio.SocketStream, service) -> None:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip() == b"stats":
                await stream.send_all(
                    "stats {writes} {messages} {frames}\n".format(**COUNTS).encode())
                COUNTS.update(writes=0, messages=0, frames=0)
                continue
            if line.startswith(b"profile"):
                _, switch, *path = line.decode().split()
                if switch == "on":
                    PROFILE.enable()
                else:
                    PROFILE.disable()
                    PROFILE.dump_stats(path[0])
                await stream.send_all(b"ok\n")
                continue
            verb, target, count, pace_ms, *tag = line.decode().split()
            started = time.perf_counter()
            for seq in range(int(count)):
                if float(pace_ms) > 0:
                    await trio.sleep(float(pace_ms) / 1000)
                data = {"t": time.monotonic_ns(), "seq": seq}
                if tag:
                    data["p"] = tag[0]
                if verb == "notify":
                    await service.notifications.notify_user(int(target), "n", data=data)
                else:
                    await service.notifications.notify_room(target, "n", data=data)
            await stream.send_all(f"ok {time.perf_counter() - started:.6f}\n".encode())


async def main(args: argparse.Namespace) -> None:
    config = Config(
        host="127.0.0.1", port=0, http_port=-1, jwt_secret=args.secret, open_rooms=("*",),
        redis_url=args.redis_url or None, rate_limit=1e6, rate_burst=10**6,
        ping_interval=3600.0,  # clients that count frames (cluster_cpu.py) do not pong
        max_connections_per_user=10**6, log_level="WARNING",
        max_handshakes_per_address=0,  # every benchmark client connects from 127.0.0.1
    )
    async with open_service(config) as service:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        control_port = listeners[0].socket.getsockname()[1]
        print(f"{service.port} {control_port}", flush=True)
        await trio.serve_listeners(lambda s: control(s, service), listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--core", type=int, default=None)
    arguments = parser.parse_args()
    if arguments.core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {arguments.core % os.cpu_count()})
    count_writes_and_batches()
    try:
        trio.run(main, arguments)
    except KeyboardInterrupt:
        sys.exit(0)
