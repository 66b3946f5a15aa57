"""What a flood of large frames leaves in kept history: ten connections of one user,
each in a room of its own, publish 64 KiB dict payloads (the largest frame the default
`max_message_size` lets in) as fast as the service answers, then all disconnect.

    .venv/bin/python bench/history_flood.py [--frames 100] [--budget BYTES] [--ttl 300]

Prints, with the budget (`history_memory`, default 64 MiB) and without one (a budget
larger than anything kept): the memory Python holds (tracemalloc) at its peak, once
everyone has left, and once `history_ttl` has passed with nobody connected and no
publish; and the bytes the node's history accountant counts at each point. Trio's
clock runs at real speed and jumps over the ttl (a MockClock), so the default
`history_ttl` costs no wait.
"""

from __future__ import annotations

import argparse
import gc
import json
import tracemalloc
from typing import Any

import trio
import trio.testing
from trio_websocket import open_websocket_url

from roomcast import Config, mint_token, open_service

MiB = 1024 * 1024
SECRET = "history-flood-bench-secret-0123456789"


def room_message(room: str, limit: int) -> str:
    items = ["ab"] * ((limit - 200) // 5)  # `"ab",`: compact JSON, as browsers send it
    text = json.dumps({"type": "room_message", "room": room, "data": {"items": items}},
                      separators=(",", ":"))
    assert len(text) <= limit
    return text


async def flood(
    budget: int, frames: int, ttl: float, clock: trio.testing.MockClock
) -> dict[str, Any]:
    config = Config(host="127.0.0.1", port=0, http_port=-1, jwt_secret=SECRET,
                    history_memory=budget, history_ttl=ttl, rate_limit=1e6, rate_burst=10**6,
                    max_connections_per_user=100)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    async with open_service(config) as service:
        registry = service.registry
        url = f"ws://127.0.0.1:{service.port}{config.path}?token={mint_token(config, 1)}"
        most_kept = 0

        async def one(index: int) -> None:
            nonlocal most_kept
            room = f"flood{index}"
            text = room_message(room, config.max_message_size)
            async with open_websocket_url(url, max_message_size=4 * MiB) as ws:
                await ws.get_message()  # the welcome
                await ws.send_message(json.dumps({"type": "join_room", "room": room}))
                await ws.get_message()
                for _ in range(frames):
                    await ws.send_message(text)
                    await ws.get_message()  # its own copy: the room has kept it
                    most_kept = max(most_kept, registry.kept_bytes())

        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(one, index)
        gc.collect()
        peak = tracemalloc.get_traced_memory()[1] - base
        left = tracemalloc.get_traced_memory()[0] - base
        kept_left = registry.kept_bytes()
        clock.jump(ttl + 30)  # nobody connected, nothing published: past the ttl and a sweep
        await trio.sleep(0.5)  # real time for the registry's timer to run
        gc.collect()
        expired = tracemalloc.get_traced_memory()[0] - base
        kept_expired = registry.kept_bytes()
    tracemalloc.stop()
    return {"peak": peak, "left": left, "kept_most": most_kept, "kept_left": kept_left,
            "expired": expired, "kept_expired": kept_expired}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=100, help="frames per connection")
    parser.add_argument("--budget", type=int, default=Config().history_memory)
    parser.add_argument("--ttl", type=float, default=Config().history_ttl)
    args = parser.parse_args()
    runs = (("with the budget", args.budget), ("without a budget", 1 << 40))
    for label, budget in runs:
        clock = trio.testing.MockClock(rate=1.0)
        result = trio.run(flood, budget, args.frames, args.ttl, clock, clock=clock)
        print(f"{label} ({budget / MiB:,.0f} MiB), 10 x {args.frames} frames of 64 KiB: "
              f"peak {result['peak'] / MiB:.1f} MiB traced, "
              f"after all left {result['left'] / MiB:.1f} MiB "
              f"(kept {result['kept_left'] / MiB:.1f} MiB, "
              f"at most {result['kept_most'] / MiB:.1f}), "
              f"after the ttl {result['expired'] / MiB:.1f} MiB "
              f"(kept {result['kept_expired'] / MiB:.1f} MiB)")


if __name__ == "__main__":
    main()
