"""Retained messages: set, replace, clear; RETAIN flag on delivery; wildcard lookup;
Retain Handling; Retain As Published; message expiry; none to shared subscriptions.

Absence is asserted with a *marker*: a message published after the one that must not
arrive, on the same path, so the subscriber's next message has to be the marker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, WAIT, Paho, Received, props
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]


async def until_marker(c: Paho, marker: str = "marker") -> list[Received]:
    """Every message before the first one on *marker* (which is consumed)."""
    got: list[Received] = []
    while True:
        msg = await c.next_message()
        if msg.topic == marker:
            return got
        got.append(msg)


async def subscribe_then_marker(
    sub: Paho, marker_pub: Paho, topic_filter: str, qos: int = 0, **kwargs: Any
) -> list[Received]:
    """Subscribe (marker topic already subscribed), then publish the marker: what the
    subscription brought in between is exactly the retained messages sent for it."""
    await sub.subscribe(topic_filter, qos, **kwargs)
    await marker_pub.publish("marker", b"", qos=1)
    return await until_marker(sub)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_set_replace_clear(clients: Make, protocol: int) -> None:
    pub = await clients("pub", protocol)
    await pub.publish("r/t", b"one", qos=1, retain=True)
    s1 = await clients("s1", protocol)
    assert await s1.subscribe("r/t", 1) == [1]
    msg = await s1.next_message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("r/t", b"one", 1, True)

    await pub.publish("r/t", b"two", qos=1, retain=True)
    live = await s1.next_message()
    assert (live.payload, live.retain) == (b"two", False)  # live: RETAIN 0 [MQTT-3.3.1-9]
    s2 = await clients("s2", protocol)
    await s2.subscribe("marker", 0)
    got = await subscribe_then_marker(s2, pub, "r/t", 1)
    assert [(m.payload, m.retain) for m in got] == [(b"two", True)]  # replaced, not added

    await pub.publish("r/t", b"", qos=1, retain=True)
    cleared = await s1.next_message()  # the clearing message itself is still forwarded
    assert (cleared.payload, cleared.retain) == (b"", False)
    s3 = await clients("s3", protocol)
    await s3.subscribe("marker", 0)
    assert await subscribe_then_marker(s3, pub, "r/t", 1) == []


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_retained_qos_is_minimum_of_stored_and_granted(clients: Make, protocol: int) -> None:
    pub = await clients("pub", protocol)
    await pub.publish("r/q2", b"two", qos=2, retain=True)
    await pub.publish("r/q0", b"zero", qos=0, retain=True)
    await pub.publish("barrier", b"", qos=1)  # both retained stored before we subscribe
    sub = await clients("sub", protocol)
    await sub.subscribe("marker", 0)
    got = await subscribe_then_marker(sub, pub, "r/+", 1)
    assert sorted((m.topic, m.qos, m.retain) for m in got) == [
        ("r/q0", 0, True),
        ("r/q2", 1, True),
    ]


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("a/+", {"a/1", "a/2"}),
        ("#", {"a/1", "a/2", "a/b/c", "b/1", "a", "/x", "x/"}),
        ("a/#", {"a", "a/1", "a/2", "a/b/c"}),
        ("+/1", {"a/1", "b/1"}),
        ("+", {"a"}),
        ("+/+", {"a/1", "a/2", "b/1", "/x", "x/"}),
        ("/+", {"/x"}),
        ("+/", {"x/"}),
        ("+/b/#", {"a/b/c"}),
        ("a/b/c", {"a/b/c"}),
        ("c/#", set()),
        ("$x/#", {"$x/1"}),
    ],
)
async def test_wildcard_lookup(
    broker: RunningBroker, clients: Make, protocol: int, topic_filter: str, expected: set[str]
) -> None:
    pub = await clients("pub", protocol)
    for topic in ("a", "a/1", "a/2", "a/b/c", "b/1", "/x", "x/"):
        await pub.publish(topic, topic.encode(), qos=1, retain=True)
    # A $ topic is never matched by a leading wildcard [MQTT-4.7.2-1].
    broker.broker.core.publish_internal("$x/1", b"$x/1", retain=True)
    sub = await clients("sub", protocol)
    await sub.subscribe("marker", 0)
    got = await subscribe_then_marker(sub, pub, topic_filter)
    assert sorted(m.topic for m in got) == sorted(expected)  # each exactly once
    assert all(m.retain and m.payload == m.topic.encode() for m in got)


async def test_retained_carries_subscription_identifier(clients: Make) -> None:
    pub = await clients("pub", V5)
    await pub.publish("sid/t", b"kept", qos=1, retain=True)
    sub = await clients("sub", V5)
    p = props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
    sub.client.subscribe("sid/#", options=mqtt.SubscribeOptions(qos=1), properties=p)
    assert await asyncio.to_thread(sub.subacks.get, True, WAIT) == [1]
    msg = await sub.next_message()
    assert (msg.payload, msg.retain) == (b"kept", True)
    assert msg.properties.SubscriptionIdentifier == [42]


@pytest.mark.parametrize("handling", [0, 1, 2])
async def test_retain_handling(clients: Make, handling: int) -> None:
    pub = await clients("pub", V5)
    await pub.publish("rh/t", b"kept", qos=1, retain=True)
    sub = await clients("sub", V5)
    await sub.subscribe("marker", 0)
    first = await subscribe_then_marker(sub, pub, "rh/t", 1, retainHandling=handling)
    second = await subscribe_then_marker(sub, pub, "rh/t", 1, retainHandling=handling)
    expected_first = [] if handling == 2 else [(b"kept", True)]
    expected_second = [(b"kept", True)] if handling == 0 else []
    assert [(m.payload, m.retain) for m in first] == expected_first
    assert [(m.payload, m.retain) for m in second] == expected_second


@pytest.mark.parametrize("rap", [False, True])
async def test_retain_as_published(clients: Make, rap: bool) -> None:
    sub = await clients("sub", V5)
    await sub.subscribe("rap/t", 1, retainAsPublished=rap)
    pub = await clients("pub", V5)
    await pub.publish("rap/t", b"retained", qos=1, retain=True)
    await pub.publish("rap/t", b"plain", qos=1, retain=False)
    m1 = await sub.next_message()
    m2 = await sub.next_message()
    assert (m1.payload, m1.retain) == (b"retained", rap)
    assert (m2.payload, m2.retain) == (b"plain", False)
    # On subscribe a retained message always has RETAIN 1, RAP or not.
    late = await clients("late", V5)
    await late.subscribe("rap/t", 1, retainAsPublished=rap)
    m3 = await late.next_message()
    assert (m3.payload, m3.retain) == (b"retained", True)


async def test_retain_as_published_with_overlap(clients: Make) -> None:
    """Merged overlapping subscriptions: RAP on either keeps the flag."""
    sub = await clients("sub", V5)
    await sub.subscribe("rap/+", 0)
    await sub.subscribe("rap/#", 1, retainAsPublished=True)
    pub = await clients("pub", V5)
    await pub.publish("rap/t", b"r", qos=1, retain=True)
    msg = await sub.next_message()
    assert (msg.payload, msg.qos, msg.retain) == (b"r", 1, True)
    await sub.no_message(0.3)


async def test_retained_message_expiry(clients: Make) -> None:
    pub = await clients("pub", V5)
    await pub.publish(
        "exp/short",
        b"short",
        qos=1,
        retain=True,
        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1),
    )
    await pub.publish(
        "exp/long",
        b"long",
        qos=1,
        retain=True,
        properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=10),
    )
    early = await clients("early", V5)
    await early.subscribe("marker", 0)
    got = await subscribe_then_marker(early, pub, "exp/#", 1)
    assert sorted(m.payload for m in got) == [b"long", b"short"]
    assert all(m.properties.MessageExpiryInterval <= 10 for m in got)

    await asyncio.sleep(1.5)  # let the short one expire (expiry, not readiness)
    late = await clients("late", V5)
    await late.subscribe("marker", 0)
    got = await subscribe_then_marker(late, pub, "exp/#", 1)
    assert [m.payload for m in got] == [b"long"]
    # The interval sent is the time left [MQTT-3.3.2-6]: 10 s minus the 1.5 s waited.
    assert 1 <= got[0].properties.MessageExpiryInterval <= 9


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_no_retained_to_shared_subscriptions(clients: Make, protocol: int) -> None:
    pub = await clients("pub", protocol)
    await pub.publish("sh/t", b"kept", qos=1, retain=True)
    sub = await clients("sub", protocol)
    await sub.subscribe("marker", 0)
    assert await subscribe_then_marker(sub, pub, "$share/g/sh/t", 1) == []
    assert await subscribe_then_marker(sub, pub, "$queue/sh/#", 1) == []
    # ... while a plain subscription of the same client gets it.
    got = await subscribe_then_marker(sub, pub, "sh/t", 1)
    assert [(m.payload, m.retain) for m in got] == [(b"kept", True)]


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_retained_bytes_on_subscribe(broker: RunningBroker, proto_ver: int) -> None:
    """Exact bytes: a retained message arrives right after the SUBACK with RETAIN 1."""
    pub = await RawClient.connect(broker.port)
    sub = await RawClient.connect(broker.port)
    try:
        await pub.send(mb.gen_connect("pub", proto_ver=proto_ver))
        assert (await pub.read_packet())[0] == 0x20
        await pub.send(
            mb.gen_publish("rb/t", qos=1, mid=1, retain=True, payload=b"v", proto_ver=proto_ver)
        )
        # Nobody subscribed yet: v5 says so with 0x10, v3.1.1 PUBACK has no reason code.
        puback = b"\x40\x03\x00\x01\x10" if proto_ver == 5 else b"\x40\x02\x00\x01"
        await pub.expect(puback)
        await sub.send(mb.gen_connect("sub", proto_ver=proto_ver))
        assert (await sub.read_packet())[0] == 0x20
        await sub.send(mb.gen_subscribe_one(5, "rb/#", 0, proto_ver=proto_ver))
        await sub.expect(mb.gen_suback(5, [0], proto_ver=proto_ver))
        await sub.expect(mb.gen_publish("rb/t", retain=True, payload=b"v", proto_ver=proto_ver))
    finally:
        await pub.close()
        await sub.close()
