"""permessage-deflate (RFC 7692) over real TCP: a raw wsproto client that offers it
(`extensions=[PerMessageDeflate()]`) beside plain clients, the compressed variant built
once per publish, the setting that turns it off, and a decompression bomb. The pure
rules (the answer to an offer, the frame, the inflating budget) with plain bytes."""

from __future__ import annotations

import json
import logging
import random
import zlib
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import given
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate

import roomcast.actors.room
from roomcast import Service
from roomcast.protocol.deflate import (
    MIN_DEFLATE_SIZE,
    Inflater,
    MessageTooBig,
    deflated_frame,
    negotiate,
)
from roomcast.protocol.wsframe import payload_of, text_frame
from tests.conftest import connect, running, token_for


class RawClient:
    """A wsproto client over a trio TCP stream: it may offer permessage-deflate, and
    keeps the first byte of every frame the service sent (RSV1: compressed)."""

    def __init__(self, stream: trio.SocketStream, offer: bool) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.offer = offer
        self.extensions: list[Any] = []
        self.first_bytes: list[int] = []
        self.wire_bytes = 0
        self._raw = b""
        self._parts: list[str] = []
        self.close: CloseConnection | None = None

    async def open(self, service: Service, user: Any) -> dict[str, Any]:
        target = f"{service.config.path}?token={token_for(user, service.config)}"
        extensions = [PerMessageDeflate()] if self.offer else []
        await self.stream.send_all(self.ws.send(Request(host="127.0.0.1", target=target,
                                                        extensions=extensions)))
        while True:
            data = await self.stream.receive_some(65536)
            assert data, "the service hung up during the handshake"
            head, sep, rest = data.partition(b"\r\n\r\n")
            self.ws.receive_data(head + sep)
            self._note(rest)
            self.ws.receive_data(rest)
            for event in self.ws.events():
                assert not isinstance(event, RejectConnection), event
                if isinstance(event, AcceptConnection):
                    self.extensions = event.extensions
                    return await self.recv()

    def _note(self, data: bytes) -> None:
        """Split the service's bytes into frames (unmasked) and keep each first byte."""
        self.wire_bytes += len(data)
        self._raw += data
        while len(self._raw) >= 2:
            size = self._raw[1] & 0x7F
            header = {126: 4, 127: 10}.get(size, 2)
            if len(self._raw) < header:
                return
            if size >= 126:
                size = int.from_bytes(self._raw[2:header], "big")
            if len(self._raw) < header + size:
                return
            self.first_bytes.append(self._raw[0])
            self._raw = self._raw[header + size:]

    async def recv_text(self) -> str:
        with trio.fail_after(5):
            while True:
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        self.close = event
                        raise EOFError(event.code)
                    if isinstance(event, Message):
                        self._parts.append(event.data)
                        if event.message_finished:
                            text, self._parts = "".join(self._parts), []
                            return text
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError("end of stream")
                self._note(data)
                self.ws.receive_data(data)

    async def recv(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.recv_text())
        return frame

    async def send(self, frame: Any) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))

    async def request(self, frame: Any) -> dict[str, Any]:
        await self.send(frame)
        return await self.recv()

    @property
    def compressed_frames(self) -> int:
        return sum(1 for first in self.first_bytes if first & 0x40)


async def open_raw(service: Service, user: Any, *, offer: bool = True) -> RawClient:
    client = RawClient(await trio.open_tcp_stream("127.0.0.1", service.port), offer)
    client.welcome = await client.open(service, user)  # type: ignore[attr-defined]
    return client


