"""CONNECT / CONNACK behaviour (mosquitto's 01-connect-* group).

Session-present flag, clean start, client identifiers, protocol levels, packet order,
connect timeout, take-over, enhanced authentication, anonymous access and limits.
Every behaviour is checked over paho 3.1.1 and 5.0 where both apply, and with raw bytes
where the exact bytes on the wire are the point.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V31, V311, WAIT, Paho, connect, props
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

PERSIST = 60  # v5 Session Expiry Interval that makes a session outlive its connection


def _persist_props(protocol: int, expiry: int = PERSIST) -> Any:
    if protocol != V5:
        return None
    return props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)


async def _connack(
    port: int, client_id: str, protocol: int, **kwargs: Any
) -> tuple[Paho, bool, int, Any]:
    """Connect without asserting success; returns (client, session_present, rc, props)."""
    client = await connect(port, client_id, protocol=protocol, expect_rc=None, **kwargs)
    # A refused client must not reconnect on its own while the test inspects it.
    client.client._reconnect_on_failure = False
    session_present, rc, ack_props = await asyncio.to_thread(client.connack.get, True, WAIT)
    return client, session_present, rc, ack_props


async def _stop(client: Paho) -> None:
    """Stop a client the broker has closed. (``Paho.kill`` would join paho's network thread
    on the event loop's own thread, stalling the broker for up to a second.)"""
    client.client._reconnect_on_failure = False
    await asyncio.to_thread(client.client.loop_stop)
    sock = client.client.socket()
    if sock is not None:
        sock.close()


# paho reports an MQTT 3 CONNACK return code as the matching MQTT 5 reason code (and
# anything else as 0x80), so these still pin the exact byte the broker sent.
V3_RC_AS_PAHO = {1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


async def _refused(port: int, client_id: str, protocol: int, rc: int, **kwargs: Any) -> None:
    """Connect over paho and expect CONNACK *rc* (an MQTT 3 return code for 3.1.1)."""
    client, _, got, _ = await _connack(port, client_id, protocol, **kwargs)
    await _stop(client)
    if protocol != V5:
        rc = V3_RC_AS_PAHO[rc]
    assert got == rc, f"CONNACK {got:#x}, expected {rc:#x}"


async def _roundtrip(client: Paho, port: int, topic: str) -> None:
    """The client is usable: it receives what another client publishes."""
    assert await client.subscribe(topic, 1) == [1]
    pub = await connect(port, "", protocol=V311)
    await pub.publish(topic, b"alive", qos=1)
    msg = await client.next_message()
    assert (msg.topic, msg.payload) == (topic, b"alive")
    await pub.disconnect()


def _v5_connack_rc(data: bytes) -> int:
    assert data[0] == 0x20, f"not a CONNACK: {data!r}"
    return data[3]


# --- session present / clean start -------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_session_present_flag(broker: RunningBroker, protocol: int) -> None:
    extra = {"clean": False, "properties": _persist_props(protocol)}
    first, present, rc, _ = await _connack(broker.port, "sp-client", protocol, **extra)
    assert (rc, present) == (0, False), "a new session must not be reported present"
    await first.disconnect()

    again, present, rc, _ = await _connack(broker.port, "sp-client", protocol, **extra)
    assert (rc, present) == (0, True), "a resumed persistent session must be reported present"
    await again.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_clean_session_discards_old_session(broker: RunningBroker, protocol: int) -> None:
    persistent = {"clean": False, "properties": _persist_props(protocol)}
    first, _, _, _ = await _connack(broker.port, "clean-client", protocol, **persistent)
    assert await first.subscribe("clean/t", 1) == [1]
    await first.disconnect()

    # Clean session / Clean Start: the stored session and its subscription are gone
    # (v5 still asks for an expiry so that only Clean Start can explain the loss).
    fresh, present, rc, _ = await _connack(
        broker.port, "clean-client", protocol, clean=True, properties=_persist_props(protocol)
    )
    assert (rc, present) == (0, False)
    pub = await connect(broker.port, "clean-pub", protocol=protocol)
    await pub.publish("clean/t", b"x", qos=1)
    await fresh.no_message(0.4)
    await pub.disconnect()
    await fresh.disconnect()


async def test_clean_session_discards_queued_messages(broker: RunningBroker) -> None:
    first = await connect(broker.port, "clean-q", clean=False)
    assert await first.subscribe("cleanq/t", 1) == [1]
    await first.disconnect()
    pub = await connect(broker.port, "cleanq-pub")
    await pub.publish("cleanq/t", b"queued", qos=1)
    await pub.disconnect()
    fresh = await connect(broker.port, "clean-q", clean=True)
    await fresh.no_message(0.4)
    await fresh.disconnect()


# --- client identifiers ------------------------------------------------------------------


async def test_v5_assigned_client_identifier(broker: RunningBroker) -> None:
    a, _, rc, ack = await _connack(broker.port, "", V5)
    b, _, rc_b, ack_b = await _connack(broker.port, "", V5)
    assert rc == rc_b == 0
    assigned = getattr(ack, "AssignedClientIdentifier", None)
    assigned_b = getattr(ack_b, "AssignedClientIdentifier", None)
    assert isinstance(assigned, str)
    assert assigned
    assert assigned != assigned_b, "each empty-id client needs its own identifier"
    await _roundtrip(a, broker.port, "assigned/t")
    await a.disconnect()
    await b.disconnect()


async def test_v5_no_assigned_identifier_when_client_has_one(broker: RunningBroker) -> None:
    client, _, rc, ack = await _connack(broker.port, "has-an-id", V5)
    assert rc == 0
    assert not hasattr(ack, "AssignedClientIdentifier")
    await client.disconnect()


async def test_v311_empty_client_id_clean_session_accepted(broker: RunningBroker) -> None:
    client = await connect(broker.port, "", protocol=V311, clean=True)
    await _roundtrip(client, broker.port, "empty-id/t")
    await client.disconnect()

    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("", clean_session=True))
    await raw.expect(bytes.fromhex("20020000"))
    await raw.close()


async def test_v311_empty_client_id_persistent_refused(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("", clean_session=False))
    await raw.expect(bytes.fromhex("20020002"))  # identifier rejected
    assert await raw.expect_closed() == b""
    await raw.close()


async def test_mqtt31_empty_client_id_refused(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("", proto_ver=3))
    await raw.expect(bytes.fromhex("20020002"))
    assert await raw.expect_closed() == b""
    await raw.close()


@pytest.mark.broker_settings(max_client_id_length=10)
@pytest.mark.parametrize(("protocol", "rc"), [(V311, 2), (V5, 0x85)])
async def test_client_id_too_long_refused(broker: RunningBroker, protocol: int, rc: int) -> None:
    await _refused(broker.port, "x" * 11, protocol, rc)
    ok = await connect(broker.port, "y" * 10, protocol=protocol)  # the limit itself is fine
    await ok.disconnect()


@pytest.mark.broker_settings(max_client_id_length=10)
async def test_client_id_too_long_raw(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("z" * 11))
    await raw.expect(bytes.fromhex("20020002"))
    assert await raw.expect_closed() == b""
    await raw.close()


# --- protocol levels ---------------------------------------------------------------------


async def test_mqtt31_connects_raw(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("mqtt31-raw", proto_ver=3))  # "MQIsdp", level 3
    await raw.expect(bytes.fromhex("20020000"))
    await raw.send(mb.gen_subscribe_one(1, "v31/t", 1))
    await raw.expect(mb.gen_suback(1, [1]))
    await raw.send(mb.gen_publish("v31/t", qos=0, payload=b"hi"))
    await raw.expect(mb.gen_publish("v31/t", qos=0, payload=b"hi"))
    await raw.send(mb.gen_disconnect())
    assert await raw.expect_closed() == b""
    await raw.close()


async def test_mqtt31_connects_paho(broker: RunningBroker) -> None:
    client = await connect(broker.port, "mqtt31-paho", protocol=V31)
    await _roundtrip(client, broker.port, "v31/paho")
    await client.disconnect()


@pytest.mark.parametrize("level", [2, 6])
async def test_unsupported_protocol_level(broker: RunningBroker, level: int) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("bad-level", proto_ver=level, proto_name="MQTT"))
    await raw.expect(bytes.fromhex("20020001"))  # unacceptable protocol version
    assert await raw.expect_closed() == b""
    await raw.close()


