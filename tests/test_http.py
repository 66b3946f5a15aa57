"""The HTTP side over real HTTP: health, readiness, metrics, the notification and
presence API with its key, static files and the demo routes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import ConnectionClosed, open_websocket_url

from roomcast import CloseCode, Service
from roomcast.actors.base import Crash, accept_crashes

from .cluster import needs_redis, redis_server
from .conftest import connect, eventually, running, token_for

KEY = "test-api-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@asynccontextmanager
async def http_service(**overrides: Any) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A service with its HTTP port on a free port, and a client for that port."""
    async with running(**{"http_port": 0, "api_key": KEY, **overrides}) as service:
        base = f"http://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            yield service, client


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


# health and readiness -------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200_while_running():
    async with http_service() as (_, client):
        response = await client.get("/healthz")
        assert (response.status_code, response.json()) == (200, {"status": "ok"})
        response = await client.get("/readyz")
        assert (response.status_code, response.json()) == (200, {"ready": True, "reasons": []})
        assert (await client.head("/healthz")).status_code == 200


async def test_readyz_turns_503_during_a_drain_while_healthz_stays_200():
    async with http_service() as (service, client), connect(service, 1):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(service.gateway.drain, 5.0)
            await eventually(lambda: service.gateway.draining)
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert response.json() == {"ready": False, "reasons": ["draining"]}
            assert (await client.get("/healthz")).status_code == 200


@needs_redis
async def test_readyz_turns_503_while_redis_is_down_and_back_after():
    with redis_server() as redis:
        async with http_service(redis_url=redis.url, presence_lease=2.0) as (_, client):

            async def status_is(code: int) -> bool:
                return (await client.get("/readyz")).status_code == code

            await eventually(lambda: status_is(200), timeout=5)
            redis.stop()
            await eventually(lambda: status_is(503), timeout=10)
            assert (await client.get("/readyz")).json() == {
                "ready": False, "reasons": ["redis_unavailable"],
            }
            redis.start()
            await eventually(lambda: status_is(200), timeout=20)


async def test_the_http_port_stops_with_the_service_and_can_be_disabled():
    async with http_service() as (service, client):
        port = service.http_port
        assert (await client.get("/healthz")).status_code == 200
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
    async with running(http_port=-1) as service:
        assert service.http_port is None


# metrics ------------------------------------------------------------------------------


async def test_metrics_move_when_frames_flow():
    async with http_service(max_strikes=3) as (service, client):
        before = await scrape(client)
        assert before[("roomcast_connections", ())] == 0
        async with connect(service, 1) as a, connect(service, "bob") as b:
            for c in (a, b):
                await c.request({"type": "join_room", "room": "r"})
            for n in range(5):
                await a.request({"type": "room_message", "room": "r", "data": f"m{n}"})
                await b.recv()
            await a.request({"type": "room_message", "room": "nope", "data": "x"})
            await b.request({"type": "text", "data": "hello"})
            await service.notifications.notify_user("bob", "hi")
            await b.recv()
            after = await scrape(client)
            assert after[("roomcast_connections", ())] == 2
            assert after[("roomcast_users", ())] == 2
            assert after[("roomcast_rooms", ())] >= 4  # the lobby, two personal rooms, "r"
            assert after[("roomcast_ready", ())] == 1

        def count(name: str, **labels: str) -> float:
            key = (name, tuple(sorted(labels.items())))
            return after.get(key, 0) - before.get(key, 0)

        assert count("roomcast_frames_in_total", type="join_room") == 2
        assert count("roomcast_frames_in_total", type="room_message") == 6
        assert count("roomcast_frames_in_total", type="text") == 1
        assert count("roomcast_frames_out_total", type="room_message") == 10  # 5 x 2 members
        # The two welcomes, two join answers and the notification.
        assert count("roomcast_frames_out_total", type="info") == 5
        assert count("roomcast_frames_out_total", type="error") == 1
        assert count("roomcast_deliveries_total") == 11
        assert count("roomcast_drops_total", reason="not_member") == 1
        assert count("roomcast_fan_out_seconds_count") == 6
        assert after[("roomcast_fan_out_seconds_bucket", (("le", "+Inf"),))] >= 6
        assert after[("roomcast_fan_out_seconds_sum", ())] > 0


