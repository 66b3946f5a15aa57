"""Who is connecting: JWT verification, or the embedding application's own check.

The token is a secret: it is never logged, never put in an error text, never in a
metric label. Causes of refusal are short fixed strings.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import jwt

from roomcast.config import Config
from roomcast.protocol import UserId, normalize_user_id

log = logging.getLogger(__name__)

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


@attrs.frozen
class Principal:
    """An authenticated user, as the handshake learned it."""

    user_id: UserId
    can_broadcast: bool = False
    expires_at: float | None = None  # unix time, from `exp`


Authenticator = Callable[[str], Awaitable[Principal | None]]


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
        return principal_from_claims(claims, config)

    async def __call__(self, token: str) -> Principal | None:
        return self.verify(token)


def checked(authenticate: Authenticator) -> Authenticator:
    """The authenticator as the gateway uses it: whatever it returns is held to the
    same rules as a JWT (the user-id rule, a finite expiry), so that an application's
    `Principal(user_id="42")` is the same user as `notify_user(42)`."""

    async def check(token: str) -> Principal | None:
        principal = await authenticate(token)
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


def principal_from_claims(claims: dict[str, Any], config: Config) -> Principal:
    try:
        user_id = normalize_user_id(claims.get(config.user_id_claim))
    except ValueError:
        raise AuthError("invalid_subject", "Token has no usable user id") from None
    exp = claims.get("exp")
    return Principal(
        user_id=user_id,
        can_broadcast=config.open_broadcast or has_scope(claims, config),
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


def has_scope(claims: dict[str, Any], config: Config) -> bool:
    """OAuth 2 style: a space-separated string (a JSON list is accepted too)."""
    value = claims.get(config.broadcast_claim)
    if isinstance(value, str):
        return config.broadcast_scope in value.split()
    if isinstance(value, list):
        return config.broadcast_scope in value
    return False


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