def _connect_body(flags: int, ver: int, *, name: str = "MQTT") -> bytes:
    body = mb.utf8(name) + mb.u8(ver) + mb.u8(flags) + mb.u16(60)
    if ver == 5:
        body += mb.varint(0)  # no properties
    return body + mb.utf8("bad-flags")


@pytest.mark.parametrize("ver", [4, 5])
@pytest.mark.parametrize(
    ("first_byte", "flags"),
    [
        (0x10, 0x03),  # reserved flag bit set [MQTT-3.1.2-3]
        (0x10, 0x22),  # will retain without the will flag [MQTT-3.1.2-15]
        (0x10, 0x12),  # will QoS without the will flag [MQTT-3.1.2-13]
        (0x11, 0x02),  # reserved bits of the fixed header [MQTT-2.2.2-2]
    ],
    ids=["reserved-flag", "will-retain-no-will", "will-qos-no-will", "fixed-header-flags"],
)
async def test_malformed_connect_flags_close(
    broker: RunningBroker, ver: int, first_byte: int, flags: int
) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.packet(first_byte, _connect_body(flags, ver)))
    data = await raw.expect_closed()
    # MQTT 3.1.1 closes without a CONNACK; MQTT 5 may first send CONNACK 0x81/0x82.
    if ver == 4 or not data:
        assert data == b""
    else:
        assert data[0] == 0x20, data
        assert data[3] in (0x81, 0x82), data
    await raw.close()


