"""Many listeners in one broker: all four schemes together, names, per-listener connection
caps, and a graceful shutdown that closes the listeners first, then every connection with
the MQTT 5 reason code, whatever its transport."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V5, connect
from tests.helpers.raw import RawClient
from tests.helpers.ws import RawWebSocket
from tidemq.app import Broker
from tidemq.broker.hooks import ClientInfo, ConnectedEvent, DisconnectedEvent, HookPoint
from tidemq.transport import ListenerSpec, WriteBatcher, start_listener

from .conftest import ALL_FOUR, PKI, Running, Start

CONNACK_OK = b"\x20\x02\x00\x00"


async def test_one_publish_reaches_subscribers_on_every_scheme(
    listeners: Running, pki: PKI
) -> None:
    subs = []
    for scheme in ("tcp", "tls", "ws", "wss"):
        tls = pki.client_context() if scheme in ("tls", "wss") else None
        transport = "websockets" if scheme.startswith("ws") else "tcp"
        sub = await connect(
            listeners.port(scheme), f"sub-{scheme}", protocol=V5, tls=tls, transport=transport
        )
        assert await sub.subscribe("all/#", 1) == [1]
        subs.append(sub)
    pub = await connect(listeners.port("tcp"), "pub")
    await pub.publish("all/x", b"everyone", qos=1)
    for sub in subs:
        got = await sub.next_message()
        assert (got.topic, got.payload) == ("all/x", b"everyone")
        await sub.disconnect()
    await pub.disconnect()


async def test_addresses_and_names(listeners: Running) -> None:
    broker = listeners.broker
    assert [scheme for scheme, _, _ in broker.addresses] == ["tcp", "tls", "ws", "wss"]
    assert all(port != 0 for _, _, port in broker.addresses)
    assert [listener.name for listener in broker.listeners] == ["tcp:0", "tls:0", "ws:0", "wss:0"]
    assert broker.listener("tls:0").spec.scheme == "tls"
    with pytest.raises(KeyError):
        broker.listener("nope")


async def test_default_names_stay_unique_and_reach_the_hooks(start: Start) -> None:
    urls = ["tcp://127.0.0.1:0", "tcp://127.0.0.1:0", "tcp://127.0.0.1:0?name=internal"]
    async with start(urls) as running:
        names = [listener.name for listener in running.broker.listeners]
        assert names == ["tcp:0", "tcp:0-2", "internal"]
        seen: list[ClientInfo] = []

        def on_connected(event: ConnectedEvent) -> None:
            seen.append(event.client)

        running.hooks.register(HookPoint.CLIENT_CONNECTED, on_connected)
        for name in names:
            raw = await RawClient.connect(running.port(name))
            await raw.send(mb.gen_connect(f"via-{name}"))
            await raw.expect(CONNACK_OK)
            await raw.close()
        assert [c.listener for c in seen] == names


async def test_max_connections_per_listener(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidemq.transport")
    urls = ["tcp://127.0.0.1:0?name=small&max_connections=2", "tcp://127.0.0.1:0?name=other"]
    async with start(urls) as running:
        port = running.port("small")
        first = await RawClient.connect(port)
        await first.send(mb.gen_connect("first"))
        await first.expect(CONNACK_OK)
        second = await RawClient.connect(port)  # counted from the accept, before CONNECT
        third = await RawClient.connect(port)
        assert await third.expect_closed() == b""
        await third.close()
        assert any("max_connections (2)" in r.getMessage() for r in caplog.records)
        # Other listeners are not affected ...
        other = await RawClient.connect(running.port("other"))
        await other.send(mb.gen_connect("other"))
        await other.expect(CONNACK_OK)
        # ... and a freed slot is usable again: the broker closes "first" on DISCONNECT,
        # and its socket closes only once the listener has counted it out.
        await first.send(mb.gen_disconnect())
        assert await first.expect_closed() == b""
        fourth = await RawClient.connect(port)
        await fourth.send(mb.gen_connect("fourth"))
        await fourth.expect(CONNACK_OK)
        assert running.broker.listener("small").connection_count == 2
        for c in (first, second, other, fourth):
            await c.close()


@pytest.mark.parametrize("scheme", ["tcp", "tls"])
async def test_graceful_shutdown_over_every_transport(start: Start, pki: PKI, scheme: str) -> None:
    async with start([f"{scheme}://127.0.0.1:0"]) as running:
        port = running.port(scheme)
        if scheme == "tls":
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=pki.client_context(), server_hostname="localhost"
            )
            raw = RawClient(reader, writer)
        else:
            raw = await RawClient.connect(port)
        await raw.send(mb.gen_connect("v5", proto_ver=5))
        assert (await raw.read_packet())[0] == 0x20
        await running.broker.stop()
        disconnect = await raw.read_packet()
        assert disconnect[0] == 0xE0  # DISCONNECT ...
        assert disconnect[2] == 0x8B  # ... Server shutting down
        assert await raw.expect_closed() == b""
        await raw.close()
        with pytest.raises(ConnectionRefusedError):  # the listener is closed
            await RawClient.connect(port)


async def test_stop_closes_listeners_before_connections(start: Start) -> None:
    """By the time the first client is disconnected, no listener accepts any more."""
    async with start(ALL_FOUR) as running:
        broker = running.broker
        ws = await RawWebSocket.connect(running.port("ws"))
        await ws.send(mb.gen_connect("watch", proto_ver=5))
        await ws.read_packet()
        serving: list[list[bool]] = []

        def on_disconnected(event: DisconnectedEvent) -> None:
            serving.append([listener.server.is_serving() for listener in broker.listeners])

        running.hooks.register(HookPoint.CLIENT_DISCONNECTED, on_disconnected)
        await broker.stop()
        assert serving == [[False, False, False, False]]
        assert await ws.expect_close() == 1001
        await ws.close()


async def test_tls_listener_needs_tls_options() -> None:
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match="needs a certificate"):
        await start_listener(
            ListenerSpec("tls", "127.0.0.1", 0, name="t"),
            lambda link: None,
            WriteBatcher(loop),  # type: ignore[arg-type, return-value]
        )


async def test_broker_without_config_reads_options_from_the_default_config() -> None:
    with pytest.raises(ValueError, match="needs a certificate"):
        async with Broker(listen=["tls://127.0.0.1:0"], settings=None):
            pass
