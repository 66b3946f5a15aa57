"""`roomcast serve --workers N`: the restart rule, the parent and its workers as real
processes on a real Redis, ports in use, the outage log, the cluster docs' commands."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

import roomcast
from roomcast.cli import build_parser, config_from, main
from roomcast.config import Config
from roomcast.protocol.restarts import RestartPolicy, Restarts
from roomcast.workers import Workers

from .cluster import free_port, needs_redis
from .conftest import SECRET, Client, connect, eventually, make_config, running

ROOT = Path(__file__).resolve().parent.parent
CORES = len(os.sched_getaffinity(0))
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"


# The restart rule (pure) -------------------------------------------------------------


def test_restarts_within_the_intensity_go_on_and_one_more_gives_up():
    restarts = Restarts(RestartPolicy(intensity=2, period=60.0))
    restarts = restarts.after_failure(0.0).after_failure(30.0)
    assert not restarts.exhausted
    assert restarts.after_failure(59.0).exhausted
    # The first failure has left the period by 61 s: two within it, not three.
    assert not restarts.after_failure(61.0).exhausted


@given(st.lists(st.floats(min_value=0.0, max_value=1e6), min_size=1, max_size=30))
def test_failures_further_apart_than_the_period_never_exhaust(gaps: list[float]):
    restarts, now = Restarts(RestartPolicy(intensity=1, period=10.0)), 0.0
    for gap in gaps:
        now += 10.0 + gap + 1e-3
        restarts = restarts.after_failure(now)
        assert not restarts.exhausted
        assert len(restarts.recent) == 1  # what is forgotten is not kept either


def test_a_policy_is_checked():
    with pytest.raises(ValueError):
        RestartPolicy(intensity=-1, period=1.0)
    with pytest.raises(ValueError):
        RestartPolicy(intensity=1, period=0.0)


# The setting ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "0", "AUTO"])
def test_workers_auto_or_0_is_one_per_core_from_a_flag_or_the_environment(value: str):
    args = build_parser().parse_args(["serve", "--workers", value])
    assert config_from(args).workers == CORES
    assert Config.from_sources(environ={"ROOMCAST_WORKERS": value}).workers == CORES
    assert Config().workers == 1  # the default: one process, no parent


def test_a_bad_worker_count_is_refused_with_a_clear_line(capsys):
    assert main(["serve", "--workers", "-2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("roomcast: bad setting: ") and "workers" in err


def test_workers_need_a_redis_url(capsys):
    assert main(["serve", "--workers", "2", "--jwt-secret", SECRET]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("roomcast: --workers 2 needs --redis-url") and "\n" not in err


def test_remote_notification_service_is_public():
    assert "RemoteNotificationService" in roomcast.__all__
    assert roomcast.RemoteNotificationService.from_config(
        make_config(redis_url="redis://127.0.0.1:1/0")
    ).notify_user


# The parent's decision with real processes ---------------------------------------------


async def test_the_parent_gives_up_on_workers_that_keep_dying():
    crash = [sys.executable, "-c", "import sys; sys.exit(3)"]
    workers = Workers(Config(workers=2), crash, RestartPolicy(intensity=2, period=60.0))
    async with trio.open_nursery() as nursery:
        for index in range(2):
            nursery.start_soon(workers.keep_running, index)
        with trio.fail_after(60):
            await workers.done.wait()
        workers.stop()
        await workers.wait_exited(grace=10.0)
    assert workers.failure is not None
    assert workers.failure.startswith("workers keep dying: 3 exits within 60 s")
    assert "exited with status 3" in workers.failure
    assert not workers.processes


# Workers as real processes -----------------------------------------------------------

_NODE = re.compile(r'^roomcast_node\{node="(\w*)",pid="(\d+)"\} 1\.0$', re.MULTILINE)
_CONNECTIONS = re.compile(r"^roomcast_connections (\d+)\.0$", re.MULTILINE)


class Served:
    """`roomcast serve --workers N` in a process of its own, on free ports; its stderr
    (the parent's and the workers' logs) in a file. `connect()` accepts it as a node."""

    def __init__(self, redis_url: str, workers: int = 2, *flags: str) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "roomcast.cli", "serve", "--workers", str(workers),
             "--port", "0", "--http-port", "0", "--redis-url", redis_url,
             "--presence-lease", "2", "--log-level", "INFO", *flags],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
            env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET, "ROOMCAST_OPEN_ROOMS": "*"},
        )
        assert self.process.stdout is not None
        ws = self.process.stdout.readline()
        http = self.process.stdout.readline()
        if f"({workers} workers)" not in ws:
            self.process.kill()
            raise RuntimeError(f"the workers did not start: {ws!r} {self.logged()}")
        self.port = int(re.search(r":(\d+)/", ws)[1])  # type: ignore[index]
        self.http = re.search(r"http://[\d.]+:\d+", http)[0]  # type: ignore[index]
        self.config = make_config()  # what connect() needs: the path and the secret

    def logged(self) -> str:
        self.log.seek(0)
        return self.log.read()

    async def scrape(self) -> tuple[int, int]:
        """One /metrics request on a new connection: (the answering pid, its clients)."""
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{self.http}/metrics")).text
        return int(_NODE.search(text)[2]), int(_CONNECTIONS.search(text)[1])  # type: ignore[index]

    async def per_worker(self, count: int = 2) -> dict[int, int]:
        """Each worker's connections, by pid: scrapes until `count` workers answered (the
        kernel spreads connections at random; 60 scrapes miss one of two at 2**-59)."""
        seen: dict[int, int] = {}
        for _ in range(60):
            pid, connections = await self.scrape()
            seen[pid] = connections
            if len(seen) == count:
                break
        return seen

    async def worker_of_new_client(self, before: dict[int, int]) -> int:
        """The pid of the worker with one client more than `before`."""
        found: list[int] = []

        async def one_more() -> bool:
            now = await self.per_worker()
            found[:] = [pid for pid in before if now.get(pid) == before[pid] + 1]
            return len(found) == 1

        await eventually(one_more, timeout=20)
        return found[0]

    async def settled(self, before: dict[int, int]) -> None:
        """Wait until every worker has its clients of `before` again."""
        async def back() -> bool:
            return await self.per_worker() == before
        await eventually(back, timeout=20)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        return self.process.returncode


@contextmanager
def served(redis_url: str, workers: int = 2) -> Iterator[Served]:
    pool = Served(redis_url, workers)
    try:
        yield pool
    finally:
        pool.stop()


@asynccontextmanager
async def clients_on_every_worker(
    pool: Served, stack: AsyncExitStack, room: str = "r"
) -> AsyncIterator[list[Client]]:
    """Clients in `room`, connected until each worker has at least one."""
    clients: list[Client] = []
    for user in range(1, 25):
        client = await stack.enter_async_context(connect(pool, user))  # type: ignore[arg-type]
        await client.request({"type": "join_room", "room": room})
        clients.append(client)
        if len(clients) >= 4:
            counts = await pool.per_worker()
            if len(counts) == 2 and all(counts.values()):
                break
    else:
        raise AssertionError("24 clients and one worker has none")
    yield clients


async def all_get(clients: list[Client], text: str) -> None:
    for client in clients:
        frame = await client.recv(timeout=10)
        assert frame["message"] == text, frame


@needs_redis
async def test_two_workers_share_rooms_recover_across_each_other_and_drain_on_sigterm(redis):
    with served(redis.url) as pool:
        health = httpx.get(f"{pool.http}/healthz")
        assert health.status_code == 200
        async with AsyncExitStack() as stack:
            async with clients_on_every_worker(pool, stack) as clients:
                # Every client, on either worker, gets every room message once.
                for sender in clients[:2]:
                    await sender.send({"type": "room_message", "room": "r", "data": "hi"})
                    await all_get(clients, "hi")
                # A client leaves one worker and comes back on the other: it recovers
                # what was published meanwhile, from the room's history in Redis.
                before = await pool.per_worker()
                async with connect(pool, 99) as leaver:  # type: ignore[arg-type]
                    await leaver.request({"type": "join_room", "room": "r"})
                    home = await pool.worker_of_new_client(before)
                    await clients[0].send({"type": "room_message", "room": "r", "data": "seen"})
                    await all_get([*clients, leaver], "seen")
                    seen = leaver.last_position
                    assert seen is not None
                await pool.settled(before)
                for n in range(2):
                    await clients[1].send({"type": "room_message", "room": "r",
                                           "data": f"missed {n}"})
                    await all_get(clients, f"missed {n}")
                for _ in range(20):  # until the kernel picks the other worker
                    async with connect(pool, 99) as back:  # type: ignore[arg-type]
                        if await pool.worker_of_new_client(before) != home:
                            answer = await back.request(
                                {"type": "join_room", "room": "r",
                                 "data": {"offset": seen[0], "epoch": seen[1]}}
                            )
                            assert answer["data"]["recovered"] is True, answer
                            frames = [await back.recv(positions=True) for _ in range(2)]
                            assert [f["message"] for f in frames] == ["missed 0", "missed 1"]
                            assert [f["offset"] for f in frames] == [seen[0] + 1, seen[0] + 2]
                            break
                    await pool.settled(before)
                else:
                    raise AssertionError("20 connections and none on the other worker")
                # SIGTERM to the parent: every worker closes its clients with 1001.
                pool.process.send_signal(signal.SIGTERM)
                for client in clients:
                    with trio.fail_after(20):
                        with pytest.raises(ConnectionClosed) as closed:
                            while True:
                                await client.ws.get_message()
                    assert closed.value.reason.code == 1001
        assert await trio.to_thread.run_sync(pool.process.wait, 30) == 0
        log = pool.logged()
        assert "SIGTERM received: stopping every worker" in log
        assert "Traceback" not in log


@needs_redis
async def test_a_killed_worker_is_restarted_and_its_clients_reconnect_and_recover(redis):
    with served(redis.url) as pool:
        async with AsyncExitStack() as stack:
            async with clients_on_every_worker(pool, stack) as clients:
                await clients[0].send({"type": "room_message", "room": "r", "data": "seen"})
                await all_get(clients, "seen")  # each client's position in the room
                counts = await pool.per_worker()
                victim = next(pid for pid, count in counts.items() if count)
                survivor_pid = next(pid for pid in counts if pid != victim)
                os.kill(victim, signal.SIGKILL)
                cut: list[Client] = []
                kept: list[Client] = []
                for client in clients:  # the victim's clients see their socket close
                    try:
                        await client.send({"type": "get_rooms"})
                        with trio.fail_after(10):
                            await client.ws.get_message()
                        kept.append(client)
                    except ConnectionClosed:
                        cut.append(client)
                assert cut and kept
                # The parent starts the worker again: a new pid answers beside the survivor.
                async def restarted() -> bool:
                    return set(await pool.per_worker()) - {victim, survivor_pid} != set()
                await eventually(restarted, timeout=60)
                assert f"(pid {victim}) was killed by SIGKILL; starting it again" in pool.logged()
                # Published while the victim's clients were away, then recovered.
                await kept[0].send({"type": "room_message", "room": "r", "data": "while away"})
                await kept[0].recv(timeout=10)
                for client in cut:
                    offset, epoch = client.last_position  # type: ignore[misc]
                    user = client.welcome["data"]["user_id"]
                    async with connect(pool, user) as back:  # type: ignore[arg-type]
                        answer = await back.request({"type": "join_room", "room": "r",
                                                     "data": {"offset": offset, "epoch": epoch}})
                        assert answer["data"]["recovered"] is True, answer
                        frame = await back.recv(timeout=10)
                        assert frame["message"] == "while away"
        assert pool.stop() == 0


@needs_redis
async def test_sigint_to_the_parent_drains_every_worker_too(redis):
    """SIGINT (a Ctrl-C) is passed on as SIGTERM, and no worker is started again."""
    with served(redis.url) as pool:
        async with connect(pool, 1) as client:  # type: ignore[arg-type]
            pool.process.send_signal(signal.SIGINT)
            with trio.fail_after(20), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.ws.get_message()
            assert closed.value.reason.code == 1001
        assert await trio.to_thread.run_sync(pool.process.wait, 30) == 0
        assert "starting it again" not in pool.logged()


# Ports in use -------------------------------------------------------------------------


def _serve(*flags: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "serve", "--log-level", "WARNING", *flags],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET},
    )


@contextmanager
def held_port() -> Iterator[int]:
    """A port a test socket listens on (without SO_REUSEPORT)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("which", ["websocket", "http", "websocket with workers",
                                   "http with workers"])
