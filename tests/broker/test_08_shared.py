"""Shared subscriptions: one member per message, the four strategies, several groups,
plain subscribers alongside, ``$queue/``, and an offline persistent member.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, Paho, props
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]


async def collect(members: list[Paho], n: int, timeout: float = 5.0) -> list[list[bytes]]:
    """Wait until *n* messages arrived over all *members* together, then check that no
    more follow; returns each member's payloads in arrival order."""
    got: list[list[bytes]] = [[] for _ in members]

    def drain() -> int:
        for i, m in enumerate(members):
            while True:
                try:
                    got[i].append(m.messages.get_nowait().payload)
                except queue.Empty:
                    break
        return sum(len(g) for g in got)

    deadline = time.monotonic() + timeout
    while drain() < n:
        assert time.monotonic() < deadline, f"only {got} of {n} messages arrived"
        await asyncio.sleep(0.01)  # polling for deliveries, bounded by the deadline
    await asyncio.sleep(0.3)  # window for unexpected extra copies
    assert drain() == n, got
    return got


async def members_of(clients: Make, protocol: int, topic_filter: str, n: int) -> list[Paho]:
    out = []
    for i in range(n):
        c = await clients(f"m{i}", protocol)
        assert await c.subscribe(topic_filter, 1) == [1]
        out.append(c)
    return out


async def publish_n(pub: Paho, topic: str, n: int) -> list[bytes]:
    payloads = [f"{topic}-{i}".encode() for i in range(n)]
    for p in payloads:
        await pub.publish(topic, p, qos=1)  # acknowledged: routed before the next one
    return payloads


