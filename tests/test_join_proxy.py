"""The HTTP join authorizer (roomcast/join_proxy.py) against a real HTTP server on a
loopback port of its own: what it sends, what each answer means, its time bound and
its cache. The server parses requests with h11 and answers as each test says; the
odd answers (never, trickled, cut, endless) are written as raw bytes."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

import attrs
import h11
import httpx
import pytest
import trio
import trio.testing

from roomcast import join_proxy
from roomcast.auth import Principal
from roomcast.join_proxy import HttpJoinAuthorizer, principal_claims

from .conftest import make_config


@attrs.frozen
class Request:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = Callable[[Request, trio.SocketStream], Awaitable[bool]]
"""How the server answers a request: it writes to the stream and says whether the
connection may serve another request (True only after a whole, h11-framed answer)."""


def status(code: int, body: bytes = b"") -> Answer:
    async def answer(request: Request, stream: trio.SocketStream) -> bool:
        head = f"HTTP/1.1 {code} X\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        await stream.send_all(head + body)
        return True

    return answer


@attrs.define
class AuthorizerServer:
    answer: Answer
    port: int = 0
    requests: list[Request] = attrs.Factory(list)
    request_arrived: trio.Event = attrs.Factory(trio.Event)
    connections: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/join"

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            connection = h11.Connection(h11.SERVER)
            while True:
                request = await self._read_request(connection, stream)
                if request is None:
                    return
                self.requests.append(request)
                self.request_arrived.set()
                try:
                    if not await self.answer(request, stream):
                        return
                except trio.BrokenResourceError:  # the client went: its business
                    return
                # the answer was written raw: tell h11 the cycle is over
                connection = h11.Connection(h11.SERVER)

    @staticmethod
    async def _read_request(
        connection: h11.Connection, stream: trio.SocketStream
    ) -> Request | None:
        start: h11.Request | None = None
        body = b""
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return None
                if not data:
                    return None
                connection.receive_data(data)
            elif isinstance(event, h11.Request):
                start = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert start is not None
                headers = {k.decode(): v.decode() for k, v in start.headers}
                return Request(start.method.decode(), start.target.decode(), headers, body)
            else:
                return None


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[AuthorizerServer]:
    server = AuthorizerServer(answer)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
        )
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def authorizer(url: str, **settings: Any) -> AsyncIterator[HttpJoinAuthorizer]:
    config = make_config(join_url=url, **settings)
    authorize = HttpJoinAuthorizer(config)
    try:
        yield authorize
    finally:
        await authorize.aclose()


@attrs.frozen
class PrincipalWithClaims(Principal):
    """A principal as it will be once it carries its token's claims."""

    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False)


ALICE = Principal(user_id="alice")


# What is sent, what the answers mean -----------------------------------------------------


@pytest.mark.parametrize("code", [200, 204])
async def test_a_2xx_allows_and_the_request_says_who_where_and_the_claims(code: int):
    claims = {"sub": "7", "rooms": ["team_*"], "plan": {"tier": "pro", "seats": 3}}
    async with serving(status(code)) as server, authorizer(server.url) as authorize:
        # read-only, as a frozen Principal may hold them
        principal = PrincipalWithClaims(user_id=7, claims=MappingProxyType(claims))
        assert await authorize(principal, "team_42") is True
    [request] = server.requests
    assert (request.method, request.target) == ("POST", "/join")
    assert request.json() == {"user_id": 7, "room": "team_42", "claims": claims}
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("roomcast/")


async def test_a_principal_without_claims_sends_empty_claims():
    async with serving(status(200)) as server, authorizer(server.url) as authorize:
        assert await authorize(Principal(user_id=42), "r") is True
    assert server.requests[0].json() == {"user_id": 42, "room": "r", "claims": {}}
    assert principal_claims(Principal(user_id=42)) == {}


@pytest.mark.parametrize("code", [403, 401, 404, 500, 503])
async def test_any_other_status_refuses(code: int):
    async with serving(status(code, b'{"error": "no"}')) as server, \
            authorizer(server.url) as authorize:
        assert await authorize(ALICE, "r") is False
    assert len(server.requests) == 1


