"""MQTT over WebSocket: paho (3.1.1 and 5.0) over ws and wss, then a hand-written client for
what paho never does: packets cut across frames or packed into one, fragments, pings,
subprotocols, origins, compression, and every kind of bad input, each closing only its
own connection with its own HTTP status or close code."""

from __future__ import annotations

import logging
import os
import struct

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, connect
from tests.helpers.raw import RawClient
from tests.helpers.ws import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWebSocket,
    deflate,
    frame,
    inflate,
    read_http_response,
    upgrade_request,
)

from .conftest import PKI, Running, Start

LOGGER = "tidemq.transport"
CONNACK_OK = b"\x20\x02\x00\x00"


def transport_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def ws_v311(port: int, client_id: str, **kw: object) -> RawWebSocket:
    ws = await RawWebSocket.connect(port, **kw)  # type: ignore[arg-type]
    await ws.send(mb.gen_connect(client_id))
    assert await ws.read_packet() == CONNACK_OK
    return ws


async def bystander(port: int) -> RawWebSocket:
    ws = await ws_v311(port, "bystander")
    await ws.send(mb.gen_subscribe(1, [("alive/#", 0)]))
    assert await ws.read_packet() == mb.gen_suback(1, [0])
    return ws


async def still_serving(ws: RawWebSocket) -> None:
    await ws.send(mb.gen_publish("alive/x", payload=b"still here"))
    assert await ws.read_packet() == mb.gen_publish("alive/x", payload=b"still here")


