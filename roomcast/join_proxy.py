"""PLACEHOLDER until the join_url branch lands: the HTTP authorizer's interface only.

`HttpJoinAuthorizer(config)` is an async callable `(principal, room) -> bool` that
POSTs `{user_id, room, claims}` to `config.join_url` (2xx: True, any other status:
False, a network error raises), with its own per-(user, room) cache of
`join_cache_ttl` seconds; `aclose()` releases its connections. The engineer who owns
this module replaces this file on merge.
"""

from __future__ import annotations

from roomcast.auth import Principal
from roomcast.config import Config


class HttpJoinAuthorizer:
    def __init__(self, config: Config) -> None:
        self._config = config

    async def __call__(self, principal: Principal, room: str) -> bool:
        raise NotImplementedError("roomcast.join_proxy is a placeholder on this branch")

    async def aclose(self) -> None:
        pass