async def test_a_redirect_is_not_followed_and_refuses():
    async def redirect(request: Request, stream: trio.SocketStream) -> bool:
        if request.target == "/join":
            await stream.send_all(
                b"HTTP/1.1 307 X\r\nlocation: /allow\r\ncontent-length: 0\r\n\r\n"
            )
        else:
            await status(200)(request, stream)
        return True

    async with serving(redirect) as server, authorizer(server.url) as authorize:
        assert await authorize(ALICE, "r") is False
    assert [r.target for r in server.requests] == ["/join"]


async def test_an_endless_body_is_not_read_only_the_status_counts():
    sent = 0
    total = 256 * 1024 * 1024
    stopped = trio.Event()

    async def endless(request: Request, stream: trio.SocketStream) -> bool:
        nonlocal sent
        try:
            await stream.send_all(f"HTTP/1.1 200 X\r\ncontent-length: {total}\r\n\r\n".encode())
            chunk = b"x" * 65536
            while sent < total:
                await stream.send_all(chunk)
                sent += len(chunk)
        finally:
            stopped.set()
        return False

    async with serving(endless) as server, authorizer(server.url) as authorize:
        assert await authorize(ALICE, "r") is True
        await stopped.wait()  # the client hung up, or took it all
    # what the kernel buffers held, not the 256 MiB
    assert sent < 32 * 1024 * 1024


# Failures raise; the time bound -----------------------------------------------------------


async def test_a_server_that_closes_the_connection_raises():
    async def hang_up(request: Request, stream: trio.SocketStream) -> bool:
        await stream.aclose()
        return False

    async with serving(hang_up) as server, authorizer(server.url) as authorize:
        with pytest.raises(httpx.HTTPError):
            await authorize(ALICE, "r")


async def test_nothing_listening_raises():
    async with serving(status(200)) as server:
        url = server.url
    async with authorizer(url) as authorize:
        with pytest.raises(httpx.ConnectError):
            await authorize(ALICE, "r")


async def test_a_server_that_never_answers_is_given_up_on_at_join_timeout(
    jumping_clock: trio.testing.MockClock,
):
    async def never(request: Request, stream: trio.SocketStream) -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with serving(never) as server, authorizer(server.url, join_timeout=100.0) as authorize:

        async def then_jump() -> None:
            await server.request_arrived.wait()
            jumping_clock.jump(99.0)
            await trio.testing.wait_all_tasks_blocked()
            assert not done  # still waiting before join_timeout
            jumping_clock.jump(1.0)

        done = False
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(then_jump)
            with pytest.raises((trio.TooSlowError, httpx.TimeoutException)):
                await authorize(ALICE, "r")
            done = True
        assert 100.0 <= trio.current_time() - start < 101.0


async def test_an_answer_trickled_byte_by_byte_cannot_hold_the_join_past_join_timeout(
    jumping_clock: trio.testing.MockClock,
):
    """Each byte comes well within httpx's own read timeout; only the bound on the
    whole exchange stops it."""
    answer = b"HTTP/1.1 200 X\r\ncontent-length: 0\r\n\r\n"
    byte_sent = trio.Event()
    may_send = trio.Event()

    async def trickle(request: Request, stream: trio.SocketStream) -> bool:
        nonlocal byte_sent, may_send
        for i in range(len(answer)):
            await stream.send_all(answer[i : i + 1])
            byte_sent.set()
            await may_send.wait()
            may_send = trio.Event()
        return True

    async with serving(trickle) as server, authorizer(server.url, join_timeout=10.0) as authorize:

        async def drip() -> None:
            nonlocal byte_sent
            while True:
                await byte_sent.wait()
                byte_sent = trio.Event()
                await trio.testing.wait_all_tasks_blocked()
                jumping_clock.jump(4.0)  # less than the 10 s read timeout
                may_send.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drip)
            with pytest.raises(trio.TooSlowError):
                await authorize(ALICE, "r")
            nursery.cancel_scope.cancel()


