"""Finding 9 of issue #12: no secret in repr(Config), and so none in repr(Service) or a
log line that prints either."""

from __future__ import annotations

import pytest

from roomcast import Config
from tests.conftest import running

SECRET = "jwt-secret-that-must-not-show-0123456789"
KEY = "api-key-that-must-not-show"
PASSWORD = "redis-password-that-must-not-show"


@pytest.mark.parametrize("url", [
    f"redis://:{PASSWORD}@127.0.0.1:6379/0",
    f"redis://default:{PASSWORD}@127.0.0.1:6379/0",
    f"rediss://user:{PASSWORD}@redis.internal:6380/2",
])
def test_repr_of_config_hides_secrets_and_a_redis_password(url: str) -> None:
    text = repr(Config(jwt_secret=SECRET, api_key=KEY, redis_url=url))
    assert SECRET not in text and KEY not in text and PASSWORD not in text
    assert "jwt_secret='***'" in text and "api_key='***'" in text
    assert "***@" in text  # the URL still says where Redis is, less the password
    assert "6379" in text or "6380" in text


def test_repr_shows_what_is_not_secret() -> None:
    text = repr(Config(redis_url="redis://127.0.0.1:6379/0"))
    assert "redis_url='redis://127.0.0.1:6379/0'" in text
    assert "jwt_secret=None" in text and "api_key=None" in text


def test_join_url_credentials_and_query_are_hidden() -> None:
    text = repr(Config(join_url=f"https://svc:{PASSWORD}@auth.example/join?key={KEY}"))
    assert PASSWORD not in text and KEY not in text
    assert "auth.example/join" in text


async def test_repr_of_a_running_service_hides_them() -> None:
    async with running(api_key=KEY, jwt_secret=SECRET) as service:
        assert SECRET not in repr(service) and KEY not in repr(service)