async def test_will_qos_3_closes(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("will-qos3", will_topic="w", will_qos=3))
    assert await raw.expect_closed() == b""  # malformed: no CONNACK [MQTT-3.1.2-14]
    await raw.close()


async def test_v311_password_without_username_closes(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("pw-only", password="secret"))
    assert await raw.expect_closed() == b""  # [MQTT-3.1.2-22]
    await raw.close()


async def test_v5_password_without_username_accepted(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("pw-only-5", password="secret", proto_ver=5))
    assert _v5_connack_rc(await raw.read_packet()) == 0  # allowed in MQTT 5 (§3.1.2.9)
    await raw.close()


@pytest.mark.parametrize(
    ("name", "level"), [("MQIsdp", 4), ("MQTT", 3), ("MQTX", 4)], ids=["MQIsdp-4", "MQTT-3", "MQTX"]
)
async def test_protocol_name_must_match_level(broker: RunningBroker, name: str, level: int) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("bad-name", proto_ver=level, proto_name=name))
    data = await raw.expect_closed()
    assert data in (b"", bytes.fromhex("20020001")), f"not refused: {data!r}"
    await raw.close()


# --- packet order ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        mb.gen_pingreq(),
        mb.gen_publish("order/t", qos=0, payload=b"x"),
        mb.gen_subscribe_one(1, "order/#", 0),
        mb.gen_disconnect(),
    ],
    ids=["pingreq", "publish", "subscribe", "disconnect"],
)
async def test_first_packet_not_connect_closes(broker: RunningBroker, first: bytes) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(first)
    assert await raw.expect_closed() == b""
    await raw.close()


async def test_second_connect_closes_v311(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("twice-v4"))
    await raw.expect(bytes.fromhex("20020000"))
    await raw.send(mb.gen_connect("twice-v4"))
    assert await raw.expect_closed() == b""
    await raw.close()


async def test_second_connect_closes_v5(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("twice-v5", proto_ver=5))
    assert _v5_connack_rc(await raw.read_packet()) == 0
    await raw.send(mb.gen_connect("twice-v5", proto_ver=5))
    assert await raw.expect_closed() == bytes.fromhex("e00182")  # DISCONNECT Protocol Error
    await raw.close()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_second_connect_publishes_will(broker: RunningBroker, protocol: int) -> None:
    """A second CONNECT is a protocol error, so the connection's will goes out."""
    watcher = await connect(broker.port, "twice-watch", protocol=protocol)
    assert await watcher.subscribe("twice/will", 0) == [0]
    ver = 5 if protocol == V5 else 4
    raw = await RawClient.connect(broker.port)
    await raw.send(
        mb.gen_connect("twice-will", will_topic="twice/will", will_payload=b"w", proto_ver=ver)
    )
    assert (await raw.read_packet())[0] == 0x20
    await raw.send(mb.gen_connect("twice-will", proto_ver=ver))
    await raw.expect_closed()
    msg = await watcher.next_message()
    assert (msg.topic, msg.payload) == ("twice/will", b"w")
    await raw.close()
    await watcher.disconnect()


# --- connect timeout ---------------------------------------------------------------------


@pytest.mark.broker_settings(connect_timeout=0.5)
@pytest.mark.parametrize("sent", [b"", mb.gen_connect("partial")[:5]], ids=["nothing", "partial"])
async def test_connect_timeout(broker: RunningBroker, sent: bytes) -> None:
    # The prompt client's connect timer is due before the silent one's, so once the
    # silent socket is closed the prompt client has outlived its own deadline.
    prompt = await RawClient.connect(broker.port)
    start = time.monotonic()
    silent = await RawClient.connect(broker.port)
    if sent:
        await silent.send(sent)
    await prompt.send(mb.gen_connect("prompt"))
    await prompt.expect(bytes.fromhex("20020000"))

    assert await silent.expect_closed(timeout=3.0) == b""
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.5, f"closed after {elapsed:.2f} s"
    # The connect timeout applies only before CONNECT: the connected client stays.
    await prompt.send(mb.gen_pingreq())
    await prompt.expect(mb.gen_pingresp())
    await prompt.close()
    await silent.close()