def counting_compressions(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The frames rooms compressed, one entry per compression."""
    made: list[bytes] = []

    def counted(frame: bytes) -> bytes:
        made.append(frame)
        return deflated_frame(frame)

    monkeypatch.setattr(roomcast.actors.room, "deflated_frame", counted)
    return made


LONG_TEXT = "The nightly build of project 42 finished: " + "all checks passed; " * 12


# -- over real TCP --------------------------------------------------------------------


async def test_a_client_that_offers_deflate_gets_compressed_room_frames_that_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compressions = counting_compressions(monkeypatch)
    async with running() as service:
        deflating = [await open_raw(service, f"d{i}") for i in range(3)]
        for client in deflating:
            assert [e.name for e in client.extensions] == ["permessage-deflate"]
            assert client.extensions[0].server_no_context_takeover
            assert client.extensions[0].client_no_context_takeover
            assert client.welcome["message"].startswith("Connected successfully")
            reply = await client.request({"type": "join_room", "room": "project_42"})
            assert reply["message"] == "Joined room: project_42"
        async with connect(service, "plain") as plain:  # no offer: a mixed room
            await plain.request({"type": "join_room", "room": "project_42"})

            # A client's compressed frame is read; its room frame reaches everyone.
            sender = deflating[0]
            before = len(compressions)
            own = await sender.request(
                {"type": "room_message", "room": "project_42", "data": LONG_TEXT})
            assert own["message"] == LONG_TEXT
            for client in deflating[1:]:
                frame = await client.recv()
                assert frame["message"] == LONG_TEXT
                assert frame["data"] == {"from_user_id": "d0"}
            assert (await plain.recv())["message"] == LONG_TEXT
            assert len(compressions) == before + 1  # once per publish, not per member

            # A backend notification to the room, and one to a user.
            reached = await service.notifications.notify_room(
                "project_42", LONG_TEXT, level="warning", data={"build": 311})
            assert reached == 4
            assert len(compressions) == before + 2
            for client in deflating:
                frame = await client.recv()
                assert frame["message"] == LONG_TEXT
                assert frame["data"] == {"build": 311, "level": "warning", "notification": True}
            assert (await plain.recv())["message"] == LONG_TEXT
            assert await service.notifications.notify_user("d1", LONG_TEXT, level="success")
            frame = await deflating[1].recv()
            assert (frame["type"], frame["message"]) == ("info", LONG_TEXT)

            # The frames a room compressed went out with RSV1 set: 2 to d0, 2 to d2,
            # 3 to d1; short replies (the joins' answers) stayed plain.
            assert [c.compressed_frames for c in deflating] == [2, 3, 2]
            assert all(first in (0x81, 0xC1) for c in deflating for first in c.first_bytes)
        for client in deflating:
            await client.stream.aclose()


async def test_compression_off_in_config_is_not_negotiated() -> None:
    async with running(compression=False) as service:
        client = await open_raw(service, "d0")
        assert client.extensions == []
        await client.request({"type": "join_room", "room": "project_42"})
        await client.send({"type": "room_message", "room": "project_42", "data": LONG_TEXT})
        assert (await client.recv())["message"] == LONG_TEXT
        assert client.compressed_frames == 0
        await client.stream.aclose()


async def test_a_decompression_bomb_is_closed_with_1009_and_costs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running() as service:
        limit = service.config.max_message_size
        bomber = await open_raw(service, "bomber")
        async with connect(service, "bystander") as bystander:
            await bystander.request({"type": "join_room", "room": "project_42"})
            bomb = "a" * (limit * 64)  # 4 MiB of text that deflates to ~4 KiB
            wire = bomber.ws.send(TextMessage(data=bomb))
            assert len(wire) < limit // 8
            await bomber.stream.send_all(wire)
            with pytest.raises(EOFError):
                while True:
                    await bomber.recv_text()
            assert bomber.close is not None
            assert bomber.close.code == 1009
            assert bomber.close.reason == f"message over {limit} bytes"
            # The service goes on, for everyone else.
            reply = await bystander.request(
                {"type": "room_message", "room": "project_42", "data": "still here"})
            assert reply["message"] == "still here"
        await bomber.stream.aclose()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_bytes_after_a_compressed_messages_final_block_are_closed_with_1007() -> None:
    async with running() as service:
        client = await open_raw(service, "trailer")
        compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
        payload = compressor.compress(b'{"type": "text", "data": "x"}')
        payload += compressor.flush(zlib.Z_FINISH) + b"junk"
        mask = b"\x01\x02\x03\x04"
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        await client.stream.send_all(bytes((0xC1, 0x80 | len(payload))) + mask + masked)
        with pytest.raises(EOFError):
            while True:
                await client.recv_text()
        assert client.close is not None and client.close.code == 1007
        await client.stream.aclose()


# -- the pure rules -------------------------------------------------------------------


def inflate(frame: bytes) -> bytes:
    assert frame[0] == 0xC1, "final text frame, RSV1"
    payload = frame[{126: 4, 127: 10}.get(frame[1] & 0x7F, 2):]
    return zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")


@given(st.lists(st.binary(min_size=MIN_DEFLATE_SIZE, max_size=70_000), min_size=1,
                max_size=4))
def test_each_deflated_frame_inflates_alone_to_its_payload(payloads: list[bytes]) -> None:
    # No context takeover: every frame decodes with a fresh window, whatever came before.
    for payload in payloads:
        frame = text_frame(payload)
        deflated = deflated_frame(frame)
        if deflated is frame:  # incompressible: sent plain
            continue
        assert len(deflated) < len(frame)
        assert inflate(deflated) == payload


def test_short_or_incompressible_frames_stay_plain() -> None:
    short = text_frame(b'{"type":"info","message":"' + b"x" * 60 + b'"}')
    assert deflated_frame(short) is short
    noise = text_frame(random.Random(7).randbytes(300))
    assert deflated_frame(noise) is noise
    json_frame = text_frame(json.dumps({"type": "info", "message": LONG_TEXT}).encode())
    assert inflate(deflated_frame(json_frame)) == json_frame[4:]


@pytest.mark.parametrize(("offer", "answer"), [
    ("permessage-deflate", "server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; client_max_window_bits",
     "server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; client_max_window_bits=10; server_max_window_bits=15",
     "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"),
    ('permessage-deflate; client_no_context_takeover; server_max_window_bits="15"',
     "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15"),
    ("permessage-deflate; server_max_window_bits=10", None),  # our window is 15 bits
    ("permessage-deflate; server_max_window_bits", None),  # needs a value
    ("permessage-deflate; client_max_window_bits=16", None),
    ("permessage-deflate; client_max_window_bits=0x9", None),
    ("permessage-deflate; server_no_context_takeover=1", None),
    ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
    ("permessage-deflate; mystery", None),
    ("x-webkit-deflate-frame", None),
])
def test_the_answer_to_an_offer(offer: str, answer: str | None) -> None:
    assert negotiate(offer) == answer


def test_the_inflater_never_makes_more_than_the_limit() -> None:
    limit = 1000
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * 10_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    inflater = Inflater(limit)
    with pytest.raises(MessageTooBig):
        inflater.feed(bomb[:-4])
    # The next message starts afresh, within the same budget.
    ok = zlib.compressobj(9, zlib.DEFLATED, -15)
    message = ok.compress(b"y" * limit) + ok.flush(zlib.Z_SYNC_FLUSH)
    inflater = Inflater(limit)
    assert inflater.feed(message[:-4]) + inflater.end() == b"y" * limit
    assert inflater.feed(message[:-4]) + inflater.end() == b"y" * limit


@given(st.binary(max_size=5000), st.integers(1, 6000))
def test_the_inflater_round_trips_within_the_limit(data: bytes, limit: int) -> None:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    message = (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    inflater = Inflater(limit)
    try:
        out = b"".join(inflater.feed(message[i:i + 97]) for i in range(0, len(message), 97))
        out += inflater.end()
    except MessageTooBig:
        assert len(data) > limit
    else:
        assert out == data and len(data) <= limit


def test_compressions_in_two_threads_at_once_each_stand_alone():
    """Two services in two threads of one process compress at the same time: each
    frame still inflates on its own to its own payload (a compression is two zlib
    calls; with one stream for the process, another thread's could come between)."""
    import sys
    import threading

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        failures: list[str] = []

        def compress_many(tag: str) -> None:
            for k in range(3000):
                payload = json.dumps({"type": "notification", "message": f"{tag} {k} " * 30})
                deflated = deflated_frame(text_frame(payload.encode()))
                inflated = zlib.decompressobj(-15).decompress(
                    payload_of(deflated) + b"\x00\x00\xff\xff")
                if inflated != payload.encode():
                    failures.append(f"{tag} {k}")
                    return

        threads = [threading.Thread(target=compress_many, args=(tag,)) for tag in "ab"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []


def test_a_message_ending_in_a_final_block_inflates_and_bytes_after_it_are_refused():
    """RFC 7692 7.2.2: a sender may end a message with a final block (BFINAL). Bytes after
    it are not deflate data: zlib.error, which the connection answers with 1007 (they
    were dropped silently)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    final = compressor.compress(b"hello") + compressor.flush(zlib.Z_FINISH)
    inflater = Inflater(100)
    assert inflater.feed(final) + inflater.end() == b"hello"
    assert inflater.feed(final[:3]) + inflater.feed(final[3:]) + inflater.end() == b"hello"
    with pytest.raises(zlib.error):
        inflater.feed(final + b"\x00junk")
    inflater = Inflater(100)
    inflater.feed(final)
    with pytest.raises(zlib.error):
        inflater.feed(b"more")  # a later frame of the same message
