"""The Connecting table of protocol.md, over real TCP WebSocket connections.

Every refused handshake is an HTTP answer with a JSON body (no upgrade); after each
one the service must still accept a good client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from trio_websocket import ConnectionRejected, open_websocket_url

from roomcast import Principal, Service, open_service

from .conftest import SECRET, connect, make_config, running, token_for, ws_url

# helpers ------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def now() -> int:
    return int(time.time())


def claims_for(user: Any = 7, **claims: Any) -> dict[str, Any]:
    """A claim set the default service accepts; `name=None` removes a claim."""
    values: dict[str, Any] = {"sub": str(user), "iat": now(), "exp": now() + 3600}
    values.update(claims)
    return {k: v for k, v in values.items() if v is not None}


def hs256(claims: dict[str, Any], secret: str = SECRET, **kwargs: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kwargs)


def handmade(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    """A token built without PyJWT (which refuses to build the malicious ones)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def hmac_signer(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


async def refused(
    service: Service,
    token: str | None = None,
    *,
    query: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    status: int = 403,
) -> str:
    """Open a handshake that must be refused with `status`; return the error text."""
    if query is None:
        query = "" if token is None else f"?token={token}"
    with trio.fail_after(5), pytest.raises(ConnectionRejected) as info:
        async with open_websocket_url(ws_url(service, query), extra_headers=headers or []):
            pass
    rejection = info.value
    assert rejection.status_code == status, (rejection.status_code, rejection.body)
    body = json.loads(rejection.body)
    assert isinstance(body, dict)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    if token:
        text = rejection.body.decode()
        assert token not in text
        signature = token.split(".")[-1]
        assert len(signature) < 8 or signature not in text
    return body["error"]


async def accepted(service: Service, token: str, **kwargs: Any) -> dict[str, Any]:
    """Connect with `token` and return the welcome frame's data."""
    async with connect(service, token=token, **kwargs) as client:
        welcome = client.welcome
    assert welcome["type"] == "info"
    assert welcome["room"] is None
    user = welcome["data"]["user_id"]
    assert welcome["data"] == {"user_id": user, "rooms": [f"user_{user}"]}
    assert welcome["message"] == f"Connected successfully. You are in room: user_{user}"
    return welcome["data"]


async def still_serves(service: Service, user: Any = 99) -> None:
    """A good client is still accepted (the default HMAC token, or a configured signer)."""
    async with connect(service, user) as client:
        assert client.welcome["data"]["user_id"] == user


def pem(public_key: Any) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[Any, str]]:
    """alg -> (private key, PEM text of its public key)."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    return {
        "RS256": (rsa_key, pem(rsa_key.public_key())),
        "ES256": (ec_key, pem(ec_key.public_key())),
        "EdDSA": (ed_key, pem(ed_key.public_key())),
    }


@asynccontextmanager
async def with_authenticator(authenticate: Any) -> AsyncIterator[Service]:
    async with open_service(make_config(), authenticator=authenticate) as service:
        yield service


# valid tokens -------------------------------------------------------------------------------


async def test_valid_token_gets_welcome_first(service):
    async with connect(service, 7) as client:
        assert client.welcome == {
            "type": "info",
            "message": "Connected successfully. You are in room: user_7",
            "data": {"user_id": 7, "rooms": ["user_7"]},
            "room": None,
        }
        # The connection is live: the next frame is an answer to ours.
        assert (await client.request({"type": "text", "data": "hi"}))["message"] == "Echo: hi"


async def test_bearer_header_instead_of_query(service):
    token = token_for(8, service.config)
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    async with open_websocket_url(ws_url(service), extra_headers=headers) as ws:
        with trio.fail_after(5):
            welcome = json.loads(await ws.get_message())
    assert welcome["data"] == {"user_id": 8, "rooms": ["user_8"]}


async def test_bearer_scheme_is_case_insensitive(service):
    token = token_for(9, service.config)
    headers = [(b"authorization", f"bearer {token}".encode())]
    async with open_websocket_url(ws_url(service), extra_headers=headers) as ws:
        with trio.fail_after(5):
            assert json.loads(await ws.get_message())["data"]["user_id"] == 9


@pytest.mark.parametrize(
    ("sub", "user_id"),
    [("42", 42), (42, 42), ("alice", "alice"), ("a.b@c-d:e_f", "a.b@c-d:e_f"), ("007", 7)],
    ids=repr,
)
async def test_user_id_from_sub(service, sub, user_id):
    # An integer claim, or a string of digits, gives an int user id (protocol.md).
    data = await accepted(service, hs256(claims_for(sub=sub)))
    assert data["user_id"] == user_id
    assert type(data["user_id"]) is type(user_id)


async def test_string_digits_user_reached_as_int_and_str(service):
    async with connect(service, token=hs256(claims_for(sub="42"))) as client:
        assert client.welcome["data"]["user_id"] == 42
        assert await service.notifications.notify_user(42, "x") is True
        assert (await client.recv())["message"] == "x"
        assert await service.notifications.notify_user("42", "y") is True
        assert (await client.recv())["message"] == "y"
        assert service.notifications.is_user_connected("42")
        assert service.notifications.get_connected_users() == {42}


async def test_user_id_claim_configurable():
    async with running(user_id_claim="uid") as service:
        data = await accepted(service, hs256(claims_for(sub="1", uid="5")))
        assert data["user_id"] == 5
        await refused(service, hs256(claims_for(sub="1")))
        await still_serves(service)


# refused tokens -------------------------------------------------------------------------------


async def test_missing_token(service):
    await refused(service)
    await refused(service, query="?token=")
    await refused(service, query="?other=1")
    await refused(service, headers=[(b"Authorization", b"Bearer")])
    await refused(service, headers=[(b"Authorization", b"Basic dXNlcjpwYXNz")])
    await still_serves(service)


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "a.b", "...", "eyJhbGciOiJIUzI1NiJ9", "x" * 2000,
     b64url(b"[1]") + "." + b64url(b"{}") + ".sig",
     b64url(b'{"alg": 5}') + "." + b64url(b"{}") + ".sig"],
    ids=lambda t: t[:20],
)
async def test_garbage_token(service, token):
    await refused(service, token)
    await still_serves(service)


async def test_bad_signature(service):
    await refused(service, hs256(claims_for(), secret="another-secret-0123456789abcdefghij"))
    # A valid token whose signature was tampered with.
    header, payload, _ = token_for(7, service.config).split(".")
    await refused(service, f"{header}.{payload}.{b64url(b'x' * 32)}")
    # A valid signature over other claims.
    forged = b64url(json.dumps(claims_for(user=1)).encode())
    await refused(service, f"{header}.{forged}.{token_for(7, service.config).split('.')[2]}")
    await still_serves(service)


async def test_expired_beyond_leeway_refused_within_accepted(service):
    assert service.config.jwt_leeway == 10
    assert "xpired" in await refused(service, hs256(claims_for(exp=now() - 60)))
    data = await accepted(service, hs256(claims_for(user=3, exp=now() - 3)))
    assert data["user_id"] == 3
    await still_serves(service)


async def test_leeway_configurable():
    async with running(jwt_leeway=0) as service:
        await refused(service, hs256(claims_for(exp=now() - 3)))
        await still_serves(service)
    async with running(jwt_leeway=120) as service:
        await accepted(service, hs256(claims_for(exp=now() - 60)))


async def test_not_yet_valid(service):
    await refused(service, hs256(claims_for(nbf=now() + 120)))
    await accepted(service, hs256(claims_for(nbf=now() + 3)))  # within the leeway
    await accepted(service, hs256(claims_for(nbf=now() - 3)))
    await still_serves(service)


async def test_missing_exp_refused_by_default(service):
    assert service.config.jwt_require_exp is True
    await refused(service, hs256(claims_for(exp=None)))
    await still_serves(service)


async def test_missing_exp_accepted_when_not_required():
    async with running(jwt_require_exp=False) as service:
        assert (await accepted(service, hs256(claims_for(user=4, exp=None))))["user_id"] == 4
        # An expired token is still refused.
        await refused(service, hs256(claims_for(exp=now() - 60)))


async def test_audience():
    async with running(jwt_audience="roomcast") as service:
        await refused(service, hs256(claims_for(aud="other")))
        await refused(service, hs256(claims_for()))  # no aud at all
        await refused(service, hs256(claims_for(aud=["other", "another"])))
        await accepted(service, hs256(claims_for(aud="roomcast")))
        await accepted(service, hs256(claims_for(aud=["other", "roomcast"])))
        await still_serves(service)


async def test_audience_not_checked_when_not_configured(service):
    await accepted(service, hs256(claims_for(aud="anything")))


async def test_issuer():
    async with running(jwt_issuer="https://auth.example") as service:
        await refused(service, hs256(claims_for(iss="https://evil.example")))
        await refused(service, hs256(claims_for()))  # no iss at all
        await accepted(service, hs256(claims_for(iss="https://auth.example")))
        await still_serves(service)


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none(service, alg):
    claims = claims_for()
    unsigned = f"{b64url(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}." \
               f"{b64url(json.dumps(claims).encode())}."
    await refused(service, unsigned)
    # Also with a signature part that is not empty.
    await refused(service, unsigned + b64url(b"sig"))
    await still_serves(service)


async def test_non_string_kid_is_a_plain_refusal(service, caplog):
    # PyJWT raises a bare InvalidTokenError (not a DecodeError) while reading this
    # header; it must be a token refusal, not an "authenticator failed" crash report.
    caplog.set_level(logging.INFO)
    token = handmade({"alg": "HS256", "typ": "JWT", "kid": 5}, claims_for(),
                     hmac_signer(SECRET.encode()))
    await refused(service, token)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    await still_serves(service)


@pytest.mark.parametrize(
    "sub", [None, "", True, False, 1.5, 0.0, [], ["1"], {}, {"id": 1}, "a b", "é", "u" * 200],
    ids=repr,
)
async def test_unusable_sub(service, sub):
    claims = claims_for()
    if sub is None:
        del claims["sub"]
    else:
        claims["sub"] = sub
    # PyJWT refuses to build some of these, so sign by hand.
    await refused(service, handmade({"alg": "HS256", "typ": "JWT"}, claims,
                                    hmac_signer(SECRET.encode())))
    await still_serves(service)


async def test_wrong_path_is_404(service):
    token = token_for(1, service.config)
    base = f"ws://127.0.0.1:{service.port}"
    for path in ["/", "/api/v1/wss", "/api/v1/ws/extra", "/API/V1/WS", "/api/v2/ws"]:
        with trio.fail_after(5), pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(f"{base}{path}?token={token}"):
                pass
        assert info.value.status_code == 404, path
    await still_serves(service)


async def test_custom_path():
    async with running(path="/live") as service:
        assert service.config.path == "/live"
        await accepted(service, token_for(1, service.config))
        with trio.fail_after(5), pytest.raises(ConnectionRejected) as info:
            async with open_websocket_url(
                f"ws://127.0.0.1:{service.port}/api/v1/ws?token={token_for(1)}"
            ):
                pass
        assert info.value.status_code == 404


# algorithms and keys ---------------------------------------------------------------------------


async def test_hs256_refused_when_only_rs256_allowed(keys):
    private, public = keys["RS256"]
    async with running(jwt_algorithms="RS256", jwt_public_key=public) as service:
        # The HMAC secret is configured, but HS256 is not on the allow-list.
        await refused(service, hs256(claims_for()))
        await accepted(service, jwt.encode(claims_for(user=2), private, algorithm="RS256"))
    async with running(jwt_secret=None, jwt_public_key=public) as service:
        await refused(service, hs256(claims_for()))


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_asymmetric_token_accepted(keys, alg):
    private, public = keys[alg]
    async with running(jwt_secret=None, jwt_public_key=public) as service:
        data = await accepted(service, jwt.encode(claims_for(user=11), private, algorithm=alg))
        assert data["user_id"] == 11
        # Signed by another key of the same kind: refused.
        other = {"RS256": lambda: rsa.generate_private_key(65537, 2048),
                 "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
                 "EdDSA": ed25519.Ed25519PrivateKey.generate}[alg]()
        await refused(service, jwt.encode(claims_for(), other, algorithm=alg))
        # The same claims under another algorithm family: refused (wrong key type).
        for other_alg, (other_key, _) in keys.items():
            if other_alg != alg:
                await refused(service, jwt.encode(claims_for(), other_key, algorithm=other_alg))
        await accepted(service, jwt.encode(claims_for(user=12), private, algorithm=alg))


async def test_public_key_from_file(keys, tmp_path):
    private, public = keys["ES256"]
    path = tmp_path / "key.pem"
    path.write_text(public)
    async with running(jwt_secret=None, jwt_public_key=f"@{path}") as service:
        await accepted(service, jwt.encode(claims_for(user=13), private, algorithm="ES256"))
        await refused(service, hs256(claims_for()))


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
@pytest.mark.parametrize("hmac_alg", ["HS256", "HS384", "HS512"])
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_public_key_as_hmac_secret_cve_2022_29217(keys, alg, hmac_alg):
    _, public = keys[alg]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[hmac_alg]

    def sign(data: bytes) -> bytes:
        return hmac.new(public.encode(), data, digest).digest()

    forged = handmade({"alg": hmac_alg, "typ": "JWT"}, claims_for(user=666), sign)
    async with running(jwt_secret=None, jwt_public_key=public) as service:
        await refused(service, forged)
    # Even with HMAC allowed too, the HMAC key is the secret, never the public key.
    async with running(jwt_public_key=public, jwt_algorithms=f"{hmac_alg},{alg}") as service:
        await refused(service, forged)
        await still_serves(service)


# custom authenticator ------------------------------------------------------------------------


async def test_custom_authenticator_principal():
    seen: list[str] = []

    async def authenticate(token: str) -> Principal | None:
        seen.append(token)
        await trio.sleep(0)  # a checkpoint (no time passes): an authenticator that awaits
        return Principal(user_id="bob") if token == "letmein" else None

    async with with_authenticator(authenticate) as service:
        data = await accepted(service, "letmein")
        assert data["user_id"] == "bob"
        # A perfectly good JWT means nothing to this authenticator.
        good_jwt = token_for(1, service.config)
        await refused(service, good_jwt)
        assert seen == ["letmein", good_jwt]
        # The header works with a custom authenticator too.
        async with open_websocket_url(
            ws_url(service), extra_headers=[(b"Authorization", b"Bearer letmein")]
        ) as ws:
            with trio.fail_after(5):
                assert json.loads(await ws.get_message())["data"]["user_id"] == "bob"


async def test_custom_authenticator_none_is_403():
    async def authenticate(token: str) -> Principal | None:
        return None

    async with with_authenticator(authenticate) as service:
        await refused(service, "anything")
        await refused(service)  # no token: refused before the authenticator


async def test_custom_authenticator_raising_is_403_and_service_survives():
    async def authenticate(token: str) -> Principal | None:
        if token == "boom":
            raise RuntimeError("database down")
        return Principal(user_id=int(token), can_broadcast=True)

    async with with_authenticator(authenticate) as service:
        for _ in range(3):
            await refused(service, "boom")
            async with connect(service, token="21") as client:
                assert client.welcome["data"]["user_id"] == 21
                # can_broadcast from the Principal is honoured.
                reply = await client.request({"type": "broadcast", "data": "all"})
                assert reply["type"] == "broadcast"


async def test_custom_authenticator_int_principal_reached_by_str():
    async def authenticate(token: str) -> Principal | None:
        return Principal(user_id=42)

    async with with_authenticator(authenticate) as service:
        async with connect(service, token="t") as client:
            assert client.welcome["data"]["user_id"] == 42
            assert await service.notifications.notify_user("42", "z") is True
            assert (await client.recv())["message"] == "z"


# the token stays out of the logs ----------------------------------------------------------------


def leaks(records: list[logging.LogRecord], secrets: list[str]) -> list[str]:
    found = []
    for record in records:
        if record.name == "trio-websocket" and str(record.msg).startswith("Connecting to"):
            continue  # the test's own client logging its URL, not the service
        texts = [str(record.msg), record.getMessage(), record.exc_text or "",
                 *(repr(a) for a in (record.args or ()))]
        if record.exc_info and record.exc_info[1] is not None:
            texts.append(logging.Formatter().formatException(record.exc_info))
        for secret in secrets:
            if any(secret in text for text in texts):
                found.append(f"{record.name}: {record.getMessage()}")
    return found


async def test_token_never_logged(caplog, keys):
    caplog.set_level(logging.DEBUG)
    async with running(jwt_audience="roomcast", jwt_issuer="https://auth") as service:
        ok = {"aud": "roomcast", "iss": "https://auth"}
        good = hs256(claims_for(user=5, **ok))
        tokens = [
            good,
            hs256(claims_for(**ok), secret="another-secret-0123456789abcdefghij"),
            hs256(claims_for(exp=now() - 600, **ok)),
            hs256(claims_for(nbf=now() + 600, **ok)),
            hs256(claims_for(aud="other", iss="https://auth")),
            hs256(claims_for(aud="roomcast", iss="https://evil")),
            hs256(claims_for(sub=None, **ok)),
            handmade({"alg": "none"}, claims_for(**ok), lambda _: b""),
            handmade({"alg": "HS256", "kid": 5}, claims_for(**ok), hmac_signer(SECRET.encode())),
            handmade({"alg": "HS256"}, claims_for(**ok), hmac_signer(keys["RS256"][1].encode())),
            "not-a-jwt-but-secret-" + "s" * 40,
        ]
        await accepted(service, good)
        async with connect(service, token=good) as client:
            await client.request({"type": "text", "data": "hi"})
        headers = [(b"Authorization", f"Bearer {good}".encode())]
        async with open_websocket_url(ws_url(service), extra_headers=headers) as ws:
            await ws.get_message()
        for token in tokens[1:]:
            await refused(service, token)
            await refused(service, headers=[(b"Authorization", f"Bearer {token}".encode())])
    secrets = [*tokens, *(t.split(".")[-1] for t in tokens if t.count(".") == 2 and
                          len(t.split(".")[-1]) >= 16)]
    assert caplog.records  # the service does log its handshakes
    assert not leaks(caplog.records, secrets)


async def test_token_not_logged_when_authenticator_raises_with_it(caplog):
    caplog.set_level(logging.DEBUG)
    token = "opaque-session-token-0123456789abcdef"

    async def authenticate(token: str) -> Principal | None:
        raise ValueError(f"no session {token}")

    async with with_authenticator(authenticate) as service:
        await refused(service, token)
    assert not leaks(caplog.records, [token])


# broadcast permission ---------------------------------------------------------------------------


async def try_broadcast(service: Service, token: str, watcher_user: int = 500) -> dict[str, Any]:
    """Broadcast with `token`; return the sender's reply and check what a watcher saw."""
    async with connect(service, watcher_user) as watcher, connect(service, token=token) as sender:
        reply = await sender.request({"type": "broadcast", "data": "hello all"})
        if reply["type"] == "broadcast":
            assert reply["message"] == "hello all"
            assert (await watcher.recv())["message"] == "hello all"
        else:
            await watcher.nothing_within(0.2)
        return reply


