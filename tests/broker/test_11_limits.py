"""Every limit in ``BrokerSettings`` shown to take effect, mostly with raw bytes.

Receive Maximum inbound, topic aliases and the v5 Maximum Packet Size are in
``test_10_mqtt5``; here are the MQTT 3 sides and the limits that are not MQTT 5 features.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from tests import mqttbytes as mb
from tests.broker.test_10_mqtt5 import (
    Clients,
    absent,
    parse_connack,
    parse_publish,
    publish5,
    subscribe5,
    v5_disconnect,
)
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker


@pytest.fixture
async def clients(broker: RunningBroker) -> AsyncIterator[Clients]:
    c = Clients(broker.port)
    try:
        yield c
    finally:
        await c.close()


async def subscribe4(raw: RawClient, mid: int, topic: str, qos: int, granted: int) -> None:
    await raw.send(mb.gen_subscribe_one(mid, topic, qos))
    await raw.expect(mb.gen_suback(mid, [granted]))


# --- max_packet_size ---------------------------------------------------------------------


@pytest.mark.broker_settings(max_packet_size=200)
async def test_max_packet_size_v3_plain_close(clients: Clients) -> None:
    raw = await clients.v4("mps-v3")
    await raw.send(mb.gen_publish("mps/t", qos=1, mid=1, payload=b"a" * 150))
    await raw.expect(mb.gen_puback(1))
    await raw.send(mb.gen_publish("mps/t", qos=1, mid=2, payload=b"b" * 300))
    assert await raw.expect_closed() == b""  # MQTT 3: no DISCONNECT, just the close


@pytest.mark.broker_settings(max_packet_size=200)
async def test_max_packet_size_announced_header_is_enough(clients: Clients) -> None:
    # Refused as soon as the fixed header announces too much: the body never comes.
    raw, _ = await clients.v5("mps-hdr")
    await raw.send(b"\x30" + mb.varint(100_000) + b"\x00\x05mps/t")
    assert await raw.expect_closed() == v5_disconnect(0x95)


# --- max_inflight ------------------------------------------------------------------------


@pytest.mark.broker_settings(max_inflight=2)
@pytest.mark.parametrize("version", [4, 5])
async def test_max_inflight_outbound_window(clients: Clients, version: int) -> None:
    # The broker's own outgoing window applies to every client, also to MQTT 3.1.1 ones
    # (which cannot announce a Receive Maximum) and to v5 clients that allow more.
    v5 = version == 5
    if v5:
        sub, _ = await clients.v5("win-sub", properties=mb.proplist((mb.RECEIVE_MAXIMUM, 100)))
        await subscribe5(sub, 1, "win/#", 1)
    else:
        sub = await clients.v4("win-sub")
        await subscribe4(sub, 1, "win/#", 1, 1)
    pub, _ = await clients.v5("win-pub")
    for i in range(1, 6):
        await publish5(pub, "win/t", b"m%d" % i, qos=1, mid=i)
    first = [parse_publish(await sub.read_packet(), v5=v5) for _ in range(2)]
    assert [p.payload for p in first] == [b"m1", b"m2"]
    await absent(sub)
    await sub.send(mb.gen_puback(first[0].pid, proto_ver=version))
    assert parse_publish(await sub.read_packet(), v5=v5).payload == b"m3"
    await absent(sub)


# --- max_queued_messages -----------------------------------------------------------------


@pytest.mark.broker_settings(max_queued_messages=3)
async def test_max_queued_messages(broker: RunningBroker, clients: Clients) -> None:
    sub = await clients.v4("mq-sub", clean=False)
    await subscribe4(sub, 1, "mq/#", 1, 1)
    await sub.send(mb.gen_disconnect())
    assert await sub.expect_closed() == b""
    pub, _ = await clients.v5("mq-pub")
    for i in range(1, 6):
        await publish5(pub, "mq/t", b"m%d" % i, qos=1, mid=i)
    raw = await clients.raw()
    await raw.send(mb.gen_connect("mq-sub", clean_session=False))
    await raw.expect(mb.gen_connack(session_present=True, rc=0))
    got = [parse_publish(await raw.read_packet(), v5=False).payload for _ in range(3)]
    assert got == [b"m1", b"m2", b"m3"]  # the oldest kept, the overflow dropped
    await absent(raw)
    assert broker.broker.core.stats.messages_dropped_queue_full == 2


# --- max_topic_levels --------------------------------------------------------------------


@pytest.mark.broker_settings(max_topic_levels=3)
async def test_max_topic_levels(clients: Clients) -> None:
    sub, _ = await clients.v5("tl-sub")
    await subscribe5(sub, 1, "a/b/c", 0)
    await subscribe5(sub, 2, "a/b/c/d", 0, granted=0x8F)
    await subscribe5(sub, 3, "a/#", 0)
    v3 = await clients.v4("tl-v3")
    await subscribe4(v3, 1, "a/b/c/d", 1, 0x80)
    pub, _ = await clients.v5("tl-pub")
    await publish5(pub, "a/b/c/d", b"deep", qos=1, mid=1, ack=0x90)
    await publish5(pub, "a/b/c", b"ok", qos=1, mid=2)
    got = parse_publish(await sub.read_packet())  # a/b/c and a/# merge into one delivery
    assert (got.topic, got.payload) == ("a/b/c", b"ok")
    await absent(sub)


# --- max_client_id_length ----------------------------------------------------------------


@pytest.mark.broker_settings(max_client_id_length=8)
async def test_max_client_id_length(clients: Clients) -> None:
    await clients.v5("12345678")
    await clients.v4("abcdefgh")
    raw, _ = await clients.v5("123456789", expect_rc=0x85)
    assert await raw.expect_closed() == b""
    v3 = await clients.raw()
    await v3.send(mb.gen_connect("abcdefghi"))
    assert await v3.expect_closed() == mb.gen_connack(rc=2)


# --- max_subscriptions_per_client --------------------------------------------------------


@pytest.mark.broker_settings(max_subscriptions_per_client=2)
async def test_max_subscriptions_per_client(clients: Clients) -> None:
    sub, _ = await clients.v5("ms")
    await subscribe5(sub, 1, "s/1", 1)
    await subscribe5(sub, 2, "s/2", 1)
    await subscribe5(sub, 3, "s/3", 1, granted=0x97)
    await subscribe5(sub, 4, "s/1", 0)  # replacing an existing one is not a new one
    await sub.send(mb.gen_unsubscribe(5, ["s/2"], proto_ver=5))
    await sub.expect(mb.gen_unsuback(5, [0], proto_ver=5))
    await subscribe5(sub, 6, "s/3", 1)
    v3 = await clients.v4("ms-v3")
    await subscribe4(v3, 1, "s/1", 1, 1)
    await subscribe4(v3, 2, "s/2", 1, 1)
    await subscribe4(v3, 3, "s/3", 1, 0x80)


# --- max_awaiting_rel --------------------------------------------------------------------


@pytest.mark.broker_settings(max_awaiting_rel=2)
async def test_max_awaiting_rel(clients: Clients) -> None:
    sub, _ = await clients.v5("ar-sub")
    await subscribe5(sub, 1, "ar/#", 0)
    pub, _ = await clients.v5("ar-pub")
    await publish5(pub, "ar/t", b"m1", qos=2, mid=1)
    await publish5(pub, "ar/t", b"m2", qos=2, mid=2)
    await publish5(pub, "ar/t", b"m3", qos=2, mid=3, ack=0x97)  # Quota exceeded
    got = [parse_publish(await sub.read_packet()).payload for _ in range(2)]
    assert got == [b"m1", b"m2"]
    await absent(sub)
    await pub.send(mb.gen_pubrel(1, proto_ver=5))
    await pub.expect(mb.gen_pubcomp(1, proto_ver=5))
    await publish5(pub, "ar/t", b"m4", qos=2, mid=4)  # room again
    assert parse_publish(await sub.read_packet()).payload == b"m4"


# --- max_keepalive -----------------------------------------------------------------------


@pytest.mark.broker_settings(max_keepalive=1)
async def test_max_keepalive(clients: Clients) -> None:
    loop = asyncio.get_running_loop()
    raw, ack = await clients.v5("ka", keepalive=60)
    start = loop.time()
    assert ack.prop(mb.SERVER_KEEP_ALIVE) == 1
    # Silent: closed at 1.5 × the server's keepalive, not the 60 s the client asked for.
    assert await raw.expect_closed(timeout=5.0) == v5_disconnect(0x8D)
    assert 1.2 <= loop.time() - start < 4.0
    # MQTT 3.1.1 cannot be told another keepalive: refused (Mosquitto's 0x02).
    v3 = await clients.raw()
    await v3.send(mb.gen_connect("ka-v3", keepalive=60))
    assert await v3.expect_closed() == mb.gen_connack(rc=2)
    await clients.v4("ka-v3-ok", keepalive=1)


# --- connect_timeout ---------------------------------------------------------------------


@pytest.mark.broker_settings(connect_timeout=0.3)
async def test_connect_timeout(clients: Clients) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    silent = await clients.raw()
    partial = await clients.raw()
    await partial.send(mb.gen_connect("slow")[:7])  # a CONNECT that never completes
    ok = await clients.v4("prompt")
    assert await silent.expect_closed(timeout=3.0) == b""
    assert await partial.expect_closed(timeout=3.0) == b""
    assert loop.time() - start >= 0.25
    await ok.send(mb.gen_pingreq())  # a connection that sent CONNECT in time stays
    await ok.expect(mb.gen_pingresp())


# --- max_connections ---------------------------------------------------------------------


@pytest.mark.broker_settings(max_connections=2)
async def test_max_connections(clients: Clients, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidemq.broker.client")
    first = await clients.v4("mc-1")
    await clients.v5("mc-2")
    over5, _ = await clients.v5("mc-3", expect_rc=0x89)  # Server busy
    assert await over5.expect_closed() == b""
    over3 = await clients.raw()
    await over3.send(mb.gen_connect("mc-4"))
    assert await over3.expect_closed() == mb.gen_connack(rc=3)  # Server unavailable
    assert sum("too many connections" in r.getMessage() for r in caplog.records) == 2
    # One leaves: there is room again.
    await first.send(mb.gen_disconnect())
    assert await first.expect_closed() == b""
    raw, _ = await clients.v5("mc-5")
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())


@pytest.mark.broker_settings(max_connections=1)
async def test_max_connections_counts_sockets_before_connect(clients: Clients) -> None:
    # A socket that has not sent CONNECT yet already holds a connection slot.
    idle = await clients.raw()
    late = await clients.raw()
    await late.send(mb.gen_connect("mc-late", proto_ver=5))
    assert parse_connack(await late.expect_closed()).rc == 0x89
    await idle.send(mb.gen_connect("mc-idle"))
    await idle.expect(mb.gen_connack(rc=0))
