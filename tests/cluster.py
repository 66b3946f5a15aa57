"""Helpers for cluster tests: a real Redis server and roomcast nodes in processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

import roomcast.remote
from roomcast import Service

from .conftest import SECRET, eventually, make_config, running

REDIS = shutil.which("redis-server")


needs_redis = pytest.mark.skipif(
    REDIS is None and not os.environ.get("CI"), reason="redis-server is not installed"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A throwaway Redis on a free loopback port; it can be stopped and started again
    on the same port, as an outage would."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, preexec_fn: Callable[[], None] | None = None) -> None:
        """`preexec_fn`: the benchmarks' `die_with_parent` (not the tests': a test may
        start Redis from a worker thread, whose end would then stop it)."""
        assert REDIS is not None, "redis-server is not installed (./dev.sh test installs it)"
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=preexec_fn,
        )
        _wait_for_ping(self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: no goodbye to the clients; with no persistence, every key is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def restart_empty(self) -> None:
        """Killed and started again on the same port, empty: a crash of Redis."""
        self.kill()
        self.start()


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Node:
    """A roomcast node in its own process, through the real CLI. `settings` are more
    Config fields, passed as flags (`rate_limit=1e6` is `--rate-limit 1000000.0`,
    `redis_sharded=True` is `--redis-sharded`)."""

    def __init__(self, redis_url: str, lease: float = 2.0, **settings: object) -> None:
        flags = [(f"--{name.replace('_', '-')}" if value else f"--no-{name.replace('_', '-')}")
                 if isinstance(value, bool) else f"--{name.replace('_', '-')}={value}"
                 for name, value in settings.items()]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roomcast.cli", "serve", "--port", "0", "--http-port=-1",
             "--redis-url", redis_url, "--presence-lease", str(lease),
             "--log-level", "WARNING", *flags],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET, "ROOMCAST_OPEN_ROOMS": "*"},
        )
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.process.kill()
            raise RuntimeError(f"node did not start: {line!r} {self.process.stderr.read()}")
        self.url = line.split("listening on ", 1)[1].strip()
        self.config = make_config()  # what conftest's connect() needs: path and secret
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def nodes(
    redis_url: str, count: int, lease: float = 2.0, **settings: object
) -> Iterator[list[Node]]:
    started: list[Node] = []
    try:
        for _ in range(count):
            started.append(Node(redis_url, lease, **settings))
        yield started
    finally:
        for node in started:
            node.stop()


@asynccontextmanager
async def cluster_node(redis_url: str, **settings: Any) -> AsyncIterator[Service]:
    """An in-process node of the cluster over `redis_url`, once it has joined (before
    that it numbers locally)."""
    async with running(redis_url=redis_url, presence_lease=2.0, **settings) as node:
        await eventually(lambda: node.ready)
        yield node


class RedisCluster:
    """A Redis Cluster of masters (no replicas) on free loopback ports, from
    redis-server; a master can be stopped and started again on its port with its
    nodes.conf (no persistence: it comes back without its keys)."""

    def __init__(self, workdir: str, masters: int = 3) -> None:
        redis_cli = shutil.which("redis-cli")
        assert REDIS is not None and redis_cli is not None, "redis-server/redis-cli not installed"
        self.redis_cli = redis_cli
        self.workdir = workdir
        self.ports = [cluster_port() for _ in range(masters)]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start_master(self, port: int) -> None:
        self.processes[port] = subprocess.Popen(
            [REDIS, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes",
             "--cluster-config-file", f"{self.workdir}/nodes-{port}.conf",
             "--dir", self.workdir, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_for_ping(port)

    def stop_master(self, port: int) -> None:
        process = self.processes.pop(port)
        process.terminate()
        process.wait(timeout=10)

    def create(self) -> None:
        subprocess.run(
            [self.redis_cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )
        self.wait_until_ok()

    def wait_until_ok(self) -> None:
        """Every master says the cluster is ok (all slots served)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in self.ask(port, "cluster", "info")
                   for port in self.ports):
                return
            time.sleep(0.1)  # the poll interval of a wait for the cluster (a subprocess)
        raise RuntimeError("the Redis cluster did not come up")

    def ask(self, port: int, *command: str) -> str:
        return subprocess.run([self.redis_cli, "-p", str(port), *command],
                              capture_output=True, text=True, timeout=10).stdout

    def slot(self, key: str) -> int:
        return int(self.ask(self.ports[0], "cluster", "keyslot", key))

    def master_of(self, key: str) -> int:
        """The port of the master that serves `key`'s slot."""
        slot = self.slot(key)
        for line in self.ask(self.ports[0], "cluster", "nodes").splitlines():
            fields = line.split()
            if "master" not in fields[2]:
                continue
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if int(first) <= slot <= int(last or first):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise RuntimeError(f"no master serves slot {slot}")

    def close(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()


@contextmanager
def redis_cluster_servers(masters: int = 3) -> Iterator[RedisCluster]:
    """A running Redis Cluster of `masters` servers (see `RedisCluster`)."""
    import tempfile

    with tempfile.TemporaryDirectory() as workdir:
        cluster = RedisCluster(workdir, masters)
        try:
            for port in cluster.ports:
                cluster.start_master(port)
            cluster.create()
            yield cluster
        finally:
            cluster.close()


@contextmanager
def redis_cluster(masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` servers on free loopback ports; yields one's URL."""
    with redis_cluster_servers(masters) as cluster:
        yield cluster.url


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    import random

    for _ in range(200):
        port = random.randint(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a Redis cluster node")


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
        except OSError:
            time.sleep(0.05)  # the poll interval of a wait for redis-server (a subprocess)
    raise RuntimeError(f"redis-server on {port} did not start")


@contextmanager
def counted_commands() -> Iterator[list[str]]:
    """The Redis commands a worker's calls send (each a round trip), by name."""
    sent: list[str] = []
    original = roomcast.remote.redis_client

    def counting_client(url: str, sharded: bool) -> Any:
        client = original(url, sharded)
        execute = client.execute_command

        async def execute_command(command: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(bytes(command.name).decode())
            return await execute(command, *args, **kwargs)

        client.execute_command = execute_command
        return client

    roomcast.remote.redis_client = counting_client
    try:
        yield sent
    finally:
        roomcast.remote.redis_client = original
