"""$SYS topics: published (retained) every ``sys_interval``; the values track the broker.

Every test runs with ``sys_interval=0.2`` and waits for a value to show up (bounded by a
deadline), never for a fixed time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import pytest

from tests.helpers.paho import V5, V311, Paho
from tidemq.testing import RunningBroker

Make = Callable[..., Awaitable[Paho]]
pytestmark = pytest.mark.broker_settings(sys_interval=0.2, node_name="node1", version="9.9")


class SysView:
    """The latest value seen on each $SYS topic by one subscriber."""

    def __init__(self, client: Paho) -> None:
        self.client = client
        self.values: dict[str, str] = {}

    async def wait(
        self, topic: str, predicate: Callable[[str], bool] = lambda v: True, timeout: float = 5.0
    ) -> str:
        """Read messages until *topic* has a value satisfying *predicate*; return it."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.values.get(topic)
            if value is not None and predicate(value):
                return value
            left = deadline - time.monotonic()
            assert left > 0, f"{topic}: last value {value!r}"
            try:
                msg = await self.client.next_message(left)
            except Exception as exc:  # queue.Empty
                raise AssertionError(f"{topic}: last value {value!r}") from exc
            self.values[msg.topic] = msg.payload.decode()

    async def number(self, topic: str, predicate: Callable[[int], bool] = lambda v: True) -> int:
        return int(await self.wait(topic, lambda v: predicate(int(v))))


async def sys_subscriber(clients: Make, protocol: int, client_id: str = "sys") -> SysView:
    c = await clients(client_id, protocol)
    assert await c.subscribe("$SYS/#", 0) == [0]
    return SysView(c)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_sys_topics_published(clients: Make, protocol: int) -> None:
    view = await sys_subscriber(clients, protocol)
    assert await view.wait("$SYS/broker/version") == "tidemq 9.9"
    assert await view.wait("$SYS/brokers/node1/version") == "9.9"
    assert (await view.wait("$SYS/broker/uptime")).endswith(" seconds")
    await view.number("$SYS/broker/clients/connected")
    await view.number("$SYS/broker/messages/received", lambda v: v > 0)
    await view.number("$SYS/broker/bytes/received", lambda v: v > 0)
    await view.number("$SYS/broker/subscriptions/count", lambda v: v >= 1)
    await view.number("$SYS/broker/retained messages/count", lambda v: v > 0)
    await view.number("$SYS/brokers/node1/uptime")
    for name in ("messages", "bytes", "publish"):
        for direction in ("received", "sent"):
            for window in ("1min", "5min", "15min"):
                value = await view.wait(f"$SYS/broker/load/{name}/{direction}/{window}")
                assert float(value) >= 0.0


async def test_retained_sys_values_on_subscribe(clients: Make) -> None:
    """$SYS values are retained: a late subscriber gets them at once, RETAIN 1."""
    first = await sys_subscriber(clients, V5, "first")
    await first.wait("$SYS/broker/uptime")  # at least one tick happened
    late = await clients("late", V5)
    await late.subscribe("$SYS/broker/version", 0)
    msg = await late.next_message()
    assert (msg.topic, msg.payload, msg.retain) == ("$SYS/broker/version", b"tidemq 9.9", True)


