"""SUBSCRIBE / UNSUBSCRIBE: granted QoS, max_qos, invalid filters, UNSUBACK codes,
No Local, the per-client subscription limit and re-subscribing.

Absence is asserted with a *marker*: a message published after the one that must not
arrive, on the same path, so the subscriber's next message has to be the marker.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, Paho, Received
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]
MakeRaw = Callable[..., Awaitable[RawClient]]


async def until_marker(c: Paho, marker: str = "marker") -> list[Received]:
    """Every message before the first one on *marker* (which is consumed)."""
    got: list[Received] = []
    while True:
        msg = await c.next_message()
        if msg.topic == marker:
            return got
        got.append(msg)


async def assert_quiet(c: RawClient) -> None:
    """Nothing is pending for *c*: a PINGREQ's PINGRESP is the very next packet."""
    await c.send(mb.gen_pingreq())
    await c.expect(mb.gen_pingresp())


# --- SUBACK ------------------------------------------------------------------------


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_suback_granted_qos(raw: MakeRaw, proto_ver: int) -> None:
    c = await raw("c", proto_ver)
    await c.send(
        mb.gen_subscribe(0x1234, [("s/0", 0), ("s/1", 1), ("s/2", 2)], proto_ver=proto_ver)
    )
    await c.expect(mb.gen_suback(0x1234, [0, 1, 2], proto_ver=proto_ver))


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_suback_granted_qos_paho(clients: Make, protocol: int, qos: int) -> None:
    c = await clients("c", protocol)
    assert await c.subscribe("s/t", qos) == [qos]


@pytest.mark.parametrize("proto_ver", [4, 5])
@pytest.mark.broker_settings(max_qos=1)
async def test_max_qos_downgrades_granted(raw: MakeRaw, proto_ver: int) -> None:
    c = await raw("c", proto_ver)
    await c.send(mb.gen_subscribe(1, [("s/0", 0), ("s/1", 1), ("s/2", 2)], proto_ver=proto_ver))
    await c.expect(mb.gen_suback(1, [0, 1, 1], proto_ver=proto_ver))
    # Deliveries follow the granted QoS: a QoS 1 publish to s/2 arrives at QoS 1.
    await c.send(mb.gen_publish("s/2", qos=1, mid=9, payload=b"x", proto_ver=proto_ver))
    delivery = await c.read_packet()
    assert delivery[0] == 0x32, delivery  # PUBLISH, QoS 1, no RETAIN
    pid = int.from_bytes(delivery[7:9], "big")
    assert delivery == mb.gen_publish("s/2", qos=1, mid=pid, payload=b"x", proto_ver=proto_ver)
    await c.expect(mb.gen_puback(9))  # for our own publish: delivered, so no 0x10
    await c.send(mb.gen_puback(pid))
    await assert_quiet(c)


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(max_qos=1)
async def test_max_qos_downgrades_granted_paho(clients: Make, protocol: int) -> None:
    c = await clients("c", protocol)
    assert await c.subscribe("s/t", 2) == [1]


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_invalid_filters_refused_valid_ones_granted(raw: MakeRaw, proto_ver: int) -> None:
    refused = 0x8F if proto_ver == 5 else 0x80
    c = await raw("c", proto_ver)
    subs = [("a/#/b", 0), ("ok/+", 1), ("a+", 0), ("ok/#", 2), ("+a/b", 1), ("#/", 0)]
    await c.send(mb.gen_subscribe(7, subs, proto_ver=proto_ver))
    await c.expect(
        mb.gen_suback(7, [refused, 1, refused, 2, refused, refused], proto_ver=proto_ver)
    )
    # The valid ones work: one merged delivery at QoS min(2, 0) = 0.
    await c.send(mb.gen_publish("ok/x", payload=b"hi", proto_ver=proto_ver))
    await c.expect(mb.gen_publish("ok/x", payload=b"hi", proto_ver=proto_ver))
    await assert_quiet(c)


# --- UNSUBSCRIBE -------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_unsubscribe_stops_delivery(clients: Make, protocol: int) -> None:
    sub = await clients("sub", protocol)
    await sub.subscribe("u/t", 1)
    await sub.subscribe("u/other", 1)
    await sub.subscribe("marker", 1)
    pub = await clients("pub", protocol)
    await pub.publish("u/t", b"before", qos=1)
    assert (await sub.next_message()).payload == b"before"
    await sub.unsubscribe("u/t")
    await pub.publish("u/t", b"after", qos=1)
    await pub.publish("u/other", b"other", qos=1)
    await pub.publish("marker", b"", qos=1)
    got = await until_marker(sub)
    assert [(m.topic, m.payload) for m in got] == [("u/other", b"other")]


