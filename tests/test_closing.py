"""The closing handshake and the handshake's edges (RFC 6455 sections 5.5 and 7), over
raw TCP on 127.0.0.1.

- Whoever begins the close (the client's Close, a protocol failure, the service), the
  frames already queued for the connection go out whole, then the service's Close, then
  a FIN (shutdown SHUT_WR); the service reads and discards until the client's Close or
  EOF, so that closing never resets (RST) a client that is still writing.
- Pings that arrive while the queued frames drain are answered before the Close; a
  ping sent after the client's own Close is not (RFC 6455 5.5.2).
- Frames sent in the same segment as the upgrade request are read.
- A malformed position in the URL is ignored, never an exception.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url
from wsproto.connection import ConnectionState

from roomcast import CloseCode, Service
from roomcast.actors.connection import Connection
from roomcast.protocol import MessageType, ServerFrame, encode_frame

from .conftest import eventually, running, token_for, ws_url
from .test_hostile import (
    FAST,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    PeerClosed,
    RawClient,
    client_frame,
    handshake_bytes,
    text,
)

ECHO = {"type": "text", "data": "x" * 4000}


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


# --- malformed positions in the URL ------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "offset=%C2%B2&epoch=x",  # "²": str.isdigit() says yes, int() says no
        "offset=" + "9" * 5000 + "&epoch=x",  # past int()'s digit limit
        "offset=99999999999999999999&epoch=x",  # 20 digits: past a 64-bit offset
        "offset=-1&epoch=x",
        "offset=+1&epoch=x",
        "offset=%201&epoch=x",
        "offset=%EF%BC%91&epoch=x",  # a fullwidth "1"
        "offset=1&epoch=",
        "offset=1",
        "offset=1&epoch=" + "e" * 65,  # an epoch the service never gives
    ],
)
async def test_a_malformed_position_in_the_url_gets_a_plain_welcome(caplog, query):
    caplog.set_level(logging.INFO)
    async with running(**FAST) as service:
        url = ws_url(service, f"?token={token_for(5)}&{query}")
        async with open_websocket_url(url, connect_timeout=5) as ws:
            with trio.fail_after(5):
                welcome = json.loads(await ws.get_message())
            assert welcome["message"].startswith("Connected successfully"), welcome
            assert set(welcome["data"]) == {"user_id", "rooms"}, welcome  # no position
            await ws.send_message(json.dumps({"type": "text", "data": "still here"}))
            with trio.fail_after(5):
                echo = json.loads(await ws.get_message())
            assert echo["message"] == "Echo: still here"
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not problems, [r.getMessage() for r in problems]


async def test_a_valid_position_in_the_url_is_still_honoured():
    async with running(**FAST) as service:
        url = ws_url(service, f"?token={token_for(5)}&offset=0&epoch=whatever")
        async with open_websocket_url(url, connect_timeout=5) as ws:
            with trio.fail_after(5):
                welcome = json.loads(await ws.get_message())
            assert welcome["data"]["recovered"] is False, welcome


# --- frames in the same segment as the upgrade request -----------------------------------


async def test_frames_pipelined_with_the_upgrade_request_are_answered():
    async with running(**FAST) as service:
        client = await RawClient.open(service.port)
        frames = b"".join(
            client_frame(OP_TEXT, text({"type": "text", "data": f"early {i}"})) for i in range(3)
        )
        await client.send(handshake_bytes(token_for(3)) + frames)  # one write, one segment
        with trio.fail_after(5):
            status = await client.http_response()
            assert status.startswith(b"HTTP/1.1 101"), status
            welcome = await client.recv_json()
            assert welcome["message"].startswith("Connected successfully"), welcome
            answers = [(await client.recv_json())["message"] for _ in range(3)]
        assert answers == ["Echo: early 0", "Echo: early 1", "Echo: early 2"]
        await client.aclose()


# --- closing with output still queued ----------------------------------------------------


async def slow_reader(service: Service, user: Any) -> tuple[RawClient, Connection]:
    """An upgraded raw client with a small receive buffer, welcome read, and the
    service's side of it."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window
    await sock.connect(("127.0.0.1", service.port))
    client = RawClient(trio.SocketStream(sock))
    await client.send(handshake_bytes(token_for(user)))
    with trio.fail_after(5):
        status = await client.http_response()
        assert status.startswith(b"HTTP/1.1 101"), status
        welcome = await client.recv_json()
    assert welcome["message"].startswith("Connected successfully"), welcome
    (connection,) = service.registry.connections_of(user).values()
    return client, connection