async def test_sys_not_matched_by_hash(clients: Make) -> None:
    c = await clients("wild", V5)
    await c.subscribe("#", 0)
    view = await sys_subscriber(clients, V5)
    await view.wait("$SYS/broker/uptime")
    await c.no_message(0.4)  # two ticks' worth of $SYS traffic, none of it for "#"


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_clients_connected_tracks_connections(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    view = await sys_subscriber(clients, protocol)
    await view.number("$SYS/broker/clients/connected", lambda v: v == 1)
    others = [await clients(f"c{i}", protocol) for i in range(2)]
    assert await view.number("$SYS/broker/clients/connected", lambda v: v == 3) == 3
    await view.number("$SYS/brokers/node1/clients/connected", lambda v: v == 3)
    await others[0].disconnect()
    assert await view.number("$SYS/broker/clients/connected", lambda v: v == 2) == 2
    assert broker.broker.core.connected_count == 2
    # The high-water mark stays; the clean session left no disconnected session behind.
    await view.number("$SYS/broker/clients/total", lambda v: v == 2)
    assert await view.number("$SYS/broker/clients/maximum") == 3


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_load_averages_rise_with_traffic(clients: Make, protocol: int) -> None:
    view = await sys_subscriber(clients, protocol)
    pub = await clients("pub", protocol)
    for i in range(20):
        await pub.publish("load/t", f"{i}", qos=1)
    for name in ("publish/received", "messages/received", "bytes/received", "messages/sent"):
        await view.wait(f"$SYS/broker/load/{name}/1min", lambda v: float(v) > 0.0)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_publish_counters_grow(clients: Make, protocol: int) -> None:
    view = await sys_subscriber(clients, protocol)
    before = await view.number("$SYS/broker/publish/messages/received")
    pub = await clients("pub", protocol)
    for i in range(5):
        await pub.publish("count/t", f"{i}", qos=1)
    await view.number("$SYS/broker/publish/messages/received", lambda v: v >= before + 5)
    await view.number("$SYS/brokers/node1/metrics/messages/received", lambda v: v >= before + 5)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_sent_counters_grow(clients: Make, protocol: int) -> None:
    """messages/sent and bytes/sent count what the broker writes (control packets, bytes)."""
    view = await sys_subscriber(clients, protocol)
    sent = await view.number("$SYS/broker/messages/sent", lambda v: v > 0)
    sent_bytes = await view.number("$SYS/broker/bytes/sent", lambda v: v > 0)
    sub = await clients("sub", protocol)
    await sub.subscribe("count/t", 1)
    pub = await clients("pub", protocol)
    for _ in range(3):
        await pub.publish("count/t", b"x" * 1000, qos=1)
    for _ in range(3):
        assert (await sub.next_message()).payload == b"x" * 1000
    # 2 CONNACKs, 1 SUBACK, 3 PUBACKs and 3 PUBLISHes of over 1000 bytes each at least.
    await view.number("$SYS/broker/messages/sent", lambda v: v >= sent + 9)
    await view.number("$SYS/broker/bytes/sent", lambda v: v >= sent_bytes + 3000)
    await view.number("$SYS/brokers/node1/metrics/bytes/sent", lambda v: v >= sent_bytes + 3000)
    await view.number("$SYS/broker/publish/messages/sent", lambda v: v >= 3)


async def test_sent_counters_exact(broker: RunningBroker, clients: Make) -> None:
    """The counters match what one client receives: PINGRESP and a QoS 2 exchange."""
    stats = broker.broker.core.stats
    c = await clients("c", V311)
    await c.subscribe("x/t", 2)
    packets, sent = stats.messages_sent, stats.bytes_sent
    # QoS 2 to ourselves: PUBREC, PUBCOMP (automatic reply) and PUBLISH, PUBREL to us.
    await c.publish("x/t", b"abc", qos=2)
    msg = await c.next_message()
    assert msg.qos == 2
    await c.publish("x/t", b"", qos=0)  # PUBLISH in, PUBLISH out: after the PUBCOMP
    await c.next_message()
    assert stats.messages_sent - packets == 5
    # PUBREC 4 + PUBCOMP 4 + PUBLISH (2+2+3+2+3) + PUBREL 4 + PUBLISH (2+2+3)
    assert stats.bytes_sent - sent == 4 + 4 + 12 + 4 + 7


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_subscription_and_retained_counts(
    broker: RunningBroker, clients: Make, protocol: int
) -> None:
    core = broker.broker.core
    view = await sys_subscriber(clients, protocol)
    sub = await clients("sub", protocol)
    await sub.subscribe("a/+", 0)
    await sub.subscribe("b/#", 0)
    await view.number("$SYS/broker/subscriptions/count", lambda v: v == 3)
    await view.number("$SYS/brokers/node1/stats/subscriptions/count", lambda v: v == 3)
    await sub.unsubscribe("a/+")
    await view.number("$SYS/broker/subscriptions/count", lambda v: v == 2)

    # The $SYS topics are retained themselves: wait for a figure that is stable.
    base = await view.number(
        "$SYS/broker/retained messages/count", lambda v: v == len(core.retained)
    )
    pub = await clients("pub", protocol)
    await pub.publish("keep/1", b"x", qos=1, retain=True)
    await pub.publish("keep/2", b"y", qos=1, retain=True)
    await view.number("$SYS/broker/retained messages/count", lambda v: v == base + 2)
    await pub.publish("keep/1", b"", qos=1, retain=True)
    await view.number("$SYS/broker/retained messages/count", lambda v: v == base + 1)
