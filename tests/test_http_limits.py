"""The HTTP port's limits over real sockets: slow headers and bodies are cut after
`http_timeout`, the API key is checked before a body is read, a declared body past the
limit is refused before it is read, `http_max_requests` bounds the requests served at
once, JSON bodies are held to the strict rule, and the demo token route refuses
cross-site requests and foreign `Host` names."""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from roomcast import Service

from .conftest import connect, eventually
from .test_http import AUTH, KEY, http_service

NOTIFY = {"user_id": 1, "message": "hi"}


async def send_head(service: Service, head: str, body: bytes = b"") -> trio.SocketStream:
    """A raw socket to the HTTP port that sent `head` (CRLF line ends) and `body`."""
    assert service.http_port is not None
    stream = await trio.open_tcp_stream("127.0.0.1", service.http_port)
    await stream.send_all(head.replace("\n", "\r\n").encode() + body)
    return stream


def post_head(path: str, length: int, *, key: bool = True, extra: str = "") -> str:
    auth = f"Authorization: Bearer {KEY}\n" if key else ""
    return (f"POST {path} HTTP/1.1\nHost: 127.0.0.1\nContent-Type: application/json\n"
            f"{auth}Content-Length: {length}\n{extra}\n")


async def until_closed(stream: trio.SocketStream, within: float) -> bytes:
    """Everything the server sends until it closes the connection, which it must do
    within `within` seconds."""
    received = b""
    with trio.fail_after(within):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


# slow clients ---------------------------------------------------------------------------


async def test_slow_bodies_are_cut_after_http_timeout_while_others_are_served():
    async with http_service(http_timeout=0.5) as (service, client):
        body = json.dumps(NOTIFY).encode()
        slow = [await send_head(service, post_head("/api/v1/notifications", 60_000), b"{")
                for _ in range(50)]
        # While they hang, the API and the WebSocket port serve everyone else.
        async with connect(service, 1) as user:
            response = await client.post("/api/v1/notifications", content=body, headers=AUTH)
            assert response.status_code == 200 and response.json() == {"delivered": True}
            assert (await user.recv())["message"] == "hi"
        for stream in slow:
            answer = await until_closed(stream, within=5)
            assert status(answer) == 408
            assert b"within 0.5 s" in answer
        assert (await client.get("/healthz")).status_code == 200


async def test_headers_that_never_end_are_cut_after_http_timeout():
    async with http_service(http_timeout=0.5) as (service, client):
        # hypercorn's own keep-alive timeout (5 s) let this hang until now.
        stream = await send_head(service, "POST /api/v1/notifications HTTP/1.1\nHost: x\n")
        assert await until_closed(stream, within=3) == b""
        assert (await client.get("/healthz")).status_code == 200


async def test_the_key_is_checked_before_the_body_is_read():
    async with http_service() as (service, _):
        stream = await send_head(service, post_head("/api/v1/notifications", 60_000, key=False))
        answer = await until_closed(stream, within=3)  # not one byte of the body sent
        assert status(answer) == 401
        assert b"Missing or wrong API key" in answer


async def test_a_declared_body_past_the_limit_is_refused_before_it_is_read():
    async with http_service(max_message_size=1024) as (service, _):
        stream = await send_head(service, post_head("/api/v1/notifications", 1025))
        answer = await until_closed(stream, within=3)
        assert status(answer) == 413
        assert b"larger than 1024 bytes" in answer


async def test_past_http_max_requests_the_port_answers_503_at_once():
    async with http_service(http_max_requests=3) as (service, client):
        body = json.dumps(NOTIFY).encode()
        held = [await send_head(service, post_head("/api/v1/notifications", len(body)), b"{")
                for _ in range(3)]

        async def refused() -> bool:
            response = await client.get("/api/v1/users", headers=AUTH)
            return response.status_code == 503 and "at once" in response.json()["error"]

        await eventually(refused, timeout=5)
        # A held request that finishes frees its place for the next one.
        await held[0].send_all(body[1:])
        with trio.fail_after(5):
            assert status(await held[0].receive_some(65536)) == 200
        response = await client.get("/api/v1/users", headers=AUTH)
        assert response.status_code == 200
        for stream in held:
            await stream.aclose()


# strict JSON ----------------------------------------------------------------------------


async def test_a_lone_surrogate_or_deep_nesting_gets_400_and_nobody_is_affected():
    deep: Any = "x"
    for _ in range(40):
        deep = [deep]
    bodies = [
        b'{"user_id": 1, "message": "\\ud800"}',
        b'{"user_id": 1, "message": "x", "data": {"\\udc00": 1}}',
        json.dumps({"user_id": 1, "message": "x", "data": {"deep": deep}}).encode(),
    ]
    async with http_service() as (service, client), connect(service, 1) as user:
        for body in bodies:
            response = await client.post("/api/v1/notifications", content=body, headers=AUTH)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert "lone surrogate" in error or "nested too deeply" in error, error
        await user.nothing_within(0.05)
        response = await client.post("/api/v1/notifications", json=NOTIFY, headers=AUTH)
        assert response.json() == {"delivered": True}
        assert (await user.recv())["message"] == "hi"


# the demo token -------------------------------------------------------------------------


async def test_the_demo_token_refuses_cross_site_posts_and_foreign_hosts():
    async with http_service(demo=True, api_key=None) as (service, client):
        own = f"http://127.0.0.1:{service.http_port}"

        async def token(**kwargs: Any) -> httpx.Response:
            return await client.post("/demo/token", **kwargs)

        body = json.dumps({"user_id": "ada"})
        # A page elsewhere can POST a form or text/plain without a preflight: refused.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            response = await token(content=body, headers=headers)
            assert response.status_code == 415, content_type
            assert "application/json" in response.json()["error"]
        for origin in ("http://evil.example", "null", f"http://localhost.evil:{service.http_port}"):
            response = await token(json={"user_id": "ada"}, headers={"Origin": origin})
            assert response.status_code == 403, origin
        # DNS rebinding: the browser sends the attacker's name as Host.
        for host in (f"evil.example:{service.http_port}", "rebind.attacker.test"):
            response = await token(json={"user_id": "ada"}, headers={"Host": host})
            assert response.status_code == 403, host
            assert "evil" not in response.text and "attacker" not in response.text
        # The page's own origin, and the loopback names, are served.
        response = await token(json={"user_id": "ada"}, headers={"Origin": own})
        assert response.status_code == 200, response.text
        assert response.json()["ws_url"] == f"ws://127.0.0.1:{service.port}/api/v1/ws"
        for host, name in ((f"localhost:{service.http_port}", "localhost"),
                           ("[::1]", "[::1]"), ("127.0.0.1", "127.0.0.1")):
            response = await token(json={"user_id": "ada"}, headers={
                "Host": host, "Origin": f"http://{host}"})
            assert response.status_code == 200, host
            assert response.json()["ws_url"] == f"ws://{name}:{service.port}/api/v1/ws"
