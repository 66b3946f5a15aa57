"""Join latency per rule of who may join a room: one client over real TCP joins and
leaves rooms on an in-process service, once per rule that opens them.

    .venv/bin/python bench/joins.py [--joins 2000] [--rooms 10]

Each join is timed from sending `join_room` to reading its answer (the leave that
follows is not timed); the client cycles through `--rooms` rooms, so a cache keyed by
(user, room) is warm after the first pass. Rules measured, each alone:

- patterns: `--open-rooms 'bench_*'`;
- claim: the connection token's `rooms` claim `["bench_*"]`;
- room token: a room token per join (minted beforehand, verified per join);
- in-process authorizer: `open_service(room_authorizer=...)` answering True at once;
- HTTP authorizer, without and with its cache: `--join-url` pointing at a local HTTP
  server answering 204 (needs `roomcast.join_proxy`; reported "not available" while
  it is the placeholder).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio
from trio_websocket import open_websocket_url

from roomcast import Config, Principal, Service, mint_token, open_service

SECRET = "roomcast-bench-secret-0123456789abcdef"


def config(**overrides: Any) -> Config:
    values: dict[str, Any] = dict(
        host="127.0.0.1", port=0, http_port=-1, jwt_secret=SECRET, log_level="WARNING",
        rate_limit=1e6, rate_burst=10**6,
    )
    values.update(overrides)
    return Config(**values)


async def time_joins(service: Service, token: str, joins: int, rooms: int,
                     room_token: Callable[[str], str] | None = None) -> list[float]:
    """Milliseconds per join, each followed by an untimed leave."""
    url = f"ws://127.0.0.1:{service.port}{service.config.path}?token={token}"
    tokens = {f"bench_{i}": [room_token(f"bench_{i}") for _ in range(joins // rooms + 1)]
              for i in range(rooms)} if room_token else {}
    samples: list[float] = []
    async with open_websocket_url(url) as ws:
        await ws.get_message()  # welcome
        for n in range(joins):
            room = f"bench_{n % rooms}"
            frame: dict[str, Any] = {"type": "join_room", "room": room}
            if room_token:
                frame["token"] = tokens[room].pop()
            started = time.perf_counter()
            await ws.send_message(json.dumps(frame))
            answer = json.loads(await ws.get_message())
            samples.append((time.perf_counter() - started) * 1000)
            if answer["type"] != "info":
                raise RuntimeError(f"join refused: {answer}")
            await ws.send_message(json.dumps({"type": "leave_room", "room": room}))
            await ws.get_message()
    return samples


async def http_204_server(task_status: trio.TaskStatus[int]) -> None:
    """A minimal keep-alive HTTP/1.1 server: every request gets 204."""

    async def serve(stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                await stream.send_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(serve, listeners)


async def http_available(url: str) -> bool:
    from roomcast.join_proxy import HttpJoinAuthorizer

    authorizer = HttpJoinAuthorizer(config(join_url=url))
    try:
        with trio.fail_after(5):
            return await authorizer(Principal(user_id=1), "bench_0") is True
    except NotImplementedError:
        return False
    finally:
        await authorizer.aclose()


async def allow(principal: Principal, room: str) -> bool:
    return True


async def main(joins: int, rooms: int) -> dict[str, dict[str, float] | None]:
    results: dict[str, dict[str, float] | None] = {}

    async def case(name: str, service: AbstractAsyncContextManager[Service],
                   claims: dict[str, Any] | None = None,
                   room_token: bool = False) -> None:
        async with service as svc:
            cfg = svc.config
            token = mint_token(cfg, 1, extra=claims)
            minter = (lambda room: mint_token(cfg, 1, extra={"room": room})) if room_token \
                else None
            samples = await time_joins(svc, token, joins, rooms, minter)
        samples.sort()
        results[name] = {
            "p50": statistics.median(samples),
            "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        }

    await case("patterns", open_service(config(open_rooms=("bench_*",))))
    await case("claim", open_service(config()), claims={"rooms": ["bench_*"]})
    await case("room token", open_service(config()), room_token=True)
    await case("in-process authorizer", open_service(config(), room_authorizer=allow))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(http_204_server)
        url = f"http://127.0.0.1:{port}/join"
        if await http_available(url):
            await case("HTTP authorizer, no cache",
                       open_service(config(join_url=url, join_cache_ttl=0.0)))
            await case("HTTP authorizer, cached",
                       open_service(config(join_url=url, join_cache_ttl=60.0)))
        else:
            results["HTTP authorizer, no cache"] = results["HTTP authorizer, cached"] = None
        nursery.cancel_scope.cancel()
    return results


def report(results: dict[str, dict[str, float] | None], joins: int) -> str:
    lines = [f"join latency over loopback, {joins} joins per rule (ms)",
             f"{'rule':<28}{'p50':>8}{'p99':>8}"]
    for name, figures in results.items():
        if figures is None:
            lines.append(f"{name:<28}  not available (roomcast.join_proxy is a placeholder)")
        else:
            lines.append(f"{name:<28}{figures['p50']:>8.3f}{figures['p99']:>8.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joins", type=int, default=2000)
    parser.add_argument("--rooms", type=int, default=10)
    args = parser.parse_args()
    print(report(trio.run(main, args.joins, args.rooms), args.joins))
