"""Who is connecting: JWT verification, or the embedding application's own check.

The token is a secret: it is never logged, never put in an error text, never in a
metric label. Causes of refusal are short fixed strings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import attrs
import jwt

from roomcast.config import Config
from roomcast.protocol import UserId, normalize_user_id
from roomcast.protocol.access import patterns_from_claim, scope_values

log = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


def _patterns(rooms: Iterable[str]) -> tuple[str, ...]:
    return tuple(rooms)


@attrs.frozen
class Principal:
    """An authenticated user, as the handshake learned it."""

    user_id: UserId
    can_broadcast: bool = False
    expires_at: float | None = None  # unix time, from `exp`
    # Glob patterns of the rooms this user may join (the token's `rooms` claim).
    rooms: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    # The verified token's claims, for an application's room authorizer (the HTTP one
    # sends them to `join_url`). Never logged: not in the repr.
    claims: Mapping[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


Authenticator = Callable[[str], Awaitable[Principal | None]]

# The application's say on a join no other rule allowed: `(principal, room) -> bool`.
# Anything but True, an exception or a time-out (`join_timeout`) refuses.
RoomAuthorizer = Callable[[Principal, str], Awaitable[bool]]

# The claim that makes a token a room token, and names its room.
ROOM_CLAIM = "room"

# The claims that hold a NumericDate (RFC 7519, section 2): a JSON number.
NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")


class AuthError(Exception):
    """A refused token; `cause` is a fixed string safe for logs and metrics."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause
        self.message = message


class ConfigError(ValueError):
    pass


