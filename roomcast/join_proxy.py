"""The HTTP join authorizer (`join_url`): the application's own endpoint says who may
join a room, as Centrifugo's subscribe proxy does.

For a join no other rule allowed, the service POSTs
`{"user_id": ..., "room": ..., "claims": {...}}` to `join_url`. A 2xx answer allows the
join, any other status refuses it; the body of the answer is not read past
`RESPONSE_BYTES_READ` (only the status counts). A network error, or no answer within
`join_timeout` for the whole exchange, raises: the caller refuses the join and logs
the error's type once. Answers, allow and refuse alike, are kept for `join_cache_ttl`
seconds per (user, room), at most `CACHE_ENTRIES` of them (oldest out), on Trio's
clock. Neither the claims nor any token is logged. docs/join-proxy.md tells the
application's side.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from roomcast.auth import Principal
from roomcast.config import Config
from roomcast.protocol.rules import UserId
from roomcast.protocol.ttlcache import TtlCache

CACHE_ENTRIES = 10_000
"""Answers kept at most: the clients choose the room names, so the cache is bounded."""

RESPONSE_BYTES_READ = 64 * 1024
"""Bytes of an answer's body read at most. Reading a short body to its end lets the
connection go back to the pool; past this, the connection is closed instead."""

POOL_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""Concurrent requests to the authorizer, and idle connections kept for the next ones.
A join that finds every connection busy waits for one, within its `join_timeout`."""


def _user_agent() -> str:
    try:
        version = importlib.metadata.version("roomcast")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        version = "0"
    return f"roomcast/{version}"


USER_AGENT = _user_agent()


def principal_claims(principal: Principal) -> dict[str, Any]:
    """The claims of the token the principal came from, as sent to the authorizer:
    `principal.claims` when the principal carries them (any mapping, a read-only one
    too), else `{}` (a principal from an application's own authenticator may carry
    none). Read through getattr so that it works whether `Principal` has the field."""
    claims = getattr(principal, "claims", None)
    return dict(claims) if isinstance(claims, Mapping) else {}


class HttpJoinAuthorizer:
    """Asks `config.join_url` whether a user may join a room (see the module's text)."""

    def __init__(self, config: Config, *, client: httpx.AsyncClient | None = None) -> None:
        if not config.join_url:
            raise ValueError("HttpJoinAuthorizer needs join_url")
        url = httpx.URL(config.join_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("join_url must be an http:// or https:// URL")
        self._url = url
        self._timeout = config.join_timeout
        # httpx logs every request at INFO with its whole URL, which may carry the
        # authorizer's credentials (user:password@ or ?key=): one line per join, and a
        # secret in the log. Its warnings still show.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._owns_client = client is None
        self._client = client if client is not None else httpx.AsyncClient(
            limits=POOL_LIMITS, timeout=config.join_timeout, follow_redirects=False
        )
        self.cache: TtlCache[tuple[UserId, str], bool] = TtlCache(
            ttl=config.join_cache_ttl, max_entries=CACHE_ENTRIES
        )

    async def __call__(self, principal: Principal, room: str) -> bool:
        key = (principal.user_id, room)
        cached = self.cache.get(key, trio.current_time())
        if cached is not None:
            return cached
        allowed = await self._ask(principal, room)
        self.cache.put(key, allowed, trio.current_time())
        return allowed

    async def _ask(self, principal: Principal, room: str) -> bool:
        body = json.dumps(
            {"user_id": principal.user_id, "room": room, "claims": principal_claims(principal)},
            allow_nan=False,
            separators=(",", ":"),
        ).encode()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "accept-encoding": "identity",  # the body is not read: no need to inflate it
        }
        # httpx's timeout bounds each step (connect, each read, each write, a pooled
        # connection); this bounds the whole, so an authorizer that trickles its
        # answer byte by byte cannot hold the join longer. The timeout and the
        # redirects are set here so that they hold for a client passed in too.
        with trio.fail_after(self._timeout):
            async with self._client.stream(
                "POST",
                self._url,
                content=body,
                headers=headers,
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read > RESPONSE_BYTES_READ:
                        break
                return response.is_success

    async def aclose(self) -> None:
        """Close the connections (those of the client it made, not of one passed in)."""
        if self._owns_client:
            await self._client.aclose()