def test_a_port_in_use_is_one_clear_line_and_exit_1(which: str):
    workers = ["--workers", "2", "--redis-url", "redis://127.0.0.1:1/0"] if "workers" in which \
        else []
    with held_port() as taken:
        ports = (["--port", str(taken), "--http-port", "0"] if which.startswith("websocket")
                 else ["--port", "0", "--http-port", str(taken)])
        result = _serve(*ports, *workers)
    assert result.returncode == 1, result
    assert result.stderr == (
        f"roomcast: cannot listen on 127.0.0.1:{taken}: address already in use\n"
    )


# The outage log ------------------------------------------------------------------------


@needs_redis
async def test_an_outage_noticed_by_a_publish_is_logged_once_and_its_end_once(redis, caplog):
    """Redis refuses writes (NOREPLICAS): a room message's numbering fails first, before
    the presence loop's next renewal (every presence_lease / 3 = 10 s)."""
    caplog.set_level(logging.INFO, logger="roomcast")

    def redis_config(name: str, value: str) -> None:
        subprocess.run([REDIS_CLI, "-p", str(redis.port), "config", "set", name, value],
                       check=True, capture_output=True)

    def lines(text: str) -> int:
        return sum(text in record.getMessage() for record in caplog.records)

    async with running(redis_url=redis.url, presence_lease=30.0) as node:
        await eventually(lambda: node.ready)
        async with connect(node, 1) as client:
            await client.request({"type": "join_room", "room": "r"})
            redis_config("min-replicas-to-write", "1")
            for text in ("hi", "again"):
                await client.send({"type": "room_message", "room": "r", "data": text})
                assert (await client.recv())["message"] == text  # delivered here all the same
                assert lines("Redis unreachable") == 1
            redis_config("min-replicas-to-write", "0")
            await eventually(lambda: node.ready, timeout=30)
            assert lines("Redis unreachable") == 1
            assert lines("connected to Redis") == 2  # at the start, and at the end


