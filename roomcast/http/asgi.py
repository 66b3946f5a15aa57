"""Just enough ASGI for a dozen small routes: a request's head, then its body read
whole within a time and a size, a response sent whole, JSON errors, and path
templates. (Why not a framework: see roomcast/http/app.py.)
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import attrs
import trio
from hypercorn import typing as asgi_types

from roomcast.protocol import jsontext

# ASGI's scope and messages, as hypercorn (which serves the app) types them
Scope = asgi_types.Scope
HttpScope = asgi_types.HTTPScope
Receive = asgi_types.ASGIReceiveCallable
Send = asgi_types.ASGISendCallable

JSON = "application/json"


class HttpError(Exception):
    """Answer with this status and `{"error": message}`."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(value: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()
                  ) -> Response:
    return Response(status, json.dumps(value).encode(), JSON, headers)


def error_response(error: HttpError) -> Response:
    return json_response({"error": error.message}, error.status, error.headers)


@attrs.frozen
class Request:
    method: str
    path: str  # as sent: percent-encoded, so that an encoded "/" stays inside its segment
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    params: dict[str, str] = attrs.Factory(dict)  # from the route's path template

    def json(self) -> Any:
        """The body as JSON held to the strict rule (protocol/jsontext.py), or a 400
        that says which part of the rule it breaks."""
        try:
            return jsontext.loads(self.body)
        except jsontext.JsonRefused as refused:
            raise HttpError(400, f"Invalid JSON body: {refused}") from None

    def json_object(self) -> dict[str, Any]:
        body = self.json()
        if not isinstance(body, dict):
            raise HttpError(400, "The body must be a JSON object")
        return body


# A refusal sent before the whole body was read: the connection cannot carry another
# request (hypercorn closes it once the answer is sent).
CLOSE = (("connection", "close"),)


def request_head(scope: HttpScope) -> Request:
    """The request line and headers, without the body (which may not have come yet)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    raw = scope.get("raw_path") or scope["path"].encode()
    return Request(scope["method"], raw.decode("latin-1"), headers)


async def read_body(request: Request, receive: Receive, *, limit: int, timeout: float
                    ) -> Request:
    """`request` with its body: a body declared or found larger than `limit` bytes is a
    413 (a declared one before a byte of it is read), a body not all there within
    `timeout` seconds a 408."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HttpError(413, f"The body is larger than {limit} bytes", CLOSE)
    chunks: list[bytes] = []
    size, more = 0, True
    with trio.move_on_after(timeout):
        while more:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                raise HttpError(400, "The client left before its body arrived", CLOSE)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"The body is larger than {limit} bytes", CLOSE)
            chunks.append(chunk)
            more = message.get("more_body", False)
    if more:
        raise HttpError(408, f"The body did not arrive within {timeout:g} s", CLOSE)
    return attrs.evolve(request, body=b"".join(chunks))


async def send_response(send: Send, response: Response, *, head: bool = False) -> None:
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in response.headers),
    ]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body,
                "more_body": False})


async def lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop: the service owns every resource."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


Handler = Callable[[Request], Awaitable[Response]]


Guard = Callable[[Request], None]
"""Checks on a request's head (its key, its origin), run before its body is read:
raises HttpError to refuse it."""


@attrs.frozen
class Route:
    """`/api/v1/rooms/{room}/members`: a `{name}` segment matches one segment."""

    template: str
    handlers: dict[str, Handler]  # by method
    guard: Guard | None = None
    pattern: re.Pattern[str] = attrs.field(init=False)

    @pattern.default
    def _compile(self) -> re.Pattern[str]:
        regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(self.template))
        return re.compile(regex)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: unquote(value) for name, value in found.groupdict().items()}
