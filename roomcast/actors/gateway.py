"""The accept loop and the handshake: a TCP socket in, a connection actor out.

Each accepted socket gets a task; the handshake and then the connection actor run in
it, and it is the only one that reads the socket (the outbox's writer task, while there
is a backlog, runs in the same nursery and ends with the socket). Whatever goes wrong
inside one connection ends there: it is logged, that socket is closed (1011 when it had
been upgraded), and no sibling is touched.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import ssl
from urllib.parse import parse_qs, urlsplit

import trio
from wsproto.events import Request

from roomcast.actors.connection import Connection, JoinRules, next_connection_id
from roomcast.actors.keeper import Keeper
from roomcast.actors.outbox import HUNG_UP, Outbox, TlsOutbox
from roomcast.actors.registry import Registry
from roomcast.actors.websocket import Handshake
from roomcast.auth import Authenticator, AuthError, Principal
from roomcast.config import Config
from roomcast.protocol import CloseCode, Position, ProtocolError, position_from
from roomcast.protocol.admission import EVICTED, Admission, Refusal, Ticket, address_key
from roomcast.protocol.lognotes import FirstSeen

log = logging.getLogger(__name__)


# accept() errors that mean "out of descriptors or memory for now": wait and go on.
_OUT_OF_CAPACITY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_PAUSE = 0.1
_REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about handshake limits


class Rejection(Exception):
    def __init__(self, status: int, error: str, cause: str, detail: str = "") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.cause = cause
        self.detail = detail  # for the log line only (never a token)


_QUOTED_UP_TO = 100


def quoted(text: str) -> str:
    """A peer's text (a refused Origin) fit for one log line: at most 100 characters,
    repr'd, so that no control character, newline or escape sequence reaches the log."""
    if len(text) <= _QUOTED_UP_TO:
        return ascii(text)
    return f"{text[:_QUOTED_UP_TO]!a}... ({len(text)} characters)"


def token_from(request: Request) -> str | None:
    """`?token=` (browsers cannot set headers) or `Authorization: Bearer`."""
    tokens = parse_qs(urlsplit(request.target).query).get("token")
    if tokens and tokens[0]:
        return tokens[0]
    for name, value in request.extra_headers:
        if name == b"authorization":  # wsproto gives names in lower case
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


# An offset in the URL: ASCII digits only (str.isdigit() also takes "²", which int()
# refuses), at most 19 of them and no more than fits a signed 64-bit integer.
_OFFSET = re.compile(r"[0-9]{1,19}")
_OFFSET_MAX = 2**63 - 1


def offset_in(text: str | None) -> int | None:
    """The offset of a URL's query, or None when it is not a plain decimal number."""
    if text is None or _OFFSET.fullmatch(text) is None:
        return None
    offset = int(text)
    return offset if offset <= _OFFSET_MAX else None


def position_in(request: Request) -> Position | None:
    """`?offset=N&epoch=E` (or `?recover=1`): where the client got to in its personal
    room. A malformed position is ignored: the client just recovers nothing. Never
    raises: the token has been accepted by now, and the client gets its welcome."""
    query = parse_qs(urlsplit(request.target).query)
    offset = offset_in(query.get("offset", [None])[0])
    epoch = query.get("epoch", [None])[0]
    data: dict[str, object] = {"recover": query.get("recover", ["0"])[0] in ("1", "true")}
    if offset is not None and epoch:
        data.update(offset=offset, epoch=epoch)
    try:
        return position_from(data)
    except ProtocolError:
        return None


def origin_of(request: Request) -> str | None:
    """The Origin header; browsers always send it, so cross-site pages can be refused.
    Clients without one (not browsers) pass, as in Centrifugo."""
    for name, value in request.extra_headers:
        if name == b"origin":
            return value.decode("latin-1")
    return None