async def test_unsuback_codes_v5(raw: MakeRaw) -> None:
    c = await raw("c", 5)
    await c.send(mb.gen_unsubscribe(0x0A0B, ["never"], proto_ver=5))
    await c.expect(bytes([0xB0, 0x04, 0x0A, 0x0B, 0x00, 0x11]))
    await c.send(mb.gen_subscribe_one(1, "u/t", 0, proto_ver=5))
    await c.expect(mb.gen_suback(1, [0], proto_ver=5))
    await c.send(mb.gen_unsubscribe(2, ["u/t", "never", "u/t"], proto_ver=5))
    await c.expect(bytes([0xB0, 0x06, 0x00, 0x02, 0x00, 0x00, 0x11, 0x11]))


async def test_unsuback_v311_has_no_payload(raw: MakeRaw) -> None:
    c = await raw("c", 4)
    await c.send(mb.gen_unsubscribe(3, ["never"]))
    await c.expect(bytes([0xB0, 0x02, 0x00, 0x03]))
    await c.send(mb.gen_subscribe_one(4, "u/t", 0))
    await c.expect(mb.gen_suback(4, [0]))
    await c.send(mb.gen_unsubscribe(5, ["u/t"]))
    await c.expect(bytes([0xB0, 0x02, 0x00, 0x05]))
    await c.send(mb.gen_publish("u/t", payload=b"x"))
    await assert_quiet(c)


async def test_unsuback_codes_paho_v5(clients: Make) -> None:
    c = await clients("c", V5)
    assert await c.unsubscribe("never") == [0x11]
    await c.subscribe("u/t", 0)
    assert await c.unsubscribe("u/t") == [0]


# --- No Local ----------------------------------------------------------------------


async def test_no_local(clients: Make) -> None:
    a = await clients("a", V5)
    await a.subscribe("nl/t", 1, noLocal=True)
    b = await clients("b", V5)
    await b.subscribe("nl/t", 1)
    await a.publish("nl/t", b"from-a", qos=1)
    await b.publish("nl/t", b"from-b", qos=1)
    got_a = await a.next_message()
    assert got_a.payload == b"from-b"  # its own "from-a" never came before it
    got_b = [await b.next_message(), await b.next_message()]
    assert [m.payload for m in got_b] == [b"from-a", b"from-b"]  # b has no No Local
    await a.no_message(0.3)


async def test_no_local_with_overlapping_subscription(clients: Make) -> None:
    """No Local applies per subscription: another matching filter still delivers."""
    a = await clients("a", V5)
    await a.subscribe("nl/+", 0, noLocal=True)
    await a.subscribe("nl/#", 1)
    await a.publish("nl/t", b"self", qos=1)
    msg = await a.next_message()
    assert (msg.payload, msg.qos) == (b"self", 1)
    await a.no_message(0.3)


# --- subscription limit ------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(max_subscriptions_per_client=2)
async def test_max_subscriptions_per_client(clients: Make, protocol: int) -> None:
    c = await clients("c", protocol)
    assert await c.subscribe("l/1", 0) == [0]
    assert await c.subscribe("l/2", 1) == [1]
    assert await c.subscribe("l/3", 0) == [0x97 if protocol == V5 else 0x80]
    # Replacing an existing subscription is not a new one: allowed at the limit.
    assert await c.subscribe("l/2", 2) == [2]
    await c.unsubscribe("l/1")
    assert await c.subscribe("l/3", 0) == [0]


@pytest.mark.broker_settings(max_subscriptions_per_client=2)
async def test_max_subscriptions_in_one_packet(raw: MakeRaw) -> None:
    c = await raw("c", 5)
    await c.send(mb.gen_subscribe(1, [("l/1", 0), ("l/2", 1), ("l/3", 2), ("l/1", 1)], proto_ver=5))
    await c.expect(mb.gen_suback(1, [0, 1, 0x97, 1], proto_ver=5))


# --- re-subscribing ----------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_resubscribe_replaces_options(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    sub = await clients("sub", protocol)
    assert await sub.subscribe("rs/t", 0) == [0]
    assert await sub.subscribe("rs/t", 2) == [2]
    assert broker.broker.core.tree.count == 1
    await sub.subscribe("marker", 2)
    pub = await clients("pub", protocol)
    await pub.publish("rs/t", b"x", qos=2)
    await pub.publish("marker", b"", qos=2)
    got = await until_marker(sub)
    assert [(m.payload, m.qos) for m in got] == [(b"x", 2)]
    # And down again.
    assert await sub.subscribe("rs/t", 1) == [1]
    await pub.publish("rs/t", b"y", qos=2)
    await pub.publish("marker", b"", qos=2)
    got = await until_marker(sub)
    assert [(m.payload, m.qos) for m in got] == [(b"y", 1)]


async def test_resubscribe_replaces_no_local(clients: Make) -> None:
    a = await clients("a", V5)
    await a.subscribe("rs/t", 1, noLocal=True)
    await a.subscribe("rs/t", 1, noLocal=False)
    await a.publish("rs/t", b"self", qos=1)
    msg = await a.next_message()
    assert msg.payload == b"self"
    await a.no_message(0.3)
