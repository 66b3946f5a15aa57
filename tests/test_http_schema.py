"""schemathesis against /openapi.json, in a short mode: generated requests, valid and
invalid, to a live service; no 5xx, and every answer as the document says (status,
content type, headers, body schema), with invalid requests refused by a 4xx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
import trio
from hypothesis import HealthCheck, assume, given, settings
from schemathesis import GenerationMode

from roomcast import Service, open_service

from .conftest import make_config

KEY = "schema-test-api-key-0123456789"
FRAMING = {"content-length", "transfer-encoding"}


@pytest.fixture(scope="module")
def live_service() -> Iterator[Service]:
    """A service in demo mode with an API key, in a thread of its own: schemathesis
    makes its requests synchronously, from the test's thread."""
    started = threading.Event()
    running: dict[str, Any] = {}

    async def main() -> None:
        config = make_config(http_port=0, api_key=KEY, demo=True)
        async with open_service(config) as service:
            with trio.CancelScope() as scope:
                running.update(service=service, scope=scope,
                               token=trio.lowlevel.current_trio_token())
                started.set()
                await trio.sleep_forever()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(10), "the service did not start"
    yield running["service"]
    trio.from_thread.run_sync(running["scope"].cancel, trio_token=running["token"])
    thread.join(10)


@pytest.mark.parametrize("mode", list(GenerationMode))
def test_the_service_conforms_to_its_openapi_document(live_service: Service, mode: GenerationMode):
    url = f"http://127.0.0.1:{live_service.http_port}/openapi.json"
    schema = schemathesis.openapi.from_url(url)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 13  # every operation but /openapi.json, which it was read from
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (operation.body or operation.path_parameters):
            continue  # nothing in the request to make invalid

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=15, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            # A request's framing headers are the HTTP server's (hypercorn's h11): a
            # malformed Content-Length gets its bare 400 before any route is reached.
            assume(not FRAMING & {name.lower() for name in (case.headers or {})})
            case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"})

        conforms()
