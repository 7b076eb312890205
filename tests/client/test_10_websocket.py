"""MQTT over WebSocket in the client: ``ws://`` against TideMQ's and Mosquitto's WebSocket
listeners, ``wss://`` against TideMQ with trustme certificates, refusals, reconnecting, the
builder and the CLI; and the WebSocket mechanics (ping, close handshakes both ways, text
frames) against a scripted wsproto server."""

from __future__ import annotations

import asyncio
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from tidemq.app import Broker
from tidemq.client import (
    Client,
    ClientState,
    MQTTConnectionError,
    ReconnectPolicy,
    SessionBuilder,
    SessionManager,
)
from tidemq.client.options import parse_url
from tidemq.config import Config
from tidemq.testing import broker_settings

from .conftest import MosquittoServer, TideMQServer

trustme = pytest.importorskip("trustme")

WAIT = 10.0
FAST = ReconnectPolicy(initial_delay=0.02, factor=2, max_delay=0.1, jitter=0)
Server = TideMQServer | MosquittoServer


def test_websocket_urls() -> None:
    e = parse_url("ws://broker:8083")
    assert (e.host, e.port, e.tls, e.websocket, e.path) == ("broker", 8083, False, True, "/mqtt")
    e = parse_url("wss://u:p@broker/custom/path?token=1")
    assert (e.port, e.tls, e.path, e.username, e.password) == (
        443,
        True,
        "/custom/path?token=1",
        "u",
        "p",
    )
    assert parse_url("ws://h").port == 80
    assert not parse_url("mqtt://h").websocket


@pytest.mark.parametrize("version", [5, 311])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_ws_round_trip(server: Server, version: int, qos: int) -> None:
    async with Client(server.ws_url, version=version) as client:
        assert client._proto is not None
        assert client._proto.transport is not None
        assert client._proto.transport.get_extra_info("subprotocol") == "mqtt"
        async with client.subscribe("ws/#", qos=qos) as sub:
            # Large enough for 64-bit frame lengths and several TCP segments. Mosquitto
            # 2.0 (libwebsockets) sends large messages to WebSocket clients slowly (about
            # 40 KB/s here, to paho as well): one large message, not six.
            sizes = [0, 100]
            if server.name == "tidemq":
                sizes.append(200_000)
            elif qos == 1 and version == 5:
                sizes.append(70_000)
            for size in sizes:
                await client.publish("ws/x", b"z" * size, qos=qos)
                msg = await sub.get(WAIT)
                assert (msg.topic, len(msg.payload), msg.qos) == ("ws/x", size, qos)


async def test_ws_and_tcp_clients_talk(server: Server) -> None:
    async with Client(server.ws_url) as ws, Client(server.url) as tcp:
        async with tcp.subscribe("mix/#", qos=1) as sub:
            await ws.publish("mix/a", "from ws", qos=1)
            assert (await sub.get(WAIT)).payload == b"from ws"
        async with ws.subscribe("mix/#", qos=1) as sub:
            await tcp.publish("mix/b", "from tcp", qos=1)
            assert (await sub.get(WAIT)).payload == b"from tcp"


async def test_ws_reconnects_after_a_restart(tidemq: TideMQServer) -> None:
    async with Client(tidemq.ws_url, reconnect=FAST, client_id="ws-survivor") as client:
        connected = asyncio.Event()

        def on_event(event: str, data: object) -> None:
            if event == "connected":
                connected.set()

        client.add_listener(on_event)
        await client.subscribe("back/#", qos=1)
        await tidemq.kill()
        pending = asyncio.ensure_future(client.publish("back/x", "queued", qos=1))
        await tidemq.start()  # same ports
        await asyncio.wait_for(connected.wait(), WAIT)
        async with client.messages() as stream:
            await asyncio.wait_for(pending, WAIT)
            await client.publish("back/y", "after", qos=1)
            payloads = {(await stream.get(WAIT)).payload for _ in range(2)}
        assert b"after" in payloads
        assert client.metrics.reconnects >= 1


