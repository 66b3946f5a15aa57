"""wss:// and https:// served directly (`tls_cert`, `tls_key`): a self-signed
certificate made for each test, real TLS clients over real TCP.

What must hold under TLS as in plain text: joins, room messages, fan-out, frames past
the kernel's buffers (the outbox's backlog, encrypted per connection), a slow reader,
the closing handshake both ways (then TLS's close_notify and a FIN, never a reset),
and a bad peer (plain text, garbage, a client refusing the certificate) costing one
DEBUG line and nothing else."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import ConnectionRejected, open_websocket_url

from roomcast import CloseCode, Service
from roomcast.actors.outbox import TlsOutbox
from roomcast.cli import main
from roomcast.tls import TlsUnavailable

from .cluster import needs_redis
from .conftest import SECRET, Client, eventually, make_config, running, token_for
from .test_closing import (
    BACKLOG,
    REPLIES,
    backlog_of_echoes,
    close_payload,
    echoes_then_close,
    frames_until_eof,
)
from .test_hostile import (
    FAST,
    OP_CLOSE,
    PeerClosed,
    RawClient,
    client_frame,
    handshake_bytes,
    settle,
    task_names,
)


@attrs.frozen
class Certificate:
    cert: Path
    key: Path

    def client_context(self) -> ssl.SSLContext:
        """A client's context that trusts this certificate (and checks the host)."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roomcast test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return Certificate(cert_path, key_path)


@asynccontextmanager
async def tls_running(certificate: Certificate, **overrides: Any) -> AsyncIterator[Service]:
    async with running(tls_cert=certificate.cert, tls_key=certificate.key,
                       **overrides) as service:
        yield service


@asynccontextmanager
async def wss(
    service: Service, certificate: Certificate, user: Any = 1, **ws_kwargs: Any,
) -> AsyncIterator[Client]:
    """A trio-websocket client over wss://, trusting the test certificate; welcome read."""
    url = f"wss://127.0.0.1:{service.port}{service.config.path}?token={token_for(user)}"
    async with open_websocket_url(url, ssl_context=certificate.client_context(),
                                  **ws_kwargs) as ws:
        with trio.fail_after(5):
            welcome = json.loads(await ws.get_message())
        yield Client(ws, welcome)


async def tls_raw_client(
    service: Service, certificate: Certificate, *, receive_buffer: int | None = None
) -> RawClient:
    """A raw WebSocket client (tests/test_hostile.py) over a TLS stream, upgraded, its
    welcome read. `receive_buffer`: a small kernel buffer, for a slow reader."""
    sock = trio.socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", service.port))
    stream = trio.SSLStream(trio.SocketStream(sock), certificate.client_context(),
                            server_hostname="127.0.0.1")
    client = RawClient(stream)  # type: ignore[arg-type]  # a stream of bytes all the same
    await client.send(handshake_bytes(token_for(1)))
    with trio.fail_after(5):
        status = await client.http_response()
        assert status.startswith(b"HTTP/1.1 101"), status
        welcome = await client.recv_json()
    assert welcome["message"].startswith("Connected successfully"), welcome
    return client


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.exc_info]


# --- the WebSocket port -----------------------------------------------------------------


async def test_wss_join_room_message_and_notify_fan_out_to_several_clients(certificate):
    async with tls_running(certificate) as service:
        assert service.url.startswith("wss://127.0.0.1:")
        async with (wss(service, certificate, "ada") as ada,
                    wss(service, certificate, "bob") as bob,
                    wss(service, certificate, "cy") as cy):
            clients = [ada, bob, cy]
            for client in clients:
                joined = await client.request({"type": "join_room", "room": "lab"})
                assert joined["message"].startswith("Joined room: lab"), joined
            await ada.send({"type": "room_message", "room": "lab", "data": "hello"})
            for client in clients:
                frame = await client.recv()
                assert (frame["type"], frame["message"]) == ("room_message", "hello"), frame
            delivered = await service.notifications.notify_room("lab", "tea is ready")
            assert delivered == 3
            for client in clients:
                frame = await client.recv()
                assert frame["message"] == "tea is ready", frame