async def backlog_of_echoes(
    service: Service, client: RawClient, connection: Connection, count: int
) -> None:
    """`count` echo requests, not read: wait until every reply is queued, most of them
    in the outbox, past what the kernel buffers hold."""
    frames_out = service.registry.metrics.frames_out
    before = frames_out["text"]
    await client.send(client_frame(OP_TEXT, text(ECHO)) * count)
    await eventually(lambda: frames_out["text"] - before == count)
    assert connection.outbox.backlog_bytes > 100_000, connection.outbox.backlog_bytes


async def frames_until_eof(client: RawClient) -> tuple[list[tuple[int, bytes]], str]:
    """Every frame the service sends until the TCP connection ends, and how it ended:
    "eof" (FIN) or "reset". A half frame before the end fails the test."""
    frames: list[tuple[int, bytes]] = []
    with trio.fail_after(10):
        while True:
            try:
                frames.append(await client.frame())
            except PeerClosed as ended:
                assert not client.buffer, f"{len(client.buffer)} bytes of a half frame"
                return frames, str(ended)


def echoes_then_close(frames: list[tuple[int, bytes]]) -> tuple[int, list[bytes], int]:
    """(echoes, pongs, close code) of frames that must be: whole echo frames and pongs,
    then one Close, last."""
    *before, (opcode, close) = frames
    assert opcode == OP_CLOSE, (opcode, close[:50])
    echoes = [p for o, p in before if o == OP_TEXT]
    pongs = [p for o, p in before if o == OP_PONG]
    assert len(echoes) + len(pongs) == len(before), [o for o, _ in before]
    for echo in echoes:
        assert json.loads(echo)["message"] == "Echo: " + ECHO["data"]
    return len(echoes), pongs, struct.unpack("!H", close[:2])[0]


# Echo requests are frames like any other: no rate limit stands in their way here.
BACKLOG: dict[str, Any] = {**FAST, "close_timeout": 5.0, "rate_limit": 10_000.0,
                           "rate_burst": 10_000}
REPLIES = 200  # ~800 KB of echoes: a backlog past the kernel buffers, under the 1 MiB limit


async def test_a_slow_reader_that_closes_gets_every_queued_reply_then_the_close_then_eof():
    async with running(**BACKLOG) as service:
        client, connection = await slow_reader(service, 1)
        await backlog_of_echoes(service, client, connection, REPLIES)
        await client.send(client_frame(OP_CLOSE, close_payload(1000, b"done")))
        frames, ended = await frames_until_eof(client)
        echoes, pongs, code = echoes_then_close(frames)
        assert (echoes, pongs, code, ended) == (REPLIES, [], 1000, "eof")
        await client.aclose()


def unmasked(opcode: int, payload: bytes) -> bytes:
    return struct.pack("!BB", 0x80 | opcode, len(payload)) + payload


FAILURES = {
    "unmasked frame": (unmasked(OP_TEXT, b"hi"), 1002),
    "invalid utf-8": (client_frame(OP_TEXT, b"\xff\xfe bad"), 1007),
    "oversize": (client_frame(OP_TEXT, b"x" * 70_000), CloseCode.MESSAGE_TOO_BIG),
}


@pytest.mark.parametrize("failure", FAILURES)
async def test_a_failed_connection_still_writing_reads_the_close_then_a_fin(failure):
    bad, expected = FAILURES[failure]
    async with running(**{**FAST, "close_timeout": 5.0}) as service:
        client = await RawClient.upgraded(service.port, 1)
        noise = client_frame(OP_TEXT, text({"type": "text", "data": "y" * 1000})) * 16
        got_close = trio.Event()
        write_errors: list[BaseException] = []

        async def keep_writing() -> None:
            # After the failing frame the client goes on writing (about 16 KB a round)
            # until it has read the service's Close.
            try:
                await client.send(bad)
                while not got_close.is_set():
                    await client.send(noise)
                    await trio.lowlevel.checkpoint()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                write_errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_writing)
            with trio.fail_after(10):
                code = None
                while code is None:
                    opcode, payload = await client.frame()
                    if opcode == OP_CLOSE:
                        code = struct.unpack("!H", payload[:2])[0]
                got_close.set()
        assert code == expected
        # Then a FIN (recv returns b""), not a reset; and no write of ours was refused.
        frames, ended = await frames_until_eof(client)
        assert (frames, ended, write_errors) == ([], "eof", [])
        await client.aclose()


# --- pings while closing -----------------------------------------------------------------


