"""The Python client: a connection to roomcast that stays up.

    from roomcast.client import connect

    async with connect("ws://host:8000/api/v1/ws", token=token) as client:
        await client.join("project_7")
        await client.send_room_message("project_7", {"hello": "world"})
        async for frame in client:
            print(frame.type, frame.room, frame.message)

It reconnects after a drop (backoff with full jitter), fetches a fresh token from
`get_token` when the old one expired or was refused, rejoins its rooms and recovers
what it missed from the highest position it saw in each, renews the token in-band
before it expires, and hands out every frame of its rooms once, in order. The rules
are in `roomcast.protocol.client_rules` (sans-IO); this module only drives them over
trio-websocket. docs/python-client.md is the manual.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    connect_websocket_url,
)

from .protocol import jsontext
from .protocol.client_rules import (
    STOP_CODES,
    Backoff,
    BadFrame,
    ClientRules,
    Frame,
    Position,
    Recovery,
    check_room,
    needs_fresh_token,
    parse_frame,
    refresh_delay,
    token_lifetime,
)
from .protocol.frames import CloseCode

__all__ = [
    "Backoff",
    "BadFrameReceived",
    "Client",
    "ClientClosed",
    "ClientStopped",
    "Connected",
    "Event",
    "Frame",
    "HandshakeRefused",
    "JoinRefused",
    "Position",
    "Reconnecting",
    "Recovery",
    "TokenRefreshed",
    "connect",
]

log = logging.getLogger("roomcast.client")

DEFAULT_BACKOFF = Backoff()
"""1 s, doubling to 30 s, with full jitter; never gives up."""

ABNORMAL_CLOSURE = 1006
"""The close code of a connection lost without a closing frame (RFC 6455)."""


# -- what the application sees ---------------------------------------------------------


class ClientClosed(Exception):
    """The client is closed: the `async with` ended, or it stopped for good (the
    exception's `__cause__` says why)."""


class HandshakeRefused(Exception):
    """The service refused the WebSocket handshake: `status` (403, 404...) and the
    service's own `reason` (`Token expired`, `Not found`...). Never the token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"handshake refused: {status} {reason}")
        self.status = status
        self.reason = reason


class ClientStopped(Exception):
    """The client stopped reconnecting: the service closed with a code after which
    retrying would repeat the fault (4008), its TLS certificate was refused (the
    `ssl_context` does not trust it: `__cause__` is the `ssl.SSLCertVerificationError`),
    or `max_attempts` failed in a row."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class JoinRefused(Exception):
    """The service refused a join: `code` is the error's `data.code` (`forbidden`,
    `too_many_rooms`...), `frame` the whole error frame."""

    def __init__(self, room: str, frame: Frame) -> None:
        super().__init__(f"join {room} refused: {frame.message}")
        self.room = room
        self.code = frame.code
        self.frame = frame


@attrs.frozen
class Connected:
    """A connection is open and welcomed (`attempt`: failures before it)."""

    user_id: int | str | None
    attempt: int


@attrs.frozen
class Reconnecting:
    """The connection dropped (`code`: the close code, 1006 when there was none;
    None when the connect itself failed): the next attempt starts in `delay` s."""

    code: int | None
    reason: str
    delay: float
    attempt: int


@attrs.frozen
class TokenRefreshed:
    """The service took a renewed token in-band; it now expires at `expires_at`."""

    expires_at: float | None


@attrs.frozen
class BadFrameReceived:
    """A frame from the service that is not a roomcast frame: dropped."""

    error: str


Event = Connected | Reconnecting | Recovery | TokenRefreshed | BadFrameReceived
"""What `on_event` is called with. `Recovery` (from the rules) says whether a rejoin
(or the welcome, for the personal room) recovered, and why not."""


# -- the client ------------------------------------------------------------------------


class _Reply:
    """A one-shot slot for the answer to a join or a leave."""

    def __init__(self, kind: str) -> None:
        self.kind = kind  # "join" or "leave"
        self.event = trio.Event()
        self.frame: Frame | None = None
        self.failure: BaseException | None = None

    def set(self, frame: Frame | None, failure: BaseException | None = None) -> None:
        if not self.event.is_set():
            self.frame, self.failure = frame, failure
            self.event.set()


class Client:
    """One logical connection to roomcast over any number of sockets. Made by
    `connect()`; not started by hand."""

    def __init__(
        self, url: str, *, token: str | None, get_token: Callable[[], Awaitable[str]] | None,
        backoff: Backoff, refresh_margin: float, on_event: Callable[[Event], None] | None,
        random: Callable[[], float], buffer: int, connect_timeout: float,
        max_message_size: int, ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if token is None and get_token is None:
            raise TypeError("connect: give `token` or `get_token`")
        self.url = url
        self._token = token
        self._token_at = 0.0  # when (Trio time) the token was received: its age
        self._get_token = get_token
        self._backoff = backoff
        self._refresh_margin = refresh_margin
        self._on_event = on_event
        self._random = random
        self._connect_timeout = connect_timeout
        self._max_message_size = max_message_size
        self._ssl_context = ssl_context
        self._rules = ClientRules()
        self._frames_in, self._frames_out = trio.open_memory_channel[Frame](buffer)
        self._ws: WebSocketConnection | None = None
        self._connected = trio.Event()
        self._send_lock = trio.Lock()
        self._replies: dict[str, list[_Reply]] = {}
        self._failure: BaseException | None = None
        self._closed = False
        self.bad_frames = 0

    # -- public API ------------------------------------------------------------------

    @property
    def user_id(self) -> int | str | None:
        """Who the service says we are (from the last welcome)."""
        return self._rules.user_id

    @property
    def rooms(self) -> list[str]:
        """The rooms this client wants, rejoined after every reconnect."""
        return list(self._rules.rooms)

    @property
    def positions(self) -> dict[str, Position]:
        """The highest position seen per room (the personal room included)."""
        return dict(self._rules.positions)

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._connected.is_set()

    async def receive(self) -> Frame:
        """The next frame: every frame of the client's rooms once, in order, across
        reconnects; echoes, broadcasts, errors; and the answer of a rejoin that could
        not recover (`frame.recovered is False`, `frame.reason`)."""
        try:
            return await self._frames_out.receive()
        except trio.EndOfChannel:
            raise self._closed_error() from self._failure
        except trio.ClosedResourceError:
            raise self._closed_error() from self._failure

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[Frame]:
        while True:
            try:
                yield await self.receive()
            except ClientClosed:
                if self._failure is not None:
                    raise
                return

    async def join(self, room: str, *, token: str | None = None) -> Frame:
        """Join `room` now and after every reconnect; returns the service's answer
        once joined, or raises `JoinRefused`. `token`: a room token for a closed room."""
        self._check_open()
        frame = self._rules.join(room, token)
        reply = self._await_answer(room, "join")
        try:
            ws = self._ws
            if ws is not None and self._connected.is_set():
                await self._send_on(ws, frame)
            # else: the next connection's rejoin sends it
            await reply.event.wait()
        finally:
            self._forget(room, reply)
        if reply.failure is not None:
            raise self._closed_error() from reply.failure
        assert reply.frame is not None
        if reply.frame.type == "error":
            raise JoinRefused(room, reply.frame)
        return reply.frame

    async def leave(self, room: str) -> None:
        """Leave `room` and stop rejoining it; returns once the service answered (at
        once while disconnected: the next connection does not join it)."""
        self._check_open()
        frame = self._rules.leave(room)
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return
        reply = self._await_answer(room, "leave")
        try:
            if await self._send_on(ws, frame):
                await reply.event.wait()  # or the socket drops: left all the same
        finally:
            self._forget(room, reply)

    def _await_answer(self, room: str, kind: str) -> _Reply:
        reply = _Reply(kind)
        self._replies.setdefault(room, []).append(reply)
        return reply

    def _forget(self, room: str, reply: _Reply) -> None:
        waiting = self._replies.get(room, [])
        if reply in waiting:
            waiting.remove(reply)
        if not waiting:
            self._replies.pop(room, None)

    async def send_room_message(self, room: str, data: Any) -> None:
        """Publish `data` (a string or any JSON value) to `room`, which this client
        must have joined; its copy comes back through `receive()` like any frame."""
        await self.send({"type": "room_message", "room": check_room(room), "data": data})

    async def send_text(self, data: Any) -> None:
        """The echo frame: the service answers with a `text` frame."""
        await self.send({"type": "text", "data": data})

    async def broadcast(self, data: Any) -> None:
        """A broadcast to every client (the token needs the broadcast permission)."""
        await self.send({"type": "broadcast", "data": data})

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one client frame (docs/protocol.md, 4), waiting for a connection if
        there is none; its reply comes through `receive()`."""
        jsontext.check_value(frame)  # refuse here what the service would refuse
        while True:
            self._check_open()
            await self._connected.wait()
            ws = self._ws
            if ws is not None and await self._send_on(ws, frame):
                return

    # -- sending -----------------------------------------------------------------------

    async def _send_on(self, ws: WebSocketConnection, frame: dict[str, Any]) -> bool:
        """Send on this socket, its reply recorded as awaited first (replies come in
        order); False when the socket closed meanwhile."""
        async with self._send_lock:
            if ws is not self._ws:
                return False
            self._rules.sent(frame)
            try:
                await ws.send_message(json.dumps(frame, ensure_ascii=False))
            except ConnectionClosed:
                return False
        return True

    def _check_open(self) -> None:
        if self._closed or self._failure is not None:
            raise self._closed_error() from self._failure

    def _closed_error(self) -> ClientClosed:
        if self._failure is not None:
            return ClientClosed(f"the client stopped: {self._failure}")
        return ClientClosed("the client is closed")

    def _emit(self, event: Event) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            # A broken listener must not break the connection.
            log.exception("roomcast.client: the on_event listener raised on %r", event)

    # -- the connection loop ------------------------------------------------------------

    async def _token_for(self, fresh: bool) -> str:
        if self._get_token is not None and (fresh or self._token is None):
            self._token = await self._get_token()
            self._token_at = trio.current_time()
        assert self._token is not None
        return self._token

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, and reconnect until closed; started by `connect()`, which returns
        once the first connection is welcomed, or raises what refused it. A failure
        after that stops the client: `receive()` and `join()` raise it."""
        started = False

        def welcomed() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            await self._reconnect_forever(welcomed)
        except (HandshakeRefused, ClientStopped) as failure:
            self._fail(failure)
            if not started:
                raise

    async def _reconnect_forever(self, welcomed: Callable[[], None]) -> None:
        failures = 0
        fresh = False
        retried_refusal = False
        while not self._closed:
            code: int | None = None
            reason = ""
            opened = False
            try:
                token = await self._token_for(fresh)
                fresh = False
                ws_code, reason, opened = await self._connection(token, failures, welcomed)
                code = ws_code
            except HandshakeRefused as refusal:
                # A token refused may just be stale: one fresh one before giving up.
                if refusal.status == 403 and self._get_token is not None and not retried_refusal:
                    retried_refusal, fresh = True, True
                    continue
                if refusal.status not in (429, 503):
                    raise
                reason = f"{refusal.status} {refusal.reason}"
            except ssl.SSLCertVerificationError as refused:
                # Not a drop: every retry would be refused alike, as a 403 would.
                raise ClientStopped(
                    f"the service's TLS certificate was refused: {refused.verify_message}"
                ) from refused
            except (OSError, HandshakeError, trio.TooSlowError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if self._closed:
                return
            if opened:
                failures, retried_refusal = 0, False
            if code is not None and code in STOP_CODES:
                raise ClientStopped(f"the service closed with {code} ({reason})", code)
            fresh = needs_fresh_token(code, opened)
            if code == CloseCode.TOKEN_EXPIRED and opened:
                delay = 0.0  # the token ran out on a good connection: at once, renewed
            else:
                delay = self._backoff.delay(failures, self._random)
                failures += 1
                if self._backoff.gives_up(failures):
                    raise ClientStopped(
                        f"gave up after {failures} failed attempts in a row "
                        f"(last: {code if code is not None else ''} {reason})", code)
            log.info("roomcast.client: disconnected (%s %s); reconnecting in %.2f s",
                     code, reason, delay)
            self._emit(Reconnecting(code, reason, delay, failures))
            await trio.sleep(delay)

    async def _connection(
        self, token: str, failures: int, welcomed: Callable[[], None],
    ) -> tuple[int | None, str, bool]:
        """One socket, from the handshake to its close: (close code, reason, whether
        it was welcomed). Raises what refused or failed the connect."""
        code: int | None = None
        reason = ""
        opened = False
        try:
            async with trio.open_nursery() as nursery:
                try:
                    ws = await self._handshake(nursery, token)
                    opened = await self._welcomed(ws)
                    if opened:
                        welcomed()
                        self._emit(Connected(self._rules.user_id, failures))
                        nursery.start_soon(self._refresh, ws, token)
                        code, reason = await self._read(ws)
                finally:
                    self._ws = None
                    self._connected = trio.Event()
                    self._socket_dropped()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # trio-websocket's reader task raises the rejection too: one failure, bare.
            failed, rest = group.split(_CONNECT_FAILURES)
            if rest is not None or failed is None:
                raise
            raise _bare(failed) from None
        return code, reason, opened

    async def _handshake(self, nursery: trio.Nursery, token: str) -> WebSocketConnection:
        url = self._rules.connect_url(self.url)  # the token goes in a header, not the URL
        headers = [(b"authorization", b"Bearer " + token.encode("ascii", "replace"))]
        watched = _ReaderWatch(nursery)
        try:
            with trio.fail_after(self._connect_timeout), trio.CancelScope() as scope:
                watched.on_end = scope.cancel
                ws = await connect_websocket_url(
                    watched, url, extra_headers=headers,  # type: ignore[arg-type]
                    max_message_size=self._max_message_size,
                    ssl_context=self._ssl_context)
                watched.on_end = None
                return ws
        except ConnectionRejected as rejected:
            raise HandshakeRefused(rejected.status_code, _refusal_text(rejected.body)) from None
        if url.startswith("wss://"):
            await self._check_certificate(url)
        raise HandshakeError("the connection closed during the opening handshake")

    async def _check_certificate(self, url: str) -> None:
        """After a wss:// handshake that ended early: was the service's certificate
        refused? trio-websocket's reader takes that for a plain drop, so one TLS
        handshake on its own tells; raises the `ssl.SSLCertVerificationError` if so."""
        parts = urlsplit(url)
        context = self._ssl_context or ssl.create_default_context()
        with trio.move_on_after(self._connect_timeout):
            try:
                stream = await trio.open_ssl_over_tcp_stream(
                    parts.hostname or "", parts.port or 443, ssl_context=context,
                    https_compatible=True)
            except OSError:
                return
            try:
                await stream.do_handshake()
            except trio.BrokenResourceError as broken:
                if isinstance(broken.__cause__, ssl.SSLCertVerificationError):
                    raise broken.__cause__ from None
            finally:
                await trio.aclose_forcefully(stream)

    async def _welcomed(self, ws: WebSocketConnection) -> bool:
        """Read the welcome, then rejoin every room wanted; False if the socket closed
        first or sent something else (then it is closed)."""
        try:
            with trio.fail_after(self._connect_timeout):
                text = await ws.get_message()
        except ConnectionClosed:
            return False
        try:
            seen = self._rules.seen(parse_frame(text))
        except BadFrame as exc:
            self._bad_frame(exc)
            seen = None
        if seen is None or not seen.welcome:
            await ws.aclose(1002, "no welcome")
            return False
        self._report(seen.recovery)
        async with self._send_lock:
            self._ws = ws
            joins = self._rules.opened()
        for frame in joins:
            if not await self._send_on(ws, frame):
                return False
        self._connected.set()
        return True

    async def _read(self, ws: WebSocketConnection) -> tuple[int, str]:
        """Hand out the frames of this socket until it closes; its close code."""
        while True:
            try:
                text = await ws.get_message()
            except ConnectionClosed as closed:
                if self._closed:
                    # aclose() began the closing handshake: trio-websocket's reader, in
                    # this connection's nursery, must live to read the service's Close.
                    await trio.sleep_forever()
                if closed.reason is None:
                    return ABNORMAL_CLOSURE, ""
                return closed.reason.code or ABNORMAL_CLOSURE, closed.reason.reason or ""
            try:
                frame = parse_frame(text)
            except BadFrame as exc:
                self._bad_frame(exc)
                continue
            seen = self._rules.seen(frame)
            self._report(seen.recovery)
            if seen.refreshed is not None:
                self._emit(TokenRefreshed(seen.refreshed))
            if seen.answer is not None:
                for reply in self._replies.pop(seen.answer.room, []):
                    reply.set(seen.answer.frame)
            if seen.frame is not None:
                try:
                    await self._frames_in.send(seen.frame)
                except trio.ClosedResourceError:
                    # Closed while the application's buffer was full: aclose() is
                    # closing this socket and will cancel this task.
                    await trio.sleep_forever()

    async def _refresh(self, ws: WebSocketConnection, token: str) -> None:
        """Renew the token in-band before it expires, as long as this socket lives."""
        if self._get_token is None:
            return
        while True:
            left = token_lifetime(token, time.time(), trio.current_time() - self._token_at)
            if left is None:
                return
            await trio.sleep(refresh_delay(left, self._refresh_margin))
            try:
                token = await self._get_token()
            except Exception:
                # The connection lives on until its token expires: 4001, then a reconnect.
                log.warning("roomcast.client: get_token raised; the token was not renewed",
                            exc_info=True)
                return
            self._token, self._token_at = token, trio.current_time()
            if not await self._send_on(ws, {"type": "refresh_token", "data": token}):
                return

    def _report(self, recovery: Recovery | None) -> None:
        if recovery is not None:
            self._emit(recovery)

    def _bad_frame(self, exc: BadFrame) -> None:
        self.bad_frames += 1
        if self.bad_frames == 1 or self.bad_frames % 100 == 0:
            log.warning("roomcast.client: dropped a frame from the service (%d so far): %s",
                        self.bad_frames, exc)
        self._emit(BadFrameReceived(str(exc)))

    def _socket_dropped(self) -> None:
        """A leave waiting for its answer is done: the next socket does not join the
        room. (A join waits on: the next socket's rejoin answers it.)"""
        for replies in self._replies.values():
            for reply in replies:
                if reply.kind == "leave":
                    reply.set(None)

    def _fail(self, failure: BaseException) -> None:
        self._failure = failure
        self._frames_in.close()
        self._connected.set()  # a send() waiting for a connection raises the failure
        for replies in self._replies.values():
            for reply in replies:
                reply.set(None, failure)
        self._replies.clear()

    async def aclose(self) -> None:
        """Close for good: the socket closes normally (1000), nothing reconnects."""
        self._closed = True
        ws, self._ws = self._ws, None
        if ws is not None:
            with trio.move_on_after(self._connect_timeout) as scope:
                scope.shield = True
                await ws.aclose()
        self._frames_in.close()
        self._connected.set()
        for replies in self._replies.values():
            for reply in replies:
                reply.set(None, ClientClosed("the client is closed"))


class _ReaderWatch:
    """The nursery trio-websocket starts its reader task in, watched: when the socket
    ends during the opening handshake (the TCP stream closed before any answer),
    trio-websocket's reader stops and `connect_websocket_url` would wait for the
    handshake forever (trio-websocket 0.12); `on_end` cancels that wait instead."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.on_end: Callable[[], None] | None = None

    def start_soon(self, function: Callable[[], Awaitable[None]], *args: Any) -> None:
        async def watched() -> None:
            try:
                await function(*args)
            finally:
                if self.on_end is not None:
                    self.on_end()

        self._nursery.start_soon(watched)


_CONNECT_FAILURES = (HandshakeRefused, ConnectionRejected, OSError, HandshakeError,
                     trio.TooSlowError)


def _bare(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure in `group`, a rejection as the client's `HandshakeRefused`."""
    first = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    if isinstance(first, ConnectionRejected):
        return HandshakeRefused(first.status_code, _refusal_text(first.body))
    return first


def _refusal_text(body: bytes | None) -> str:
    """The service's `error` text in a refused handshake's body (docs/protocol.md, 1)."""
    if not body:
        return "no reason given"
    try:
        value = jsontext.loads(body)
    except jsontext.JsonRefused:
        return body[:200].decode("utf-8", "replace")
    if isinstance(value, dict) and isinstance(value.get("error"), str):
        return str(value["error"])[:200]
    return "no reason given"


@asynccontextmanager
async def connect(
    url: str, *, token: str | None = None,
    get_token: Callable[[], Awaitable[str]] | None = None,
    backoff: Backoff = DEFAULT_BACKOFF, refresh_margin: float = 30.0,
    on_event: Callable[[Event], None] | None = None,
    random: Callable[[], float] = random.random, buffer: int = 1024,
    connect_timeout: float = 10.0, max_message_size: int = 1 << 20,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Client]:
    """A client connected to the roomcast service at `url` (`ws://` or `wss://`, the
    service's path), kept connected until the block ends.

    `token`: the connection JWT, or `get_token`: an async function that returns a
    fresh one, called before the first connect, after the token expired or was
    refused, and before it expires (the client then renews it in-band). `backoff`
    bounds the reconnects; `on_event` is called with every `Event`; `random` draws
    the jitter (seed it in tests); `buffer`: frames held for `receive()` before the
    client stops reading the socket (the service then cuts it as a slow consumer,
    4009, and the client recovers on reconnect). `ssl_context`: for `wss://`, the
    context that checks the service's certificate (the system's trusted authorities
    when None; a context made with `cafile=` trusts a self-signed one)."""
    client = Client(
        url, token=token, get_token=get_token, backoff=backoff,
        refresh_margin=refresh_margin, on_event=on_event, random=random, buffer=buffer,
        connect_timeout=connect_timeout, max_message_size=max_message_size,
        ssl_context=ssl_context,
    )
    # What the refusal or the block raises comes out as itself, not in an exception
    # group: the client's own task never raises once started (it stops the client).
    raised: Exception | None = None
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(client.run)
            yield client
        except Exception as exc:
            raised = exc
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    if raised is not None:
        raise raised
