"""Findings of the permessage-deflate review done with Autobahn's 12.* and 13.* cases
(bench/autobahn.py): what the suite does not send, checked over TCP here."""

from __future__ import annotations

import json

from wsproto.events import Ping, TextMessage

from tests.conftest import running
from tests.test_deflate import open_raw


async def test_a_ping_between_the_fragments_of_a_compressed_message_keeps_it_whole() -> None:
    # RFC 6455 5.4: control frames may come between a message's fragments. The ping's
    # end must not end the compressed message: its rest is still compressed, and the
    # next message starts a new window.
    async with running() as service:
        client = await open_raw(service, "alice")
        await client.request({"type": "join_room", "room": "project_42"})
        text = "fragments and a ping " * 20
        message = json.dumps({"type": "room_message", "room": "project_42", "data": text})
        half = len(message) // 2
        wire = client.ws.send(TextMessage(data=message[:half], message_finished=False))
        wire += client.ws.send(Ping(payload=b"between"))
        wire += client.ws.send(TextMessage(data=message[half:], message_finished=True))
        assert wire[0] & 0x40, "the first fragment is compressed"
        await client.stream.send_all(wire)
        assert (await client.recv())["message"] == text
        assert 0x8A in client.first_bytes, "the ping was answered"
        # The next compressed message inflates from a fresh window.
        again = await client.request(
            {"type": "room_message", "room": "project_42", "data": text + "again"})
        assert again["message"] == text + "again"
        await client.stream.aclose()