async def test_metrics_count_handshake_failures_closes_drops_and_restarts():
    async with http_service(max_strikes=2, outbox_limit=16 * 1024) as (service, client):
        with pytest.raises(Exception, match="403"):
            async with open_websocket_url(f"ws://127.0.0.1:{service.port}/api/v1/ws"):
                pass
        # Policy: two refused frames in a row close with 4008.
        async with connect(service, 1) as c:
            await c.request("not json")
            await c.send("still not json")
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv()
        # Slow consumer: a client that stops reading is closed with 4009.
        async with connect(service, 2, message_queue_size=1):
            (conn,) = service.registry.connections_of(2).values()
            with trio.fail_after(20):
                while conn.close_code != CloseCode.SLOW_CONSUMER:
                    await service.notifications.notify_user(2, "x" * 10_000)
        # A room crashes once and is restarted.
        async with connect(service, 3):
            room = service.registry.room("user_3")
            accept_crashes(room)
            await room.send(Crash(RuntimeError("injected by test_http")))

        async def counted() -> bool:
            m = await scrape(client)
            return all(m.get(key, 0) >= 1 for key in (
                ("roomcast_handshake_failures_total", (("cause", "missing_token"),)),
                ("roomcast_closes_total", (("code", "4008"),)),
                ("roomcast_closes_total", (("code", "4009"),)),
                ("roomcast_drops_total", (("reason", "invalid_message"),)),
                ("roomcast_drops_total", (("reason", "slow_consumer"),)),
                ("roomcast_actor_restarts_total", (("actor", "room"),)),
            ))

        await eventually(counted, timeout=5)
        text = (await client.get("/metrics")).text
        # No label names a user, a room or a token.
        assert "user_3" not in text and token_for(1, service.config) not in text
        assert not any(label == "user" for (_, labels) in samples(text) for label, _ in labels)


async def test_messages_dropped_from_redis_are_counted_on_the_metrics_page():
    # The backplane counts each malformed message it drops (tests/test_cluster_trust.py
    # publishes them on a real Redis); the scrape shows the counts by kind.
    async with http_service() as (service, client):
        service.registry.metrics.dropped_from_redis("presence_shape")
        service.registry.metrics.dropped_from_redis("presence_shape")
        key = ("roomcast_redis_dropped_total", (("kind", "presence_shape"),))
        assert (await scrape(client))[key] == 2


async def test_services_in_one_process_keep_separate_metrics():
    async with http_service() as (one, client_one), http_service() as (_, client_two):
        async with connect(one, 1) as c:
            await c.request({"type": "text", "data": "x"})
            assert (await scrape(client_one))[("roomcast_connections", ())] == 1
            assert (await scrape(client_two))[("roomcast_connections", ())] == 0
            key = ("roomcast_frames_in_total", (("type", "text"),))
            assert (await scrape(client_one))[key] == 1
            assert key not in await scrape(client_two)


# the API key --------------------------------------------------------------------------

API = [
    ("POST", "/api/v1/notifications", {"broadcast": True, "message": "x"}),
    ("GET", "/api/v1/users", None),
    ("GET", "/api/v1/users/1", None),
    ("GET", "/api/v1/rooms/r/members", None),
]


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"},
    {"Authorization": f"Bearer {KEY}x"}, {"Authorization": "Bearer"},
], ids=["absent", "wrong", "not-bearer", "longer", "empty"])
async def test_the_api_refuses_a_wrong_or_absent_key_with_401(headers):
    async with http_service() as (_, client):
        for method, path, body in API:
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert "error" in response.json()
            response = await client.request(method, path, json=body, headers=AUTH)
            assert response.status_code == 200, path


async def test_without_a_key_the_api_is_404_with_a_json_reason():
    async with http_service(api_key=None) as (_, client):
        for method, path, body in API:
            response = await client.request(method, path, json=body, headers=AUTH)
            assert response.status_code == 404
            assert "api_key" in response.json()["error"]
        assert (await client.get("/healthz")).status_code == 200


