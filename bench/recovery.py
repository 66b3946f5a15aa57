"""How long a client takes to recover the frames it missed.

A room gets `--missed` frames while a client is away; the client joins again with its
last position. Measured: from sending the join to holding the last missed frame, and
the service's time alone (the room's `handle` of that join, which builds the answer
and hands every missed frame to the socket). In process, on 127.0.0.1.

    .venv/bin/python bench/recovery.py [--missed 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import connect, running


async def once(missed: int) -> tuple[float, float]:
    async with running(history_size=missed, http_port=-1) as service:
        async with connect(service, 1) as client:
            await client.request({"type": "join_room", "room": "r"})
            await service.notifications.notify_room("r", "seen")
            seen = await client.recv(positions=True)
        payload = {"text": "x" * 100}
        for seq in range(missed):
            await service.notifications.notify_room("r", "m", data={**payload, "seq": seq})
        room = service.registry.room("r")
        handled: list[float] = []
        original = room.handle

        async def timed(message):
            started = time.perf_counter()
            await original(message)
            handled.append(time.perf_counter() - started)

        room.handle = timed
        async with connect(service, 1, message_queue_size=missed + 2) as client:
            position = {"offset": seen["offset"], "epoch": seen["epoch"]}
            started = time.perf_counter()
            await client.send({"type": "join_room", "room": "r", "data": position})
            answer = await client.recv(positions=True)
            assert answer["data"]["recovered"] is True, answer
            for seq in range(missed):
                frame = json.loads(await client.ws.get_message())
                assert frame["data"]["seq"] == seq
            total = time.perf_counter() - started
        return total, handled[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--missed", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    runs = [trio.run(once, args.missed) for _ in range(args.repeat)]
    totals = sorted(r[0] * 1000 for r in runs)
    service = sorted(r[1] * 1000 for r in runs)
    print(f"recovery of {args.missed} missed frames, {args.repeat} runs: "
          f"client holds the last one after {statistics.median(totals):.1f} ms median "
          f"(min {totals[0]:.1f}, max {totals[-1]:.1f}); "
          f"the room's work {statistics.median(service):.2f} ms median "
          f"(min {service[0]:.2f}, max {service[-1]:.2f})")


if __name__ == "__main__":
    main()
