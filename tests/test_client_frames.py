"""Hostile client frames over a real socket: deep nesting and other frames that no reply
could carry get `invalid_message` and cost the service nothing; a frame that hits a bug
gets `internal_error`, and the log gets one traceback per connection, not one per frame."""

from __future__ import annotations

import json
import logging

import pytest
import trio

from roomcast import CloseCode

from .conftest import close_code, connect, crash_at_next_frame, eventually, running


def deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.exc_info]


HOSTILE = [
    *(f'{{"type": "room_message", "room": "r", "data": {deep(n)}}}' for n in (400, 980, 5000)),
    '{"type": "room_message", "room": "r", "data": {"text": "x", "extra": ' + deep(33) + "}}",
    '{"type": "broadcast", "data": ' + deep(2000) + "}",
    '{"type": "join_room", "room": "r", "data": ' + deep(5000, '{"offset": 1}') + "}",
    deep(100_000),
    '{"type": "text", "data": ' + "{\"a\": " * 3000 + "1" + "}" * 3000 + "}",
    '{"type": "room_message", "room": "r", "data": "\\ud800"}',
    '{"type": "room_message", "room": "r", "data": NaN}',
    '{"type": "room_message", "room": "r", "data": 1e999}',
]


async def test_deep_and_unencodable_frames_get_invalid_message_and_no_traceback(caplog):
    # Before the strict JSON rule, data nested 400 to 980 levels passed parsing and
    # raised RecursionError when the reply was encoded: 1011, and ~191 kB of traceback
    # per 1 kB frame. Deeper frames raised it in the parser.
    caplog.set_level(logging.DEBUG, logger="roomcast")
    async with running(max_message_size=1 << 20) as service:
        async with connect(service, 1) as client:
            await client.request({"type": "join_room", "room": "r"})
            for frame in HOSTILE:
                reply = await client.request(frame)
                assert reply["type"] == "error", (frame[:80], reply)
                assert reply["data"] == {"code": "invalid_message"}, (frame[:80], reply)
                assert len(json.dumps(reply)) < 300  # the answer does not echo the frame
            # Still open and working: the frames were refused, not fatal.
            echo = await client.request({"type": "text", "data": "still here"})
            assert echo["message"] == "Echo: still here"
            # 32 levels (the frame, data, then 30 lists) is the limit, and it is allowed.
            at_limit = f'{{"text": "x", "extra": {deep(30)}}}'
            ok = await client.request(f'{{"type":"room_message","room":"r","data":{at_limit}}}')
            assert ok["type"] == "room_message", ok
    assert not tracebacks(caplog)
    assert service.metrics.closes[CloseCode.INTERNAL_ERROR] == 0


async def test_a_bug_gets_internal_error_and_one_traceback_per_connection(caplog):
    caplog.set_level(logging.INFO, logger="roomcast")
    async with running(max_strikes=1000, rate_burst=1000) as service:
        async with connect(service, 1) as client, connect(service, 2) as bystander:
            (connection,) = service.registry.connections_of(1).values()
            crash_at_next_frame(connection, RuntimeError("a bug"))
            for n in range(250):
                reply = await client.request({"type": "text", "data": f"frame {n}"})
                assert reply["type"] == "error", reply
                assert reply["data"] == {"code": "internal_error"}, reply
            # Still connected, and nobody else affected.
            assert service.notifications.is_user_connected(1)
            echo = await bystander.request({"type": "text", "data": "fine"})
            assert echo["message"] == "Echo: fine"
        await eventually(lambda: not service.notifications.is_user_connected(1))
    assert service.metrics.closes[CloseCode.INTERNAL_ERROR] == 0
    assert service.metrics.drops["internal_error"] == 250
    failed = [r for r in caplog.records if "handling failed" in r.getMessage()]
    assert len(tracebacks(caplog)) == 1 and failed[0].exc_info, failed
    assert "a bug" in caplog.text
    # The first with its traceback, a count every 100, and the total at the end.
    assert [r.getMessage().split(": ", 1)[1] for r in failed[1:]] == [
        "100 frames' handling failed so far (the first is logged above)",
        "200 frames' handling failed so far (the first is logged above)",
        "250 frames' handling failed in all (the first is logged above)",
    ]


async def test_a_client_that_keeps_hitting_a_bug_is_closed_by_its_strikes(caplog):
    async with running(max_strikes=3) as service:
        async with connect(service, 1) as client:
            (connection,) = service.registry.connections_of(1).values()
            crash_at_next_frame(connection, KeyError("x"))
            for _ in range(3):
                await client.send({"type": "text", "data": "x"})
            with trio.fail_after(5):
                assert await close_code(client) == CloseCode.POLICY
    assert len(tracebacks(caplog)) == 1
