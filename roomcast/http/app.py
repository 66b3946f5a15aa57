"""The HTTP side of a service, as a plain ASGI application.

Plain ASGI rather than a framework: a dozen fixed routes of small JSON in and out
need a router of ten lines, and the OpenAPI document is written by hand anyway (it is
the contract, tested by schemathesis); a framework would be one more dependency to
keep in step with, for nothing this app uses.

Routes (the OpenAPI document in openapi.py says the same, with schemas):

- `/healthz`, `/readyz`, `/metrics`, `/openapi.json`: open;
- `/api/v1/...`: notifications and presence, behind `Authorization: Bearer API_KEY`;
  404 while the service has no `api_key` (the API does not exist then);
- `/static/roomcast.js` and `.d.ts`: the JavaScript client, from roomcast/web/;
- demo mode only: `/` (the demo page), `/static/demo.css`, `POST /demo/token`,
  `GET /demo/ws-url`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from typing import Any, TypeVar

import attrs
import trio

from roomcast.actors.streams import BackplaneUnavailable
from roomcast.auth import ConfigError, mint_token
from roomcast.http import openapi
from roomcast.http.asgi import (
    CLOSE,
    JSON,
    Handler,
    HttpError,
    HttpScope,
    Receive,
    Request,
    Response,
    Route,
    Scope,
    Send,
    error_response,
    json_response,
    lifespan,
    read_body,
    request_head,
    send_response,
)
from roomcast.http.prometheus import CONTENT_TYPE, exposition, prometheus_registry
from roomcast.protocol import (
    Broadcast,
    RoomNotification,
    UserId,
    UserNotification,
    normalize_user_id,
    notification_request,
    room_name,
    strict,
    structure,
)
from roomcast.service import Service

log = logging.getLogger(__name__)

WEB = files("roomcast") / "web"
JS = "text/javascript; charset=utf-8"
BODY_METHODS = frozenset({"POST"})  # the methods whose handlers read a body
T = TypeVar("T")


def _sorted(users: set[UserId]) -> list[UserId]:
    return sorted(users, key=lambda u: (isinstance(u, str), u))


def _valid(rule: Callable[[Any], T], value: Any) -> T:
    """A rule's value, or a 400 with the rule's own text."""
    try:
        return rule(value)
    except (TypeError, ValueError) as exc:
        raise HttpError(400, str(exc)) from None


def _ttl(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        1 <= value <= openapi.MAX_TTL
    ):
        raise ValueError(f"'ttl' is a number of seconds from 1 to {openapi.MAX_TTL}")
    return value


def _scope(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("'scope' is a string")
    return value or None


@strict
@attrs.frozen
class TokenRequest:
    """The body of `POST /demo/token` (its schema: openapi.py's `/demo/token`)."""

    user_id: UserId = attrs.field(converter=normalize_user_id)
    scope: str | None = attrs.field(default=None, converter=_scope)
    ttl: float = attrs.field(default=3600, converter=_ttl)


class HttpApp:
    def __init__(self, service: Service) -> None:
        self._service = service
        self._config = service.config
        self._prometheus = prometheus_registry(service)
        routes = [
            Route("/healthz", {"GET": self.healthz}),
            Route("/readyz", {"GET": self.readyz}),
            Route("/metrics", {"GET": self.metrics}),
            Route("/openapi.json", {"GET": self.openapi}),
            Route("/api/v1/notifications", {"POST": self.notify}, self._authorize),
            Route("/api/v1/users", {"GET": self.users}, self._authorize),
            Route("/api/v1/users/{user_id}", {"GET": self.user}, self._authorize),
            Route("/api/v1/rooms/{room}/members", {"GET": self.room_members},
                  self._authorize),
            Route("/static/roomcast.js", {"GET": self._static("roomcast.js", JS)}),
            Route("/static/roomcast.d.ts", {"GET": self._static("roomcast.d.ts", JS)}),
        ]
        if self._config.demo:  # otherwise these paths do not exist: 404
            routes += [
                Route("/", {"GET": self._static("demo.html", "text/html; charset=utf-8")}),
                Route("/static/demo.css", {"GET": self._static("demo.css", "text/css")}),
                Route("/demo/token", {"POST": self.demo_token}, self._same_site),
                Route("/demo/ws-url", {"GET": self.demo_ws_url}),
            ]
        self._routes = routes
        self._serving = 0  # requests past their guard, not yet answered

    # ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            head = scope["method"] == "HEAD"
            await send_response(send, await self._respond(scope, receive), head=head)
        else:  # a WebSocket on the HTTP port: the WebSocket port is elsewhere
            await send({"type": "websocket.close", "code": 1008, "reason": None})

    async def _respond(self, scope: HttpScope, receive: Receive) -> Response:
        """Route and guard on the head alone (an unknown route, a missing key or a
        cross-site demo request costs no body read and no place), then take one of
        `http_max_requests` places, read the body within `http_timeout` and handle."""
        try:
            request = request_head(scope)
            route, method, params = self._route(request)
            if route.guard is not None:
                route.guard(request)
            with self._place():
                if method in BODY_METHODS:
                    request = await read_body(request, receive,
                                              limit=self._config.max_message_size,
                                              timeout=self._config.http_timeout)
                return await route.handlers[method](attrs.evolve(request, params=params))
        except HttpError as error:
            return error_response(error)
        except Exception:
            log.exception("HTTP %s %s failed", scope["method"], scope["path"])
            return error_response(HttpError(500, "Internal error"))

    @contextmanager
    def _place(self) -> Iterator[None]:
        """One of `http_max_requests` places; none free is a 503 at once, not a queue."""
        limit = self._config.http_max_requests
        if self._serving >= limit:
            raise HttpError(503, f"The HTTP port serves at most {limit} requests at once "
                                 "(http_max_requests): try again shortly",
                            (("retry-after", "1"), *CLOSE))
        self._serving += 1
        try:
            yield
        finally:
            self._serving -= 1

    def _route(self, request: Request) -> tuple[Route, str, dict[str, str]]:
        """The route, the method whose handler answers (GET for HEAD) and the path's
        parameters; 404 or 405."""
        path = request.path.partition("?")[0]
        for route in self._routes:
            params = route.match(path)
            if params is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            if method not in route.handlers:
                allowed = {*route.handlers, *(["HEAD"] if "GET" in route.handlers else [])}
                raise HttpError(405, f"Method {request.method} not allowed",
                                (("allow", ", ".join(sorted(allowed))),))
            return route, method, params
        raise HttpError(404, "Not found")

    def _authorize(self, request: Request) -> None:
        key = self._config.api_key
        if key is None:
            raise HttpError(404, "The HTTP API is disabled: set api_key (--api-key or "
                                 "ROOMCAST_API_KEY) to enable it")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # Constant time: how much of a guess was right must not show in the timing.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), key.encode()
        ):
            raise HttpError(401, "Missing or wrong API key",
                            (("www-authenticate", 'Bearer realm="roomcast"'),))

    # operations -----------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        reasons = self._service.unready_reasons()
        return json_response({"ready": not reasons, "reasons": reasons},
                             503 if reasons else 200)

    async def metrics(self, request: Request) -> Response:
        return Response(200, exposition(self._prometheus), CONTENT_TYPE)

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi.document(self._config))

    async def notify(self, request: Request) -> Response:
        note = _valid(notification_request, request.json_object())
        facade = self._service.notifications
        args = (note.message, note.level, note.data)
        try:
            match note:
                case UserNotification():
                    return json_response({"delivered": await facade.notify_user(
                        note.user_id, *args)})
                case RoomNotification():
                    return json_response({"users": await facade.notify_room(note.room, *args)})
                case Broadcast():
                    return json_response({"users": await facade.broadcast(*args)})
        except BackplaneUnavailable as exc:
            raise HttpError(503, str(exc)) from None
        raise AssertionError(f"not a notification request: {note!r}")

    async def users(self, request: Request) -> Response:
        return json_response({"users": _sorted(self._service.notifications.get_connected_users())})

    async def user(self, request: Request) -> Response:
        uid = _valid(normalize_user_id, request.params["user_id"])
        connected = self._service.notifications.is_user_connected(uid)
        return json_response({"user_id": uid, "connected": connected})

    async def room_members(self, request: Request) -> Response:
        room = _valid(room_name, request.params["room"])
        members = self._service.notifications.get_room_members(room)
        return json_response({"room": room, "members": _sorted(members)})

    def _static(self, name: str, content_type: str) -> Handler:
        async def serve_file(request: Request) -> Response:
            resource = WEB / name
            try:
                body = await trio.to_thread.run_sync(resource.read_bytes)
            except OSError:
                raise HttpError(404, f"{name} is not installed") from None
            # no-cache: browsers revalidate, so a new version shows on the next load.
            # Any origin may import the client module: it is public and holds no secret,
            # and a page on the application's own origin is the usual importer.
            headers = (("cache-control", "no-cache"), ("access-control-allow-origin", "*"))
            return Response(200, body, content_type, headers)

        return serve_file

    def _same_site(self, request: Request) -> None:
        """`POST /demo/token` from the demo page only. A page elsewhere cannot send
        `Content-Type: application/json` without a CORS preflight (which this port never
        allows), and its `Origin` names it; a DNS rebinding gives the attacker's page
        this port under the attacker's name, which the `Host` header then carries."""
        content_type = request.headers.get("content-type", "").partition(";")[0]
        if content_type.strip().lower() != JSON:
            raise HttpError(415, f"POST /demo/token takes Content-Type: {JSON}")
        host = request.headers.get("host", "").lower()
        origin = request.headers.get("origin")
        if origin is not None and origin.lower() not in (f"http://{host}", f"https://{host}"):
            raise HttpError(403, "Demo tokens are minted only for the demo page's own origin")
        if not self._local_name(_host_name(host)):
            raise HttpError(403, "Demo tokens are minted only for a page loaded from "
                                 "localhost, an IP address or the service's configured host")

    def _local_name(self, name: str) -> bool:
        """A name no DNS rebinding can give: an IP address, localhost, the configured host."""
        try:
            ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
        except ValueError:
            return name in ("localhost", self._config.host.lower())
        return True

    async def demo_token(self, request: Request) -> Response:
        body = _valid(lambda value: structure(value, TokenRequest), request.json_object())
        try:
            token = mint_token(self._config, body.user_id, ttl=body.ttl, scope=body.scope)
        except ConfigError:
            raise HttpError(503, "Demo tokens need a jwt_secret to sign with") from None
        return json_response({"token": token, "ws_url": self._ws_url(request)})

    async def demo_ws_url(self, request: Request) -> Response:
        """Where the page's "paste a token" form connects: this service's WebSocket
        port, which is rarely the HTTP port the page came from."""
        return json_response({"ws_url": self._ws_url(request)})

    def _ws_url(self, request: Request) -> str:
        """The WebSocket URL on the host the browser used to reach this page (a name
        `_same_site` accepted), else on the configured host."""
        name = _host_name(request.headers.get("host", "").lower()) or self._config.host
        scheme = "ws" if self._config.tls_cert is None else "wss"
        return f"{scheme}://{name}:{self._service.port}{self._config.path}"


def _host_name(host: str) -> str:
    """`Host` without its port: `[::1]:8080` is `[::1]`, `localhost:8080` `localhost`."""
    if host.startswith("["):
        return host[: host.index("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host
