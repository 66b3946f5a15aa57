"""Settings: one frozen attrs class, every field with a default.

Each field can come from a flag (`--jwt-secret`) or an environment variable
(`ROOMCAST_JWT_SECRET`); flags win over the environment, which wins over defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import cattrs

ENV_PREFIX = "ROOMCAST_"


def _setting(default: Any, help: str, **kw: Any) -> Any:
    return attrs.field(default=default, metadata={"help": help}, **kw)


def _secret(value: Any) -> str:
    """repr of a secret setting: whether it is set, never its text."""
    return "None" if value is None else "'***'"


def _url_without_password(value: Any) -> str:
    """repr of a URL that may carry a secret (redis://user:pw@host, ?key=...): hidden."""
    if value is None:
        return "None"
    parts = urlsplit(value)
    if parts.query:  # a key in the query string (`?key=...`) is a secret too
        parts = parts._replace(query="***")
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{host}")
    return repr(urlunsplit(parts))


def _worker_count(value: Any) -> int:
    """`workers`: a count of processes; 0 or 'auto' is one per core this process may use."""
    if isinstance(value, str):
        value = 0 if value.strip().lower() == "auto" else int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"workers: a count of processes, 0 or 'auto', not {value!r}")
    if value == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    return value


def _tuple_of_str(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part for part in value.replace(",", " ").split() if part)
    return tuple(value)


def _optional_path(value: Any) -> Path | None:
    """A file's path from a flag or a variable; unset (or empty) is None."""
    if value is None or value == "":
        return None
    return Path(value)


def _both_or_neither(instance: Config, _: attrs.Attribute[Any], key: Path | None) -> None:
    """tls_cert and tls_key go together: one alone would serve plain text by surprise."""
    if (instance.tls_cert is None) != (key is None):
        missing = "tls_key (--tls-key)" if key is None else "tls_cert (--tls-cert)"
        raise ValueError(f"TLS needs both tls_cert and tls_key: set {missing} too, or neither")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(value: str) -> str:
    """An allowed Origin as a browser sends it: `scheme://host[:port]`, scheme and host
    in lower case, no default port. A value that could never match (a path, a trailing
    slash, `null`, a wildcard) is a ValueError at startup, naming it."""

    def refuse(why: str) -> ValueError:
        return ValueError(f"allowed_origins: {value!r} {why}; write scheme://host[:port], "
                          "as a browser sends it (https://app.example)")

    if value.lower() == "null":
        # Sent by sandboxed iframes and file:// pages of any site: listing it would let
        # any page in.
        raise refuse("is sent by sandboxed and file:// pages of any site, so it cannot "
                     "be allowed")
    if not value.isascii():
        raise refuse("is not ASCII (write an international host name in punycode, xn--)")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise refuse("is not a URL origin") from None
    if not parts.scheme or not parts.hostname:
        raise refuse("has no scheme://host")
    if parts.path or parts.query or parts.fragment or value.endswith(("?", "#")):
        raise refuse("has a path or a trailing slash, which an Origin header never has")
    if parts.username is not None or "*" in value:
        raise refuse("has a user name or a wildcard, which an Origin header never has")
    scheme, host = parts.scheme.lower(), parts.hostname  # hostname is lower-cased
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


