"""Persistent sessions (mosquitto's 02-/03- session and offline-queue groups).

3.1.1 persistence is ``clean_session=False``; 5.0 is ``clean_start=False`` with a non-zero
Session Expiry Interval. Covers subscriptions and offline queues across reconnects, the
queue bound, session expiry (including a new expiry at DISCONNECT), redelivery with DUP,
and QoS 2 exactly-once in both directions across a reconnect.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, WAIT, Paho, connect, props
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

PERSIST = 60


async def _persistent(
    port: int, client_id: str, protocol: int, expiry: int = PERSIST
) -> tuple[Paho, bool]:
    """Connect with a session that outlives the connection; returns (client, present)."""
    kwargs: dict[str, Any] = {"clean": False}
    if protocol == V5:
        kwargs["properties"] = props(PacketTypes.CONNECT, SessionExpiryInterval=expiry)
    client = await connect(port, client_id, protocol=protocol, expect_rc=None, **kwargs)
    present, rc, _ = await asyncio.to_thread(client.connack.get, True, WAIT)
    assert rc == 0, f"CONNACK {rc:#x}"
    return client, present


async def _publish(port: int, topic: str, payloads: list[bytes], qos: int) -> None:
    pub = await connect(port, "", protocol=V311)
    for payload in payloads:
        await pub.publish(topic, payload, qos=qos)
    await pub.disconnect()


def _pid(packet: bytes) -> int:
    """Packet identifier of a PUBLISH (qos > 0) or an ack with a short remaining length."""
    if packet[0] & 0xF0 == 0x30:
        topic_len = int.from_bytes(packet[2:4], "big")
        return int.from_bytes(packet[4 + topic_len : 6 + topic_len], "big")
    return int.from_bytes(packet[2:4], "big")


def _raw_connect(client_id: str, ver: int, *, clean: bool = False) -> bytes:
    properties = mb.proplist((0x11, PERSIST)) if ver == 5 and not clean else b""
    return mb.gen_connect(client_id, clean_session=clean, proto_ver=ver, properties=properties)


async def _raw_session(port: int, client_id: str, ver: int, *, present: bool) -> RawClient:
    raw = await RawClient.connect(port)
    await raw.send(_raw_connect(client_id, ver))
    ack = await raw.read_packet()
    assert ack[0] == 0x20
    assert ack[3] == 0, f"CONNACK {ack!r}"
    assert ack[2] == (1 if present else 0), f"session present {ack[2]}, expected {present}"
    return raw


# --- subscriptions and offline queue -----------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_subscription_survives_reconnect(broker: RunningBroker, protocol: int) -> None:
    sub, present = await _persistent(broker.port, "keep-subs", protocol)
    assert not present
    assert await sub.subscribe("keep/+", 1) == [1]
    await sub.disconnect()

    sub, present = await _persistent(broker.port, "keep-subs", protocol)
    assert present
    await _publish(broker.port, "keep/a", [b"after reconnect"], 1)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload, msg.qos) == ("keep/a", b"after reconnect", 1)
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("qos", [1, 2])
async def test_offline_messages_delivered_on_reconnect(
    broker: RunningBroker, protocol: int, qos: int
) -> None:
    sub, _ = await _persistent(broker.port, f"offline-{qos}", protocol)
    assert await sub.subscribe("offline/t", qos) == [qos]
    await sub.disconnect()

    payloads = [f"m{i}".encode() for i in range(3)]
    await _publish(broker.port, "offline/t", payloads, qos)

    sub, present = await _persistent(broker.port, f"offline-{qos}", protocol)
    assert present
    got = [await sub.next_message() for _ in payloads]
    assert [(m.payload, m.qos) for m in got] == [(p, qos) for p in payloads]
    await sub.no_message(0.3)
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_offline_qos0_queued_by_default(broker: RunningBroker, protocol: int) -> None:
    sub, _ = await _persistent(broker.port, "offline-q0", protocol)
    assert await sub.subscribe("offline0/t", 1) == [1]
    await sub.disconnect()
    await _publish(broker.port, "offline0/t", [b"qos0 while away"], 0)

    sub, _ = await _persistent(broker.port, "offline-q0", protocol)
    msg = await sub.next_message()
    assert (msg.payload, msg.qos) == (b"qos0 while away", 0)
    await sub.disconnect()


@pytest.mark.broker_settings(queue_qos0=False)
@pytest.mark.parametrize("protocol", [V311, V5])
async def test_offline_qos0_not_queued_when_disabled(broker: RunningBroker, protocol: int) -> None:
    sub, _ = await _persistent(broker.port, "offline-noq0", protocol)
    assert await sub.subscribe("noq0/t", 1) == [1]
    await sub.disconnect()
    await _publish(broker.port, "noq0/t", [b"qos0 dropped"], 0)
    await _publish(broker.port, "noq0/t", [b"qos1 kept"], 1)

    sub, _ = await _persistent(broker.port, "offline-noq0", protocol)
    msg = await sub.next_message()
    assert msg.payload == b"qos1 kept"
    await sub.no_message(0.3)
    await sub.disconnect()


@pytest.mark.broker_settings(max_queued_messages=3)
@pytest.mark.parametrize("protocol", [V311, V5])
async def test_offline_queue_is_bounded(broker: RunningBroker, protocol: int) -> None:
    sub, _ = await _persistent(broker.port, "bounded", protocol)
    assert await sub.subscribe("bounded/t", 1) == [1]
    await sub.disconnect()
    payloads = [f"m{i}".encode() for i in range(5)]
    await _publish(broker.port, "bounded/t", payloads, 1)
    assert broker.broker.core.stats.messages_dropped_queue_full == 2

    sub, _ = await _persistent(broker.port, "bounded", protocol)
    got = [(await sub.next_message()).payload for _ in range(3)]
    await sub.no_message(0.4)
    assert len(set(got)) == 3
    assert got == sorted(got), "queued messages keep their order"
    assert set(got) <= set(payloads)
    await sub.disconnect()


@pytest.mark.broker_settings(max_inflight=2)
@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("qos", [1, 2])
async def test_offline_queue_longer_than_inflight_window(
    broker: RunningBroker, protocol: int, qos: int
) -> None:
    """Eight queued messages through a window of two: all arrive, in order, once."""
    sub, _ = await _persistent(broker.port, f"window-{qos}", protocol)
    assert await sub.subscribe("window/t", qos) == [qos]
    await sub.disconnect()
    payloads = [f"m{i}".encode() for i in range(8)]
    await _publish(broker.port, "window/t", payloads, qos)

    sub, _ = await _persistent(broker.port, f"window-{qos}", protocol)
    got = [(await sub.next_message()).payload for _ in payloads]
    assert got == payloads
    await sub.no_message(0.3)
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_anonymous_client_with_fixed_id_keeps_session(
    broker: RunningBroker, protocol: int
) -> None:
    # No user name at all: the session is keyed by the client id alone.
    sub, present = await _persistent(broker.port, "anon-fixed", protocol)
    assert not present
    assert await sub.subscribe("anon/t", 1) == [1]
    await sub.disconnect()
    await _publish(broker.port, "anon/t", [b"for the anonymous"], 1)

    sub, present = await _persistent(broker.port, "anon-fixed", protocol)
    assert present
    assert (await sub.next_message()).payload == b"for the anonymous"
    await sub.disconnect()


# --- v5 session expiry -------------------------------------------------------------------


async def test_v5_session_expiry_interval(broker: RunningBroker) -> None:
    """Expiry 1 s: gone after ~1.5 s. A new expiry given at DISCONNECT (60 s) is honoured:
    that session, opened with the same 1 s, is still there after the same wait."""
    short, _ = await _persistent(broker.port, "expiry-1", V5, expiry=1)
    assert await short.subscribe("expiry/t", 1) == [1]
    extended, _ = await _persistent(broker.port, "expiry-1-to-60", V5, expiry=1)
    assert await extended.subscribe("expiry/t", 1) == [1]
    await short.disconnect()
    await extended.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=60))

    await asyncio.sleep(1.5)  # the behaviour under test is the passage of time
    await _publish(broker.port, "expiry/t", [b"after expiry"], 1)

    short, present = await _persistent(broker.port, "expiry-1", V5)
    assert not present, "a session with expiry 1 s must be gone after 1.5 s"
    await short.no_message(0.3)
    await short.disconnect()
    extended, present = await _persistent(broker.port, "expiry-1-to-60", V5)
    assert present, "the Session Expiry Interval from DISCONNECT must be honoured"
    assert (await extended.next_message()).payload == b"after expiry"
    await extended.disconnect()


@pytest.mark.broker_settings(max_session_expiry=5)
async def test_v5_session_expiry_capped_by_broker(broker: RunningBroker) -> None:
    client = await connect(
        broker.port,
        "expiry-capped",
        protocol=V5,
        clean=False,
        properties=props(PacketTypes.CONNECT, SessionExpiryInterval=PERSIST),
        expect_rc=None,
    )
    _, rc, ack = await asyncio.to_thread(client.connack.get, True, WAIT)
    assert rc == 0
    assert getattr(ack, "SessionExpiryInterval", None) == 5  # the client is told the cap
    await client.disconnect()


async def test_v5_session_resumed_within_expiry(broker: RunningBroker) -> None:
    sub, _ = await _persistent(broker.port, "within-expiry", V5, expiry=1)
    await sub.disconnect()
    sub, present = await _persistent(broker.port, "within-expiry", V5, expiry=1)
    assert present
    await sub.disconnect()


async def test_v5_session_expiry_zero_ends_at_disconnect(broker: RunningBroker) -> None:
    sub, _ = await _persistent(broker.port, "expiry-0", V5, expiry=0)
    assert await sub.subscribe("expiry0/t", 1) == [1]
    await sub.disconnect()
    await _publish(broker.port, "expiry0/t", [b"nobody home"], 1)
    sub, present = await _persistent(broker.port, "expiry-0", V5)
    assert not present
    await sub.no_message(0.3)
    await sub.disconnect()


async def test_v5_session_expiry_set_to_zero_at_disconnect(broker: RunningBroker) -> None:
    sub, _ = await _persistent(broker.port, "expiry-to-0", V5, expiry=PERSIST)
    assert await sub.subscribe("expiryto0/t", 1) == [1]
    await sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=0))
    sub, present = await _persistent(broker.port, "expiry-to-0", V5)
    assert not present, "DISCONNECT with Session Expiry Interval 0 ends the session"
    await sub.disconnect()


async def test_v5_session_expiry_zero_to_nonzero_at_disconnect_is_error(
    broker: RunningBroker,
) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("zero-to-60", clean_session=False, proto_ver=5))  # expiry 0
    ack = await raw.read_packet()
    assert (ack[0], ack[2:4]) == (0x20, b"\x00\x00")
    await raw.send(mb.gen_disconnect(properties=mb.proplist((0x11, PERSIST)), proto_ver=5))
    assert await raw.expect_closed() == bytes.fromhex("e00182")  # Protocol Error
    await raw.close()
    again, present = await _persistent(broker.port, "zero-to-60", V5)
    assert not present, "the 0 expiry still applies: no session was kept"
    await again.disconnect()


# --- redelivery and exactly-once ---------------------------------------------------------


@pytest.mark.parametrize("ver", [4, 5])
async def test_unacked_qos1_redelivered_with_dup(broker: RunningBroker, ver: int) -> None:
    raw = await _raw_session(broker.port, "dup-sub", ver, present=False)
    await raw.send(mb.gen_subscribe_one(1, "dup/t", 1, proto_ver=ver))
    assert (await raw.read_packet())[0] == 0x90
    await _publish(broker.port, "dup/t", [b"unacked"], 1)
    first = await raw.read_packet()
    pid = _pid(first)
    assert first == mb.gen_publish("dup/t", qos=1, payload=b"unacked", mid=pid, proto_ver=ver)
    # No PUBACK: the delivery stays in flight across the reconnect.
    await raw.send(mb.gen_disconnect(proto_ver=ver))
    await raw.expect_closed()
    await raw.close()

    raw = await _raw_session(broker.port, "dup-sub", ver, present=True)
    again = await raw.read_packet()
    assert again[0] == 0x3A, f"expected PUBLISH qos 1 with DUP, got {again!r}"
    assert again == mb.gen_publish(
        "dup/t", qos=1, payload=b"unacked", mid=pid, dup=True, proto_ver=ver
    )
    await raw.send(mb.gen_puback(pid, proto_ver=ver))
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())  # nothing else was re-sent
    await raw.send(mb.gen_disconnect(proto_ver=ver))
    await raw.close()

    # Acknowledged now: a further reconnect re-sends nothing.
    raw = await _raw_session(broker.port, "dup-sub", ver, present=True)
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())
    await raw.close()


@pytest.mark.parametrize("ver", [4, 5])
async def test_unacked_qos1_redelivered_on_takeover(broker: RunningBroker, ver: int) -> None:
    old = await _raw_session(broker.port, "dup-takeover", ver, present=False)
    await old.send(mb.gen_subscribe_one(1, "dupto/t", 1, proto_ver=ver))
    assert (await old.read_packet())[0] == 0x90
    await _publish(broker.port, "dupto/t", [b"unacked"], 1)
    pid = _pid(await old.read_packet())

    # A second connection takes the session over while the first is still open.
    new = await _raw_session(broker.port, "dup-takeover", ver, present=True)
    await old.expect_closed()
    await new.expect(
        mb.gen_publish("dupto/t", qos=1, payload=b"unacked", mid=pid, dup=True, proto_ver=ver)
    )
    await new.send(mb.gen_puback(pid, proto_ver=ver))
    await new.send(mb.gen_pingreq())
    await new.expect(mb.gen_pingresp())
    await new.close()
    await old.close()


@pytest.mark.parametrize("ver", [4, 5])
async def test_qos2_out_pubrel_resent_after_reconnect(broker: RunningBroker, ver: int) -> None:
    raw = await _raw_session(broker.port, "qos2-out", ver, present=False)
    await raw.send(mb.gen_subscribe_one(1, "qos2out/t", 2, proto_ver=ver))
    assert (await raw.read_packet())[0] == 0x90
    await _publish(broker.port, "qos2out/t", [b"exactly once"], 2)
    publish = await raw.read_packet()
    assert publish[0] == 0x34
    pid = _pid(publish)
    await raw.send(mb.gen_pubrec(pid, proto_ver=ver))
    await raw.expect(mb.gen_pubrel(pid, proto_ver=ver))
    # Gone before completing the exchange (no PUBCOMP).
    await raw.send(mb.gen_disconnect(proto_ver=ver))
    await raw.close()

    raw = await _raw_session(broker.port, "qos2-out", ver, present=True)
    resent = await raw.read_packet()
    assert resent == bytes([0x62, 0x02]) + pid.to_bytes(2, "big"), (
        f"expected PUBREL for {pid}, not the PUBLISH again: {resent!r}"
    )
    await raw.send(mb.gen_pubcomp(pid, proto_ver=ver))
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())
    await raw.close()


def _pubrec_ok(packet: bytes, pid: int) -> bool:
    # 3.1.1 and the v5 short form: 50 02 <pid>; v5 may add a success reason code.
    return packet[0] == 0x50 and _pid(packet) == pid and (len(packet) == 4 or packet[4] < 0x80)


def _pubcomp_ok(packet: bytes, pid: int) -> bool:
    return packet[0] == 0x70 and _pid(packet) == pid and (len(packet) == 4 or packet[4] < 0x80)


@pytest.mark.parametrize("ver", [4, 5])
async def test_qos2_in_duplicate_publish_delivered_once(broker: RunningBroker, ver: int) -> None:
    sub = await connect(broker.port, "qos2in-sub", protocol=V5 if ver == 5 else V311)
    assert await sub.subscribe("qos2in/t", 2) == [2]
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("qos2in-pub", proto_ver=ver))
    assert (await raw.read_packet())[0] == 0x20

    publish = mb.gen_publish("qos2in/t", qos=2, payload=b"once", mid=7, proto_ver=ver)
    await raw.send(publish)
    assert _pubrec_ok(await raw.read_packet(), 7)
    await raw.send(
        mb.gen_publish("qos2in/t", qos=2, payload=b"once", mid=7, dup=True, proto_ver=ver)
    )
    assert _pubrec_ok(await raw.read_packet(), 7)
    await raw.send(mb.gen_pubrel(7, proto_ver=ver))
    assert _pubcomp_ok(await raw.read_packet(), 7)

    msg = await sub.next_message()
    assert (msg.payload, msg.qos) == (b"once", 2)
    await sub.no_message(0.4)

    # After PUBREL the id is free again: the same id carries a new message.
    await raw.send(mb.gen_publish("qos2in/t", qos=2, payload=b"next", mid=7, proto_ver=ver))
    assert _pubrec_ok(await raw.read_packet(), 7)
    assert (await sub.next_message()).payload == b"next"
    await raw.close()
    await sub.disconnect()


@pytest.mark.parametrize("ver", [4, 5])
async def test_qos2_in_exactly_once_across_reconnect(broker: RunningBroker, ver: int) -> None:
    sub = await connect(broker.port, "qos2re-sub", protocol=V5 if ver == 5 else V311)
    assert await sub.subscribe("qos2re/t", 2) == [2]
    raw = await _raw_session(broker.port, "qos2re-pub", ver, present=False)
    await raw.send(mb.gen_publish("qos2re/t", qos=2, payload=b"once", mid=9, proto_ver=ver))
    assert _pubrec_ok(await raw.read_packet(), 9)
    await raw.close()  # lost before PUBREL

    raw = await _raw_session(broker.port, "qos2re-pub", ver, present=True)
    await raw.send(
        mb.gen_publish("qos2re/t", qos=2, payload=b"once", mid=9, dup=True, proto_ver=ver)
    )
    assert _pubrec_ok(await raw.read_packet(), 9)
    await raw.send(mb.gen_pubrel(9, proto_ver=ver))
    assert _pubcomp_ok(await raw.read_packet(), 9)

    assert (await sub.next_message()).payload == b"once"
    await sub.no_message(0.4)
    await raw.close()
    await sub.disconnect()
