"""MQTT over TLS: paho with trustme certificates, mutual TLS, the certificate as the
username, ALPN, bad handshakes, the handshake timeout and certificate reload (SIGHUP)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import ssl
import sys
from pathlib import Path

import pytest
import trustme

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, connect
from tests.helpers.raw import RawClient
from tidemq.broker.hooks import AuthenticateEvent, ClientInfo, Decision, HookPoint
from tidemq.transport.tls import certificate_identity, distinguished_name

from .conftest import CLIENT_CN, PKI, Running, Start

LOGGER = "tidemq.transport"
CONNACK_OK = b"\x20\x02\x00\x00"


def seen_clients(running: Running) -> list[ClientInfo]:
    """Every ClientInfo the AUTHENTICATE chain is asked about (it then defers)."""
    seen: list[ClientInfo] = []

    def authenticate(event: AuthenticateEvent) -> Decision:
        seen.append(event.client)
        return Decision.DEFER

    running.hooks.register(HookPoint.AUTHENTICATE, authenticate)
    return seen


async def tls_client(port: int, ctx: ssl.SSLContext) -> RawClient:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
    )
    return RawClient(reader, writer)


async def raw_v311(port: int, ctx: ssl.SSLContext, client_id: str, **kw: object) -> RawClient:
    raw = await tls_client(port, ctx)
    await raw.send(mb.gen_connect(client_id, **kw))  # type: ignore[arg-type]
    await raw.expect(CONNACK_OK)
    return raw


async def assert_refused(port: int, ctx: ssl.SSLContext) -> None:
    """The handshake fails: at once (TLS 1.2), or with the first read (a TLS 1.3 client
    finishes its side before the server has checked the client certificate)."""
    try:
        raw = await tls_client(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return
    try:
        await raw.send(mb.gen_connect("refused"))
        data = await raw.expect_closed()
    except (ssl.SSLError, ConnectionError):
        return
    finally:
        await raw.close()
    assert data == b"", f"a refused client got {data!r}"


def transport_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


# --- paho over TLS -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_paho_over_tls(listeners: Running, pki: PKI, protocol: int) -> None:
    port = listeners.port("tls")
    sub = await connect(port, "sub", protocol=protocol, tls=pki.client_context())
    pub = await connect(port, "pub", protocol=protocol, tls=pki.client_context())
    assert await sub.subscribe("t/#", 1) == [1]
    await pub.publish("t/1", b"over tls", qos=1)
    got = await sub.next_message()
    assert (got.topic, got.payload, got.qos) == ("t/1", b"over tls", 1)
    await pub.disconnect()
    await sub.disconnect()


async def test_tls_and_plain_clients_share_the_broker(listeners: Running, pki: PKI) -> None:
    sub = await connect(listeners.port("tls"), "tls-sub", tls=pki.client_context())
    await sub.subscribe("mix/#")
    pub = await connect(listeners.port("tcp"), "tcp-pub")
    await pub.publish("mix/a", b"from tcp")
    assert (await sub.next_message()).payload == b"from tcp"
    await pub.disconnect()
    await sub.disconnect()


@pytest.mark.parametrize(("scheme", "alpn"), [("tls", "mqtt"), ("wss", "http/1.1")])
async def test_alpn(listeners: Running, pki: PKI, scheme: str, alpn: str) -> None:
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["x-unknown", alpn])
    raw = await tls_client(listeners.port(scheme), ctx)
    try:
        assert raw.writer.get_extra_info("ssl_object").selected_alpn_protocol() == alpn
    finally:
        await raw.close()


async def test_client_without_alpn_connects(listeners: Running, pki: PKI) -> None:
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2"])  # nothing in common: the handshake goes on without ALPN
    raw = await raw_v311(listeners.port("tls"), ctx, "no-alpn")
    assert raw.writer.get_extra_info("ssl_object").selected_alpn_protocol() is None
    await raw.close()


async def test_min_version_13(start: Start, pki: PKI) -> None:
    async with start(["tls://127.0.0.1:0?min_version=1.3"]) as running:
        old = pki.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        await assert_refused(running.port("tls"), old)
        raw = await raw_v311(running.port("tls"), pki.client_context(), "tls13")
        assert raw.writer.get_extra_info("ssl_object").version() == "TLSv1.3"
        await raw.close()


async def test_ciphers_apply_to_tls12(start: Start, pki: PKI) -> None:
    url = "tls://127.0.0.1:0?ciphers=ECDHE-ECDSA-AES128-GCM-SHA256"
    async with start([url]) as running:
        ctx = pki.client_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        raw = await raw_v311(running.port("tls"), ctx, "cipher")
        assert (
            raw.writer.get_extra_info("ssl_object").cipher()[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"
        )
        await raw.close()


# --- client certificates -----------------------------------------------------------------


MTLS = "tls://127.0.0.1:0?name=mtls&require_client_cert=true&cert_as_username=cn"


async def test_mtls_accepts_a_client_certificate_and_its_cn_is_the_username(
    start: Start, pki: PKI
) -> None:
    async with start([MTLS], {"listeners.tls.cafile": pki.ca_file}) as running:
        seen = seen_clients(running)
        ctx = pki.client_context(pki.client_file)
        client = await connect(running.port("mtls"), "dev", tls=ctx, username="spoofed")
        assert [(c.username, c.cert_common_name, c.listener) for c in seen] == [
            (CLIENT_CN, CLIENT_CN, "mtls")
        ]
        await client.disconnect()


async def test_certificate_username_satisfies_allow_anonymous_false(start: Start, pki: PKI) -> None:
    """With anonymous clients refused, a certificate's CN is a username: no CONNECT username
    is needed; over plain TCP the same CONNECT is refused."""
    async with start(
        [MTLS, "tcp://127.0.0.1:0"], {"listeners.tls.cafile": pki.ca_file}, allow_anonymous=False
    ) as running:
        raw = await raw_v311(running.port("mtls"), pki.client_context(pki.client_file), "cert")
        await raw.close()
        plain = await RawClient.connect(running.port("tcp"))
        await plain.send(mb.gen_connect("anonymous"))
        await plain.expect(b"\x20\x02\x00\x05")  # CONNACK 5: not authorized
        await plain.close()


async def test_mtls_refuses_a_client_without_certificate(
    start: Start, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with start([MTLS], {"listeners.tls.cafile": pki.ca_file}) as running:
        seen = seen_clients(running)
        port = running.port("mtls")
        good = await raw_v311(port, pki.client_context(pki.client_file), "good")
        await assert_refused(port, pki.client_context())
        await assert_refused(port, pki.client_context(pki.stranger_file))
        assert [c.client_id for c in seen] == ["good"]
        failed = [line for line in transport_lines(caplog) if "TLS handshake failed" in line]
        assert len(failed) == 2, transport_lines(caplog)
        # The refusals touched nobody else.
        await good.send(mb.gen_pingreq())
        await good.expect(mb.gen_pingresp())
        await good.close()


async def test_cert_as_username_dn(start: Start, pki: PKI) -> None:
    url = "tls://127.0.0.1:0?require_client_cert=true&cert_as_username=dn"
    async with start([url], {"listeners.tls.cafile": pki.ca_file}) as running:
        seen = seen_clients(running)
        raw = await raw_v311(running.port("tls"), pki.client_context(pki.client_file), "dn")
        assert seen[0].username == f"CN={CLIENT_CN},OU=Sensors,O=Acme"
        assert seen[0].cert_common_name == CLIENT_CN
        await raw.close()


async def test_cert_as_username_also_over_wss(start: Start, pki: PKI) -> None:
    url = "wss://127.0.0.1:0/mqtt?cert_as_username=cn"
    async with start([url], {"listeners.tls.cafile": pki.ca_file}) as running:
        seen = seen_clients(running)
        ctx = pki.client_context(pki.client_file)
        client = await connect(running.port("wss"), "wss-dev", tls=ctx, transport="websockets")
        assert [(c.username, c.cert_common_name) for c in seen] == [(CLIENT_CN, CLIENT_CN)]
        await client.disconnect()


async def test_optional_client_certificate(listeners: Running, pki: PKI) -> None:
    """cafile without require_client_cert: a certificate is asked for, not required; its
    CN reaches the hooks, the CONNECT username stays (cert_as_username = none)."""
    seen = seen_clients(listeners)
    port = listeners.port("tls")
    a = await raw_v311(port, pki.client_context(pki.client_file), "with", username="alice")
    b = await raw_v311(port, pki.client_context(), "without", username="bob")
    assert [(c.client_id, c.username, c.cert_common_name) for c in seen] == [
        ("with", "alice", CLIENT_CN),
        ("without", "bob", None),
    ]
    await a.close()
    await b.close()


async def test_client_certificate_from_an_unknown_ca_is_refused_even_if_optional(
    listeners: Running, pki: PKI
) -> None:
    await assert_refused(listeners.port("tls"), pki.client_context(pki.stranger_file))


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(mb.gen_connect("plain"), id="plain MQTT on the TLS port"),
        pytest.param(b"\x16\x03\x01\x00\x05hello", id="broken ClientHello"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="HTTP"),
        pytest.param(bytes(range(256)) * 4, id="random bytes"),
    ],
)
async def test_garbage_handshake_closes_only_that_connection(
    listeners: Running, pki: PKI, caplog: pytest.LogCaptureFixture, garbage: bytes
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = listeners.port("tls")
    bystander = await raw_v311(port, pki.client_context(), "bystander")
    await bystander.send(mb.gen_subscribe(1, [("alive/#", 0)]))
    await bystander.expect(mb.gen_suback(1, [0]))
    bad = await RawClient.connect(port)
    await bad.send(garbage)
    rest = await bad.expect_closed()
    assert not rest.startswith(b"\x20"), "no MQTT may come back"
    await bad.close()
    assert any("TLS handshake failed" in line for line in transport_lines(caplog))
    await bystander.send(mb.gen_publish("alive/x", payload=b"still here"))
    assert await bystander.read_packet() == mb.gen_publish("alive/x", payload=b"still here")
    await bystander.close()


async def test_silent_connection_hits_the_handshake_timeout(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with start(["tls://127.0.0.1:0?handshake_timeout=0.2"]) as running:
        idle = await RawClient.connect(running.port("tls"))
        assert await idle.expect_closed() == b""
        await idle.close()
    assert any("handshake not completed within 0.2 s" in line for line in transport_lines(caplog))


# --- identity helpers --------------------------------------------------------------------


def test_distinguished_name_is_rfc4514() -> None:
    subject = (
        (("countryName", "DE"),),
        (("organizationName", "Acme, Inc."),),
        (("organizationalUnitName", "a"), ("organizationalUnitName", "b")),
        (("commonName", " dev+1 "),),
    )
    assert distinguished_name(subject) == r"CN=\ dev\+1\ ,OU=a+OU=b,O=Acme\, Inc.,C=DE"
    assert distinguished_name(((("commonName", "#1;<x>"),),)) == r"CN=\#1\;\<x\>"


def test_certificate_identity_modes() -> None:
    cert = {"subject": ((("organizationName", "Acme"),), (("commonName", "dev"),))}
    assert certificate_identity(cert, "none") == ("dev", None)
    assert certificate_identity(cert, "cn") == ("dev", "dev")
    assert certificate_identity(cert, "dn") == ("dev", "CN=dev,O=Acme")
    assert certificate_identity(None, "cn") == (None, None)
    assert certificate_identity({"subject": ((("organizationName", "Acme"),),)}, "cn") == (
        None,
        None,
    )


# --- reloading certificates --------------------------------------------------------------


def new_server_cert(path: Path) -> trustme.CA:
    """Overwrite *path* with a server certificate from a new CA; returns that CA."""
    ca = trustme.CA(organization_name="TideMQ tests, second CA")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    tmp = path.with_suffix(".new")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp))
    os.replace(tmp, path)
    return ca


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_reload_swaps_certificates_without_dropping_connections(
    start: Start, pki: PKI, tmp_path: Path
) -> None:
    certfile = tmp_path / "server.pem"
    shutil.copy(pki.server_file, certfile)
    async with start(["tls://127.0.0.1:0"], {"listeners.tls.certfile": str(certfile)}) as running:
        port = running.port("tls")
        old = await raw_v311(port, pki.client_context(), "old")
        await old.send(mb.gen_subscribe(1, [("r/#", 0)]))
        await old.expect(mb.gen_suback(1, [0]))
        ca2 = new_server_cert(certfile)
        assert running.broker.reload_tls() is True
        # New connections get the new certificate ...
        await assert_refused(port, pki.client_context())
        new = await raw_v311(port, trusting(ca2), "new")
        # ... and the established one still works.
        await new.send(mb.gen_publish("r/1", payload=b"after reload"))
        assert await old.read_packet() == mb.gen_publish("r/1", payload=b"after reload")
        await old.close()
        await new.close()


async def test_reload_with_broken_files_keeps_the_old_certificates(
    start: Start, pki: PKI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidemq.transport.tls")
    certfile = tmp_path / "server.pem"
    shutil.copy(pki.server_file, certfile)
    async with start(["tls://127.0.0.1:0"], {"listeners.tls.certfile": str(certfile)}) as running:
        certfile.write_text("not a certificate\n")
        assert running.broker.reload_tls() is False
        assert any("keeping the old certificates" in r.getMessage() for r in caplog.records)
        raw = await raw_v311(running.port("tls"), pki.client_context(), "still-old")
        await raw.close()


async def test_missing_certificate_file_fails_the_start(start: Start, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        async with start(
            ["tls://127.0.0.1:0"], {"listeners.tls.certfile": str(tmp_path / "missing.pem")}
        ):
            pass


async def test_sighup_reloads_certificates_in_tidemq_serve(pki: PKI, tmp_path: Path) -> None:
    """``tidemq serve`` as a user runs it: SIGHUP re-reads the files; readiness and the
    reload are read from the log, never slept for."""
    certfile = tmp_path / "server.pem"
    shutil.copy(pki.server_file, certfile)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "serve",
        "--listen",
        "tls://127.0.0.1:0",
        "--listeners.tls.certfile",
        str(certfile),
        "--data-dir",
        str(tmp_path / "data"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None

    async def wait_for_line(text: bytes) -> bytes:
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 15)  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"tidemq serve exited before logging {text!r}")
            if text in line:
                return line

    try:
        line = await wait_for_line(b"listening on tls://127.0.0.1:")
        port = int(line.split(b"127.0.0.1:")[1].split(b" ")[0])
        old = await raw_v311(port, pki.client_context(), "old")
        ca2 = new_server_cert(certfile)
        proc.send_signal(signal.SIGHUP)
        await wait_for_line(b"certificates reloaded")
        new = await raw_v311(port, trusting(ca2), "new")
        await old.send(mb.gen_pingreq())
        await old.expect(mb.gen_pingresp())
        await old.close()
        await new.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
