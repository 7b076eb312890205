"""paho-mqtt clients for behaviour tests, driven without blocking the broker's event loop.

paho runs its network loop in its own thread (``loop_start``); every wait here is done in
a worker thread through ``asyncio.to_thread`` so the in-process broker keeps running.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties as PahoProperties
from paho.mqtt.reasoncodes import ReasonCode as PahoReasonCode

WAIT = 5.0
V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5
V31 = mqtt.MQTTv31


@dataclass
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: Any = None


@dataclass
class Paho:
    """A connected paho client with queues for what it receives."""

    client: mqtt.Client
    protocol: int
    messages: queue.Queue[Received] = field(default_factory=queue.Queue)
    connack: queue.Queue[tuple[bool, int, Any]] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    disconnects: queue.Queue[int] = field(default_factory=queue.Queue)
    unsubacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)

    async def next_message(self, timeout: float = WAIT) -> Received:
        return await asyncio.to_thread(self.messages.get, True, timeout)

    async def no_message(self, timeout: float = 0.5) -> None:
        """Assert nothing arrives within *timeout* seconds."""
        try:
            msg = await asyncio.to_thread(self.messages.get, True, timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message {msg}")

    async def subscribe(self, topic: str, qos: int = 0, **kwargs: Any) -> list[int]:
        if self.protocol == V5:
            properties = kwargs.pop("properties", None)
            options = mqtt.SubscribeOptions(qos=qos, **kwargs)
            self.client.subscribe(topic, options=options, properties=properties)
        else:
            self.client.subscribe(topic, qos)
        return await asyncio.to_thread(self.subacks.get, True, WAIT)

    async def unsubscribe(self, topic: str) -> list[int]:
        self.client.unsubscribe(topic)
        return await asyncio.to_thread(self.unsubacks.get, True, WAIT)

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int = 0,
        retain: bool = False,
        properties: PahoProperties | None = None,
    ) -> mqtt.MQTTMessageInfo:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        await asyncio.to_thread(info.wait_for_publish, WAIT)
        return info

    async def disconnect(
        self, reasoncode: PahoReasonCode | None = None, properties: Any = None
    ) -> None:
        if self.protocol == V5:
            self.client.disconnect(reasoncode=reasoncode, properties=properties)
        else:
            self.client.disconnect()
        await asyncio.to_thread(self.client.loop_stop)

    async def wait_disconnected(self, timeout: float = WAIT) -> int:
        return await asyncio.to_thread(self.disconnects.get, True, timeout)

    async def kill(self) -> None:
        """Drop the TCP connection without DISCONNECT (abnormal close: wills fire).

        The socket is shut down first, so the broker sees the close at once; paho's loop
        thread is then stopped off the event loop (its join can take a second).
        """
        self.client._reconnect_on_failure = False  # paho would otherwise reconnect itself
        sock = self.client.socket()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        await asyncio.to_thread(self.client.loop_stop)


def _rc_value(rc: Any) -> int:
    if isinstance(rc, PahoReasonCode):
        return int(rc.value)
    return int(rc)


async def connect(
    port: int,
    client_id: str = "",
    *,
    protocol: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes, int, bool] | None = None,
    will_properties: PahoProperties | None = None,
    properties: PahoProperties | None = None,
    expect_rc: int | None = 0,
    transport: str = "tcp",
    ws_path: str = "/mqtt",
    tls: ssl.SSLContext | None = None,
) -> Paho:
    """Connect a paho client; waits for CONNACK and (by default) asserts success.

    ``transport="websockets"`` speaks MQTT over WebSocket at *ws_path*; *tls* wraps the
    connection (MQTT over TLS, or secure WebSocket) with that client context.
    """
    kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if protocol != V5:
        kwargs["clean_session"] = clean
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, transport=transport, **kwargs)
    if transport == "websockets":
        client.ws_set_options(path=ws_path)
    if tls is not None:
        client.tls_set_context(tls)
    wrapper = Paho(client, protocol)
    if username is not None:
        client.username_pw_set(username, password)
    if will is not None:
        client.will_set(will[0], will[1], will[2], will[3], properties=will_properties)
    done = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        wrapper.connack.put((bool(flags.session_present), _rc_value(rc), props))
        done.set()

    def on_message(c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        wrapper.messages.put(
            Received(m.topic, m.payload, m.qos, bool(m.retain), bool(m.dup), m.properties)
        )

    def on_subscribe(c: Any, u: Any, mid: int, rcs: Any, props: Any = None) -> None:
        wrapper.subacks.put([_rc_value(r) for r in rcs])

    def on_unsubscribe(c: Any, u: Any, mid: int, rcs: Any, props: Any = None) -> None:
        wrapper.unsubacks.put([_rc_value(r) for r in rcs] if rcs else [])

    def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any = None) -> None:
        wrapper.disconnects.put(_rc_value(rc))

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.on_unsubscribe = on_unsubscribe
    client.on_disconnect = on_disconnect
    connect_kwargs: dict[str, Any] = {"keepalive": keepalive}
    if protocol == V5:
        connect_kwargs["clean_start"] = clean
        connect_kwargs["properties"] = properties
    await asyncio.to_thread(client.connect, "127.0.0.1", port, **connect_kwargs)
    client.loop_start()
    if expect_rc is not None:
        _, rc, _ = await asyncio.to_thread(wrapper.connack.get, True, WAIT)
        assert rc == expect_rc, f"CONNACK {rc:#x}, expected {expect_rc:#x}"
    return wrapper


def props(packet_type: int, **values: Any) -> PahoProperties:
    """Build paho Properties, e.g. ``props(PacketTypes.CONNECT, SessionExpiryInterval=10)``."""
    p = PahoProperties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p