# notifications and presence -----------------------------------------------------------


async def test_notifications_reach_users_rooms_and_everyone_with_the_facades_values():
    async with http_service() as (service, client), \
            connect(service, 1) as a, connect(service, "bob") as b:
        await a.request({"type": "join_room", "room": "r"})

        async def post(body: dict[str, Any]) -> Any:
            response = await client.post("/api/v1/notifications", json=body, headers=AUTH)
            assert response.status_code == 200, response.text
            return response.json()

        assert await post({"user_id": "1", "message": "done", "level": "success",
                           "data": {"id": 7}}) == {"delivered": True}
        assert await a.recv() == {"type": "info", "message": "done", "room": None, "data": {
            "id": 7, "level": "success", "notification": True}}
        assert await post({"user_id": 99, "message": "nobody"}) == {"delivered": False}
        assert await post({"room": "r", "message": "to r"}) == {"users": 1}
        assert (await a.recv())["room"] == "r"
        assert await post({"room": "empty", "message": "x"}) == {"users": 0}
        assert await post({"broadcast": True, "message": "all", "level": "warning",
                           "data": None}) == {"users": 2}
        for c in (a, b):
            frame = await c.recv()
            assert (frame["type"], frame["data"]["level"]) == ("broadcast", "warning")
        await b.nothing_within(0.1)


@pytest.mark.parametrize("body", [
    b"", b"not json", b"[1]", b'{"message": NaN, "broadcast": true}', b"[" * 5000,
    {"message": "no target"},
    {"user_id": 1, "room": "r", "message": "two targets"},
    {"user_id": 1},
    {"user_id": 1, "message": 5},
    {"user_id": 1, "message": "x", "level": "loud"},
    {"user_id": 1, "message": "x", "level": ["info"]},
    {"user_id": 1, "message": "x", "level": "INFO"},
    {"user_id": 1, "message": "x", "data": [1]},
    {"user_id": [1], "message": "x"},
    {"room": {"a": 1}, "message": "x"},
    {"user_id": 1, "message": "x", "extra": 1},
    {"user_id": True, "message": "x"},
    {"user_id": -1, "message": "x"},
    {"user_id": 1.5, "message": "x"},
    {"user_id": "a b", "message": "x"},
    {"user_id": "", "message": "x"},
    {"room": "*", "message": "x"},
    {"room": "a" * 101, "message": "x"},
    {"room": 5, "message": "x"},
    {"broadcast": False, "message": "x"},
    {"broadcast": "yes", "message": "x"},
], ids=repr)
async def test_bad_notification_bodies_get_400_with_a_json_error(body):
    async with http_service() as (_, client):
        kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
        response = await client.post("/api/v1/notifications", headers=AUTH, **kwargs)
        assert response.status_code == 400, response.text
        assert isinstance(response.json()["error"], str)


async def test_a_body_past_max_message_size_gets_413():
    async with http_service(max_message_size=1024) as (_, client):
        body = {"broadcast": True, "message": "x" * 2000}
        response = await client.post("/api/v1/notifications", json=body, headers=AUTH)
        assert response.status_code == 413
        assert (await client.get("/healthz")).status_code == 200  # a new connection


async def test_presence_answers_equal_the_facades():
    async with http_service() as (service, client), \
            connect(service, 1), connect(service, 1), connect(service, "bob") as b, \
            connect(service, 42) as c:
        await b.request({"type": "join_room", "room": "team"})
        await c.request({"type": "join_room", "room": "team"})
        facade = service.notifications

        async def get(path: str) -> Any:
            response = await client.get(path, headers=AUTH)
            assert response.status_code == 200, response.text
            return response.json()

        users = (await get("/api/v1/users"))["users"]
        assert set(users) == facade.get_connected_users() == {1, 42, "bob"}
        assert users == [1, 42, "bob"]
        for user in ("1", "0042", "42", "bob", "alice", "7"):
            answer = await get(f"/api/v1/users/{user}")
            assert answer["connected"] == facade.is_user_connected(user), user
            assert answer["user_id"] == (int(user) if user.isdigit() else user)
        for room in ("team", "user_1", "nobody_here"):
            answer = await get(f"/api/v1/rooms/{room}/members")
            assert set(answer["members"]) == facade.get_room_members(room), room
        assert (await get("/api/v1/rooms/team/members"))["members"] == [42, "bob"]
        for path in ("/api/v1/users/a%20b", "/api/v1/rooms/%2A/members",
                     "/api/v1/rooms/a%2Fb/members"):
            response = await client.get(path, headers=AUTH)
            assert response.status_code == 400, path
            assert "error" in response.json()