async def test_a_presence_round_under_which_an_outage_began_does_not_call_redis_healthy(
        caplog, autojump_clock):
    """Why the outage above was once logged twice: the presence round had written before
    Redis began refusing writes, a publish then failed (the outage's line), and the
    round's last step, a read, went through: the round called Redis healthy
    ("connected"), and the next publish logged the outage again. A round now counts
    only if no outage was noticed while it ran."""
    import coredis

    from roomcast import BackplaneUnavailable
    from roomcast.actors.backplane import Backplane
    from roomcast.actors.registry import Registry

    from .conftest import make_config

    caplog.set_level(logging.INFO, logger="roomcast")
    backplane = Backplane(make_config(redis_url="redis://127.0.0.1:1"),
                          Registry(16, lambda room: None))
    backplane._client = backplane._pubsub = object()
    rounds: list[bool] = []

    class Enough(Exception):
        pass

    async def nothing(client: object) -> None:
        pass

    async def refused(client: object) -> None:
        raise coredis.exceptions.ResponseError("NOREPLICAS Not enough good replicas")

    async def renew(client: object) -> None:
        rounds.append(backplane.healthy)
        if len(rounds) == 3:
            raise Enough  # three rounds tell

    async def hearing(client: object) -> bool:
        if len(rounds) == 2:  # a publish fails while this round's last read is out
            with pytest.raises(BackplaneUnavailable):
                await backplane._redis(refused)
        return True

    backplane._renew = renew  # type: ignore[method-assign]
    backplane._hearing = hearing  # type: ignore[method-assign]
    for step in ("_write_presence", "_renew_rooms", "_check_leases", "_reload_missed"):
        setattr(backplane, step, nothing)
    with pytest.raises(Enough):
        await backplane._keep_presence(backplane._client)
    assert rounds == [False, True, False]
    messages = [record.getMessage() for record in caplog.records]
    assert [m.split(" ")[1] for m in messages if "backplane:" in m] == [
        "connected", "Redis"]


