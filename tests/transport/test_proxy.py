"""PROXY protocol v1 and v2: the parser on its own, then listeners that expect the header
(TCP, TLS, WebSocket), the address the broker sees, and wrong headers, each closing only
their own connection. The headers are written here byte by byte from HAProxy's
``proxy-protocol.txt``, not with the broker's code."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
from collections.abc import AsyncIterator

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tests.helpers.ws import RawWebSocket
from tidemq.broker.hooks import ClientInfo, ConnectedEvent, HookPoint
from tidemq.transport.proxy import ProxyHeaderParser, ProxyInfo, ProxyProtocolError

from .conftest import PKI, Running, Start

LOGGER = "tidemq.transport"
CONNACK_OK = b"\x20\x02\x00\x00"
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 1883) -> bytes:
    family = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode()


def v2(
    src: str | None,
    sport: int = 0,
    dst: str = "10.0.0.1",
    dport: int = 1883,
    *,
    command: int = 1,
    tlvs: bytes = b"",
    version: int = 2,
) -> bytes:
    if src is None:  # LOCAL, or UNSPEC
        body = tlvs
        fam = 0x00
    elif ":" in src:
        body = (
            ipaddress.IPv6Address(src).packed
            + ipaddress.IPv6Address(dst if ":" in dst else "::1").packed
            + struct.pack("!HH", sport, dport)
            + tlvs
        )
        fam = 0x21
    else:
        body = (
            ipaddress.IPv4Address(src).packed
            + ipaddress.IPv4Address(dst).packed
            + struct.pack("!HH", sport, dport)
            + tlvs
        )
        fam = 0x11
    return SIG + bytes([(version << 4) | command, fam]) + struct.pack("!H", len(body)) + body


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


# --- the parser ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (v1("203.0.113.7", 56324), ProxyInfo(1, ("203.0.113.7", 56324), ("10.0.0.1", 1883))),
        (
            v1("2001:db8::1", 1, "2001:db8::2", 2),
            ProxyInfo(1, ("2001:db8::1", 1), ("2001:db8::2", 2)),
        ),
        (b"PROXY UNKNOWN\r\n", ProxyInfo(1, None)),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyInfo(1, None)),
        (v2("198.51.100.9", 40000), ProxyInfo(2, ("198.51.100.9", 40000), ("10.0.0.1", 1883))),
        (
            v2("2001:db8::9", 7, "2001:db8::1", 8),
            ProxyInfo(2, ("2001:db8::9", 7), ("2001:db8::1", 8)),
        ),
        (
            v2("198.51.100.9", 1, tlvs=tlv(0x05, b"unique-id") + tlv(0x02, b"mqtt.example")),
            ProxyInfo(
                2,
                ("198.51.100.9", 1),
                ("10.0.0.1", 1883),
                ((0x05, b"unique-id"), (0x02, b"mqtt.example")),
            ),
        ),
        (v2(None, command=0), ProxyInfo(2, None)),  # LOCAL: a health check
        (v2(None), ProxyInfo(2, None)),  # PROXY with UNSPEC family
    ],
)
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_parser(header: bytes, expected: ProxyInfo, chunk: int) -> None:
    parser = ProxyHeaderParser()
    data = header + b"\x10rest"
    result = None
    for i in range(0, len(data), chunk):
        result = parser.feed(data[i : i + chunk])
        if result is not None:
            break
    assert result is not None
    info, rest = result
    assert info == expected
    assert (rest + data[i + chunk :]) == b"\x10rest"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x10\x0c\x00\x04MQTT", "no PROXY protocol header"),
        (b"GET / HTTP/1.1\r\n", "no PROXY protocol header"),
        (b"PROXYTCP4", "no PROXY protocol header"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed v1"),
        (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad address"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "is not IPv4"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "bad port"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed v1"),
        (b"PROXY " + b"x" * 120, "longer than 107"),
        (b"PROXY TCP4 \xff\r\n", "not ASCII"),
        (v2("1.2.3.4", 1, version=1), "version 1"),
        (v2("1.2.3.4", 1, command=2), "unknown command"),
        (SIG + b"\x21\x12\x00\x0c" + bytes(12), "datagram"),
        (SIG + b"\x21\x11\x00\x04" + bytes(4), "too short"),
        (SIG + b"\x21\x41\x00\x00", "unknown address family"),
        (v2("1.2.3.4", 1, tlvs=b"\x05\x00\x09abc"), "truncated TLV"),
    ],
)
def test_parser_rejects(data: bytes, match: str) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        ProxyHeaderParser().feed(data)


def test_parser_rejects_at_the_first_wrong_byte() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PRO") is None
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"M")


# --- listeners -----------------------------------------------------------------------------


LISTENERS = (
    "tcp://127.0.0.1:0?name=lb&proxy_protocol=true",
    "tls://127.0.0.1:0?name=lb-tls&proxy_protocol=true",
    "ws://127.0.0.1:0/mqtt?name=lb-ws&proxy_protocol=true",
    "tcp://127.0.0.1:0?name=direct",
)


def connected_peers(running: Running) -> list[ClientInfo]:
    seen: list[ClientInfo] = []

    def on_connected(event: ConnectedEvent) -> None:
        seen.append(event.client)

    running.hooks.register(HookPoint.CLIENT_CONNECTED, on_connected)
    return seen


@pytest.fixture
async def proxied(start: Start) -> AsyncIterator[Running]:
    async with start(LISTENERS) as running:
        yield running


@pytest.mark.parametrize(
    ("header", "peer"),
    [
        (v1("203.0.113.7", 56324), ("203.0.113.7", 56324)),
        (v1("2001:db8::7", 4242, "2001:db8::1"), ("2001:db8::7", 4242)),
        (v2("198.51.100.9", 40000, tlvs=tlv(0x05, b"id")), ("198.51.100.9", 40000)),
        (v2("2001:db8::9", 7, "2001:db8::1"), ("2001:db8::9", 7)),
    ],
)
async def test_the_broker_sees_the_address_from_the_header(
    proxied: Running, header: bytes, peer: tuple[str, int]
) -> None:
    seen = connected_peers(proxied)
    raw = await RawClient.connect(proxied.port("lb"))
    await raw.send(header + mb.gen_connect("behind-lb"))  # header and CONNECT in one segment
    await raw.expect(CONNACK_OK)
    assert [(c.peer, c.listener) for c in seen] == [(peer, "lb")]
    await raw.close()


async def test_local_command_keeps_the_socket_address(proxied: Running) -> None:
    seen = connected_peers(proxied)
    raw = await RawClient.connect(proxied.port("lb"))
    await raw.send(v2(None, command=0))
    await raw.send(mb.gen_connect("health"))
    await raw.expect(CONNACK_OK)
    assert seen[0].peer is not None
    assert seen[0].peer[0] == "127.0.0.1"
    await raw.close()


async def test_header_in_pieces(proxied: Running) -> None:
    seen = connected_peers(proxied)
    raw = await RawClient.connect(proxied.port("lb"))
    for b in v1("192.0.2.1", 1):
        await raw.send(bytes([b]))
    await raw.send(mb.gen_connect("slow"))
    await raw.expect(CONNACK_OK)
    assert seen[0].peer == ("192.0.2.1", 1)
    await raw.close()


async def test_proxy_header_before_tls(proxied: Running, pki: PKI) -> None:
    seen = connected_peers(proxied)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxied.port("lb-tls"))
    writer.write(v2("198.51.100.20", 5000))
    await writer.drain()
    await writer.start_tls(pki.client_context(pki.client_file), server_hostname="localhost")
    raw = RawClient(reader, writer)
    await raw.send(mb.gen_connect("tls-behind-lb"))
    await raw.expect(CONNACK_OK)
    assert [(c.peer, c.cert_common_name) for c in seen] == [(("198.51.100.20", 5000), None)]
    await raw.close()


async def test_proxy_header_before_websocket(proxied: Running) -> None:
    seen = connected_peers(proxied)
    ws = await RawWebSocket.connect(proxied.port("lb-ws"), prefix=v1("203.0.113.50", 8443))
    await ws.send(mb.gen_connect("ws-behind-lb"))
    assert await ws.read_packet() == CONNACK_OK
    assert seen[0].peer == ("203.0.113.50", 8443)
    await ws.close()


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("lb", mb.gen_connect("no-header")),
        ("lb", b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"),
        ("lb", v2("1.2.3.4", 1, version=3)),
        ("lb-tls", b"\x16\x03\x01\x02\x00\x01"),  # a ClientHello without the header
        ("lb-ws", b"GET /mqtt HTTP/1.1\r\n"),
    ],
)
async def test_wrong_header_closes_only_that_connection(
    proxied: Running, caplog: pytest.LogCaptureFixture, name: str, data: bytes
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    watcher = await RawClient.connect(proxied.port("lb"))
    await watcher.send(v1("192.0.2.2", 2) + mb.gen_connect("watcher"))
    await watcher.expect(CONNACK_OK)
    bad = await RawClient.connect(proxied.port(name))
    await bad.send(data)
    assert await bad.expect_closed() == b""
    await bad.close()
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert any(f"on {name}: bad PROXY protocol header" in line for line in lines), lines
    await watcher.send(mb.gen_pingreq())
    await watcher.expect(mb.gen_pingresp())
    await watcher.close()


async def test_listener_without_proxy_protocol_keeps_the_socket_address(proxied: Running) -> None:
    seen = connected_peers(proxied)
    raw = await RawClient.connect(proxied.port("direct"))
    await raw.send(mb.gen_connect("direct"))
    await raw.expect(CONNACK_OK)
    assert seen[0].peer is not None
    assert seen[0].peer[0] == "127.0.0.1"
    assert seen[0].listener == "direct"
    await raw.close()