async def test_wss_frames_far_past_64_kib_arrive_whole_and_in_order(certificate, monkeypatch):
    """Frames bigger than a TLS record and than what the kernel takes at once: the
    rest waits in the backlog and the writer encrypts and sends it, in order."""
    writes: list[int] = []
    take_backlog = TlsOutbox._take_backlog

    def counted(outbox: TlsOutbox) -> tuple[bytes, int] | None:
        chunk = take_backlog(outbox)
        if chunk is not None:
            writes.append(len(chunk[0]))
        return chunk

    monkeypatch.setattr(TlsOutbox, "_take_backlog", counted)
    async with (tls_running(certificate, outbox_limit=4 << 20) as service,
                wss(service, certificate, "ada") as ada):
        await ada.request({"type": "join_room", "room": "big"})
        payloads = [chr(ord("a") + i) * (300_000 + i) for i in range(5)]
        for payload in payloads:
            notified = await service.notifications.notify_room("big", "big",
                                                               data={"blob": payload})
            assert notified == 1
        for payload in payloads:
            frame = await ada.recv()
            blob = frame["data"]["blob"]
            assert blob == payload, (len(blob), blob[:1])
    assert writes, "the kernel took every frame at once: no backlog was exercised"


async def test_a_slow_tls_reader_gets_every_queued_reply_then_the_close_then_eof(certificate):
    """The outbox's backlog under TLS: past the kernel's buffers, plain text until
    the writer takes it; the client's Close is answered after every queued reply,
    then close_notify and a FIN (a clean end of the TLS stream, not a reset)."""
    async with tls_running(certificate, **BACKLOG) as service:
        client = await tls_raw_client(service, certificate, receive_buffer=4096)
        (connection,) = service.registry.connections_of(1).values()
        await backlog_of_echoes(service, client, connection, REPLIES)
        await client.send(client_frame(OP_CLOSE, close_payload(1000, b"done")))
        frames, ended = await frames_until_eof(client)
        echoes, pongs, code = echoes_then_close(frames)
        assert (echoes, pongs, code, ended) == (REPLIES, [], 1000, "eof")
        await client.aclose()


async def test_a_closing_handshake_begun_by_the_service_ends_with_close_notify(certificate):
    async with tls_running(certificate, **FAST) as service:
        client = await tls_raw_client(service, certificate)
        (connection,) = service.registry.connections_of(1).values()
        connection.request_close(CloseCode.NORMAL, "bye")
        opcode, payload = await client.frame()
        assert (opcode, payload) == (OP_CLOSE, close_payload(1000, b"bye"))
        await client.send(client_frame(OP_CLOSE, close_payload(1000, b"")))
        with trio.fail_after(5), pytest.raises(PeerClosed, match="eof"):
            await client.frame()  # close_notify, then the FIN: trio's SSLStream sees EOF
        await client.aclose()
        await eventually(lambda: service.registry.metrics.closes[1000] == 1)


async def test_a_closing_handshake_begun_by_the_client_is_answered_1000(certificate):
    async with tls_running(certificate) as service:
        async with wss(service, certificate, "ada") as ada:
            await ada.ws.aclose(1000, "done")
            assert ada.ws.closed is not None
            assert (ada.ws.closed.code, ada.ws.closed.reason) == (1000, "done")
        await eventually(lambda: service.gateway.open_sockets == 0)
        assert service.registry.metrics.closes[1000] == 1


# --- bad peers on the TLS port ------------------------------------------------------------


