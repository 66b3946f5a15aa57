"""One log line per event worth knowing, each with its connection id, never a token."""

from __future__ import annotations

import logging
import re

import pytest
from trio_websocket import ConnectionRejected, open_websocket_url

from .conftest import connect, crash_at_next_frame, eventually, running, token_for, ws_url
from .test_faults import InjectedFault


def _lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records]


async def test_connection_events_are_logged_with_an_id_and_no_token(caplog):
    caplog.set_level(logging.INFO, logger="roomcast")
    tokens = []
    async with running(outbox_limit=32 * 1024, close_timeout=0.5) as service:
        async with connect(service, 1) as client:
            await client.request({"type": "text", "data": "hi"})
        expired = token_for(2, ttl=-60)
        tokens.append(expired)
        with pytest.raises(ConnectionRejected):
            async with open_websocket_url(ws_url(service, f"?token={expired}")):
                pass
        async with connect(service, 3) as crashing:
            (conn,) = service.registry.connections_of(3).values()
            crash_at_next_frame(conn, InjectedFault("injected"))
            reply = await crashing.request({"type": "text", "data": "boom"})
            assert reply["data"] == {"code": "internal_error"}, reply
        async with connect(service, 4, message_queue_size=1):
            for _ in range(200):
                await service.notifications.notify_user(4, "x" * 1000)
            await eventually(lambda: "slow consumer" in caplog.text)
    lines = _lines(caplog)
    text = "\n".join(lines)
    assert re.search(r"conn \d+ user=1 connected from ", text)
    assert re.search(r"conn \d+ user=1 disconnected: 1000", text)
    assert re.search(r"conn \d+: handshake refused: 403 expired", text)
    assert re.search(r"conn \d+ user=3: a frame's handling failed", text)
    assert re.search(r"conn \d+ user=4: slow consumer, closing with 4009", text)
    for line in lines:
        if "conn" in line:
            assert re.search(r"conn \d+", line), line
    everything = text + "\n".join(
        str(record.exc_text or "") for record in caplog.records
    )
    for token in tokens:
        assert token not in everything
        assert token.rsplit(".", 1)[-1] not in everything
