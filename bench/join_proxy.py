"""What the HTTP join authorizer costs a join: the latency of one call of
`HttpJoinAuthorizer` (roomcast/join_proxy.py) against a local authorizer, with its
cache off (every call a POST) and on (every call after the first answered from it).

    .venv/bin/python bench/join_proxy.py [--calls 2000]

The authorizer runs in a process of its own (this script with `--serve`): a Trio
HTTP/1.1 server (h11) that answers every POST 204 on a kept-alive connection, as a
fast application endpoint would. Calls are made one after the other from one task, so
each figure is one join's wait, not a throughput.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import h11
import trio
from loadgen import die_with_parent  # bench/, the script's own folder

from roomcast.auth import Principal
from roomcast.config import Config
from roomcast.join_proxy import HttpJoinAuthorizer


async def _answer_204(stream: trio.SocketStream) -> None:
    connection = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                connection.receive_data(data)
                if not data:
                    return
            elif isinstance(event, h11.EndOfMessage):
                out = connection.send(h11.Response(status_code=204, headers=[]))
                out += connection.send(h11.EndOfMessage())
                await stream.send_all(out)
                connection.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return


async def serve() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    print(listeners[0].socket.getsockname()[1], flush=True)
    await trio.serve_listeners(_answer_204, listeners)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(port: int, calls: int, cache_ttl: float) -> list[float]:
    config = Config(join_url=f"http://127.0.0.1:{port}/join", join_cache_ttl=cache_ttl)
    authorize = HttpJoinAuthorizer(config)
    principal = Principal(user_id="7")
    try:
        await authorize(principal, "warm-up")  # the connection opened
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            allowed = await authorize(principal, "team_42")
            samples.append(time.perf_counter() - start)
            assert allowed
        return samples
    finally:
        await authorize.aclose()


async def bench(calls: int) -> None:
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        print(f"{calls} calls, one at a time, against a local authorizer answering 204")
        print(f"{'cache':<28}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
        for label, ttl in (("off (join_cache_ttl=0)", 0.0), ("on (a hit after the first)", 60.0)):
            samples = await measure(port, calls, ttl)
            p50, p99 = percentile(samples, 0.50), percentile(samples, 0.99)
            mean = statistics.fmean(samples)
            print(f"{label:<28}{p50 * 1e6:>10.1f}{p99 * 1e6:>10.1f}{mean * 1e6:>10.1f}")
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
    else:
        trio.run(bench, args.calls)


if __name__ == "__main__":
    main()