async def test_a_plain_text_client_on_the_tls_port_gets_a_400_and_nobody_else_notices(
    certificate, caplog
):
    caplog.set_level(logging.DEBUG, logger="roomcast")
    async with tls_running(certificate, **FAST) as service:
        baseline = task_names()
        async with wss(service, certificate, "bystander") as bystander:
            plain = await RawClient.open(service.port)
            await plain.send(handshake_bytes(token_for(1)))
            with trio.fail_after(5):
                answer = await plain.drained()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), answer
            assert json.loads(body) == {"error": "This port speaks TLS: connect with wss://"}
            await plain.aclose()
            with pytest.raises(ConnectionRejected) as rejected:  # a WebSocket client's view
                async with open_websocket_url(f"ws://127.0.0.1:{service.port}"
                                              f"{service.config.path}?token={token_for(2)}"):
                    pass
            assert rejected.value.status_code == 400
            await bystander.send({"type": "text", "data": "still here"})
            assert (await bystander.recv())["message"] == "Echo: still here"
        await eventually(lambda: service.gateway.open_sockets == 0)
        await settle(baseline)
        assert service.registry.metrics.handshake_failures["tls"] == 2
    failed = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(": ", 1)[1]) for r in failed] == [
        (logging.DEBUG, "TLS handshake failed: http request")] * 2
    assert not tracebacks(caplog)


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x00\x05hello", b"\x16" + b"\xff" * 300,
                                     b"\x00" * 2000])
async def test_a_bad_client_hello_is_one_debug_line_and_costs_nothing(
    certificate, caplog, garbage
):
    caplog.set_level(logging.DEBUG, logger="roomcast")
    async with tls_running(certificate, **FAST) as service:
        baseline = task_names()
        client = await RawClient.open(service.port)
        await client.send(garbage)
        with trio.fail_after(5):
            answer = await client.drained()
        assert not answer.startswith(b"HTTP"), answer  # a TLS alert, or nothing
        await client.aclose()
        await eventually(lambda: service.gateway.open_sockets == 0)
        await settle(baseline)
        assert service.registry.metrics.handshake_failures["tls"] == 1
        async with wss(service, certificate, "ada") as ada:
            assert (await ada.request({"type": "text", "data": "hi"}))["message"] == "Echo: hi"
    failed = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.DEBUG]
    assert not tracebacks(caplog)


async def test_a_socket_that_hangs_up_before_its_client_hello_counts_as_hung_up(certificate):
    """As on a plain port (a load balancer's TCP check): not a TLS failure."""
    async with tls_running(certificate, **FAST) as service:
        client = await RawClient.open(service.port)
        await client.aclose()
        await eventually(lambda: service.registry.metrics.handshake_failures["hung_up"] == 1)
        assert service.registry.metrics.handshake_failures["tls"] == 0