async def http_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send *request* raw; returns the response status, headers and what follows (EOF)."""
    raw = await RawClient.connect(port)
    await raw.send(request)
    response = await read_http_response(raw.reader)
    rest = await raw.expect_closed()
    await raw.close()
    return response.status, response.headers, rest


# --- paho ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "wss"])
@pytest.mark.parametrize("protocol", [V311, V5])
async def test_paho_over_websocket(
    listeners: Running, pki: PKI, scheme: str, protocol: int
) -> None:
    tls = pki.client_context() if scheme == "wss" else None
    port = listeners.port(scheme)
    sub = await connect(port, "sub", protocol=protocol, transport="websockets", tls=tls)
    pub = await connect(port, "pub", protocol=protocol, transport="websockets", tls=tls)
    assert await sub.subscribe("w/#", 2) == [2]
    for qos in (0, 1, 2):
        await pub.publish(f"w/{qos}", f"qos {qos}".encode() * 100, qos=qos)
        got = await sub.next_message()
        assert (got.topic, got.payload, got.qos) == (f"w/{qos}", f"qos {qos}".encode() * 100, qos)
    await pub.disconnect()
    await sub.disconnect()


async def test_websocket_and_tcp_clients_share_the_broker(listeners: Running) -> None:
    sub = await connect(listeners.port("ws"), "ws-sub", transport="websockets")
    await sub.subscribe("mix/#")
    pub = await connect(listeners.port("tcp"), "tcp-pub")
    big = os.urandom(200_000)  # more than one frame header size class, many TCP segments
    await pub.publish("mix/big", big)
    assert (await sub.next_message()).payload == big
    await pub.disconnect()
    await sub.disconnect()


# --- framing ------------------------------------------------------------------------------


async def test_packets_split_across_frames_and_packed_into_one(listeners: Running) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"))
    connect_packet = mb.gen_connect("split")
    for i in range(len(connect_packet)):  # one byte per frame
        await ws.send(connect_packet[i : i + 1])
    assert await ws.read_packet() == CONNACK_OK
    packed = (
        mb.gen_subscribe(1, [("p/#", 1)])
        + mb.gen_publish("p/1", qos=1, mid=2, payload=b"one")
        + mb.gen_publish("p/2", payload=b"two")
    )
    await ws.send(packed[:7] + b"")  # a packet cut mid-header ...
    await ws.send(packed[7:])  # ... and the rest with two more packets in the same frame
    replies = [await ws.read_packet() for _ in range(4)]
    assert mb.gen_suback(1, [1]) in replies
    assert mb.gen_puback(2) in replies
    assert sorted(r for r in replies if r[0] >> 4 == 3) == sorted(
        [mb.gen_publish("p/1", qos=1, mid=1, payload=b"one"), mb.gen_publish("p/2", payload=b"two")]
    )
    await ws.close()


async def test_fragmented_message_with_a_ping_in_between(listeners: Running) -> None:
    ws = await ws_v311(listeners.port("ws"), "frag")
    await ws.send(mb.gen_subscribe(1, [("f/#", 0)]))
    assert await ws.read_packet() == mb.gen_suback(1, [0])
    publish = mb.gen_publish("f/1", payload=b"fragmented")
    await ws.send_frame(BINARY, publish[:3], fin=False)
    await ws.send_frame(PING, b"are you there")  # control frames may interleave
    await ws.send_frame(CONT, publish[3:10], fin=False)
    await ws.send_frame(CONT, publish[10:], fin=True)
    fin, opcode, payload = await ws.read_frame()
    assert (fin, opcode, payload) == (True, PONG, b"are you there")
    assert await ws.read_packet() == publish
    await ws.close()


async def test_broker_writes_are_binary_frames(listeners: Running) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"))
    await ws.send(mb.gen_connect("frames"))
    fin, opcode, payload = await ws.read_frame()
    assert (fin, opcode, payload) == (True, BINARY, CONNACK_OK)
    await ws.close()


# --- the upgrade ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["mqtt"], "mqtt"),
        (["mqttv3.1"], "mqttv3.1"),
        (["chat", "mqttv3.1", "mqtt"], "mqttv3.1"),
        ([], None),
    ],
)
async def test_subprotocol_is_the_one_offered(
    listeners: Running, offered: list[str], chosen: str | None
) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"), subprotocols=offered)
    assert ws.response.headers.get("sec-websocket-protocol") == chosen
    await ws.send(mb.gen_connect("sp"))
    assert await ws.read_packet() == CONNACK_OK
    await ws.close()


async def test_mqtt31_client_over_websocket(listeners: Running) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"), subprotocols=["mqttv3.1"])
    await ws.send(mb.gen_connect("v31", proto_ver=3))
    assert await ws.read_packet() == CONNACK_OK
    await ws.close()


def _request(path: str = "/mqtt", **changes: str | None) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "mqtt",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n", 400, id="plain GET"),
        pytest.param(_request("/other"), 404, id="wrong path"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 404, id="plain GET elsewhere"),
        pytest.param(_request(Upgrade=None), 400, id="no Upgrade header"),
        pytest.param(_request(Sec_WebSocket_Version="8"), 426, id="old version"),
        pytest.param(_request(Sec_WebSocket_Key="short"), 400, id="bad key"),
        pytest.param(_request(Sec_WebSocket_Protocol="chat"), 400, id="no MQTT subprotocol"),
        pytest.param(_request().replace(b"GET", b"POST", 1), 405, id="POST"),
        pytest.param(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", 400, id="raw MQTT"),
        pytest.param(
            b"GET /mqtt HTTP/1.1\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n", 400, id="huge header"
        ),
    ],
)
async def test_bad_upgrade_requests_get_an_http_error(
    listeners: Running, caplog: pytest.LogCaptureFixture, request_bytes: bytes, status: int
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = listeners.port("ws")
    watcher = await bystander(port)
    got, headers, rest = await http_exchange(port, request_bytes)
    assert got == status
    assert headers["connection"] == "close"
    assert rest == b""
    assert any(f"HTTP {status}" in line for line in transport_lines(caplog))
    if status == 426:
        assert headers["sec-websocket-version"] == "13"
    await still_serving(watcher)
    await watcher.close()


async def test_allowed_origins(start: Start) -> None:
    url = "ws://127.0.0.1:0/mqtt?allowed_origins=https://app.example&allowed_origins=http://localhost:8080/"
    async with start([url]) as running:
        port = running.port("ws")
        status, _, _ = await http_exchange(port, _request(Origin="https://evil.example"))
        assert status == 403
        for origin in ("https://app.example", "HTTP://LOCALHOST:8080"):
            ws = await RawWebSocket.connect(port, headers=[("Origin", origin)])
            await ws.close()
        ws = await RawWebSocket.connect(port)  # no Origin: not a browser
        await ws.close()


async def test_custom_path(start: Start) -> None:
    async with start(["ws://127.0.0.1:0/broker/ws"]) as running:
        port = running.port("ws")
        assert (await http_exchange(port, _request("/mqtt")))[0] == 404
        ws = await RawWebSocket.connect(port, "/broker/ws?token=1")  # the query is ignored
        await ws.send(mb.gen_connect("path"))
        assert await ws.read_packet() == CONNACK_OK
        await ws.close()


async def test_first_frames_may_arrive_with_the_request(listeners: Running) -> None:
    raw = await RawClient.connect(listeners.port("ws"))
    request, _ = upgrade_request()
    await raw.send(request + frame(BINARY, mb.gen_connect("eager")))
    response = await read_http_response(raw.reader)
    assert response.status == 101
    ws = RawWebSocket(raw.reader, raw.writer, response)
    assert await ws.read_packet() == CONNACK_OK
    await ws.close()


async def test_silent_connection_hits_the_handshake_timeout(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with start(["ws://127.0.0.1:0?handshake_timeout=0.2"]) as running:
        raw = await RawClient.connect(running.port("ws"))
        await raw.send(b"GET /mqtt HTTP/1.1\r\n")  # and never the rest
        assert await raw.expect_closed() == b""
        await raw.close()
    assert any("handshake not completed" in line for line in transport_lines(caplog))


# --- bad frames ----------------------------------------------------------------------------


async def test_text_frame_closes_1003(listeners: Running, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    port = listeners.port("ws")
    watcher = await bystander(port)
    ws = await ws_v311(port, "texter")
    await ws.send_frame(TEXT, b"hello")
    assert await ws.expect_close() == 1003
    assert any("WebSocket close 1003" in line for line in transport_lines(caplog))
    await still_serving(watcher)
    await watcher.close()
    await ws.close()


async def test_oversized_frame_closes_1009_before_its_payload(start: Start) -> None:
    async with start(["ws://127.0.0.1:0?max_frame_size=1024"]) as running:
        port = running.port("ws")
        watcher = await bystander(port)
        ws = await ws_v311(port, "big")
        await ws.send(mb.gen_subscribe(1, [("b", 0)]))
        assert await ws.read_packet() == mb.gen_suback(1, [0])
        at_limit = mb.gen_publish("b", payload=b"x" * 1018)
        assert len(at_limit) == 1024
        await ws.send(at_limit)  # a frame of exactly max_frame_size passes
        assert await ws.read_packet() == at_limit
        # Only the header of a 10 GB frame: the broker must not wait for the payload.
        await ws.send_raw(frame(BINARY, b"", length=10_000_000_000))
        assert await ws.expect_close() == 1009
        await still_serving(watcher)
        await watcher.close()
        await ws.close()


async def test_unmasked_client_frame_is_a_protocol_error(listeners: Running) -> None:
    ws = await ws_v311(listeners.port("ws"), "unmasked")
    await ws.send_raw(frame(BINARY, mb.gen_pingreq(), mask=False))
    assert await ws.expect_close() == 1002
    await ws.close()


async def test_client_close_is_echoed(listeners: Running) -> None:
    ws = await ws_v311(listeners.port("ws"), "closer")
    await ws.send_frame(CLOSE, struct.pack("!H", 1000) + b"bye")
    assert await ws.expect_close() == 1000
    await ws.close()


async def test_mqtt_protocol_error_over_websocket_closes_normally(listeners: Running) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"))
    await ws.send(mb.gen_publish("too/early", payload=b"x"))  # PUBLISH before CONNECT
    assert await ws.expect_close() == 1000
    await ws.close()


# --- compression ---------------------------------------------------------------------------

DEFLATE_OFFER = ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")


async def test_permessage_deflate(start: Start) -> None:
    async with start(["ws://127.0.0.1:0?compression=true"]) as running:
        port = running.port("ws")
        ws = await RawWebSocket.connect(port, headers=[DEFLATE_OFFER])
        assert ws.response.headers["sec-websocket-extensions"].startswith("permessage-deflate")
        await ws.send_frame(BINARY, deflate(mb.gen_connect("zip")), rsv1=True)
        _, opcode, payload = await ws.read_frame()
        assert opcode == BINARY
        assert inflate(payload) == CONNACK_OK
        await ws.send_frame(BINARY, mb.gen_pingreq())  # an uncompressed message is fine too
        _, _, payload = await ws.read_frame()
        assert inflate(payload) == mb.gen_pingresp()
        await ws.close()
        plain = await RawWebSocket.connect(port)  # no offer: no compression
        assert "sec-websocket-extensions" not in plain.response.headers
        await plain.close()


async def test_compression_is_off_by_default(listeners: Running) -> None:
    ws = await RawWebSocket.connect(listeners.port("ws"), headers=[DEFLATE_OFFER])
    assert "sec-websocket-extensions" not in ws.response.headers
    await ws.close()


async def test_decompression_bomb_closes_1009(start: Start) -> None:
    async with start(["ws://127.0.0.1:0?compression=true&max_frame_size=65536"]) as running:
        ws = await RawWebSocket.connect(running.port("ws"), headers=[DEFLATE_OFFER])
        bomb = deflate(b"\x00" * 10_000_000)
        assert len(bomb) < 65536  # small on the wire, 10 MB inflated
        await ws.send_frame(BINARY, bomb, rsv1=True)
        assert await ws.expect_close() == 1009
        await ws.close()


# --- shutdown ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_shutdown_sends_disconnect_then_close_1001(
    start: Start, pki: PKI, scheme: str
) -> None:
    async with start([f"{scheme}://127.0.0.1:0"]) as running:
        ctx = pki.client_context() if scheme == "wss" else None
        ws = await RawWebSocket.connect(running.port(scheme), ssl_context=ctx)
        await ws.send(mb.gen_connect("v5", proto_ver=5))
        connack = await ws.read_packet()
        assert connack[0] == 0x20
        half_open = await RawClient.connect(running.port(scheme))  # still in its handshake
        await running.broker.stop()
        disconnect = await ws.read_packet()
        assert disconnect[0] == 0xE0  # v5 DISCONNECT ...
        assert disconnect[2] == 0x8B  # ... Server shutting down
        assert await ws.expect_close() == 1001
        await ws.close()
        try:
            assert await half_open.expect_closed() == b""
        except (ConnectionError, OSError):
            pass  # the TLS-side half-open connection may see a reset
        await half_open.close()
