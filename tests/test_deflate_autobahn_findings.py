"""Findings of the permessage-deflate review done with Autobahn's 12.* and 13.* cases
(bench/autobahn.py): what the suite does not send, checked over TCP here."""

from __future__ import annotations

import json

import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.protocol import State
from websockets.uri import parse_uri
from wsproto.events import Ping, TextMessage

from tests.conftest import running, token_for
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


async def test_a_websockets_client_offering_server_max_window_bits_15_gets_deflate() -> None:
    # Autobahn 13.4 and 13.6 offer server_max_window_bits=15, and its client took an
    # answer without it; RFC 7692 7.1.2.1 says the server accepts that parameter by
    # saying it back, and the `websockets` client (sans-IO, over a real socket here)
    # fails the handshake otherwise.
    async with running() as service:
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=15)
        target = f"{service.config.path}?token={token_for('alice', service.config)}"
        client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{service.port}{target}"),
                                extensions=[factory])
        client.send_request(client.connect())
        async with await trio.open_tcp_stream("127.0.0.1", service.port) as stream:
            for data in client.data_to_send():
                await stream.send_all(data)
            with trio.fail_after(5):
                while client.handshake_exc is None and client.state is State.CONNECTING:
                    client.receive_data(await stream.receive_some(65536))
        assert client.handshake_exc is None, client.handshake_exc
        assert client.state is State.OPEN
        assert [type(e).__name__ for e in client.extensions] == ["PerMessageDeflate"]