def check_each_once(got: list[list[bytes]], payloads: list[bytes]) -> None:
    flat = [p for g in got for p in g]
    assert sorted(flat) == sorted(payloads), got


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_round_robin_spreads_evenly(clients: Make, protocol: int) -> None:
    members = await members_of(clients, protocol, "$share/g/sh/t", 3)
    pub = await clients("pub", protocol)
    payloads = await publish_n(pub, "sh/t", 9)
    got = await collect(members, 9)
    check_each_once(got, payloads)
    assert [len(g) for g in got] == [3, 3, 3]


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(shared_subscription_strategy="random")
async def test_random_each_message_once(clients: Make, protocol: int) -> None:
    members = await members_of(clients, protocol, "$share/g/sh/t", 3)
    pub = await clients("pub", protocol)
    payloads = await publish_n(pub, "sh/t", 30)
    got = await collect(members, 30)
    check_each_once(got, payloads)
    # (1/3)^29 * 3 chance of all to one member: a spread is expected.
    assert sum(1 for g in got if g) >= 2


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(shared_subscription_strategy="hash_clientid")
async def test_hash_clientid_same_member_per_publisher(clients: Make, protocol: int) -> None:
    members = await members_of(clients, protocol, "$share/g/sh/t", 3)
    pub = await clients("pub-1", protocol)
    payloads = await publish_n(pub, "sh/t", 6)
    got = await collect(members, 6)
    check_each_once(got, payloads)
    assert sorted(len(g) for g in got) == [0, 0, 6]
    # Another publisher is hashed on its own id: again all to one member.
    other = await clients("another-publisher", protocol)
    payloads = await publish_n(other, "sh/t", 6)
    got = await collect(members, 6)
    check_each_once(got, payloads)
    assert sorted(len(g) for g in got) == [0, 0, 6]


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.broker_settings(shared_subscription_strategy="sticky")
async def test_sticky_stays_with_member(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    members = await members_of(clients, protocol, "$share/g/sh/t", 3)
    pub = await clients("pub", protocol)
    other = await clients("pub-2", protocol)
    payloads = await publish_n(pub, "sh/t", 4) + await publish_n(other, "sh/t", 4)
    got = await collect(members, 8)
    check_each_once(got, payloads)
    assert sorted(len(g) for g in got) == [0, 0, 8]
    # The sticky member leaves: another one takes over, and stays.
    chosen = next(i for i, g in enumerate(got) if g)
    await members[chosen].unsubscribe("$share/g/sh/t")
    rest = [m for i, m in enumerate(members) if i != chosen]
    payloads = await publish_n(pub, "sh/t", 6)
    got = await collect(rest, 6)
    check_each_once(got, payloads)
    assert sorted(len(g) for g in got) == [0, 6]


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_groups_and_plain_each_get_a_copy(clients: Make, protocol: int) -> None:
    g1 = [await clients(f"g1-{i}", protocol) for i in range(2)]
    g2 = [await clients(f"g2-{i}", protocol) for i in range(2)]
    for c in g1:
        await c.subscribe("$share/one/sh/t", 1)
    for c in g2:
        await c.subscribe("$share/two/sh/+", 1)
    plain = await clients("plain", protocol)
    await plain.subscribe("sh/t", 1)
    pub = await clients("pub", protocol)
    payloads = await publish_n(pub, "sh/t", 4)
    got1 = await collect(g1, 4)
    got2 = await collect(g2, 4)
    gotp = await collect([plain], 4)
    check_each_once(got1, payloads)
    check_each_once(got2, payloads)
    assert gotp == [payloads]
    assert [len(g) for g in got1] == [2, 2]
    assert [len(g) for g in got2] == [2, 2]


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_member_also_subscribed_plainly_gets_both(clients: Make, protocol: int) -> None:
    """A shared and a plain subscription of one client are separate subscriptions."""
    c = await clients("c", protocol)
    await c.subscribe("$share/g/sh/t", 1)
    await c.subscribe("sh/t", 1)
    pub = await clients("pub", protocol)
    await pub.publish("sh/t", b"x", qos=1)
    got = await collect([c], 2)
    assert got == [[b"x", b"x"]]


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_queue_prefix_is_a_group(clients: Make, protocol: int) -> None:
    members = await members_of(clients, protocol, "$queue/q/t", 2)
    pub = await clients("pub", protocol)
    payloads = await publish_n(pub, "q/t", 4)
    got = await collect(members, 4)
    check_each_once(got, payloads)
    assert [len(g) for g in got] == [2, 2]


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_unsubscribed_member_gets_no_more(clients: Make, protocol: int) -> None:
    members = await members_of(clients, protocol, "$share/g/sh/t", 2)
    assert await members[0].unsubscribe("$share/g/sh/t") in ([], [0])
    pub = await clients("pub", protocol)
    payloads = await publish_n(pub, "sh/t", 4)
    got = await collect(members, 4)
    assert got == [[], payloads]


async def _wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_offline_persistent_member(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    """Online members are preferred; with every member offline, a QoS 1 message waits in
    one member's session and arrives when it resumes."""
    kwargs: dict[str, Any] = {"clean": False}
    if protocol == V5:
        kwargs["properties"] = props(PacketTypes.CONNECT, SessionExpiryInterval=60)
    core = broker.broker.core
    a = await clients("member-a", protocol, **kwargs)
    await a.subscribe("$share/g/off/t", 1)
    b = await clients("member-b", protocol)
    await b.subscribe("$share/g/off/t", 1)
    await a.disconnect()
    await _wait_until(lambda: core.sessions["member-a"].handler is None)
    pub = await clients("pub", protocol)
    online = await publish_n(pub, "off/t", 3)
    assert (await collect([b], 3)) == [online]  # nothing queued for the offline one

    await b.disconnect()
    await _wait_until(lambda: "member-b" not in core.sessions)  # clean: gone
    offline = await publish_n(pub, "off/t", 2)
    a2 = await clients("member-a", protocol, **kwargs)
    got = await collect([a2], 2)
    assert got == [offline]


@pytest.mark.parametrize("proto_ver", [4, 5])
async def test_invalid_shared_filters_refused(broker: RunningBroker, proto_ver: int) -> None:
    refused = 0x8F if proto_ver == 5 else 0x80
    raw = await RawClient.connect(broker.port)
    try:
        await raw.send(mb.gen_connect("c", proto_ver=proto_ver))
        assert (await raw.read_packet())[0] == 0x20
        filters = ["$share/g", "$share//t", "$share/g+/t", "$share/g#/t", "$queue/", "$share/g/t"]
        await raw.send(mb.gen_subscribe(1, [(f, 1) for f in filters], proto_ver=proto_ver))
        codes = [refused] * 5 + [1]
        await raw.expect(mb.gen_suback(1, codes, proto_ver=proto_ver))
    finally:
        await raw.close()


async def test_no_local_on_shared_subscription_is_a_protocol_error(broker: RunningBroker) -> None:
    """[MQTT-3.8.3-4]: No Local on a shared subscription: DISCONNECT 0x82."""
    raw = await RawClient.connect(broker.port)
    try:
        await raw.send(mb.gen_connect("c", proto_ver=5))
        assert (await raw.read_packet())[0] == 0x20
        await raw.send(mb.gen_subscribe_one(1, "$share/g/t", 1, no_local=True, proto_ver=5))
        assert await raw.expect_closed() == mb.gen_disconnect(reason_code=0x82, proto_ver=5)
    finally:
        await raw.close()
