"""How long an authenticated client takes to connect while 1,000 silent sockets are open.

An in-process service with the default limits (max_handshakes 1000, 50 per address);
the silent sockets come from 20 loopback addresses (127.0.0.10 to .29, 50 each), and
each one the service cuts short is opened again at once, so 1,000 stay pending all
along, as a determined attacker would keep them. Then `--clients` clients connect one
after another (TCP connect, upgrade, welcome read) from 127.0.0.1; the time of each is
printed as p50/p99, beside the same without silent sockets.

    python bench/silent_sockets.py [--clients 300] [--silent 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import trio
from trio_websocket import open_websocket_url

from roomcast import Config, mint_token, open_service
from roomcast.limits import fit_descriptors

SECRET = "bench-secret-0123456789abcdef0123456789"


async def hold_silent(port: int, address: str, count: int, opened: list[int]) -> None:
    """Keep `count` silent sockets open from `address`, reopening each one closed."""

    async def one() -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=address)
            except OSError:
                await trio.sleep(0.01)
                continue
            opened[0] += 1
            async with stream:
                try:
                    while await stream.receive_some(1024):
                        pass
                except trio.BrokenResourceError:
                    pass

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)


async def time_clients(config: Config, url: str, clients: int) -> list[float]:
    times = []
    for n in range(clients):
        token = mint_token(config, f"user{n}")
        started = time.perf_counter()
        async with open_websocket_url(f"{url}?token={token}") as ws:
            json.loads(await ws.get_message())
            times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)]
    return f"p50 {statistics.median(ms):.2f} ms, p99 {p99:.2f} ms, max {ms[-1]:.2f} ms"


async def main(clients: int, silent: int) -> None:
    config = Config(port=0, http_port=-1, jwt_secret=SECRET, log_level="WARNING")
    fit_descriptors(config)  # the clients below share this process's descriptors
    async with open_service(config) as service:
        url = f"ws://127.0.0.1:{service.port}{config.path}"
        quiet = await time_clients(config, url, clients)
        print(f"no silent sockets:     {summary(quiet)}")
        opened = [0]
        async with trio.open_nursery() as nursery:
            per_address = 50
            for i in range(silent // per_address):
                nursery.start_soon(hold_silent, service.port, f"127.0.0.{10 + i}", per_address,
                                   opened)
            with trio.fail_after(30):
                while service.gateway.admission.pending < silent:
                    await trio.sleep(0.05)
            loaded = await time_clients(config, url, clients)
            pending = service.gateway.admission.pending
            nursery.cancel_scope.cancel()
        failures = dict(service.metrics.handshake_failures)
        print(f"{silent} silent sockets: {summary(loaded)}")
        print(f"  pending handshakes at the end: {pending}; silent sockets opened: "
              f"{opened[0]}; handshake failures: {failures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--silent", type=int, default=1000)
    args = parser.parse_args()
    trio.run(main, args.clients, args.silent)