class Gateway:
    def __init__(
        self, config: Config, registry: Registry, keeper: Keeper, authenticator: Authenticator,
        rules: JoinRules | None = None, tls: ssl.SSLContext | None = None,
    ) -> None:
        self._rules = rules  # who may join which room, handed to every connection
        self._tls = tls  # wss://: each socket's TLS handshake comes before its upgrade
        self._config = config
        self._registry = registry
        self._keeper = keeper
        self._authenticate = authenticator
        self.draining = False
        self.open_sockets = 0
        self._nursery: trio.Nursery | None = None  # where sockets are served, once serving
        # Sockets not yet through an authenticated upgrade: bounded apart from
        # max_connections, so that silent sockets never crowd out real clients.
        self.admission = Admission(config.max_handshakes, config.max_handshakes_per_address)
        self._handshakes: dict[Ticket, trio.CancelScope] = {}
        self._evicted: set[Ticket] = set()  # handshakes cut short to make room
        self._refused = 0  # sockets refused or cut short since the last log line
        self._next_refusal_log = float("-inf")
        self._refused_origins = FirstSeen()  # each refused Origin is logged once
        self._connections: set[Connection] = set()  # accepted, until their socket closes
        self._all_closed = trio.Event()
        self._all_closed.set()

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on every listener. Each socket is served in a task of one nursery,
        where the outboxes' writer tasks run too (a writer ends with its socket)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept, listener)
            task_status.started()

    async def _accept(self, listener: trio.SocketListener) -> None:
        # trio.serve_listeners, less its per-socket aclose_forcefully (a cancel scope
        # and a checkpoint per connection; the outbox closes the socket itself). The
        # listener is closed when the loop ends: the port is free again at once.
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _OUT_OF_CAPACITY:
                        raise
                    log.error("accept failed (%s); trying again in %.1f s", exc,
                              _ACCEPT_PAUSE)
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                ticket = self._let_in(stream)
                if ticket is None:
                    continue
                assert self._nursery is not None
                self._nursery.start_soon(self._serve_socket, stream, ticket)

    def _let_in(self, stream: trio.SocketStream) -> Ticket | None:
        """Count a new socket as a pending handshake: its ticket, or None when its
        address holds too many already (closed at once: no read, no answer, no task).
        Past the total, the oldest pending handshake is cut short instead."""
        try:
            host = str(stream.socket.getpeername()[0])
        except OSError:  # the peer is already gone
            stream.socket.close()
            return None
        outcome = self.admission.arrive(address_key(host))
        if isinstance(outcome, Refusal):
            self._registry.metrics.handshake_failed(outcome.value)
            stream.socket.close()
            self._refused_one(f"{outcome.value} from {host}")
            return None
        if outcome.evicted is not None:
            self._evicted.add(outcome.evicted)
            self._handshakes[outcome.evicted].cancel()
            self._refused_one(EVICTED)
        # Created here, entered by the socket's task: an eviction can reach it at once.
        self._handshakes[outcome.ticket] = trio.CancelScope(
            deadline=trio.current_time() + self._config.handshake_timeout
        )
        return outcome.ticket

    def _refused_one(self, why: str) -> None:
        """One log line a minute at most, with a count, however many sockets a flood
        opens (each is counted in handshake_failures_total)."""
        self._refused += 1
        now = trio.current_time()
        if now >= self._next_refusal_log:
            log.warning("handshake limits: %d socket(s) refused or cut short since the "
                        "last report (latest: %s)", self._refused, why)
            self._refused = 0
            self._next_refusal_log = now + _REFUSAL_LOG_INTERVAL

    def _refused_origin(self, origin: str) -> None:
        """A browser page's Origin refused: the page itself only sees a 1006 (browsers
        hide the 403), so say it at WARNING, once per origin (`FirstSeen`)."""
        note = self._refused_origins.see(origin, trio.current_time())
        if note is None:
            return
        if note.text is not None:
            log.warning("refused a page from Origin%s: not in --allowed-origins (add it "
                        "there if the page is yours); repeats are logged at INFO only",
                        note.text)
        else:
            log.warning("refused pages from %d more Origin(s) not in --allowed-origins "
                        "since the last report", note.unlisted)

    async def drain(self, timeout: float) -> None:
        """Stop accepting new clients, close every open one with 1001, and wait (at
        most `timeout` seconds) until their sockets are closed."""
        self.draining = True
        for handshake in list(self._handshakes.values()):
            handshake.cancel()
        for connection in list(self._connections):
            connection.request_close(CloseCode.GOING_AWAY, "server shutting down")
        with trio.move_on_after(timeout):
            await self._all_closed.wait()

    async def _serve_socket(self, stream: trio.SocketStream, ticket: Ticket) -> None:
        self.open_sockets += 1
        self._all_closed = self._all_closed if self.open_sockets > 1 else trio.Event()
        limit = self._config.outbox_limit
        outbox = Outbox(stream, limit) if self._tls is None else TlsOutbox(stream, limit,
                                                                             self._tls)
        outbox.writers = self._nursery
        conn_id = next_connection_id()
        try:
            await self._serve_websocket(outbox, conn_id, ticket)
        except Exception:
            log.exception("conn %d: connection handler failed", conn_id)
        finally:
            self._handshake_over(ticket)
            outbox.close_now()
            self.open_sockets -= 1
            if self.open_sockets == 0:
                self._all_closed.set()

    def _handshake_over(self, ticket: Ticket) -> None:
        """The socket no longer counts as a pending handshake (idempotent)."""
        self._handshakes.pop(ticket, None)
        self._evicted.discard(ticket)
        self.admission.release(ticket)

    async def _serve_websocket(self, outbox: Outbox, conn_id: int, ticket: Ticket) -> None:
        config = self._config
        handshake = Handshake(outbox)
        request: Request | None = None
        tls_failure: str | None = None
        # Its deadline is handshake_timeout (TLS's handshake included); a drain, or a
        # newer socket when the pending ones are at their limit, cuts it short.
        with self._handshakes[ticket] as deadline:
            if isinstance(outbox, TlsOutbox):
                tls_failure = await outbox.handshake()
            if tls_failure is None:
                request = await handshake.request()
        if request is None:
            evicted = ticket in self._evicted
            self._handshake_over(ticket)
            if tls_failure is not None:
                cause = "hung_up" if tls_failure == HUNG_UP else "tls"
            elif handshake.refused:
                cause = "bad_request"
            elif not deadline.cancelled_caught:
                cause = "hung_up"
            elif evicted:
                cause = EVICTED
            else:
                cause = "draining" if self.draining else "timeout"
            self._registry.metrics.handshake_failed(cause)
            if cause == EVICTED:
                log.debug("conn %d: handshake cut short: too many pending", conn_id)
            elif cause == "tls":  # a port scan or a plain-text client: no more than this
                log.debug("conn %d: TLS handshake failed: %s", conn_id, tls_failure)
            elif cause in ("timeout", "draining"):
                log.info("conn %d: handshake not completed within %.1f s", conn_id,
                         config.handshake_timeout)
            else:
                log.info("conn %d: handshake ended: %s", conn_id, cause.replace("_", " "))
            return
        try:
            principal = await self._admit(request)
        except Rejection as rejection:
            self._handshake_over(ticket)
            if rejection.cause == "origin":
                self._refused_origin(rejection.detail)
            log.info("conn %d: handshake refused: %d %s%s", conn_id, rejection.status,
                     rejection.cause, rejection.detail)
            self._registry.metrics.handshake_failed(rejection.cause)
            body = json.dumps({"error": rejection.error}).encode()
            with trio.move_on_after(config.close_timeout):
                await handshake.reject(rejection.status, b"application/json", body)
            return
        self._handshake_over(ticket)
        ws = handshake.accept(config.max_message_size, config.compression)
        connection = Connection(
            conn_id, principal, ws, outbox, self._registry, self._keeper, self._authenticate,
            config, self._rules,
        )
        if log.isEnabledFor(logging.INFO):  # the peer's address costs a system call
            log.info("conn %d user=%r connected from %s", conn_id, connection.user_id,
                     outbox.remote)
        connection.resume_from = position_in(request)
        self._connections.add(connection)
        if self.draining:  # the drain began while this one was being accepted
            connection.request_close(CloseCode.GOING_AWAY, "server shutting down")
        try:
            self._keeper.watch(connection)
            await connection.run()
        except Exception:
            log.exception("conn %d user=%r crashed; closing with 1011", connection.id,
                          connection.user_id)
            connection.close_code = CloseCode.INTERNAL_ERROR
            connection.close_reason = "internal error"
        finally:
            self._connections.discard(connection)
            self._keeper.unwatch(connection)
        code, reason = connection.close_code, connection.close_reason
        self._registry.metrics.closed(code)
        # Whoever began it: the queued frames, our Close, a FIN, the client's Close.
        closed = await ws.close(code, reason, config.close_timeout)
        log.info("conn %d user=%r disconnected: %s %s", connection.id, connection.user_id,
                 closed.code, closed.reason or "")

    async def _admit(self, request: Request) -> Principal:
        config = self._config
        if urlsplit(request.target).path != config.path:
            raise Rejection(404, "Not found", "wrong_path")
        if self.draining:
            raise Rejection(503, "Service is shutting down", "draining")
        if len(self._connections) >= config.max_connections:  # authenticated ones only
            raise Rejection(503, "Service is at its connection limit", "connection_limit")
        origin = origin_of(request)
        if config.allowed_origins and origin is not None and origin not in config.allowed_origins:
            raise Rejection(403, "Origin not allowed", "origin", f" {quoted(origin)}")
        token = token_from(request)
        if token is None:
            raise Rejection(403, "Token missing", "missing_token")
        try:
            principal = await self._authenticate(token)
        except AuthError as error:
            raise Rejection(403, error.message, error.cause) from None
        except Exception as exc:
            # Only the type: an application's error text may quote the token.
            log.error("the authenticator failed: %s", type(exc).__name__)
            raise Rejection(403, "Token rejected", "authenticator_error") from None
        if principal is None:
            raise Rejection(403, "Token rejected", "rejected")
        if len(self._registry.connections_of(principal.user_id)) >= config.max_connections_per_user:
            raise Rejection(429, "Too many connections for this user", "user_connection_limit")
        return principal
