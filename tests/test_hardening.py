"""Defences at the door and on the clock: origin, connection limits, heartbeats,
token expiry."""

from __future__ import annotations

import base64
import logging
import os
import struct
import time

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from roomcast import CloseCode, mint_token
from roomcast.protocol.wsframe import PING_FRAME

from .conftest import close_code, connect, eventually, running, token_for, ws_url


async def _refused(url: str, **kwargs) -> ConnectionRejected:
    with pytest.raises(ConnectionRejected) as refused:
        async with open_websocket_url(url, **kwargs):
            pass
    return refused.value


async def test_origin_allow_list():
    async with running(allowed_origins=("https://app.example",)) as service:
        url = ws_url(service, f"?token={token_for(1)}")
        refused = await _refused(url, extra_headers=[(b"Origin", b"https://evil.example")])
        assert refused.status_code == 403
        assert b"Origin not allowed" in refused.body
        # Near misses are refused too: the match is exact.
        for near in (b"https://app.example.evil", b"http://app.example", b"https://APP.example"):
            assert (await _refused(url, extra_headers=[(b"Origin", near)])).status_code == 403
        async with open_websocket_url(url, extra_headers=[(b"Origin", b"https://app.example")]):
            pass
        async with open_websocket_url(url):  # no Origin: not a browser, no hijacking risk
            pass


async def test_total_connection_limit_answers_503():
    async with running(max_connections=2) as service:
        async with connect(service, 1), connect(service, 2):
            refused = await _refused(ws_url(service, f"?token={token_for(3)}"))
            assert refused.status_code == 503
        async with connect(service, 3):
            pass


async def test_per_user_connection_limit_answers_429():
    async with running(max_connections_per_user=2) as service:
        async with connect(service, 1), connect(service, 1):
            refused = await _refused(ws_url(service, f"?token={token_for(1)}"))
            assert refused.status_code == 429
            async with connect(service, 2):  # other users are not affected
                pass


