"""The server half of the soak run (bench/soak.py starts it): roomcast in a process of
its own, plus "backend code" that sends notifications while clients come and go.

    python bench/soak_server.py --secret S [--max-connections N ...]

Once listening it prints one JSON line, `{"port": N}`. Then it answers one JSON
command per line on stdin with one JSON line on stdout:

- `{"cmd": "stats"}`: live Trio tasks (the whole task tree, from the root task),
  VmRSS and VmHWM in KiB, CPU seconds, open sockets, registered connections, live
  rooms, actor restarts, and the backend's send errors;
- `{"cmd": "start", "users": [...], "rooms": [...], "user_rate": r, "room_rate": r,
  "broadcast_rate": r}`: the backend starts sending `notify_user` to random users,
  `notify_room` to random rooms and `broadcast`, that many per second, each with
  `data = {"s": "B", "q": seq}`, `seq` counted per target from 0;
- `{"cmd": "stop"}`: the backend stops, and the answer is how many it sent to each
  target (`user`, `room`, `broadcast`): the receivers check for exactly those;
- `{"cmd": "quit"}`: the service drains (1001 to any client left) and the process ends.

The backend task and the control loop live for the whole process, so the task count
before the clients came and after they left compare like with like.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import resource
import sys
from collections import Counter
from typing import Any

import trio

import roomcast
from roomcast import Config, Service, open_service

BACKEND = "B"  # the sender id the backend puts in `data.s`


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def memory_kib() -> dict[str, int]:
    values = {}
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return {"rss_kib": values.get("VmRSS", 0), "hwm_kib": values.get("VmHWM", 0)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def task_tree() -> Counter[str]:
    """Every live task of this Trio run, by name: root task, child nurseries,
    their child tasks, recursively."""
    names: Counter[str] = Counter()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        names[task.name] += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return names


class Backend:
    """Application code calling the notification facade at a steady rate."""

    def __init__(self, service: Service) -> None:
        self.notifications = service.notifications
        self.go = trio.Event()
        self.stop = trio.Event()
        self.stopped = trio.Event()
        self.users: list[int] = []
        self.rooms: list[str] = []
        self.rates: dict[str, float] = {}
        self.sent: dict[str, dict[Any, int]] = {"user": {}, "room": {}, "broadcast": {}}
        self.errors = 0
        self.random = random.Random(1)

    def configure(self, command: dict[str, Any]) -> None:
        self.users = list(command["users"])
        self.rooms = list(command["rooms"])
        self.rates = {
            "user": float(command.get("user_rate", 0.0)) if self.users else 0.0,
            "room": float(command.get("room_rate", 0.0)) if self.rooms else 0.0,
            "broadcast": float(command.get("broadcast_rate", 0.0)),
        }

    async def run(self) -> None:
        await self.go.wait()
        start = trio.current_time()
        done = dict.fromkeys(self.rates, 0)
        while not self.stop.is_set():
            elapsed = trio.current_time() - start
            for kind, rate in self.rates.items():
                for _ in range(int(elapsed * rate) - done[kind]):
                    await self._send(kind)
                    done[kind] += 1
            with trio.move_on_after(0.01):
                await self.stop.wait()
        self.stopped.set()
        # Stays alive, as it was before `start`, so task counts compare.
        await trio.sleep_forever()

    async def _send(self, kind: str) -> None:
        n = self.notifications
        if kind == "user":
            target: Any = self.random.choice(self.users)
        elif kind == "room":
            target = self.random.choice(self.rooms)
        else:
            target = "*"
        seq = self.sent[kind].get(target, 0)
        data = {"s": BACKEND, "q": seq}
        try:
            if kind == "user":
                await n.notify_user(target, "n", data=data)
            elif kind == "room":
                await n.notify_room(target, "n", data=data)
            else:
                await n.broadcast("n", data=data)
        except Exception:
            logging.getLogger("soak.backend").exception("%s notification failed", kind)
            self.errors += 1
            return
        self.sent[kind][target] = seq + 1

    def counts(self) -> dict[str, Any]:
        return {
            "user": {str(k): v for k, v in self.sent["user"].items()},
            "room": dict(self.sent["room"]),
            "broadcast": self.sent["broadcast"].get("*", 0),
            "errors": self.errors,
        }


def stats(service: Service, backend: Backend, names: bool) -> dict[str, Any]:
    tree = task_tree()
    answer: dict[str, Any] = {
        "tasks": sum(tree.values()),
        **memory_kib(),
        "cpu_s": cpu_seconds(),
        "open_sockets": service.gateway.open_sockets,
        "connections": len(service.registry.all_connections()),
        "rooms": len(service.registry.room_names()),
        "restarts": getattr(service.supervisor, "restarts", -1),
        "backend_errors": backend.errors,
    }
    if names:
        answer["task_names"] = dict(tree.most_common(30))
    return answer


def emit(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


async def control(service: Service, backend: Backend) -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    buffer = b""
    while True:
        while b"\n" not in buffer:
            data = await stdin.receive_some(65536)
            if not data:
                return  # the soak process went away
            buffer += data
        line, buffer = buffer.split(b"\n", 1)
        command = json.loads(line)
        cmd = command["cmd"]
        if cmd == "stats":
            emit(stats(service, backend, bool(command.get("names"))))
        elif cmd == "start":
            backend.configure(command)
            backend.go.set()
            emit({"ok": True})
        elif cmd == "stop":
            backend.go.set()
            backend.stop.set()
            await backend.stopped.wait()
            emit(backend.counts())
        elif cmd == "quit":
            emit({"ok": True})
            return
        else:
            emit({"error": f"unknown command {cmd!r}"})


async def main(args: argparse.Namespace) -> None:
    config = Config(
        host="127.0.0.1",
        port=0,
        jwt_secret=args.secret,
        open_rooms=("*",),  # the soak joins rooms of every name
        max_connections=args.max_connections,
        max_connections_per_user=args.max_connections_per_user,
        max_handshakes_per_address=0,  # every soak client connects from 127.0.0.1
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
        # Rooms nobody is in live on while they keep history; a short retention lets the
        # "tasks after == tasks before" check see them go within the settle time. It must
        # still cover a listener's cut: 10 s (bench/soak.py's default) against 2.9 s at
        # most away at 2,000 connections (the soak prints both: "history vs. cuts").
        history_size=args.history_size,
        history_ttl=args.history_ttl,
        http_port=-1,
        log_level="WARNING",
    )
    async with open_service(config) as service:
        async with trio.open_nursery() as nursery:
            backend = Backend(service)
            nursery.start_soon(backend.run, name="soak backend")
            emit({
                "port": service.port,
                "fd_limit": raise_fd_limit(),
                "roomcast": os.path.dirname(os.path.abspath(roomcast.__file__)),
            })
            await control(service, backend)
            nursery.cancel_scope.cancel()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", required=True)
    parser.add_argument("--max-connections", type=int, default=20_000)
    parser.add_argument("--max-connections-per-user", type=int, default=100)
    parser.add_argument("--rate-limit", type=float, default=1000.0)
    parser.add_argument("--rate-burst", type=int, default=1000)
    parser.add_argument("--history-size", type=int, default=100)
    parser.add_argument("--history-ttl", type=float, default=10.0)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    raise_fd_limit()
    trio.run(main, args)


if __name__ == "__main__":
    cli()