# The cache ------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "allowed"), [(200, True), (403, False)])
async def test_an_answer_is_reused_for_the_same_user_and_room(code: int, allowed: bool):
    async with serving(status(code)) as server, authorizer(server.url) as authorize:
        assert await authorize(ALICE, "r") is allowed
        assert await authorize(ALICE, "r") is allowed
        assert len(server.requests) == 1
        assert await authorize(ALICE, "other") is allowed
        assert await authorize(Principal(user_id="bob"), "r") is allowed
        assert len(server.requests) == 3


async def test_a_cached_answer_expires_after_join_cache_ttl(jumping_clock: trio.testing.MockClock):
    async with serving(status(200)) as server, \
            authorizer(server.url, join_cache_ttl=5.0) as authorize:
        await authorize(ALICE, "r")
        jumping_clock.jump(4.9)
        await authorize(ALICE, "r")
        assert len(server.requests) == 1
        jumping_clock.jump(0.2)
        await authorize(ALICE, "r")
        assert len(server.requests) == 2


async def test_a_ttl_of_zero_asks_every_time():
    async with serving(status(200)) as server, \
            authorizer(server.url, join_cache_ttl=0.0) as authorize:
        for _ in range(3):
            assert await authorize(ALICE, "r") is True
        assert len(server.requests) == 3


async def test_one_connection_serves_join_after_join():
    async with serving(status(204)) as server, \
            authorizer(server.url, join_cache_ttl=0.0) as authorize:
        for _ in range(3):
            assert await authorize(ALICE, "r") is True
    assert (len(server.requests), server.connections) == (3, 1)


async def test_a_failure_is_not_cached():
    async def fail_once(request: Request, stream: trio.SocketStream) -> bool:
        if len(server.requests) == 1:
            await stream.aclose()
            return False
        return await status(200)(request, stream)

    async with serving(fail_once) as server, authorizer(server.url) as authorize:
        with pytest.raises(httpx.HTTPError):
            await authorize(ALICE, "r")
        assert await authorize(ALICE, "r") is True


async def test_the_cache_stays_bounded_under_distinct_rooms(monkeypatch: pytest.MonkeyPatch):
    """20,000 distinct rooms against a bound of 10,000 would take 20,000 requests: the
    same rule is held here at a bound of 100 for 200 rooms (tests/test_ttlcache.py runs
    the 20,000 against the rule itself)."""
    monkeypatch.setattr(join_proxy, "CACHE_ENTRIES", 100)
    async with serving(status(200)) as server, authorizer(server.url) as authorize:
        for i in range(200):
            await authorize(ALICE, f"room{i}")
            assert len(authorize.cache) <= 100
        assert len(authorize.cache) == 100
        await authorize(ALICE, "room199")  # kept
        assert len(server.requests) == 200
        await authorize(ALICE, "room0")  # the oldest went
        assert len(server.requests) == 201


# Secrets and the client -------------------------------------------------------------------


async def test_neither_the_claims_nor_the_urls_credentials_reach_a_log(
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    claims = {"secret_claim": "claim-value-not-for-logs"}
    async with serving(status(200)) as server:
        url = server.url.replace("http://", "http://app:url-password@") + "?key=url-key"
        async with authorizer(url) as authorize:
            assert await authorize(PrincipalWithClaims(user_id="7", claims=claims), "r")
    assert server.requests[0].headers["authorization"].startswith("Basic ")
    for secret in ("claim-value-not-for-logs", "url-password", "url-key"):
        assert secret not in caplog.text


async def test_a_client_passed_in_is_used_and_left_open():
    async with serving(status(200)) as server, httpx.AsyncClient() as client:
        authorize = HttpJoinAuthorizer(make_config(join_url=server.url), client=client)
        assert await authorize(ALICE, "r") is True
        await authorize.aclose()
        assert not client.is_closed
        assert server.requests[0].headers["user-agent"].startswith("roomcast/")


@pytest.mark.parametrize("url", [None, "", "ftp://example.com/join", "/join"])
def test_a_join_url_that_is_not_http_is_refused_at_once(url: str | None):
    with pytest.raises(ValueError):
        HttpJoinAuthorizer(make_config(join_url=url))