# --- take-over ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_takeover(broker: RunningBroker, protocol: int) -> None:
    old = await connect(broker.port, "same-id", protocol=protocol)
    old.client._reconnect_on_failure = False
    new = await connect(broker.port, "same-id", protocol=protocol)
    rc = await old.wait_disconnected()
    if protocol == V5:
        assert rc == 0x8E, f"old client got {rc:#x}, expected Session taken over"
    else:
        assert rc != 0
    await _stop(old)
    await _roundtrip(new, broker.port, "takeover/t")
    await new.disconnect()


@pytest.mark.parametrize("ver", [4, 5])
async def test_takeover_raw(broker: RunningBroker, ver: int) -> None:
    old = await RawClient.connect(broker.port)
    await old.send(mb.gen_connect("same-raw", proto_ver=ver))
    assert (await old.read_packet())[0] == 0x20
    new = await connect(broker.port, "same-raw", protocol=V5 if ver == 5 else V311)
    expected = bytes.fromhex("e0018e") if ver == 5 else b""  # MQTT 3: closed without a word
    assert await old.expect_closed() == expected
    await _roundtrip(new, broker.port, "takeover/raw")
    await new.disconnect()
    await old.close()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_takeover_keeps_persistent_session(broker: RunningBroker, protocol: int) -> None:
    extra = {"clean": False, "properties": _persist_props(protocol)}
    old, _, _, _ = await _connack(broker.port, "takeover-sess", protocol, **extra)
    assert await old.subscribe("takeover/sess", 1) == [1]
    new, present, rc, _ = await _connack(broker.port, "takeover-sess", protocol, **extra)
    assert (rc, present) == (0, True)
    await old.wait_disconnected()
    await _stop(old)
    pub = await connect(broker.port, "takeover-pub", protocol=protocol)
    await pub.publish("takeover/sess", b"still subscribed", qos=1)
    assert (await new.next_message()).payload == b"still subscribed"
    await pub.disconnect()
    await new.disconnect()


# --- authentication ----------------------------------------------------------------------


async def test_v5_authentication_method_refused(broker: RunningBroker) -> None:
    await _refused(
        broker.port,
        "auth-method",
        V5,
        0x8C,
        properties=props(PacketTypes.CONNECT, AuthenticationMethod="SCRAM-SHA-1"),
    )
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("auth-raw", proto_ver=5, properties=mb.proplist((0x15, "X"))))
    assert _v5_connack_rc(await raw.read_packet()) == 0x8C  # Bad authentication method
    assert await raw.expect_closed() == b""
    await raw.close()


@pytest.mark.broker_settings(allow_anonymous=False)
@pytest.mark.parametrize(("protocol", "rc"), [(V311, 5), (V5, 0x87)])
async def test_anonymous_refused(broker: RunningBroker, protocol: int, rc: int) -> None:
    await _refused(broker.port, "anon", protocol, rc)
    named = await connect(broker.port, "named", protocol=protocol, username="user")
    await named.disconnect()


@pytest.mark.broker_settings(allow_anonymous=False)
async def test_anonymous_refused_raw(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("anon-raw"))
    await raw.expect(bytes.fromhex("20020005"))  # not authorised
    assert await raw.expect_closed() == b""
    await raw.close()


# --- keepalive limit ---------------------------------------------------------------------


@pytest.mark.broker_settings(max_keepalive=10)
async def test_keepalive_above_maximum_v5_gets_server_keepalive(broker: RunningBroker) -> None:
    client, _, rc, ack = await _connack(broker.port, "ka-v5", V5, keepalive=60)
    assert rc == 0
    assert getattr(ack, "ServerKeepAlive", None) == 10
    await client.disconnect()
    within, _, rc, ack = await _connack(broker.port, "ka-v5-ok", V5, keepalive=10)
    assert rc == 0
    assert not hasattr(ack, "ServerKeepAlive")
    await within.disconnect()
    # Keep Alive 0 (no timeout) is above any maximum too.
    never, _, rc, ack = await _connack(broker.port, "ka-v5-zero", V5, keepalive=0)
    assert rc == 0
    assert getattr(ack, "ServerKeepAlive", None) == 10
    await never.disconnect()


@pytest.mark.broker_settings(max_keepalive=10)
async def test_keepalive_above_maximum_v311_refused(broker: RunningBroker) -> None:
    await _refused(broker.port, "ka-v4", V311, 2, keepalive=60)
    ok = await connect(broker.port, "ka-v4-ok", protocol=V311, keepalive=10)
    await ok.disconnect()
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("ka-raw", keepalive=11))
    await raw.expect(bytes.fromhex("20020002"))
    assert await raw.expect_closed() == b""
    await raw.close()
