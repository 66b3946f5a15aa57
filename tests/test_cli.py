"""The `roomcast` command: `notify` with its own flags only and both ways to reach the
service, each against a real running service (one node's HTTP API, a cluster's Redis);
and a prompt exit when run as the program."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest
import trio

from roomcast.cli import main

from .cluster import needs_redis
from .conftest import connect, running

KEY = "cli-notify-test-key"


@pytest.fixture(autouse=True)
def no_way_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROOMCAST_REDIS_URL", "ROOMCAST_API_URL", "ROOMCAST_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def test_notify_offers_only_its_own_flags() -> None:
    result = subprocess.run([sys.executable, "-m", "roomcast.cli", "notify", "--help"],
                            capture_output=True, text=True, timeout=60, check=True)
    for flag in ("--redis-url", "--redis-sharded", "--redis-prefix", "--api-url",
                 "--api-key", "--user", "--room", "--broadcast", "--message", "--level"):
        assert flag in result.stdout, flag
    for flag in ("--demo", "--max-connections", "--port", "--jwt-secret", "--workers"):
        assert flag not in result.stdout, flag


@pytest.mark.parametrize(("way", "error"), [
    ([], "say how to reach the service"),
    (["--redis-url", "redis://127.0.0.1:1", "--api-url", "http://127.0.0.1:1"], "not both"),
    (["--api-url", "http://127.0.0.1:1"], "needs the node's API key"),
    (["--api-url", "127.0.0.1:8080", "--api-key", KEY], "http://HOST:PORT"),
])
def test_notify_without_exactly_one_way_says_so(
    way: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["notify", "--broadcast", "--message", "x", *way]) == 2
    assert error in capsys.readouterr().err


async def test_notify_reaches_one_node_through_its_http_api(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(http_port=0, api_key=KEY) as service:
        api = f"http://127.0.0.1:{service.http_port}"
        async with connect(service, 42) as client:
            argv = ["notify", "--user", "42", "--message", "Export ready", "--level",
                    "success", "--data", '{"id": 7}', "--api-url", api, "--api-key", KEY]
            assert await trio.to_thread.run_sync(main, argv) == 0
            assert capsys.readouterr().out.strip() == "true"
            frame = await client.recv()
            assert frame["message"] == "Export ready"
            assert frame["data"] == {"id": 7, "level": "success", "notification": True}
        wrong = ["notify", "--broadcast", "--message", "x", "--api-url", api,
                 "--api-key", "not-the-key"]
        assert await trio.to_thread.run_sync(main, wrong) == 1
        assert "401" in capsys.readouterr().err


@needs_redis
async def test_notify_reaches_a_cluster_through_redis(redis, capsys) -> None:
    async with running(redis_url=redis.url) as service, connect(service, 42) as client:
        await client.request({"type": "join_room", "room": "jobs"})
        argv = ["notify", "--room", "jobs", "--message", "New result", "--redis-url", redis.url]
        assert await trio.to_thread.run_sync(main, argv) == 0
        assert capsys.readouterr().out.strip() == "1"
        assert (await client.recv())["message"] == "New result"


def test_the_command_run_as_the_program_freezes_its_objects_for_a_prompt_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """After SIGTERM the process spent 0.7-1.6 s in the interpreter's teardown (its full
    garbage collections over every imported object) once every client was closed:
    run as the program, the command freezes those objects first. Called with an argv
    (as a library, in a test) it leaves the caller's collector alone."""
    before = gc.get_freeze_count()
    try:
        assert main(["token", "--user", "1", "--jwt-secret", "x" * 32]) == 0
        assert gc.get_freeze_count() == before
        monkeypatch.setattr(sys, "argv", ["roomcast", "token", "--user", "1",
                                          "--jwt-secret", "x" * 32])
        assert main() == 0
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
    assert capsys.readouterr().out.count(".") == 4  # two JWTs printed
