"""Token findings, over real sockets: an authenticator's exception on refresh (no
traceback, no token in the log, `invalid_token`, not 1011), `exp` as a numeric string
(refused at the handshake and on refresh, as RFC 7519's NumericDate is a number), and
the scope claim split on plain spaces only (OAuth 2)."""

from __future__ import annotations

import logging
import time

import pytest

from roomcast import CloseCode, Config, Principal, open_service

from .conftest import close_code, connect, running, token_for
from .test_handshake import claims_for, hs256, refused


async def test_an_authenticator_raising_on_refresh_answers_invalid_token_and_logs_no_token(
    caplog,
):
    caplog.set_level(logging.DEBUG, logger="roomcast")
    secret_text = "tok-SECRET-0123456789"

    async def authenticate(token: str) -> Principal | None:
        if token == "good":
            return Principal(user_id=1)
        raise ValueError(f"cannot parse session {token}")

    config = Config(host="127.0.0.1", port=0, http_port=-1, open_rooms=("*",))
    async with open_service(config, authenticator=authenticate) as service:
        async with connect(service, token="good") as client:
            answer = await client.request({"type": "refresh_token", "data": secret_text})
            assert answer["type"] == "error"
            assert answer["data"] == {"code": "invalid_token"}
            assert secret_text not in answer["message"]
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"
    assert secret_text not in caplog.text
    assert "ValueError" in caplog.text
    assert not any(record.exc_info for record in caplog.records)


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_a_numeric_date_as_a_string_is_refused_at_the_handshake(claim):
    async with running() as service:
        when = int(time.time()) + (3600 if claim == "exp" else -60)
        error = await refused(service, hs256(claims_for(user=1, **{claim: str(when)})))
        assert f"'{claim}' is not a number" in error


async def test_a_refresh_with_a_string_exp_is_refused_and_the_expiry_stands():
    async with running(jwt_leeway=0.0) as service:
        async with connect(service, 1, token=token_for(1, ttl=3)) as client:
            forever = hs256(claims_for(user=1, exp=str(int(time.time()) + 10**6)))
            answer = await client.request({"type": "refresh_token", "data": forever})
            assert answer["data"] == {"code": "invalid_token"}
            assert await close_code(client) == CloseCode.TOKEN_EXPIRED  # the old one stood


async def test_an_exp_too_large_for_a_date_is_refused_at_the_handshake_and_on_refresh():
    async with running() as service:
        huge = hs256(claims_for(user=1, exp=10**400))
        assert "'exp' is not a number" in await refused(service, huge)
        async with connect(service, 1) as client:
            answer = await client.request({"type": "refresh_token", "data": huge})
            assert answer["data"] == {"code": "invalid_token"}  # not a 1011
            assert (await client.request({"type": "text", "data": "x"}))["message"] == "Echo: x"


async def test_the_scope_claim_splits_on_plain_spaces_only():
    async with running() as service:
        ideographic = token_for(1, service.config, scope="other\u3000roomcast:broadcast")
        async with connect(service, 1, token=ideographic) as client:
            answer = await client.request({"type": "broadcast", "data": "hi"})
            assert answer["data"] == {"code": "forbidden"}
        plain = token_for(2, service.config, scope="other roomcast:broadcast")
        async with connect(service, 2, token=plain) as client:
            assert (await client.request({"type": "broadcast", "data": "hi"}))["type"] == \
                "broadcast"


async def test_a_room_token_is_not_a_connection_token():
    async with running() as service:
        room_token = token_for(1, service.config, extra={"room": "project_7"})
        assert "room token" in await refused(service, room_token)
        async with connect(service, 1) as client:
            answer = await client.request({"type": "refresh_token", "data": room_token})
            assert answer["data"] == {"code": "invalid_token"}