async def _raw_upgrade(port: int, token: str) -> trio.SocketStream:
    """A client that completes the handshake and then says nothing at all."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET /api/v1/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    return stream


async def test_silent_client_is_pinged_then_closed_with_4000():
    async with running(ping_interval=0.3, ping_timeout=0.3, close_timeout=0.5) as service:
        stream = await _raw_upgrade(service.port, token_for(1))
        data = bytearray()
        with trio.fail_after(5):
            while True:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
        assert b"\x89\x00" in data  # pinged first
        close_at = data.rindex(b"\x88")
        (code,) = struct.unpack("!H", bytes(data[close_at + 2 : close_at + 4]))
        assert code == CloseCode.HEARTBEAT_TIMEOUT
        assert not service.notifications.is_user_connected(1)


async def test_client_that_answers_pings_stays_connected():
    async with running(ping_interval=0.2, ping_timeout=0.2) as service:
        async with connect(service, 1) as client:
            (connection,) = service.registry.connections_of(1).values()
            deliver, pings = connection.deliver, []

            def counting(frame: bytes) -> bool:
                pings.extend([frame] if frame == PING_FRAME else [])
                return deliver(frame)

            connection.deliver = counting
            # Several intervals: a ping unanswered within ping_timeout would have been a
            # 4000, not another ping (trio-websocket answers each one).
            await eventually(lambda: len(pings) >= 4)
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


async def test_connection_closed_with_4001_when_its_token_expires():
    async with running(jwt_leeway=0.0) as service:
        token = token_for(1, ttl=3)  # `exp` is whole seconds: 2 to 3 s from now
        started = time.monotonic()
        async with connect(service, 1, token=token) as client:
            with trio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.ws.get_message()
            assert closed.value.reason.code == CloseCode.TOKEN_EXPIRED
        assert time.monotonic() - started >= 1.5


async def test_refresh_token_moves_the_expiry(jumping_clock):
    async with running(jwt_leeway=0.0) as service:
        async with connect(service, 1, token=token_for(1, ttl=2)) as client:
            reply = await client.request({"type": "refresh_token", "data": token_for(1, ttl=60)})
            assert reply["message"] == "Token refreshed"
            jumping_clock.jump(3.2)  # past the first token's expiry, on the keeper's clock
            await trio.testing.wait_all_tasks_blocked()  # the keeper has looked
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


async def test_refresh_with_another_users_or_a_bad_token_leaves_the_old_expiry():
    async with running(jwt_leeway=0.0) as service:
        async with connect(service, 1, token=token_for(1, ttl=3)) as client:
            other = await client.request({"type": "refresh_token", "data": token_for(2, ttl=60)})
            assert other["data"] == {"code": "forbidden"}
            bad = await client.request({"type": "refresh_token", "data": token_for(1) + "x"})
            assert bad["data"] == {"code": "invalid_token"}
            assert await close_code(client) == CloseCode.TOKEN_EXPIRED
            assert not service.notifications.is_user_connected(2)


async def test_repeated_bad_frames_close_with_4008():
    async with running(max_strikes=5) as service:
        async with connect(service, 1) as client, connect(service, 2) as bystander:
            for _ in range(4):
                assert (await client.request("not json"))["type"] == "error"
            # A good frame in between resets the count: mistakes are not abuse.
            assert (await client.request({"type": "text", "data": "ok"}))["type"] == "text"
            for _ in range(5):
                await client.send("not json")
            assert await close_code(client) == CloseCode.POLICY
            assert (await bystander.request({"type": "text", "data": "x"}))["type"] == "text"


async def test_flood_past_the_rate_limit_is_answered_then_closed():
    async with running(rate_limit=5.0, rate_burst=5, max_strikes=1000) as service:
        async with connect(service, 1) as client:
            for i in range(30):
                await client.send({"type": "text", "data": str(i)})
            replies = [await client.recv() for _ in range(30)]
            echoed = [r for r in replies if r["type"] == "text"]
            limited = [r for r in replies if r["data"] == {"code": "rate_limited"}]
            assert 5 <= len(echoed) < 30 and len(echoed) + len(limited) == 30
            assert [r["message"] for r in echoed] == sorted(
                (r["message"] for r in echoed), key=lambda m: int(m.split()[-1])
            )
    async with running(rate_limit=5.0, rate_burst=5, max_strikes=10) as service:
        async with connect(service, 1) as client:
            for i in range(40):
                await client.send({"type": "text", "data": str(i)})
            assert await close_code(client) == CloseCode.POLICY


async def test_token_expiry_connect_checks_exp_at_the_handshake_only(jumping_clock):
    """`token_expiry = connect` (the FastAPI design's behaviour): no 4001 once open, but
    an expired token is still refused at the handshake, and room tokens still expire."""
    async with running(jwt_leeway=0.0, token_expiry="connect", open_rooms=()) as service:
        config = service.config
        async with connect(service, 1, token=token_for(1, ttl=2)) as client:
            room = mint_token(config, 1, ttl=30, extra={"room": "project_7"})
            joined = await client.request({"type": "join_room", "room": "project_7", "token": room})
            assert joined["message"] == "Joined room: project_7"
            jumping_clock.jump(60)  # far past both tokens' expiry, on the keeper's clock
            left = await client.recv()
            assert left["data"]["code"] == "room_token_expired"
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"
        refused = await _refused(ws_url(service, f"?token={token_for(1, ttl=-60)}"))
        assert refused.status_code == 403


async def test_a_refused_origin_is_logged_once_at_warning_escaped(caplog):
    """The page only sees 1006: the operator must see which Origin was refused, once,
    escaped and cut short (an Origin is the peer's text)."""
    async with running(allowed_origins=("https://app.example",)) as service:
        url = ws_url(service, f"?token={token_for(1)}")
        with caplog.at_level(logging.WARNING, logger="roomcast.actors.gateway"):
            for origin in (b"http://localhost:5173", b"http://localhost:5173",
                           b"https://evil.example\x1b[2J" + b"x" * 500):
                await _refused(url, extra_headers=[(b"Origin", origin)])
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(lines) == 2, lines
        assert "'http://localhost:5173'" in lines[0] and "--allowed-origins" in lines[0]
        assert "\x1b" not in lines[1] and "\\x1b" in lines[1] and len(lines[1]) < 400
