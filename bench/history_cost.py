"""What keeping history costs a fan-out: the room actor's time per publish, with and
without history, for a room of N members (in process; the members take each frame
as a real connection with an empty backlog does, into a socket).

    .venv/bin/python bench/history_cost.py [--members 1000] [--publishes 2000]

History adds, per publish and not per member: the offset and epoch spliced onto the
JSON, one deque append and the eviction check. The figures show it against the
fan-out itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import trio

from roomcast.actors.room import Publish, Room
from roomcast.protocol import MessageType, ServerFrame, encode_body
from roomcast.protocol.roomlog import Retention


class Member:
    """A member that hands each frame to a socket at once, as Outbox.write_nowait
    does (deferred frames too: this measures the room's own cost per member)."""

    def __init__(self, member_id: int, sink: int) -> None:
        self.id = member_id
        self.user_id = member_id
        self.deflate = False
        self._sink = sink

    def deliver(self, frame: bytes, *, later: bool = False) -> bool:
        os.write(self._sink, frame)
        return True

    def flush(self) -> None:
        pass


async def per_publish(members: int, publishes: int, size: int) -> float:
    room = Room("bench", 16, Retention(size=size, ttl=300.0))
    devnull = os.open(os.devnull, os.O_WRONLY)
    for index in range(members):
        room.members[index] = Member(index, devnull)  # type: ignore[assignment]
    body = encode_body(ServerFrame(MessageType.ROOM_MESSAGE, "x" * 100, {"n": 1}, "bench"))
    started = time.perf_counter()
    for _ in range(publishes):
        await room.handle(Publish(body))
    elapsed = time.perf_counter() - started
    os.close(devnull)
    return elapsed / publishes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--publishes", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=11)
    args = parser.parse_args()
    # Interleaved, so that a shared machine's drifting load falls on both alike.
    labels = (("without history", 0), ("with history (100 frames)", 100))
    runs: dict[str, list[float]] = {label: [] for label, _ in labels}
    for _ in range(args.repeat):
        for label, size in labels:
            runs[label].append(trio.run(per_publish, args.members, args.publishes, size))
    results = {}
    for label, _ in labels:
        results[label] = statistics.median(runs[label])
        print(f"{label}: {results[label] * 1e6:.1f} us per publish to {args.members} members, "
              f"{args.members / results[label]:,.0f} deliveries/s "
              f"(spread {min(runs[label]) * 1e6:.0f} to {max(runs[label]) * 1e6:.0f} us)")
    without, with_ = results["without history"], results["with history (100 frames)"]
    print(f"history costs {(with_ - without) * 1e6:+.1f} us per publish "
          f"({(with_ / without - 1) * 100:+.1f} % of the fan-out)")


if __name__ == "__main__":
    main()
