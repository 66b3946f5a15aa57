"""The WebSocket port's defences, over real sockets: pending handshakes bounded in total
and per address, apart from the authenticated connections; the descriptor limit; a
refused Origin in the log; the configured origins checked at startup."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from .conftest import connect, eventually, make_config, running

ROOT = str(Path(__file__).resolve().parent.parent)

# Every 127.x.y.z address is the loopback interface (on Linux): the silent sockets come
# from addresses of their own, as an attacker's would, and the real client from 127.0.0.1.
ATTACKERS = [f"127.0.0.{n}" for n in range(2, 8)]


async def silent_socket(port: int, local_address: str) -> trio.SocketStream:
    """A TCP connection that never says a word."""
    return await trio.open_tcp_stream("127.0.0.1", port, local_address=local_address)


async def closed_at_once(stream: trio.SocketStream, within: float = 2.0) -> bool:
    """True when the service ends the connection (FIN or RST) within `within` seconds
    without sending a byte."""
    with trio.move_on_after(within):
        try:
            data = await stream.receive_some(1024)
        except trio.BrokenResourceError:
            return True
        assert data == b"", data
        return True
    return False


async def test_silent_sockets_never_lock_out_a_real_client():
    settings = dict(max_connections=50, max_handshakes=20, max_handshakes_per_address=10,
                    handshake_timeout=30.0)
    async with running(**settings) as service:
        gateway, failures = service.gateway, service.metrics.handshake_failures
        silent: list[trio.SocketStream] = []
        for address in ATTACKERS:  # 60 silent sockets, 10 from each address
            for _ in range(10):
                silent.append(await silent_socket(service.port, address))
        await eventually(lambda: failures["too_many_handshakes"] == 40)
        assert gateway.admission.pending == 20  # the 20 newest
        # The 11th from one address is closed at once, without an answer.
        eleventh = await silent_socket(service.port, ATTACKERS[-1])
        assert await closed_at_once(eleventh)
        assert failures["too_many_handshakes_from_address"] == 1
        # A real client connects, well within the handshake timeout the silent ones hold.
        with trio.fail_after(2):
            async with connect(service, 1) as client:
                assert client.welcome["data"]["user_id"] == 1
                assert gateway.admission.pending == 19  # it evicted one, then left the count
        for stream in [*silent, eleventh]:
            await stream.aclose()
        # Every entry released: no count, no address left behind.
        await eventually(lambda: gateway.open_sockets == 0)
        assert gateway.admission.pending == 0 and gateway.admission.addresses == 0


async def test_authenticated_connections_are_limited_apart_from_pending_ones():
    # 60 silent sockets and max_connections=50: before, every accepted socket counted
    # against max_connections and the real client got 503.
    async with running(max_connections=50, max_handshakes_per_address=0,
                       handshake_timeout=30.0) as service:
        silent = [await silent_socket(service.port, "127.0.0.2") for _ in range(60)]
        await eventually(lambda: service.gateway.open_sockets == 60)
        with trio.fail_after(2):
            async with connect(service, 1):
                pass
        for stream in silent:
            await stream.aclose()


async def test_handshake_refusals_are_one_log_line_with_a_count(caplog):
    caplog.set_level(logging.INFO, logger="roomcast")
    async with running(max_handshakes=5, max_handshakes_per_address=2,
                       handshake_timeout=30.0) as service:
        streams = [await silent_socket(service.port, "127.0.0.2") for _ in range(30)]
        failures = service.metrics.handshake_failures
        await eventually(lambda: failures["too_many_handshakes_from_address"] == 28)
        for stream in streams:
            await stream.aclose()
    limit_lines = [r.getMessage() for r in caplog.records if "handshake limits" in r.getMessage()]
    assert len(limit_lines) == 1, limit_lines
    assert "127.0.0.2" in limit_lines[0]


@pytest.mark.parametrize("stop", ["drain", "timeout"])
async def test_a_pending_handshake_cut_short_is_released(stop):
    async with running(handshake_timeout=0.5, max_handshakes=3) as service:
        streams = [await silent_socket(service.port, "127.0.0.2") for _ in range(3)]
        await eventually(lambda: service.gateway.admission.pending == 3)
        if stop == "drain":
            await service.gateway.drain(1.0)
        await eventually(lambda: service.gateway.admission.pending == 0)
        assert service.gateway.admission.addresses == 0
        for stream in streams:
            await stream.aclose()


# --- the descriptor limit --------------------------------------------------------------


def test_settings_past_the_descriptor_limit_are_warned_about_at_start(caplog):
    from roomcast.limits import fit_descriptors

    caplog.set_level(logging.WARNING, logger="roomcast")
    limit = fit_descriptors(make_config(max_connections=10**9))
    assert limit is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "descriptor limit" in warnings[0], warnings
    assert "max_connections 1000000000" in warnings[0]
    caplog.clear()
    fit_descriptors(make_config(max_connections=10, max_handshakes=10))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_opening_the_service_warns_when_the_settings_do_not_fit(caplog):
    caplog.set_level(logging.WARNING, logger="roomcast")
    async with running(max_connections=10**9):
        pass
    assert any("descriptor limit" in r.getMessage() for r in caplog.records)


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one():
    # In a process of its own: the limit is the whole process's.
    script = (
        "import resource, sys\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))\n"
        "from roomcast.config import Config\n"
        "from roomcast.service import open_service\n"
        "import trio\n"
        "async def main():\n"
        "    async with open_service(Config(port=0, http_port=-1, jwt_secret='x' * 32)):\n"
        "        pass\n"
        "trio.run(main)\n"
        "print(low, *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=60, env={**os.environ, "PYTHONPATH": ROOT})
    low, soft, hard = (int(n) for n in out.stdout.split())
    if hard == resource.RLIM_INFINITY:
        assert soft >= low
    else:
        assert soft == hard, (low, soft, hard)


@pytest.mark.parametrize(
    ("soft", "hard", "wanted"),
    [(1024, 524288, 524288), (4096, 4096, 4096), (1024, -1, 1 << 20), (1 << 21, -1, 1 << 21),
     (-1, -1, -1)],
)
def test_the_soft_limit_asked_for(soft, hard, wanted):
    from roomcast.limits import raised_soft_limit

    assert raised_soft_limit(soft, hard, infinity=-1) == wanted


# --- origins -----------------------------------------------------------------------------


async def test_a_refused_origin_is_logged_quoted_and_truncated(caplog):
    from trio_websocket import ConnectionRejected, open_websocket_url

    from .conftest import token_for, ws_url

    caplog.set_level(logging.INFO, logger="roomcast")
    hostile = "https://evil.example\x1b[31m\u202e" + "x" * 500
    async with running(allowed_origins=("https://app.example",)) as service:
        url = ws_url(service, f"?token={token_for(1)}")
        with pytest.raises(ConnectionRejected) as refused:
            async with open_websocket_url(url, extra_headers=[(b"Origin",
                                                              hostile.encode("utf-8"))]):
                pass
        assert refused.value.status_code == 403
    (line,) = [r.getMessage() for r in caplog.records if "403 origin" in r.getMessage()]
    assert "evil.example" in line, line
    assert line.isascii() and line.isprintable(), line  # no escape sequence, no bidi
    assert "x" * 101 not in line and "characters)" in line, line


@pytest.mark.parametrize(
    ("configured", "allowed"),
    [
        ("HTTPS://App.Example", "https://app.example"),
        ("https://app.example:443", "https://app.example"),
        ("Capacitor://LOCALHOST:8080", "capacitor://localhost:8080"),
    ],
)
def test_allowed_origins_are_normalised_as_browsers_send_them(configured, allowed):
    assert make_config(allowed_origins=configured).allowed_origins == (allowed,)


@pytest.mark.parametrize(
    ("configured", "why"),
    [
        ("https://app.example/", "trailing slash"),
        ("https://app.example/app", "path"),
        ("app.example", "scheme://host"),
        ("*", "scheme://host"),
        ("https://*.app.example", "wildcard"),
        ("null", "sandboxed"),
        ("https://bücher.example", "punycode"),
    ],
)
def test_allowed_origins_that_could_never_match_are_refused_at_startup(configured, why):
    with pytest.raises(ValueError, match=why) as refused:
        make_config(allowed_origins=f"https://ok.example,{configured}")
    assert repr(configured) in str(refused.value)


async def test_an_upper_case_origin_setting_lets_the_browser_in():
    from trio_websocket import open_websocket_url

    from .conftest import token_for, ws_url

    async with running(allowed_origins="HTTPS://App.Example/".rstrip("/")) as service:
        url = ws_url(service, f"?token={token_for(1)}")
        async with open_websocket_url(url, extra_headers=[(b"Origin", b"https://app.example")]):
            pass
