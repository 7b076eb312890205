"""PUBLISH routing: QoS downgrade, exactly-once, overlapping subscriptions, PUBACK reason
codes, $-topics, wildcard matching and the topic-level limit.

Absence is asserted with a *marker*: a message published after the one that must not
arrive, on the same path, so the subscriber's next message has to be the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, WAIT, Paho, Received, props
from tests.helpers.paho import connect as paho_connect
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]
MakeRaw = Callable[..., Awaitable[RawClient]]


async def subscribe_with_id(c: Paho, topic: str, qos: int, sub_id: int) -> list[int]:
    """v5 SUBSCRIBE carrying a Subscription Identifier (the wrapper cannot send one)."""
    p = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id)
    c.client.subscribe(topic, options=mqtt.SubscribeOptions(qos=qos), properties=p)
    return await asyncio.to_thread(c.subacks.get, True, WAIT)


async def until_marker(c: Paho, marker: str = "marker") -> list[Received]:
    """Every message before the first one on *marker* (which is consumed)."""
    got: list[Received] = []
    while True:
        msg = await c.next_message()
        if msg.topic == marker:
            return got
        got.append(msg)


# --- QoS ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
@pytest.mark.parametrize("pub_qos", [0, 1, 2])
async def test_delivered_qos_is_minimum(
    clients: Make, protocol: int, pub_qos: int, sub_qos: int
) -> None:
    sub = await clients("sub", protocol)
    assert await sub.subscribe("q/t", sub_qos) == [sub_qos]
    pub = await clients("pub", protocol)
    await pub.publish("q/t", b"m", qos=pub_qos)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
        "q/t",
        b"m",
        min(pub_qos, sub_qos),
        False,
    )
    await sub.no_message(0.3)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_qos2_exactly_once_paho(clients: Make, protocol: int) -> None:
    sub = await clients("sub", protocol)
    await sub.subscribe("x/#", 2)
    # paho hands a QoS 2 message over only at PUBREL: the marker must be QoS 2 as well
    # so that it cannot overtake.
    await sub.subscribe("marker", 2)
    pub = await clients("pub", protocol)
    for i in range(5):
        await pub.publish("x/t", f"m{i}", qos=2)
    await pub.publish("marker", b"", qos=2)
    got = await until_marker(sub)
    assert [(m.payload, m.qos, m.dup) for m in got] == [
        (f"m{i}".encode(), 2, False) for i in range(5)
    ]


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_qos2_inbound_duplicate_publish_routed_once(raw: MakeRaw, proto_ver: int) -> None:
    """A QoS 2 PUBLISH re-sent with DUP before PUBREL is not routed again [MQTT-4.3.3-10]."""
    sub = await raw("sub", proto_ver)
    await sub.send(mb.gen_subscribe_one(1, "x/t", 0, proto_ver=proto_ver))
    await sub.expect(mb.gen_suback(1, [0], proto_ver=proto_ver))
    pub = await raw("pub", proto_ver)
    await pub.send(mb.gen_publish("x/t", qos=2, mid=7, payload=b"once", proto_ver=proto_ver))
    await pub.expect(mb.gen_pubrec(7, proto_ver=proto_ver))
    await pub.send(
        mb.gen_publish("x/t", qos=2, mid=7, payload=b"once", dup=True, proto_ver=proto_ver)
    )
    await pub.expect(mb.gen_pubrec(7, proto_ver=proto_ver))
    await pub.send(mb.gen_pubrel(7, proto_ver=proto_ver))
    await pub.expect(mb.gen_pubcomp(7, proto_ver=proto_ver))
    # After PUBCOMP the id is free again: the same id is a new message.
    await pub.send(mb.gen_publish("x/t", qos=2, mid=7, payload=b"next", proto_ver=proto_ver))
    await pub.expect(mb.gen_pubrec(7, proto_ver=proto_ver))
    await sub.expect(mb.gen_publish("x/t", payload=b"once", proto_ver=proto_ver))
    await sub.expect(mb.gen_publish("x/t", payload=b"next", proto_ver=proto_ver))
    with pytest.raises(TimeoutError):
        await sub.read_packet(0.3)


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_qos2_outbound_flow(raw: MakeRaw, proto_ver: int) -> None:
    """Broker → client QoS 2: PUBLISH, PUBREC from us, PUBREL, PUBCOMP from us; once."""
    sub = await raw("sub", proto_ver)
    await sub.send(mb.gen_subscribe_one(1, "x/t", 2, proto_ver=proto_ver))
    await sub.expect(mb.gen_suback(1, [2], proto_ver=proto_ver))
    pub = await raw("pub", proto_ver)
    await pub.send(mb.gen_publish("x/t", qos=2, mid=3, payload=b"p", proto_ver=proto_ver))
    await pub.expect(mb.gen_pubrec(3, proto_ver=proto_ver))
    await pub.send(mb.gen_pubrel(3, proto_ver=proto_ver))
    await pub.expect(mb.gen_pubcomp(3, proto_ver=proto_ver))
    got = await sub.read_packet()
    assert got[0] == 0x34, got
    pid = int.from_bytes(got[7:9], "big")
    assert got == mb.gen_publish("x/t", qos=2, mid=pid, payload=b"p", proto_ver=proto_ver)
    await sub.send(mb.gen_pubrec(pid, proto_ver=proto_ver))
    await sub.expect(mb.gen_pubrel(pid, proto_ver=proto_ver))
    await sub.send(mb.gen_pubcomp(pid, proto_ver=proto_ver))
    await sub.send(mb.gen_pingreq())
    await sub.expect(mb.gen_pingresp())  # nothing re-sent in between


# --- overlapping subscriptions [MQTT-3.3.5-1] --------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_overlapping_subscriptions_one_copy_at_max_qos(clients: Make, protocol: int) -> None:
    sub = await clients("sub", protocol)
    assert await sub.subscribe("a/+", 0) == [0]
    assert await sub.subscribe("a/#", 2) == [2]
    await sub.subscribe("marker", 2)
    pub = await clients("pub", protocol)
    await pub.publish("a/b", b"x", qos=2)
    await pub.publish("marker", b"", qos=2)
    got = await until_marker(sub)
    assert [(m.topic, m.payload, m.qos) for m in got] == [("a/b", b"x", 2)]


async def test_overlapping_subscriptions_carry_every_subscription_id(clients: Make) -> None:
    sub = await clients("sub", V5)
    assert await subscribe_with_id(sub, "a/+", 0, 1) == [0]
    assert await subscribe_with_id(sub, "a/#", 2, 2) == [2]
    await sub.subscribe("marker", 2)
    pub = await clients("pub", V5)
    await pub.publish("a/b", b"x", qos=2)
    await pub.publish("a/b/c", b"y", qos=2)  # matches a/# only
    await pub.publish("marker", b"", qos=2)
    got = await until_marker(sub)
    assert [(m.topic, m.qos) for m in got] == [("a/b", 2), ("a/b/c", 2)]
    assert sorted(got[0].properties.SubscriptionIdentifier) == [1, 2]
    assert got[1].properties.SubscriptionIdentifier == [2]
    # The marker subscription has no identifier, so its messages carry none.


# --- PUBACK ------------------------------------------------------------------------


async def test_v5_puback_no_matching_subscribers(raw: MakeRaw) -> None:
    pub = await raw("pub", 5)
    await pub.send(mb.gen_publish("nobody/here", qos=1, mid=0x0102, payload=b"x", proto_ver=5))
    await pub.expect(bytes([0x40, 0x03, 0x01, 0x02, 0x10]))
    sub = await raw("sub", 5)
    await sub.send(mb.gen_subscribe_one(1, "nobody/here", 0, proto_ver=5))
    await sub.expect(mb.gen_suback(1, [0], proto_ver=5))
    await pub.send(mb.gen_publish("nobody/here", qos=1, mid=0x0103, payload=b"x", proto_ver=5))
    got = await pub.read_packet()
    assert got in (bytes([0x40, 0x02, 0x01, 0x03]), bytes([0x40, 0x03, 0x01, 0x03, 0x00])), got


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_pubrec_no_matching_subscribers(raw: MakeRaw, proto_ver: int) -> None:
    pub = await raw("pub", proto_ver)
    await pub.send(mb.gen_publish("nobody/here", qos=2, mid=5, payload=b"x", proto_ver=proto_ver))
    if proto_ver == 5:
        await pub.expect(bytes([0x50, 0x03, 0x00, 0x05, 0x10]))
    else:
        await pub.expect(bytes([0x50, 0x02, 0x00, 0x05]))
    # 0x10 is a success code: the exchange goes on to PUBCOMP.
    await pub.send(mb.gen_pubrel(5, proto_ver=proto_ver))
    await pub.expect(mb.gen_pubcomp(5, proto_ver=proto_ver))


async def test_v3_puback_is_plain_without_subscribers(raw: MakeRaw) -> None:
    pub = await raw("pub", 4)
    await pub.send(mb.gen_publish("nobody/here", qos=1, mid=9, payload=b"x"))
    await pub.expect(bytes([0x40, 0x02, 0x00, 0x09]))


# --- $ topics ----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_client_publish_to_sys_not_delivered(clients: Make, protocol: int) -> None:
    sub = await clients("sub", protocol)
    await sub.subscribe("$SYS/#", 0)
    await sub.subscribe("$SYS/test", 1)
    await sub.subscribe("marker", 0)
    pub = await clients("pub", protocol)
    await pub.publish("$SYS/test", b"forged", qos=1)
    await pub.publish("$SYS/test", b"forged", qos=0)
    await pub.publish("marker", b"", qos=1)
    assert await until_marker(sub) == []


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_dollar_topics_not_matched_by_leading_wildcards(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    wild = await clients("wild", protocol)
    await wild.subscribe("#", 0)
    await wild.subscribe("+/bar", 0)
    await wild.subscribe("+/#", 0)
    dollar = await clients("dollar", protocol)
    await dollar.subscribe("$foo/#", 0)
    await dollar.subscribe("marker", 0)
    core = broker.broker.core
    assert core.publish_internal("$foo/bar", b"internal") == 1  # only "dollar" matches
    core.publish_internal("marker", b"")
    assert await until_marker(wild) == []
    got = await until_marker(dollar)
    assert [(m.topic, m.payload) for m in got] == [("$foo/bar", b"internal")]


# --- wildcards ---------------------------------------------------------------------

CANDIDATES = ["a", "a/b", "a/b/c", "/x", "x/", "b", "ab", "a//c", "a/c", "a/b/c/d"]
WILDCARD_CASES = [
    ("#", set(CANDIDATES)),
    ("+", {"a", "b", "ab"}),
    ("a/#", {"a", "a/b", "a/b/c", "a//c", "a/c", "a/b/c/d"}),
    ("+/+", {"a/b", "/x", "x/", "a/c"}),
    ("a/+/c", {"a/b/c", "a//c"}),
    ("+/b/#", {"a/b", "a/b/c", "a/b/c/d"}),
    ("a/b", {"a/b"}),
]


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize(("topic_filter", "expected"), WILDCARD_CASES)
async def test_wildcard_matching(
    clients: Make, protocol: int, topic_filter: str, expected: set[str]
) -> None:
    sub = await clients("sub", protocol)
    await sub.subscribe(topic_filter, 0)
    await sub.subscribe("zz/end", 0)
    pub = await clients("pub", protocol)
    for topic in CANDIDATES:
        await pub.publish(topic, topic.encode(), qos=1)
    await pub.publish("zz/end", b"", qos=1)
    got = await until_marker(sub, "zz/end")
    assert sorted(m.topic for m in got) == sorted(expected)  # each exactly once


# --- topic levels ------------------------------------------------------------------


@pytest.mark.broker_settings(max_topic_levels=3)
async def test_topic_level_limit_v5(raw: MakeRaw) -> None:
    c = await raw("c", 5)
    await c.send(mb.gen_subscribe(1, [("a/b/c/d", 0), ("a/b/c", 1), ("a/+/#", 0)], proto_ver=5))
    await c.expect(mb.gen_suback(1, [0x8F, 0x01, 0x00], proto_ver=5))
    await c.send(mb.gen_publish("a/b/c/d", qos=1, mid=1, payload=b"deep", proto_ver=5))
    await c.expect(bytes([0x40, 0x03, 0x00, 0x01, 0x90]))
    await c.send(mb.gen_publish("a/b/c", qos=0, payload=b"ok", proto_ver=5))
    # Delivered once (a/b/c at QoS 0 merged with a/+/#); the deep one never.
    await c.expect(mb.gen_publish("a/b/c", payload=b"ok", proto_ver=5))
    await c.send(mb.gen_pingreq())
    await c.expect(mb.gen_pingresp())


@pytest.mark.broker_settings(max_topic_levels=3)
async def test_topic_level_limit_v311(raw: MakeRaw) -> None:
    c = await raw("c", 4)
    await c.send(mb.gen_subscribe(1, [("a/b/c/d", 0), ("a/b/c", 1), ("#", 0)]))
    await c.expect(mb.gen_suback(1, [0x80, 0x01, 0x00]))
    await c.send(mb.gen_publish("a/b/c/d", qos=1, mid=1, payload=b"deep"))
    await c.expect(mb.gen_puback(1))
    await c.send(mb.gen_publish("a/b/c", qos=0, payload=b"ok"))
    await c.expect(mb.gen_publish("a/b/c", payload=b"ok"))
    await c.send(mb.gen_pingreq())
    await c.expect(mb.gen_pingresp())


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(max_topic_levels=3)
async def test_topic_level_limit_paho(clients: Make, protocol: int) -> None:
    sub = await clients("sub", protocol)
    expected_refusal = 0x8F if protocol == V5 else 0x80
    assert await sub.subscribe("a/b/c/d", 0) == [expected_refusal]
    assert await sub.subscribe("#", 0) == [0]
    pub = await clients("pub", protocol)
    await pub.publish("a/b/c/d", b"deep", qos=1)
    await pub.publish("a/b/c", b"ok", qos=1)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload) == ("a/b/c", b"ok")


async def test_publishes_then_disconnect_in_one_read_are_all_delivered(
    broker: RunningBroker,
) -> None:
    """QoS 0 PUBLISHes and the DISCONNECT after them arrive in one TCP read (mosquitto_pub
    --repeat does this): every message is routed, and the will is not published."""
    sub = await paho_connect(broker.port, "burst-sub")
    await sub.subscribe("burst/#", 0)
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("burst-pub", will_topic="burst/will", will_payload=b"w"))
    assert (await raw.read_packet())[0] == 0x20
    burst = b"".join(mb.gen_publish("burst/t", payload=b"%d" % i) for i in range(50))
    await raw.send(burst + mb.gen_disconnect())
    await raw.expect_closed()
    got = [(await sub.next_message()).payload for _ in range(50)]
    assert got == [b"%d" % i for i in range(50)]
    await sub.no_message(0.3)  # a normal DISCONNECT: no will
    await sub.disconnect()
    await raw.close()