async def test_a_ping_while_queued_frames_drain_before_our_close_is_answered_before_it():
    """The service closes (here 1001, as at shutdown) while the client has replies
    queued: the client's ping, read during the drain, is answered after those replies
    and before the Close (our Close is not sent yet, so a pong may still go)."""
    async with running(**BACKLOG) as service:
        client, connection = await slow_reader(service, 1)
        await backlog_of_echoes(service, client, connection, REPLIES)
        connection.request_close(CloseCode.GOING_AWAY, "going away")
        await eventually(lambda: connection.ws.closed is not None)  # the close began
        last_read = connection.outbox.last_received
        await client.send(client_frame(OP_PING, b"still there?"))
        await eventually(lambda: connection.outbox.last_received > last_read)  # ping read
        frames, ended = await frames_until_eof(client)
        echoes, pongs, code = echoes_then_close(frames)
        assert (echoes, pongs, code, ended) == (REPLIES, [b"still there?"], 1001, "eof")
        assert frames[-2] == (OP_PONG, b"still there?")  # after the queued replies
        await client.aclose()


async def test_a_ping_after_the_clients_close_is_not_answered():
    """RFC 6455 5.5.2: a pong is owed unless a Close was already received. Once the
    client has sent its Close, what follows it is dropped, pings included."""
    async with running(**BACKLOG) as service:
        client, connection = await slow_reader(service, 1)
        await backlog_of_echoes(service, client, connection, REPLIES)
        await client.send(
            client_frame(OP_CLOSE, close_payload(1000)) + client_frame(OP_PING, b"late")
        )
        frames, ended = await frames_until_eof(client)
        echoes, pongs, code = echoes_then_close(frames)
        assert (echoes, pongs, code, ended) == (REPLIES, [], 1000, "eof")
        await client.aclose()


# --- the limits of the drain --------------------------------------------------------------


async def test_a_close_near_the_outbox_limit_is_not_refused():
    """The backlog is a few bytes under `outbox_limit` when the client's Close comes:
    the Close reply is still sent (after the queued replies), not a 4009."""
    limit = 200_000
    async with running(**{**BACKLOG, "outbox_limit": limit}) as service:
        client, connection = await slow_reader(service, 1)
        frames_out = service.registry.metrics.frames_out
        sent = 0
        outbox = connection.outbox
        while outbox.backlog_bytes + 2 * echo_size(ECHO["data"]) <= limit:
            await client.send_text(ECHO)
            sent += 1
            await eventually(lambda n=sent: frames_out["text"] == n)
        # One more echo, sized to leave two bytes under the limit: too few for a Close.
        room = limit - outbox.backlog_bytes
        data = "z" * next(n for n in range(room, 0, -1) if echo_size("z" * n) <= room - 2)
        await client.send_text({"type": "text", "data": data})
        await eventually(lambda: frames_out["text"] == sent + 1)
        assert 0 < limit - outbox.backlog_bytes <= 2, limit - outbox.backlog_bytes
        assert not outbox.overflowed
        await client.send(client_frame(OP_CLOSE, close_payload(1000)))
        frames, ended = await frames_until_eof(client)
        *replies, (opcode, close) = frames
        assert [o for o, _ in replies] == [OP_TEXT] * (sent + 1)
        assert (opcode, close, ended) == (OP_CLOSE, close_payload(1000), "eof")
        await client.aclose()


def echo_size(data: str) -> int:
    """The bytes of the echo frame the service answers `data` with."""
    return len(encode_frame(ServerFrame(type=MessageType.TEXT, message=f"Echo: {data}")))


async def test_a_client_that_never_reads_loses_whole_frames_only():
    """The client sends its Close and reads nothing for longer than the drain may take:
    the frames not started by then are dropped whole, the one half-written is
    finished, and the Close and the FIN follow it."""
    # 8 MB of replies: more than the kernel's buffers take (the service's send buffer
    # grows to 4 MiB at most), so some are still in the outbox when the drain gives up.
    many = 2000
    async with running(**{**BACKLOG, "close_timeout": 0.5, "outbox_limit": 32 << 20}) as service:
        client, connection = await slow_reader(service, 1)
        await backlog_of_echoes(service, client, connection, many)
        await client.send(client_frame(OP_CLOSE, close_payload(1000)))
        # The drain gave up, and our Close went behind what was already started: the
        # handshake is complete on the service's side (the client's Close, then ours).
        await eventually(lambda: connection.ws._frames.state is ConnectionState.CLOSED)
        frames, ended = await frames_until_eof(client)
        echoes, pongs, code = echoes_then_close(frames)
        assert 0 < echoes < many
        assert (pongs, code, ended) == ([], 1000, "eof")
        await client.aclose()