def assert_forbidden(reply: dict[str, Any]) -> None:
    assert reply["type"] == "error"
    assert reply["data"] == {"code": "forbidden"}
    assert reply["message"].startswith("Not allowed")


async def test_broadcast_scope(service):
    config = service.config
    reply = await try_broadcast(service, token_for(1, config, scope="roomcast:broadcast other"))
    assert reply["type"] == "broadcast"
    assert reply["data"] == {"from_user_id": 1}
    reply = await try_broadcast(service, token_for(2, config, scope="other roomcast:broadcast"))
    assert reply["type"] == "broadcast"
    assert_forbidden(await try_broadcast(service, token_for(3, config, scope="other")))
    assert_forbidden(await try_broadcast(service, token_for(4, config)))
    assert_forbidden(
        await try_broadcast(service, token_for(5, config, scope="roomcast:broadcaster"))
    )
    assert_forbidden(
        await try_broadcast(service, token_for(6, config, scope="roomcast:broadcast-x"))
    )


async def test_broadcast_scope_as_json_list(service):
    token = hs256(claims_for(user=1, scope=["other", "roomcast:broadcast"]))
    assert (await try_broadcast(service, token))["type"] == "broadcast"
    assert_forbidden(await try_broadcast(service, hs256(claims_for(user=2, scope=["other"]))))
    assert_forbidden(await try_broadcast(service, hs256(claims_for(user=3, scope=7))))


async def test_open_broadcast():
    async with running(open_broadcast=True) as service:
        assert (await try_broadcast(service, token_for(1, service.config)))["type"] == "broadcast"


async def test_broadcast_claim_and_scope_configurable():
    async with running(broadcast_claim="perms", broadcast_scope="admin") as service:
        assert (await try_broadcast(service, hs256(claims_for(user=1, perms="x admin"))))[
            "type"] == "broadcast"
        assert_forbidden(
            await try_broadcast(service, hs256(claims_for(user=2, scope="roomcast:broadcast")))
        )
        assert_forbidden(
            await try_broadcast(service, hs256(claims_for(user=3, perms="roomcast:broadcast")))
        )