async def test_refused_upgrade_is_a_typed_error(tidemq: TideMQServer) -> None:
    url = f"ws://127.0.0.1:{tidemq.ws_port}/not-here"
    with pytest.raises(MQTTConnectionError, match="HTTP 404") as info:
        await Client(url, reconnect=False).connect()
    assert not info.value.is_temporary  # a wrong path does not fix itself
    # A plain MQTT port does not speak HTTP: the upgrade fails, the error says so.
    with pytest.raises(MQTTConnectionError):
        await Client(f"ws://127.0.0.1:{tidemq.port}/mqtt", reconnect=False).connect()


async def test_builder_and_manager_over_ws(server: Server) -> None:
    async with SessionManager() as manager:
        manager.add_session(SessionBuilder("w").broker(server.ws_url).build())
        await manager.wait_for_session("w", WAIT)
        async with manager.listen_to("w", "b/#", qos=1) as listener:
            await manager.publish_to("w", "b/1", "hi", qos=1)
            assert (await listener.get(WAIT)).payload == b"hi"


async def test_cli_over_ws(server: Server) -> None:
    sub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "sub",
        "-L",
        server.ws_url,
        "-t",
        "cli/ws",
        "-C",
        "1",
        "-W",
        str(WAIT),
        "-v",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Publish (retained, so the order of the two processes does not matter).
    pub = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidemq",
        "pub",
        "-L",
        server.ws_url,
        "-t",
        "cli/ws",
        "-m",
        "over websocket",
        "-r",
        "-q",
        "1",
        stderr=asyncio.subprocess.PIPE,
    )
    _, pub_err = await asyncio.wait_for(pub.communicate(), WAIT)
    assert pub.returncode == 0, pub_err.decode()
    out, err = await asyncio.wait_for(sub.communicate(), WAIT + 5)
    assert sub.returncode == 0, err.decode()
    assert out == b"cli/ws over websocket\n"
    async with Client(server.url) as cleaner:
        await cleaner.publish("cli/ws", b"", retain=True)


# --- wss:// ---------------------------------------------------------------------------


@pytest.fixture
async def wss_broker(tmp_path: Path) -> AsyncIterator[tuple[Broker, str]]:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    server_file = tmp_path / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(server_file)
    )
    config = Config().with_values(
        {
            "listeners.listen": ["wss://127.0.0.1:0/mqtt"],
            "listeners.tls.certfile": str(server_file),
        }
    )
    broker = Broker(config, settings=broker_settings())
    await broker.start()
    try:
        yield broker, str(ca_file)
    finally:
        await broker.stop()


async def test_wss_round_trip(wss_broker: tuple[Broker, str]) -> None:
    broker, ca_file = wss_broker
    context = ssl.create_default_context(cafile=ca_file)
    url = f"wss://localhost:{broker.port}/mqtt"
    async with Client(url, ssl=context) as client:
        assert client._proto is not None
        assert client._proto.transport is not None
        assert client._proto.transport.get_extra_info("ssl_object") is not None
        async with client.subscribe("tls/#", qos=2) as sub:
            await client.publish("tls/x", "secret", qos=2)
            assert (await sub.get(WAIT)).payload == b"secret"
    # The builder's TLS options apply to wss:// as to mqtts://.
    session = SessionBuilder("s").broker(url).tls(ca=ca_file).build()
    await session.client.connect()
    assert session.client.is_connected
    await session.client.close()


async def test_wss_untrusted_server_is_refused(wss_broker: tuple[Broker, str]) -> None:
    broker, _ = wss_broker
    client = Client(f"wss://localhost:{broker.port}/mqtt", reconnect=False)  # system CAs
    with pytest.raises(MQTTConnectionError, match="TLS verification failed") as info:
        await client.connect()
    assert not info.value.is_temporary


