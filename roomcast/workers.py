"""`roomcast serve --workers N`: N node processes on the same ports, under one parent.

The parent serves nothing itself. It reserves the WebSocket port and the HTTP port (a
socket bound with SO_REUSEPORT that never listens: port 0 becomes one fixed port that
the workers share, and no other program takes it while a worker restarts), then runs N
workers: the same `roomcast serve` command with those ports and `WORKER_ENV` set. Each
worker is a whole node of the cluster on `redis_url` that listens on both ports with
SO_REUSEPORT, so the kernel spreads new connections across the workers.

A worker that dies is started again, unless workers died more often than
`WORKER_RESTARTS` allows (`protocol.restarts`): then the parent stops the others and
fails. SIGTERM or SIGINT to the parent is forwarded as SIGTERM to every worker, which
closes its clients with 1001; the parent returns once they all exited.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack

import trio

from roomcast.config import Config
from roomcast.protocol.restarts import RestartPolicy, Restarts
from roomcast.service import cannot_listen

log = logging.getLogger(__name__)

WORKER_ENV = "ROOMCAST_WORKER"
"""Set by the parent in each worker's environment: the worker's index, from 0."""

WORKER_RESTARTS = RestartPolicy(intensity=5, period=60.0)
"""Worker exits the parent restarts within a minute; one more and it gives up. A
process takes about a second to start, so the actors' policy (10 within 5 s) would
restart a worker that cannot start forever."""

_READY = "listening on "  # the line a worker prints on stdout once it accepts clients


class WorkersFailed(Exception):
    """Workers died more often than `WORKER_RESTARTS` allows; the others were stopped."""


def worker_index() -> int | None:
    """This process's index when it is a worker of `roomcast serve --workers N`."""
    value = os.environ.get(WORKER_ENV)
    return None if value is None else int(value)


async def stop_when_orphaned(scope: trio.CancelScope) -> None:
    """In a worker: cancel `scope` (a drain with 1001) once the parent is gone, even
    killed by SIGKILL, so that no worker serves on alone. (Not PR_SET_PDEATHSIG: it
    fires when the parent's thread that started the worker ends, and Trio starts
    processes from threads of its cache.)"""
    parent = os.getppid()
    while os.getppid() == parent:
        await trio.sleep(1.0)  # the poll interval: a new parent is not an event to wait on
    log.error("the parent process %d is gone: stopping", parent)
    scope.cancel()


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind `host`:`port` with SO_REUSEPORT without listening: port 0 becomes a port the
    workers can share; a port another program holds is refused here, once."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise cannot_listen(host, port, error) from None
    return sock


def _exit_text(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class Workers:
    """The running workers and the parent's decisions about them."""

    def __init__(self, config: Config, command: Sequence[str],
                 policy: RestartPolicy = WORKER_RESTARTS) -> None:
        self.config = config
        self.command = list(command)
        self.restarts = Restarts(policy)
        self.processes: dict[int, trio.Process] = {}
        self.stopping = False
        self.failure: str | None = None
        self.done = trio.Event()  # a signal, or workers that keep dying
        self.all_ready = trio.Event()  # every worker accepted clients once
        self._ready: set[int] = set()
        self._exited = trio.Event()

    async def keep_running(self, index: int) -> None:
        """Run worker `index`, again each time it dies, until the parent stops."""
        while not self.stopping:
            # A session of its own: a Ctrl-C in the terminal reaches the parent alone,
            # which passes it on as SIGTERM (else a worker could exit before the parent
            # knows it is stopping, and be started again).
            process = await trio.lowlevel.open_process(
                self.command, stdout=subprocess.PIPE, start_new_session=True,
                env={**os.environ, WORKER_ENV: str(index)},
            )
            self.processes[index] = process
            log.info("worker %d started (pid %d)", index, process.pid)
            if self.stopping:  # the stop came while it was starting
                process.send_signal(signal.SIGTERM)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_output, index, process)
                code = await process.wait()
            del self.processes[index]
            if self.stopping:
                break
            self.restarts = self.restarts.after_failure(trio.current_time())
            if self.restarts.exhausted:
                policy = self.restarts.policy
                self.failure = (
                    f"workers keep dying: {len(self.restarts.recent)} exits within "
                    f"{policy.period:g} s (worker {index} {_exit_text(code)}); "
                    "stopped the others"
                )
                self.done.set()
                break
            log.error("worker %d (pid %d) %s; starting it again", index, process.pid,
                      _exit_text(code))
        if not self.processes:
            self._exited.set()

    async def _read_output(self, index: int, process: trio.Process) -> None:
        """Read the worker's stdout to its end (so that it never blocks on a full pipe);
        its 'listening on' line says it accepts clients."""
        assert process.stdout is not None
        told = False
        pending = b""
        async for chunk in process.stdout:
            pending += chunk
            if not told and _READY.encode() in pending:
                told = True
                self._ready.add(index)
                if len(self._ready) == self.config.workers:
                    self.all_ready.set()
            pending = pending[-256:]

    def stop(self) -> None:
        """Forward a SIGTERM to every worker: each closes its clients with 1001."""
        self.stopping = True
        self.done.set()
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)

    async def wait_exited(self, grace: float) -> None:
        """Wait until every worker exited; past `grace` seconds, SIGKILL the rest."""
        if not self.processes:
            return
        with trio.move_on_after(grace):
            await self._exited.wait()
            return
        for index, process in self.processes.items():
            log.error("worker %d (pid %d) did not stop within %.0f s: killed",
                      index, process.pid, grace)
            process.kill()
        await self._exited.wait()


async def supervise(config: Config, argv: Sequence[str]) -> None:
    """Run `config.workers` workers of `roomcast *argv` (`serve ...`) until SIGTERM or
    SIGINT (then return once every worker drained) or until they keep dying
    (`WorkersFailed`). `CannotListen` when a port is taken."""
    with ExitStack() as reservations:
        ws = reservations.enter_context(reserve_port(config.host, config.port))
        http_port = config.http_port
        if http_port >= 0:
            http = reservations.enter_context(reserve_port(config.host, http_port))
            http_port = http.getsockname()[1]
        ws_port = ws.getsockname()[1]
        command = [sys.executable, "-m", "roomcast.cli", *argv,
                   "--port", str(ws_port), "--http-port", str(http_port)]
        workers = Workers(config, command)
        grace = config.shutdown_timeout + config.close_timeout + 5.0
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for index in range(config.workers):
                    nursery.start_soon(workers.keep_running, index)

                async def announce() -> None:
                    await workers.all_ready.wait()
                    count = f"({config.workers} workers)"
                    tls = "" if config.tls_cert is None else "s"
                    print(f"roomcast listening on ws{tls}://{config.host}:{ws_port}"
                          f"{config.path} {count}", flush=True)
                    if http_port >= 0:
                        print(f"HTTP (health, metrics, API) on "
                              f"http{tls}://{config.host}:{http_port}/ {count}", flush=True)

                async def stop_on_signal() -> None:
                    async for signum in signals:
                        log.info("%s received: stopping every worker",
                                 signal.Signals(signum).name)
                        break
                    workers.stop()

                nursery.start_soon(announce)
                nursery.start_soon(stop_on_signal)
                await workers.done.wait()
                workers.stop()
                await workers.wait_exited(grace)
                nursery.cancel_scope.cancel()
    if workers.failure is not None:
        raise WorkersFailed(workers.failure)
