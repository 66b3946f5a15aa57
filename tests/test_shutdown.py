"""Shutdown: every client is told 1001, in-process and through the CLI's signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from roomcast import CloseCode

from .conftest import SECRET, connect, running, token_for


async def test_leaving_open_service_closes_every_client_with_1001():
    async with running() as service:
        async with connect(service, 1) as a, connect(service, 1) as b, connect(service, 2) as c:
            async with trio.open_nursery() as nursery:
                codes: list[int] = []

                async def wait_close(client, task_status=trio.TASK_STATUS_IGNORED):
                    task_status.started()
                    try:
                        await client.ws.get_message()
                    except ConnectionClosed as closed:
                        codes.append(closed.reason.code)

                for client in (a, b, c):
                    await nursery.start(wait_close, client)
                with trio.fail_after(5):
                    await service.gateway.drain(5.0)
            assert codes == [CloseCode.GOING_AWAY] * 3
            assert service.notifications.get_connected_users() == set()


async def test_the_port_is_free_once_the_service_has_stopped(monkeypatch):
    closed: list[int] = []
    close = trio.SocketListener.aclose

    async def recording_close(listener: trio.SocketListener) -> None:
        closed.append(listener.socket.getsockname()[1])
        await close(listener)

    monkeypatch.setattr(trio.SocketListener, "aclose", recording_close)
    async with running() as service, connect(service, 1):
        port = service.port
    # The listener is closed, not left to the garbage collector (which may keep the
    # port taken for as long as anything refers to it): nothing answers there, and a
    # new service listens on the same port at once.
    assert port in closed
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    async with running(port=port) as again, connect(again, 1) as client:
        assert again.port == port
        assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


async def test_handshake_while_draining_gets_503():
    from trio_websocket import ConnectionRejected

    async with running() as service:
        service.gateway.draining = True
        token = token_for(1)
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(
                f"ws://127.0.0.1:{service.port}/api/v1/ws?token={token}"
            ):
                pass
        assert refused.value.status_code == 503


def _cli(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "roomcast.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET, "ROOMCAST_HTTP_PORT": "-1", **env},
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_cli_serve_exits_0_on_signal_and_closes_clients_with_1001(signum):
    process = _cli("serve", "--port", "0")
    try:
        line = await trio.to_thread.run_sync(process.stdout.readline)
        assert "listening on ws://" in line, line
        url = line.split("listening on ", 1)[1].strip()
        async with open_websocket_url(f"{url}?token={token_for(5)}") as ws:
            welcome = json.loads(await ws.get_message())
            assert welcome["data"]["user_id"] == 5
            process.send_signal(signum)
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == CloseCode.GOING_AWAY
        code = await trio.to_thread.run_sync(lambda: process.wait(timeout=10))
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    stderr = process.stderr.read()
    assert SECRET not in stderr


def test_cli_token_mints_a_token_the_service_accepts():
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "token", "--user", "42", "--ttl", "60",
         "--scope", "roomcast:broadcast"],
        capture_output=True, text=True, env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET},
        check=True,
    )
    import jwt

    claims = jwt.decode(result.stdout.strip(), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "42"
    assert claims["scope"] == "roomcast:broadcast"
    assert claims["exp"] - claims["iat"] == 60


def test_cli_refuses_to_serve_without_a_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    result = subprocess.run(
        [sys.executable, "-m", "roomcast.cli", "serve", "--port", "0"],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 2
    assert "jwt-secret" in result.stderr