_PYJWT_CAUSES: list[tuple[type[Exception], str, str]] = [
    (jwt.ExpiredSignatureError, "expired", "Token expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "Token not yet valid"),
    (jwt.InvalidAudienceError, "wrong_audience", "Token audience not accepted"),
    (jwt.InvalidIssuerError, "wrong_issuer", "Token issuer not accepted"),
    (jwt.MissingRequiredClaimError, "missing_claim", "Token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "disallowed_algorithm", "Token algorithm not accepted"),
    (jwt.InvalidSignatureError, "bad_signature", "Token signature invalid"),
    (jwt.DecodeError, "malformed", "Token malformed"),
]


def allowed_algorithms(config: Config) -> tuple[str, ...]:
    """The configured allow-list, checked against the keys we have; never `none`."""
    algorithms = config.jwt_algorithms
    if not algorithms:
        algorithms = ()
        if config.jwt_secret:
            algorithms += ("HS256",)
        if config.jwt_public_key:
            algorithms += ("RS256", "ES256", "EdDSA")
    for alg in algorithms:
        if alg in HMAC_ALGORITHMS and not config.jwt_secret:
            raise ConfigError(f"algorithm {alg} needs --jwt-secret")
        if alg in ASYMMETRIC_ALGORITHMS and not config.jwt_public_key:
            raise ConfigError(f"algorithm {alg} needs --jwt-public-key")
        if alg not in HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
            raise ConfigError(f"algorithm {alg!r} is not accepted")
    return algorithms


class JwtAuthenticator:
    """Checks a token against the configuration: signature, algorithm, exp/nbf/aud/iss."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._algorithms = allowed_algorithms(config)
        if not self._algorithms:
            raise ConfigError("set --jwt-secret or --jwt-public-key (or pass an authenticator)")
        self._public_key = config.public_key_pem()
        kinds = {alg in HMAC_ALGORITHMS for alg in self._algorithms}
        # Every allowed algorithm takes the same key: no need to read the header first.
        self._single_key = self._key_for(self._algorithms[0]) if len(kinds) == 1 else None
        if config.jwt_secret and len(config.jwt_secret.encode()) < 32:
            log.warning("the JWT secret is shorter than 32 bytes; use a longer one in production")

    def _key_for(self, alg: str) -> Any:
        # The key is chosen by our allow-list, never by the token: a public key can
        # never be used as an HMAC secret.
        return self._config.jwt_secret if alg in HMAC_ALGORITHMS else self._public_key

    def _key_and_algorithms(self, token: str) -> tuple[Any, list[str]]:
        """The key to verify with, and the algorithms it may verify. With one kind of
        key (the usual case) PyJWT checks the token's `alg` against the allow-list
        itself; with both, the header is read first to pick the key."""
        if self._single_key is not None:
            return self._single_key, list(self._algorithms)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:  # DecodeError, or InvalidTokenError for a bad `kid`
            raise AuthError("malformed", "Token malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthError("disallowed_algorithm", "Token algorithm not accepted")
        return self._key_for(alg), [alg]

    def verify(self, token: str) -> Principal:
        """A connection token's user. A room token (one with a `room` claim) is not
        one: handed out for one room, it must not open a whole connection."""
        claims = self.verified_claims(token)
        if ROOM_CLAIM in claims:
            raise AuthError("room_token", "Token is a room token, not a connection token")
        return principal_from_claims(claims, self._config)

    def verify_room_token(self, token: str, user_id: UserId, room: str) -> float | None:
        """A room token's expiry (unix time, or None without `exp`), once it is
        verified like a connection token (keys, algorithms, leeway, exp, aud, iss) and
        names this user (the user id claim) and exactly this room (`room`)."""
        claims = self.verified_claims(token)
        try:
            token_user = normalize_user_id(claims.get(self._config.user_id_claim))
        except ValueError:
            raise AuthError("invalid_subject", "Token has no usable user id") from None
        if token_user != user_id:
            raise AuthError("wrong_user", "Token is for another user")
        if claims.get(ROOM_CLAIM) != room:
            raise AuthError("wrong_room", "Token is for another room")
        return expiry_of(claims)

    def verified_claims(self, token: str) -> dict[str, Any]:
        """The claims of a token that passes every check, or AuthError."""
        config = self._config
        key, algorithms = self._key_and_algorithms(token)
        required = ["exp"] if config.jwt_require_exp else []
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=algorithms,
                audience=config.jwt_audience,
                issuer=config.jwt_issuer,
                leeway=config.jwt_leeway,
                options={
                    "require": required,
                    "verify_aud": config.jwt_audience is not None,
                    # PyJWT wants a string `sub`; an int one is a user id too (protocol.md),
                    # and principal_from_claims checks the configured claim itself.
                    "verify_sub": False,
                },
            )
        except jwt.PyJWTError as exc:
            for kind, cause, message in _PYJWT_CAUSES:
                if isinstance(exc, kind):
                    raise AuthError(cause, message) from None
            raise AuthError("invalid", "Token invalid") from None
        for name in NUMERIC_DATE_CLAIMS:
            # PyJWT takes `"exp": "1764..."` (a string) and checks it, but it is not a
            # NumericDate; refused here, the handshake and a refresh alike.
            if name in claims and numeric_date(claims[name]) is None:
                raise AuthError("malformed", f"Token claim '{name}' is not a number")
        return claims

    async def __call__(self, token: str) -> Principal | None:
        return self.verify(token)


def checked(authenticate: Authenticator) -> Authenticator:
    """The authenticator as the gateway uses it: whatever it returns is held to the
    same rules as a JWT (the user-id rule, a finite expiry), so that an application's
    `Principal(user_id="42")` is the same user as `notify_user(42)`."""

    async def check(token: str) -> Principal | None:
        try:
            principal = await authenticate(token)
        except AuthError:
            raise
        except Exception as exc:  # its text may hold the token: the type name alone
            log_failure_once("the authenticator", exc)
            raise AuthError("authenticator_error", "Token rejected") from None
        if principal is None:
            return None
        try:
            user_id = normalize_user_id(principal.user_id)
        except ValueError:
            raise AuthError("invalid_subject", "Token has no usable user id") from None
        expires_at = principal.expires_at
        if expires_at is not None and not math.isfinite(expires_at):
            raise AuthError("malformed", "Token malformed")
        return attrs.evolve(principal, user_id=user_id)

    return check


_failures_logged: set[tuple[str, str]] = set()


def log_failure_once(what: str, error: BaseException) -> None:
    """An application callback (authenticator, authorizer) raised or timed out: logged
    by its exception's type name alone (its text may hold a token), at WARNING the first
    time for each cause and at DEBUG after, so that a client cannot fill the log."""
    cause = (what, type(error).__name__)
    level = logging.DEBUG if cause in _failures_logged else logging.WARNING
    _failures_logged.add(cause)
    log.log(level, "%s failed (%s); refused", what, cause[1])


def principal_from_claims(claims: dict[str, Any], config: Config) -> Principal:
    try:
        user_id = normalize_user_id(claims.get(config.user_id_claim))
    except ValueError:
        raise AuthError("invalid_subject", "Token has no usable user id") from None
    return Principal(
        user_id=user_id,
        can_broadcast=config.open_broadcast or has_scope(claims, config),
        expires_at=expiry_of(claims),
        rooms=patterns_from_claim(claims.get(config.rooms_claim)),
        claims=claims,
    )


def numeric_date(value: object) -> float | None:
    """A NumericDate as unix time, or None for anything else: a string, a boolean, a
    number too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def expiry_of(claims: Mapping[str, Any]) -> float | None:
    """`exp` as unix time (verified_claims has refused any `exp` that is not a number)."""
    return numeric_date(claims.get("exp"))


def has_scope(claims: dict[str, Any], config: Config) -> bool:
    """OAuth 2 style: a string of values separated by plain spaces (a JSON list is
    accepted too)."""
    return config.broadcast_scope in scope_values(claims.get(config.broadcast_claim))


def mint_token(
    config: Config,
    user_id: UserId,
    ttl: float = 3600.0,
    scope: str | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    """A token the service accepts, signed with the configured HMAC secret."""
    if not config.jwt_secret:
        raise ConfigError("minting needs --jwt-secret")
    now = int(time.time())
    claims: dict[str, Any] = {config.user_id_claim: str(user_id), "iat": now, "exp": now + int(ttl)}
    if scope:
        claims[config.broadcast_claim] = scope
    if config.jwt_audience:
        claims["aud"] = config.jwt_audience
    if config.jwt_issuer:
        claims["iss"] = config.jwt_issuer
    claims.update(extra or {})
    algorithm = next((a for a in allowed_algorithms(config) if a in HMAC_ALGORITHMS), "HS256")
    return jwt.encode(claims, config.jwt_secret, algorithm=algorithm)