@needs_redis
async def test_an_outage_is_one_line_not_one_per_retry_of_the_redis_client(redis):
    with tempfile.TemporaryFile("w+") as log:
        node = subprocess.Popen(
            [sys.executable, "-m", "roomcast.cli", "serve", "--port", "0", "--http-port=-1",
             "--redis-url", redis.url, "--presence-lease", "2", "--log-level", "INFO"],
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET},
        )

        def logged() -> str:
            log.seek(0)
            return log.read()

        try:
            assert node.stdout is not None and "listening on" in node.stdout.readline()
            await eventually(lambda: "connected to Redis" in logged(), timeout=30)
            redis.stop()
            await eventually(lambda: "Redis unreachable" in logged(), timeout=30)
            redis.start()
            await eventually(lambda: logged().count("connected to Redis") == 2, timeout=30)
            during = logged()
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(timeout=30)
    assert during.count("Redis unreachable") == 1, during
    assert "coredis" not in during, during


# The cluster docs' commands ---------------------------------------------------------------


@needs_redis
def test_the_cluster_docs_two_nodes_start_when_typed_literally(redis):
    """docs/cluster.md's commands, run as written (free ports instead of 8001/8081...)."""
    text = (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")
    block = text.split("Two nodes and a Redis on one machine", 1)[1].split("```")[1]
    lines = [line.rstrip(" &") for line in block.strip().splitlines()]
    env = dict(os.environ)
    commands = []
    ports = {str(p): str(free_port()) for p in (8001, 8002, 8081, 8082)}
    for line in lines:
        if line.startswith("redis-server"):
            continue  # the test's own Redis
        if line.startswith("export "):
            name, value = line.removeprefix("export ").split("=", 1)
            env[name] = value
            continue
        assert line.startswith(".venv/bin/roomcast serve "), line
        line = line.replace("redis://127.0.0.1:6379/0", redis.url)
        for documented, free in ports.items():
            line = line.replace(f" {documented} ", f" {free} ")
        commands.append([sys.executable, "-m", "roomcast.cli", *line.split()[1:]])
    assert len(commands) == 2
    started = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env) for command in commands]
    try:
        for process in started:
            assert process.stdout is not None
            first = process.stdout.readline()
            assert "roomcast listening on" in first, process.stderr.read()  # type: ignore[union-attr]
            assert "HTTP (health, metrics, API) on" in process.stdout.readline()
    finally:
        for process in started:
            process.send_signal(signal.SIGTERM)
        codes = [process.wait(timeout=30) for process in started]
        for process in started:
            process.stdout.close()  # type: ignore[union-attr]
            process.stderr.close()  # type: ignore[union-attr]
    assert codes == [0, 0]