# --- the WebSocket mechanics, against a scripted server -------------------------------

CONNACK_311 = b"\x20\x02\x00\x00"
DISCONNECT = b"\xe0\x00"


class ScriptedServer:
    """A one-connection WebSocket server on wsproto: accepts the upgrade, answers
    CONNECT with CONNACK and records every event the client sends."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[object] = asyncio.Queue()
        self.ws = WSConnection(ConnectionType.SERVER)
        self.writer: asyncio.StreamWriter | None = None
        self.request: Request | None = None
        self.closed = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def send(self, event: object) -> None:
        assert self.writer is not None
        self.writer.write(self.ws.send(event))  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while data := await reader.read(65536):
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, Request):
                        self.request = event
                        self.send(AcceptConnection(subprotocol="mqtt"))
                    elif isinstance(event, BytesMessage) and bytes(event.data)[:1] == b"\x10":
                        self.send(BytesMessage(data=CONNACK_311))
                    elif isinstance(event, CloseConnection) and self.ws.state.name == (
                        "REMOTE_CLOSING"
                    ):
                        self.send(event.response())
                    self.events.put_nowait(event)
        finally:
            self.closed.set()
            writer.close()

    async def next(self, kind: type) -> object:
        while True:
            event = await asyncio.wait_for(self.events.get(), WAIT)
            if isinstance(event, kind):
                return event


@pytest.fixture
async def scripted() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_upgrade_ping_and_client_close(scripted: ScriptedServer) -> None:
    client = Client(
        f"ws://127.0.0.1:{scripted.port}/some/path?x=1",
        version=311,
        reconnect=False,
        websocket_headers=[("Authorization", "Bearer t0ken")],
    )
    await client.connect()
    request = scripted.request
    assert request is not None
    assert request.target == "/some/path?x=1"
    assert request.subprotocols == ["mqtt"]
    assert (b"authorization", b"Bearer t0ken") in [
        (bytes(k).lower(), bytes(v)) for k, v in request.extra_headers
    ]
    scripted.send(Ping(payload=b"are you there"))
    pong = await scripted.next(Pong)
    assert isinstance(pong, Pong)
    assert pong.payload == b"are you there"
    loop = asyncio.get_running_loop()
    began = loop.time()
    await client.close()
    # DISCONNECT in a binary frame, then a normal close answered by the server: no
    # waiting for the close timeout.
    disconnect = await scripted.next(BytesMessage)
    assert isinstance(disconnect, BytesMessage)
    assert bytes(disconnect.data) == DISCONNECT
    close = await scripted.next(CloseConnection)
    assert isinstance(close, CloseConnection)
    assert close.code == 1000
    assert loop.time() - began < 2
    await asyncio.wait_for(scripted.closed.wait(), WAIT)


async def test_server_close_is_echoed_and_reconnects(scripted: ScriptedServer) -> None:
    events: asyncio.Queue[str] = asyncio.Queue()
    client = Client(f"ws://127.0.0.1:{scripted.port}", version=311, reconnect=FAST)
    client.add_listener(lambda event, data: events.put_nowait(event))
    await client.connect()
    scripted.send(CloseConnection(code=1001, reason="going away"))
    while await asyncio.wait_for(events.get(), WAIT) != "disconnected":
        pass
    assert client.state is ClientState.RECONNECTING
    await asyncio.wait_for(scripted.closed.wait(), WAIT)
    await client.close()


async def test_text_frame_closes_with_1003(scripted: ScriptedServer) -> None:
    client = Client(f"ws://127.0.0.1:{scripted.port}", version=311, reconnect=False)
    await client.connect()
    scripted.send(TextMessage(data="MQTT is binary"))
    close = await scripted.next(CloseConnection)
    assert isinstance(close, CloseConnection)
    assert close.code == 1003
    await asyncio.wait_for(scripted.closed.wait(), WAIT)
    await client.close()
    assert client.state is ClientState.CLOSED