async def refuse_the_certificate(port: int) -> None:
    """A client that does not trust the service's certificate (the default context
    trusts only the system's authorities): it answers the certificate with TLS's alert
    (`unknown CA`) and hangs up, as a browser does."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        while True:
            try:
                tls.do_handshake()
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLCertVerificationError:
                await stream.send_all(outgoing.read())  # the alert
                return
            if outgoing.pending:
                await stream.send_all(outgoing.read())
            incoming.write(await stream.receive_some(65536))


async def test_a_client_that_refuses_the_certificate_is_one_debug_line(certificate, caplog):
    caplog.set_level(logging.DEBUG, logger="roomcast")
    async with tls_running(certificate, **FAST) as service:
        with trio.fail_after(5):
            await refuse_the_certificate(service.port)
        await eventually(lambda: service.registry.metrics.handshake_failures["tls"] == 1)
        await eventually(lambda: service.gateway.open_sockets == 0)
    failed = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(": ", 1)[1]) for r in failed] == [
        (logging.DEBUG, "TLS handshake failed: tlsv1 alert unknown ca")]
    assert not tracebacks(caplog)


async def test_a_silent_socket_on_the_tls_port_is_a_pending_handshake(certificate):
    """The TLS handshake is part of the WebSocket handshake's budget: counted per
    address and cut at handshake_timeout."""
    async with tls_running(certificate, **FAST, max_handshakes_per_address=2) as service:
        silent = [await RawClient.open(service.port) for _ in range(2)]
        await eventually(lambda: service.gateway.admission.pending == 2)
        third = await RawClient.open(service.port)
        with trio.fail_after(1):
            assert await third.drained() == b""  # closed at once, unread
        for client in silent:
            with trio.fail_after(3):
                assert await client.drained() == b""  # at the handshake timeout
        failures = service.registry.metrics.handshake_failures
        assert (failures["too_many_handshakes_from_address"], failures["timeout"]) == (1, 2)
        for client in [*silent, third]:
            await client.aclose()


# --- the HTTP port ------------------------------------------------------------------------


async def test_https_healthz_and_the_demo_page_over_https(certificate, caplog):
    caplog.set_level(logging.DEBUG)
    async with tls_running(certificate, http_port=0, demo=True) as service:
        base = f"https://127.0.0.1:{service.http_port}"
        async with httpx.AsyncClient(base_url=base, verify=certificate.client_context(),
                                     timeout=5) as client:
            health = await client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith(
                "text/html")
            minted = (await client.post("/demo/token", json={"user_id": "ada"},
                                        headers={"Origin": base})).json()  # as a browser
        assert minted["ws_url"] == f"wss://127.0.0.1:{service.port}/api/v1/ws"
        async with open_websocket_url(f"{minted['ws_url']}?token={minted['token']}",
                                      ssl_context=certificate.client_context()) as ws:
            assert json.loads(await ws.get_message())["data"]["user_id"] == "ada"
        with pytest.raises(httpx.RemoteProtocolError):  # plain http:// to the https port
            async with httpx.AsyncClient(timeout=5) as plain:
                await plain.get(f"http://127.0.0.1:{service.http_port}/healthz")
    assert not tracebacks(caplog)


# --- settings --------------------------------------------------------------------------------


def test_tls_cert_and_tls_key_go_together(certificate):
    for half in ({"tls_cert": certificate.cert}, {"tls_key": certificate.key}):
        with pytest.raises(ValueError, match="TLS needs both tls_cert and tls_key"):
            make_config(**half)
    config = make_config(tls_cert=str(certificate.cert), tls_key=str(certificate.key))
    assert (config.tls_cert, config.tls_key) == (certificate.cert, certificate.key)


def test_the_tls_flags_and_variables_read_paths(certificate, monkeypatch):
    from roomcast.cli import build_parser, config_from

    args = build_parser().parse_args(["serve", "--tls-cert", str(certificate.cert),
                                      "--tls-key", str(certificate.key)])
    assert config_from(args).tls_key == certificate.key
    monkeypatch.setenv("ROOMCAST_TLS_CERT", str(certificate.cert))
    monkeypatch.setenv("ROOMCAST_TLS_KEY", str(certificate.key))
    assert config_from(build_parser().parse_args(["serve"])).tls_cert == certificate.cert


def unusable_files(certificate: Certificate, tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    other_key = tmp_path / "other.pem"
    other_key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    return {
        "cannot read tls_cert": (tmp_path / "missing.pem", certificate.key),
        "cannot read tls_key": (certificate.cert, tmp_path / "missing.pem"),
        "key values mismatch": (certificate.cert, other_key),
        "pem lib": (not_pem, certificate.key),
    }


def test_an_unusable_certificate_or_key_is_one_line_and_exit_1(certificate, tmp_path, capsys):
    key_text = certificate.key.read_text()
    for expected, (cert, key) in unusable_files(certificate, tmp_path).items():
        code = main(["serve", "--jwt-secret", "x" * 32, "--port", "0", "--http-port", "-1",
                     "--tls-cert", str(cert), "--tls-key", str(key)])
        out, err = capsys.readouterr()
        assert code == 1, (expected, out, err)
        assert err.count("\n") == 1 and expected in err, err
        assert err.startswith("roomcast: ") and "Traceback" not in err
        assert "PRIVATE KEY" not in err and key_text not in err


async def test_open_service_refuses_an_unusable_key_before_binding(certificate, tmp_path):
    cert, key = unusable_files(certificate, tmp_path)["key values mismatch"]
    with pytest.raises(TlsUnavailable, match="key values mismatch"):
        async with running(tls_cert=cert, tls_key=key):
            pass


# --- roomcast serve --workers N -----------------------------------------------------------


_NODE_PID = re.compile(r'^roomcast_node\{node="\w*",pid="(\d+)"\} 1\.0$', re.MULTILINE)


@needs_redis
async def test_every_worker_of_serve_workers_serves_tls(certificate, redis):
    process = subprocess.Popen(
        [sys.executable, "-m", "roomcast.cli", "serve", "--workers", "2", "--port", "0",
         "--http-port", "0", "--redis-url", redis.url, "--tls-cert", str(certificate.cert),
         "--tls-key", str(certificate.key)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "ROOMCAST_JWT_SECRET": SECRET, "ROOMCAST_OPEN_ROOMS": "*"},
    )
    try:
        assert process.stdout is not None
        ws, http = process.stdout.readline(), process.stdout.readline()
        assert "wss://127.0.0.1:" in ws and "(2 workers)" in ws, ws
        base = re.search(r"https://[\d.]+:\d+", http)
        assert base is not None, http
        pids: set[int] = set()
        for _ in range(60):  # a new connection each: until both workers answered
            async with httpx.AsyncClient(verify=certificate.client_context()) as client:
                page = (await client.get(f"{base[0]}/metrics")).text
            pids.add(int(_NODE_PID.search(page)[1]))  # type: ignore[index]
            if len(pids) == 2:
                break
        assert len(pids) == 2, pids
        port = int(re.search(r":(\d+)/", ws)[1])  # type: ignore[index]
        for user in range(8):  # the kernel spreads them over both workers
            url = f"wss://127.0.0.1:{port}/api/v1/ws?token={token_for(user)}"
            async with open_websocket_url(url, ssl_context=certificate.client_context()) as c:
                assert json.loads(await c.get_message())["data"]["user_id"] == user
    finally:
        process.send_signal(signal.SIGTERM)
        assert await trio.to_thread.run_sync(process.wait, 30) == 0


# --- the TLS outbox alone ------------------------------------------------------------------


async def test_a_write_after_close_notify_is_dropped_never_raised(certificate):
    """After our close_notify TLS refuses to encrypt: a frame queued then (by nobody
    today: `deliver` stops at the closing handshake) is dropped like one on a broken
    socket, and the publisher's task never sees ssl.SSLError."""
    server_sock, client_sock = trio.socket.socketpair()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate.cert, certificate.key)
    outbox = TlsOutbox(trio.SocketStream(server_sock), 1 << 20, context)
    client = trio.SSLStream(trio.SocketStream(client_sock), certificate.client_context(),
                            server_hostname="127.0.0.1")
    async with trio.open_nursery() as nursery:
        outbox.writers = nursery
        failure: list[str | None] = []
        handshaken = trio.Event()  # the server's side is done (the client's may be first)

        async def serve_handshake() -> None:
            failure.append(await outbox.handshake())
            handshaken.set()

        nursery.start_soon(serve_handshake)
        with trio.fail_after(5):
            await client.do_handshake()
            await handshaken.wait()
            assert failure == [None]
            assert outbox.write_nowait(b"frame")
            assert await client.receive_some(100) == b"frame"
            await outbox.send_eof()
            assert await client.receive_some(100) == b""  # close_notify: a clean EOF
        assert not outbox.write_nowait(b"too late")
        assert outbox.broken is not None
    outbox.close_now()
    await client.aclose()


async def test_the_python_client_over_wss_trusting_a_self_signed_certificate(certificate):
    """roomcast.client takes the context that checks the service's certificate: with
    it, wss:// joins and receives; without it (the system's authorities), the
    self-signed certificate is refused."""
    from roomcast.client import ClientStopped
    from roomcast.client import connect as client_connect

    async with tls_running(certificate) as service:
        url = f"wss://127.0.0.1:{service.port}{service.config.path}"
        async with client_connect(url, token=token_for("ada"),
                                  ssl_context=certificate.client_context()) as client:
            await client.join("lab")
            await service.notifications.notify_room("lab", "over tls")
            with trio.fail_after(5):
                frame = await client.receive()
            assert (frame.type, frame.message, frame.room) == ("room_message", "over tls", "lab")
        with pytest.raises(ClientStopped) as stopped, trio.fail_after(10):
            async with client_connect(url, token=token_for("ada"), connect_timeout=5):
                pass
        assert "certificate was refused" in str(stopped.value)
        assert isinstance(stopped.value.__cause__, ssl.SSLCertVerificationError)
