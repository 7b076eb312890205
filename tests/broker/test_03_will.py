"""Will messages (mosquitto's 07-will-* group).

Published when the connection ends without a normal DISCONNECT (abnormal close, keepalive
timeout, protocol error, take-over) or with v5 reason 0x04; discarded on a normal
DISCONNECT; retain and QoS flags honoured; v5 Will Delay Interval against reconnects and
the Session Expiry Interval (the will goes at whichever comes first).
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, Paho, connect, props
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

WILL_TOPIC = "will/t"


async def _watcher(port: int, protocol: int, topic: str = WILL_TOPIC) -> Paho:
    watcher = await connect(port, "will-watcher", protocol=protocol)
    assert await watcher.subscribe(topic, 2) == [2]
    return watcher


async def _with_will(
    port: int,
    client_id: str,
    protocol: int,
    *,
    qos: int = 0,
    retain: bool = False,
    delay: int | None = None,
    expiry: int | None = None,
    clean: bool = True,
) -> Paho:
    will_properties = None
    properties = None
    if delay is not None:
        will_properties = props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay)
    if expiry is not None:
        properties = props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
    kwargs: dict[str, Any] = {"will_properties": will_properties, "properties": properties}
    client = await connect(
        port,
        client_id,
        protocol=protocol,
        clean=clean,
        will=(WILL_TOPIC, b"gone", qos, retain),
        **kwargs,
    )
    # paho must not come back on its own after the broker closes it.
    client.client._reconnect_on_failure = False
    return client


async def _raw_with_will(port: int, client_id: str, ver: int, keepalive: int = 60) -> RawClient:
    raw = await RawClient.connect(port)
    await raw.send(
        mb.gen_connect(
            client_id,
            keepalive=keepalive,
            will_topic=WILL_TOPIC,
            will_payload=b"gone",
            proto_ver=ver,
        )
    )
    ack = await raw.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0), f"CONNACK {ack!r}"
    return raw


async def _abort(client: Paho) -> None:
    """Drop the TCP connection without DISCONNECT (abnormal close: wills fire).

    Unlike ``Paho.kill`` this shuts the socket down *first*, so the broker sees the close
    at once and paho's network thread wakes up and ends instead of finishing a 1 s select
    (``kill`` joins that thread before closing, on the event loop's own thread).
    """
    client.client._reconnect_on_failure = False
    sock = client.client.socket()
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
    await asyncio.to_thread(client.client.loop_stop)
    if sock is not None:
        sock.close()


def _protocol(ver: int) -> int:
    return V5 if ver == 5 else V311


# --- when the will is published ----------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_will_on_abnormal_close(broker: RunningBroker, protocol: int) -> None:
    watcher = await _watcher(broker.port, protocol)
    client = await _with_will(broker.port, "will-kill", protocol)
    await watcher.no_message(0.3)  # nothing while the client is alive
    await _abort(client)
    msg = await watcher.next_message()
    assert (msg.topic, msg.payload, msg.retain) == (WILL_TOPIC, b"gone", False)
    await watcher.disconnect()


@pytest.mark.parametrize("ver", [4, 5])
async def test_will_on_keepalive_timeout(broker: RunningBroker, ver: int) -> None:
    watcher = await _watcher(broker.port, _protocol(ver))
    raw = await _raw_with_will(broker.port, "will-silent", ver, keepalive=1)
    start = time.monotonic()
    msg = await watcher.next_message(timeout=4.0)  # goes silent: timeout at 1.5 s
    elapsed = time.monotonic() - start
    assert msg.payload == b"gone"
    assert 1.2 <= elapsed < 3.0, f"will after {elapsed:.2f} s"
    await raw.expect_closed()
    await raw.close()
    await watcher.disconnect()


@pytest.mark.parametrize("ver", [4, 5])
@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00", b"\x30\xff\xff\xff\xff\x01", b"\x82\x00"],
    ids=["reserved-type", "bad-length", "empty-subscribe"],
)
async def test_will_on_protocol_error(broker: RunningBroker, ver: int, garbage: bytes) -> None:
    watcher = await _watcher(broker.port, _protocol(ver))
    raw = await _raw_with_will(broker.port, "will-garbage", ver)
    await raw.send(garbage)
    await raw.expect_closed()
    msg = await watcher.next_message()
    assert msg.payload == b"gone"
    await raw.close()
    await watcher.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_will_on_takeover(broker: RunningBroker, protocol: int) -> None:
    watcher = await _watcher(broker.port, protocol)
    old = await _with_will(broker.port, "will-takeover", protocol)
    new = await connect(broker.port, "will-takeover", protocol=protocol)
    msg = await watcher.next_message()
    assert msg.payload == b"gone"
    await old.wait_disconnected()
    await _abort(old)
    # The new connection has no will: its normal DISCONNECT publishes nothing more.
    await new.disconnect()
    await watcher.no_message(0.3)
    await watcher.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_no_will_on_normal_disconnect(broker: RunningBroker, protocol: int) -> None:
    watcher = await _watcher(broker.port, protocol)
    client = await _with_will(broker.port, "will-normal", protocol)
    await client.disconnect()
    await watcher.no_message(0.4)
    await watcher.disconnect()


async def test_no_will_on_normal_disconnect_raw(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V311)
    raw = await _raw_with_will(broker.port, "will-normal-raw", 4)
    await raw.send(mb.gen_disconnect())
    assert await raw.expect_closed() == b""
    await watcher.no_message(0.4)
    await raw.close()
    await watcher.disconnect()


async def test_v5_disconnect_with_will_message(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-0x04", V5)
    await client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    msg = await watcher.next_message()
    assert msg.payload == b"gone"

    raw = await _raw_with_will(broker.port, "will-0x04-raw", 5)
    await raw.send(bytes.fromhex("e00104"))  # Disconnect with Will Message
    assert await raw.expect_closed() == b""
    assert (await watcher.next_message()).payload == b"gone"
    await raw.close()
    await watcher.disconnect()


async def test_v5_will_properties_forwarded(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V5)
    will_properties = props(
        PacketTypes.WILLMESSAGE,
        ContentType="text/plain",
        ResponseTopic="will/reply",
        UserProperty=[("k", "v")],
    )
    client = await connect(
        broker.port,
        "will-props",
        protocol=V5,
        will=(WILL_TOPIC, b"gone", 1, False),
        will_properties=will_properties,
    )
    await _abort(client)
    msg = await watcher.next_message()
    assert msg.payload == b"gone"
    assert msg.properties.ContentType == "text/plain"
    assert msg.properties.ResponseTopic == "will/reply"
    assert msg.properties.UserProperty == [("k", "v")]
    await watcher.disconnect()


# --- will flags --------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_will_retain(broker: RunningBroker, protocol: int) -> None:
    watcher = await _watcher(broker.port, protocol)
    client = await _with_will(broker.port, "will-retain", protocol, qos=1, retain=True)
    await _abort(client)
    live = await watcher.next_message()
    assert live.payload == b"gone"

    late = await connect(broker.port, "will-late", protocol=protocol)
    assert await late.subscribe(WILL_TOPIC, 1) == [1]
    msg = await late.next_message()
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (WILL_TOPIC, b"gone", True, 1)
    await late.disconnect()
    await watcher.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_will_without_retain_not_stored(broker: RunningBroker, protocol: int) -> None:
    watcher = await _watcher(broker.port, protocol)
    client = await _with_will(broker.port, "will-noretain", protocol, qos=1)
    await _abort(client)
    assert (await watcher.next_message()).payload == b"gone"
    late = await connect(broker.port, "will-late", protocol=protocol)
    assert await late.subscribe(WILL_TOPIC, 1) == [1]
    await late.no_message(0.3)
    await late.disconnect()
    await watcher.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_will_qos(broker: RunningBroker, protocol: int, qos: int) -> None:
    watcher = await _watcher(broker.port, protocol)  # subscribed at QoS 2
    client = await _with_will(broker.port, f"will-qos{qos}", protocol, qos=qos)
    await _abort(client)
    msg = await watcher.next_message()
    assert (msg.payload, msg.qos) == (b"gone", qos)
    await watcher.disconnect()


# --- v5 Will Delay Interval --------------------------------------------------------------


async def test_v5_will_delay(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-delay", V5, delay=1, expiry=10, clean=False)
    start = time.monotonic()
    await _abort(client)
    await watcher.no_message(0.6)  # not at once
    msg = await watcher.next_message(timeout=3.0)
    elapsed = time.monotonic() - start
    assert msg.payload == b"gone"
    assert 0.9 <= elapsed < 2.5, f"will after {elapsed:.2f} s"
    await watcher.disconnect()


async def test_v5_will_delay_cancelled_by_reconnect(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-back", V5, delay=1, expiry=10, clean=False)
    await _abort(client)
    back = await connect(
        broker.port,
        "will-back",
        protocol=V5,
        clean=False,
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=10),
    )
    await watcher.no_message(1.5)  # past the 1 s delay: the will is never sent
    await back.disconnect()
    await watcher.no_message(0.3)
    await watcher.disconnect()


async def test_v5_will_delay_cancelled_by_takeover(broker: RunningBroker) -> None:
    """A new connection that resumes the session takes over within the delay: no will."""
    watcher = await _watcher(broker.port, V5)
    old = await _with_will(broker.port, "will-taken", V5, delay=1, expiry=10, clean=False)
    new = await connect(
        broker.port,
        "will-taken",
        protocol=V5,
        clean=False,
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=10),
    )
    assert await old.wait_disconnected() == 0x8E
    await _abort(old)
    await watcher.no_message(1.5)
    await new.disconnect()
    await watcher.disconnect()


async def test_v5_will_delay_reconnect_with_clean_start_sends_will(
    broker: RunningBroker,
) -> None:
    """Clean Start ends the old session, and the will goes with it, before the delay."""
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-fresh", V5, delay=5, expiry=10, clean=False)
    await _abort(client)
    await watcher.no_message(0.3)
    start = time.monotonic()
    fresh = await connect(broker.port, "will-fresh", protocol=V5, clean=True)
    msg = await watcher.next_message(timeout=2.0)
    assert msg.payload == b"gone"
    assert time.monotonic() - start < 1.5
    await fresh.disconnect()
    await watcher.disconnect()


async def test_v5_will_delay_with_zero_session_expiry_is_immediate(
    broker: RunningBroker,
) -> None:
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-exp0", V5, delay=5)  # expiry absent = 0
    start = time.monotonic()
    await _abort(client)
    msg = await watcher.next_message(timeout=2.0)
    elapsed = time.monotonic() - start
    assert msg.payload == b"gone"
    assert elapsed < 1.0, f"will after {elapsed:.2f} s: the session ended at once"
    await watcher.disconnect()


async def test_v5_will_delay_longer_than_session_expiry(broker: RunningBroker) -> None:
    watcher = await _watcher(broker.port, V5)
    client = await _with_will(broker.port, "will-exp1", V5, delay=30, expiry=1, clean=False)
    start = time.monotonic()
    await _abort(client)
    await watcher.no_message(0.6)
    msg = await watcher.next_message(timeout=3.0)
    elapsed = time.monotonic() - start
    assert msg.payload == b"gone"
    assert 0.9 <= elapsed < 2.5, f"will after {elapsed:.2f} s, expected at session expiry"
    await watcher.disconnect()