@attrs.frozen(kw_only=True)
class Config:
    host: str = _setting("127.0.0.1", "address to bind; 0.0.0.0 for every interface")
    port: int = _setting(8000, "WebSocket port; 0 picks a free one")
    path: str = _setting("/api/v1/ws", "WebSocket URL path")
    http_port: int = _setting(
        8080, "HTTP port (health, metrics, API, client script); 0 picks a free one, -1 disables"
    )
    # (RUF009: ruff does not know Path is immutable; _setting is every field's default.)
    tls_cert: Path | None = _setting(  # noqa: RUF009
        None, "PEM certificate chain file: serve wss:// and https:// on both ports (with "
        "tls_key); unset serves plain ws:// and http://", converter=_optional_path
    )
    tls_key: Path | None = _setting(  # noqa: RUF009
        None, "PEM private key file of tls_cert (read at startup, never logged)",
        converter=_optional_path, validator=_both_or_neither,
    )
    api_key: str | None = _setting(
        None, "key that backends send as 'Authorization: Bearer KEY' to the HTTP API; "
        "unset disables the API", repr=_secret
    )
    demo: bool = _setting(False, "serve the demo page at / and mint demo tokens (never in "
                          "production: anyone can get a token)")
    jwt_secret: str | None = _setting(None, "HMAC secret for HS256/384/512 tokens", repr=_secret)
    jwt_public_key: str | None = _setting(
        None, "PEM public key (text, or @path to a file) for RS*/PS*/ES*/EdDSA tokens"
    )
    jwt_algorithms: tuple[str, ...] = _setting(
        (), "accepted algorithms, comma separated; default HS256 with a secret, "
        "RS256 ES256 EdDSA with a public key", converter=_tuple_of_str
    )
    jwt_audience: str | None = _setting(None, "required 'aud' claim, when set")
    jwt_issuer: str | None = _setting(None, "required 'iss' claim, when set")
    jwt_leeway: float = _setting(10.0, "seconds of clock skew allowed for exp and nbf")
    jwt_require_exp: bool = _setting(True, "refuse tokens without an 'exp' claim")
    token_expiry: str = _setting(
        "close", "'close': a connection is closed with 4001 when its token expires, unless "
        "refresh_token renewed it; 'connect': exp is checked at the handshake only, as the "
        "FastAPI design did (risk: a revoked or leaked token keeps its open connections for "
        "as long as they last; room tokens still expire)",
        validator=attrs.validators.in_(("close", "connect")),
    )
    user_id_claim: str = _setting("sub", "claim that holds the user id")
    broadcast_claim: str = _setting("scope", "claim listing the client's permissions")
    broadcast_scope: str = _setting(
        "roomcast:broadcast", "value in that claim that lets a client broadcast"
    )
    open_broadcast: bool = _setting(False, "let every client broadcast, whatever its token")
    open_rooms: tuple[str, ...] = _setting(
        (), "glob patterns (* and ?) of rooms every signed-in user may join, comma separated; "
        "'*' opens every room; default none: a room is closed unless a rule opens it",
        converter=_tuple_of_str,
    )
    rooms_claim: str = _setting(
        "rooms", "claim listing the room patterns a user may join (a list, or one "
        "space-separated string)"
    )
    join_url: str | None = _setting(
        None, "URL the service POSTs {user_id, room, claims} to when a join is not "
        "otherwise allowed; a 2xx answer allows it",
        repr=_url_without_password,
    )
    join_timeout: float = _setting(
        3.0, "seconds an authorizer (join_url or in-process) has to answer; past it the "
        "join is refused"
    )
    join_cache_ttl: float = _setting(
        5.0, "seconds an answer of join_url is reused for the same user and room; 0 asks "
        "every time"
    )
    outbox_limit: int = _setting(
        1 << 20, "bytes queued for one slow client before it is closed with 4009"
    )
    max_message_size: int = _setting(
        64 * 1024, "largest client frame in bytes; larger closes with 1009"
    )
    compression: bool = _setting(
        True, "negotiate permessage-deflate with clients that offer it (browsers do): a "
        "room's frame is compressed once per publish for all of them"
    )
    handshake_timeout: float = _setting(10.0, "seconds a client has to finish the handshake")
    close_timeout: float = _setting(5.0, "seconds to wait for a client's closing handshake")
    ping_interval: float = _setting(
        25.0,
        "seconds of client silence before the service pings it "
        "(plus up to a quarter more, at random)",
    )
    ping_timeout: float = _setting(
        20.0, "seconds a pinged client has to answer before it is closed with 4000"
    )
    max_connections: int = _setting(
        10_000, "authenticated connections in total; past it handshakes get 503"
    )
    max_handshakes: int = _setting(
        1_000, "sockets not yet through an authenticated upgrade, in total; past it new "
        "sockets are closed at once (they never count against max_connections)"
    )
    max_handshakes_per_address: int = _setting(
        50, "of those, from one IP address; 0 for no limit (behind a proxy that connects "
        "from one address)"
    )
    max_connections_per_user: int = _setting(
        100, "connections one user may hold; past it handshakes get 429"
    )
    max_rooms_per_connection: int = _setting(128, "rooms one connection may join")
    rate_limit: float = _setting(20.0, "frames per second a client may send, on average")
    rate_burst: int = _setting(40, "frames a client may send at once above the average")
    max_strikes: int = _setting(
        20, "refused frames (rate limited or invalid) in a row before closing with 4008"
    )
    allowed_origins: tuple[str, ...] = _setting(
        (), "Origin values allowed to connect, each scheme://host[:port] (no path, no "
        "trailing slash), comma separated; empty allows any",
        converter=lambda value: tuple(_origin(part) for part in _tuple_of_str(value)),
    )
    restart_intensity: int = _setting(
        10, "actor restarts allowed within restart_period before the service stops"
    )
    restart_period: float = _setting(5.0, "seconds over which restarts are counted")
    history_size: int = _setting(
        100, "frames each room keeps for clients that reconnect; 0 keeps none"
    )
    history_ttl: float = _setting(
        300.0, "seconds a room keeps a frame, and an idle room its epoch, for recovery"
    )
    history_memory: int = _setting(
        64 * 1024 * 1024, "bytes of kept frames across all rooms; past it the oldest go, "
        "and recovering across them is refused with too_old"
    )
    redis_url: str | None = _setting(
        None, "Redis or Valkey URL (redis://host:6379/0): join the cluster of nodes that share it",
        repr=_url_without_password,
    )
    redis_prefix: str = _setting("roomcast", "prefix of every Redis key and channel")
    redis_sharded: bool = _setting(
        False, "sharded pub/sub (SSUBSCRIBE/SPUBLISH), for Redis Cluster"
    )
    presence_lease: float = _setting(
        10.0, "seconds after which a silent node drops out of the cluster's presence"
    )
    http_timeout: float = _setting(
        10.0, "seconds an HTTP client has to send a request's headers (from its connection "
        "or its previous answer), and again its body (else 408)"
    )
    http_max_requests: int = _setting(
        100, "HTTP requests read and handled at once (past the route and API key checks); "
        "past it the port answers 503 at once"
    )
    workers: int = _setting(
        1, "node processes serving the same ports (SO_REUSEPORT), each a node of the "
        "cluster on redis_url, supervised by one parent; 0 or 'auto' is one per core",
        converter=_worker_count,
    )
    mailbox_size: int = _setting(1024, "capacity of each actor's mailbox")
    shutdown_timeout: float = _setting(5.0, "seconds allowed for closing every client on exit")
    log_level: str = _setting("INFO", "logging level")

    @classmethod
    def from_sources(
        cls, overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
    ) -> Config:
        """Defaults, then `ROOMCAST_*` variables, then explicit overrides (flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            raw = environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                # A field with a converter reads the text itself ('auto' workers).
                values[field.name] = raw if field.converter else _from_text(raw, field.type)
        values.update({k: v for k, v in (overrides or {}).items() if v is not None})
        return cls(**values)

    def public_key_pem(self) -> str | None:
        key = self.jwt_public_key
        if key and key.startswith("@"):
            with open(key[1:], encoding="utf-8") as f:
                return f.read()
        return key


_text_converter = cattrs.Converter()


def _bool_from_text(raw: Any, _: type) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {raw!r}")


_text_converter.register_structure_hook(bool, _bool_from_text)


def _from_text(raw: str, type_: Any) -> Any:
    """An environment string as the field's type (`str | None` stays text)."""
    if type_ in ("tuple[str, ...]", tuple[str, ...]):
        return raw
    annotation = {"int": int, "float": float, "bool": bool}.get(str(type_), str)
    return _text_converter.structure(raw, annotation)