# errors, the OpenAPI document, static files, the demo ---------------------------------


async def test_unknown_paths_and_methods_get_json_4xx():
    async with http_service() as (_, client):
        response = await client.get("/nope")
        assert (response.status_code, response.json()) == (404, {"error": "Not found"})
        response = await client.delete("/api/v1/notifications", headers=AUTH)
        assert response.status_code == 405 and response.headers["allow"] == "POST"
        response = await client.post("/healthz")
        assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
        assert "error" in response.json()


async def test_openapi_document_lists_every_route():
    async with http_service() as (_, client):
        document = (await client.get("/openapi.json")).json()
        assert document["openapi"].startswith("3.")
        assert set(document["paths"]) == {
            "/healthz", "/readyz", "/metrics", "/openapi.json", "/api/v1/notifications",
            "/api/v1/users", "/api/v1/users/{user_id}", "/api/v1/rooms/{room}/members",
            "/static/roomcast.js", "/static/roomcast.d.ts",
        }
    async with http_service(demo=True) as (_, client):
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/", "/static/demo.css", "/demo/token"} <= set(paths)


async def test_the_client_script_is_served_as_javascript():
    async with http_service() as (_, client):
        for name in ("roomcast.js", "roomcast.d.ts"):
            response = await client.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith("text/javascript")
            assert response.headers["access-control-allow-origin"] == "*"  # importable
            assert response.content


async def test_demo_routes_are_404_outside_demo_mode():
    async with http_service() as (_, client):
        for method, path in [("GET", "/"), ("GET", "/static/demo.css"),
                             ("POST", "/demo/token")]:
            response = await client.request(method, path, json={"user_id": 1})
            assert response.status_code == 404, path
            assert response.json() == {"error": "Not found"}


async def test_demo_mode_serves_the_page_and_mints_tokens_that_connect():
    async with http_service(demo=True, api_key=None) as (service, client):
        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        css = await client.get("/static/demo.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        response = await client.post("/demo/token", json={
            "user_id": "ada", "scope": "roomcast:broadcast", "ttl": 60})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["ws_url"] == f"ws://127.0.0.1:{service.port}/api/v1/ws"
        async with open_websocket_url(f"{answer['ws_url']}?token={answer['token']}") as ws:
            welcome = json.loads(await ws.get_message())
            assert welcome["data"]["user_id"] == "ada"
            await ws.send_message(json.dumps({"type": "broadcast", "data": "hi"}))
            assert json.loads(await ws.get_message())["type"] == "broadcast"
        for bad in ({}, {"user_id": "a b"}, {"user_id": 1, "ttl": 0},
                    {"user_id": 1, "ttl": True}, {"user_id": 1, "scope": 5},
                    {"user_id": 1, "other": 1}):
            response = await client.post("/demo/token", json=bad)
            assert response.status_code == 400, bad


def test_the_cli_prints_the_demo_url_to_open():
    process = subprocess.Popen(
        [sys.executable, "-m", "roomcast.cli", "serve", "--demo", "--port", "0",
         "--http-port", "0", "--jwt-secret", "cli-test-secret-0123456789abcdef-0123"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert "listening on ws://127.0.0.1:" in process.stdout.readline()
        line = process.stdout.readline()
        assert line.startswith("Demo page: open http://127.0.0.1:"), line
        url = line.split("open ", 1)[1].split(" ", 1)[0]
        assert httpx.get(url, timeout=5).headers["content-type"].startswith("text/html")
    finally:
        process.terminate()
        process.wait(timeout=10)
