"""MQTT 5 features end to end, with paho v5 and with raw v5 bytes.

Flow control (Receive Maximum both ways), topic aliases both ways, Maximum Packet Size,
Subscription Identifiers, No Local, property pass-through, Message Expiry, Request Response
Information, enhanced-auth refusals, reason codes on acknowledgements and the CONNACK
capability properties (Maximum QoS, Retain Available).

The raw side parses what the broker sends with the small decoder below, written from the
specification and sharing nothing with ``tidemq.protocol``; ``test_11`` and ``test_12``
reuse it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes

from tests import mqttbytes as mb
from tests.helpers.paho import V5, Paho, connect, props
from tests.helpers.raw import RawClient
from tidemq.broker import Decision, HookPoint
from tidemq.testing import RunningBroker

ABSENT = 0.3  # how long "nothing arrives" is watched for

# --- a spec-only decoder for what the broker sends -------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _u16(buf: bytes, pos: int) -> int:
    return (buf[pos] << 8) | buf[pos + 1]


def _str(buf: bytes, pos: int) -> tuple[str, int]:
    n = _u16(buf, pos)
    return buf[pos + 2 : pos + 2 + n].decode("utf-8"), pos + 2 + n


def parse_props(buf: bytes, pos: int) -> tuple[list[tuple[int, Any]], int]:
    """A property block (length prefix included) → [(id, value)] in wire order."""
    length, pos = _varint(buf, pos)
    end = pos + length
    out: list[tuple[int, Any]] = []
    while pos < end:
        pid, pos = _varint(buf, pos)
        kind = mb.PROPERTY_TYPES[pid]
        value: Any
        if kind == mb.BYTE:
            value, pos = buf[pos], pos + 1
        elif kind == mb.TWO_BYTE_INT:
            value, pos = _u16(buf, pos), pos + 2
        elif kind == mb.FOUR_BYTE_INT:
            value, pos = int.from_bytes(buf[pos : pos + 4], "big"), pos + 4
        elif kind == mb.VARINT:
            value, pos = _varint(buf, pos)
        elif kind == mb.UTF8_STRING:
            value, pos = _str(buf, pos)
        elif kind == mb.BINARY_DATA:
            n = _u16(buf, pos)
            value, pos = bytes(buf[pos + 2 : pos + 2 + n]), pos + 2 + n
        else:
            name, pos = _str(buf, pos)
            val, pos = _str(buf, pos)
            value = (name, val)
        out.append((pid, value))
    assert pos == end, "property block length mismatch"
    return out, end


class _WithProps:
    props: list[tuple[int, Any]]

    def prop(self, pid: int) -> Any:
        """The value of a non-repeating property, None when absent (asserts at most one)."""
        values = self.all(pid)
        assert len(values) <= 1, f"property 0x{pid:02x} appears {len(values)} times"
        return values[0] if values else None

    def all(self, pid: int) -> list[Any]:
        return [v for p, v in self.props if p == pid]


@dataclass
class Pub(_WithProps):
    topic: str
    qos: int
    retain: bool
    dup: bool
    pid: int
    props: list[tuple[int, Any]]
    payload: bytes


@dataclass
class Ack(_WithProps):
    session_present: bool
    rc: int
    props: list[tuple[int, Any]]


def parse_publish(data: bytes, *, v5: bool = True) -> Pub:
    first = data[0]
    assert first >> 4 == 3, f"not a PUBLISH: {data[:16]!r}"
    _, pos = _varint(data, 1)
    topic, pos = _str(data, pos)
    qos = (first >> 1) & 3
    pid = 0
    if qos:
        pid, pos = _u16(data, pos), pos + 2
    plist: list[tuple[int, Any]] = []
    if v5:
        plist, pos = parse_props(data, pos)
    return Pub(topic, qos, bool(first & 1), bool(first & 8), pid, plist, data[pos:])


def parse_connack(data: bytes, *, v5: bool = True) -> Ack:
    assert data[0] == 0x20, f"not a CONNACK: {data[:16]!r}"
    _, pos = _varint(data, 1)
    flags, rc = data[pos], data[pos + 1]
    plist: list[tuple[int, Any]] = []
    if v5:
        plist, _ = parse_props(data, pos + 2)
    return Ack(bool(flags & 1), rc, plist)


def v5_disconnect(code: int) -> bytes:
    return mb.gen_disconnect(reason_code=code, proto_ver=5)


async def absent(raw: RawClient, window: float = ABSENT) -> None:
    """Assert the broker sends nothing on *raw* for *window* seconds."""
    try:
        got = await raw.read_packet(window)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected packet {got!r}")


# --- client bookkeeping: everything opened is closed at teardown -------------------------


class Clients:
    def __init__(self, port: int) -> None:
        self.port = port
        self._raws: list[RawClient] = []
        self._pahos: list[Paho] = []

    async def raw(self) -> RawClient:
        raw = await RawClient.connect(self.port)
        self._raws.append(raw)
        return raw

    async def v5(
        self,
        client_id: str = "",
        *,
        properties: bytes = b"",
        clean: bool = True,
        keepalive: int = 60,
        expect_rc: int | None = 0,
    ) -> tuple[RawClient, Ack]:
        """A raw MQTT 5 client after its CONNACK (asserted to be *expect_rc*)."""
        raw = await self.raw()
        await raw.send(
            mb.gen_connect(
                client_id,
                proto_ver=5,
                properties=properties,
                clean_session=clean,
                keepalive=keepalive,
            )
        )
        ack = parse_connack(await raw.read_packet())
        if expect_rc is not None:
            assert ack.rc == expect_rc, f"CONNACK 0x{ack.rc:02x}"
        return raw, ack

    async def v4(self, client_id: str, *, clean: bool = True, keepalive: int = 60) -> RawClient:
        """A raw MQTT 3.1.1 client after a successful CONNACK."""
        raw = await self.raw()
        await raw.send(mb.gen_connect(client_id, clean_session=clean, keepalive=keepalive))
        await raw.expect(mb.gen_connack(rc=0))
        return raw

    async def paho(self, *args: Any, **kwargs: Any) -> Paho:
        client = await connect(self.port, *args, **kwargs)
        self._pahos.append(client)
        return client

    async def close(self) -> None:
        for raw in self._raws:
            await raw.close()
        for client in self._pahos:
            client.client.disconnect()
            await asyncio.to_thread(client.client.loop_stop)


@pytest.fixture
async def clients(broker: RunningBroker) -> AsyncIterator[Clients]:
    c = Clients(broker.port)
    try:
        yield c
    finally:
        await c.close()


async def subscribe5(
    raw: RawClient,
    mid: int,
    topic: str,
    qos: int,
    *,
    granted: int | None = None,
    properties: bytes = b"",
    **options: Any,
) -> None:
    await raw.send(
        mb.gen_subscribe_one(mid, topic, qos, properties=properties, proto_ver=5, **options)
    )
    code = qos if granted is None else granted
    await raw.expect(mb.gen_suback(mid, [code], proto_ver=5))


async def publish5(
    raw: RawClient,
    topic: str,
    payload: bytes = b"x",
    *,
    qos: int = 0,
    mid: int = 0,
    properties: bytes = b"",
    retain: bool = False,
    ack: int | None = 0,
) -> None:
    """Publish from a raw v5 client; for QoS 1 expect PUBACK with reason *ack*."""
    await raw.send(
        mb.gen_publish(
            topic,
            qos=qos,
            mid=mid,
            payload=payload,
            properties=properties,
            retain=retain,
            proto_ver=5,
        )
    )
    if qos == 1 and ack is not None:
        await raw.expect(mb.gen_puback(mid, reason_code=ack, proto_ver=5))
    elif qos == 2 and ack is not None:
        await raw.expect(mb.gen_pubrec(mid, reason_code=ack, proto_ver=5))


# --- Receive Maximum ---------------------------------------------------------------------


@pytest.mark.broker_settings(max_inflight=2)
async def test_connack_announces_receive_maximum(clients: Clients) -> None:
    _, ack = await clients.v5("rm-raw")
    assert ack.prop(mb.RECEIVE_MAXIMUM) == 2
    paho = await clients.paho("rm-paho", protocol=V5, expect_rc=None)
    _, rc, connack_props = await asyncio.to_thread(paho.connack.get, True, 5.0)
    assert rc == 0
    assert connack_props.ReceiveMaximum == 2


@pytest.mark.broker_settings(max_inflight=2)
async def test_receive_maximum_exceeded_inbound(clients: Clients) -> None:
    raw, _ = await clients.v5("rm-in")
    for mid in (1, 2):
        await publish5(raw, "rm/in", qos=2, mid=mid, ack=0x10)  # PUBREC, never PUBREL
    await raw.send(mb.gen_publish("rm/in", qos=2, mid=3, payload=b"x", proto_ver=5))
    assert await raw.expect_closed() == v5_disconnect(0x93)


@pytest.mark.broker_settings(max_inflight=2)
async def test_receive_maximum_slot_freed_by_pubrel(clients: Clients) -> None:
    raw, _ = await clients.v5("rm-rel")
    for mid in (1, 2):
        await publish5(raw, "rm/in", qos=2, mid=mid, ack=0x10)
    await raw.send(mb.gen_pubrel(1, proto_ver=5))
    await raw.expect(mb.gen_pubcomp(1, proto_ver=5))
    await publish5(raw, "rm/in", qos=2, mid=3, ack=0x10)  # within the window again


async def test_receive_maximum_outbound_queues(clients: Clients) -> None:
    sub, _ = await clients.v5("rm-sub", properties=mb.proplist((mb.RECEIVE_MAXIMUM, 2)))
    await subscribe5(sub, 1, "rm/out", 1)
    pub, _ = await clients.v5("rm-pub")
    for i in range(1, 6):
        await publish5(pub, "rm/out", b"m%d" % i, qos=1, mid=i)
    first = [parse_publish(await sub.read_packet()) for _ in range(2)]
    assert [p.payload for p in first] == [b"m1", b"m2"]
    await absent(sub)  # never more than 2 unacknowledged
    await sub.send(mb.gen_puback(first[0].pid, proto_ver=5))
    third = parse_publish(await sub.read_packet())
    assert third.payload == b"m3"
    await absent(sub)
    for p in (first[1], third):
        await sub.send(mb.gen_puback(p.pid, proto_ver=5))
    rest = [parse_publish(await sub.read_packet()) for _ in range(2)]
    assert [p.payload for p in rest] == [b"m4", b"m5"]


# --- Topic aliases -----------------------------------------------------------------------


async def test_topic_alias_inbound(clients: Clients) -> None:
    sub, _ = await clients.v5("ta-sub")
    await subscribe5(sub, 1, "alias/#", 0)
    pub, ack = await clients.v5("ta-pub")
    assert ack.prop(mb.TOPIC_ALIAS_MAXIMUM)
    alias = mb.proplist((mb.TOPIC_ALIAS, 1))
    await publish5(pub, "alias/topic", b"one", properties=alias)
    await publish5(pub, "", b"two", properties=alias)
    for payload in (b"one", b"two"):
        got = parse_publish(await sub.read_packet())
        assert (got.topic, got.payload) == ("alias/topic", payload)
        assert got.prop(mb.TOPIC_ALIAS) is None  # the subscriber announced no aliases


@pytest.mark.broker_settings(topic_alias_maximum=3)
async def test_topic_alias_above_maximum(clients: Clients) -> None:
    pub, ack = await clients.v5("ta-max")
    assert ack.prop(mb.TOPIC_ALIAS_MAXIMUM) == 3
    await publish5(pub, "alias/ok", properties=mb.proplist((mb.TOPIC_ALIAS, 3)))
    await publish5(pub, "alias/bad", properties=mb.proplist((mb.TOPIC_ALIAS, 4)))
    assert await pub.expect_closed() == v5_disconnect(0x94)


async def test_topic_alias_unknown_is_protocol_error(clients: Clients) -> None:
    pub, _ = await clients.v5("ta-unknown")
    await publish5(pub, "", properties=mb.proplist((mb.TOPIC_ALIAS, 2)))
    assert await pub.expect_closed() == v5_disconnect(0x82)


async def test_topic_alias_outbound(clients: Clients) -> None:
    sub, _ = await clients.v5("tao-sub", properties=mb.proplist((mb.TOPIC_ALIAS_MAXIMUM, 5)))
    await subscribe5(sub, 1, "out/#", 0)
    pub, _ = await clients.v5("tao-pub")
    for topic in ("out/a", "out/a", "out/b", "out/a"):
        await publish5(pub, topic, topic.encode())
    got = [parse_publish(await sub.read_packet()) for _ in range(4)]
    alias_a = got[0].prop(mb.TOPIC_ALIAS)
    assert got[0].topic == "out/a"
    assert 1 <= alias_a <= 5
    assert (got[1].topic, got[1].prop(mb.TOPIC_ALIAS), got[1].payload) == ("", alias_a, b"out/a")
    alias_b = got[2].prop(mb.TOPIC_ALIAS)
    assert got[2].topic == "out/b"
    assert alias_b not in (None, alias_a)
    assert (got[3].topic, got[3].prop(mb.TOPIC_ALIAS)) == ("", alias_a)


@pytest.mark.broker_settings(assign_topic_aliases=False)
async def test_topic_alias_outbound_disabled(clients: Clients) -> None:
    sub, _ = await clients.v5("tao-off", properties=mb.proplist((mb.TOPIC_ALIAS_MAXIMUM, 5)))
    await subscribe5(sub, 1, "out/#", 0)
    pub, _ = await clients.v5("tao-off-pub")
    for _ in range(3):
        await publish5(pub, "out/a")
    for _ in range(3):
        got = parse_publish(await sub.read_packet())
        assert (got.topic, got.prop(mb.TOPIC_ALIAS)) == ("out/a", None)


class _AliasMap:
    """The receiving side of outbound aliases: every PUBLISH must resolve to a topic."""

    def __init__(self) -> None:
        self.known: dict[int, str] = {}

    def resolve(self, pub: Pub) -> str:
        alias = pub.prop(mb.TOPIC_ALIAS)
        if alias is None:
            return pub.topic
        if pub.topic:
            self.known[alias] = pub.topic
            return pub.topic
        assert alias in self.known, f"alias {alias} used before the broker announced it"
        return self.known[alias]


async def test_topic_alias_outbound_with_queued_delivery(clients: Clients) -> None:
    # The second topic's delivery waits behind Receive Maximum 1: when it finally goes
    # out, its alias must come with the topic name the client has never seen.
    sub, _ = await clients.v5(
        "taq-sub",
        properties=mb.proplist((mb.TOPIC_ALIAS_MAXIMUM, 5), (mb.RECEIVE_MAXIMUM, 1)),
    )
    await subscribe5(sub, 1, "q/#", 1)
    pub, _ = await clients.v5("taq-pub")
    await publish5(pub, "q/a", b"a", qos=1, mid=1)
    await publish5(pub, "q/b", b"b", qos=1, mid=2)
    aliases = _AliasMap()
    first = parse_publish(await sub.read_packet())
    assert aliases.resolve(first) == "q/a"
    await sub.send(mb.gen_puback(first.pid, proto_ver=5))
    second = parse_publish(await sub.read_packet())
    assert (aliases.resolve(second), second.payload) == ("q/b", b"b")


async def test_topic_alias_outbound_after_dropped_too_large(clients: Clients) -> None:
    # A delivery dropped for the client's Maximum Packet Size never reached it, so the
    # alias it would have introduced must not be used bare afterwards.
    sub, _ = await clients.v5(
        "tad-sub",
        properties=mb.proplist((mb.TOPIC_ALIAS_MAXIMUM, 5), (mb.MAXIMUM_PACKET_SIZE, 100)),
    )
    await subscribe5(sub, 1, "d/#", 0)
    pub, _ = await clients.v5("tad-pub")
    await publish5(pub, "d/t", b"x" * 500)
    await publish5(pub, "d/t", b"small")
    got = parse_publish(await sub.read_packet())
    assert (_AliasMap().resolve(got), got.payload) == ("d/t", b"small")


# --- Maximum Packet Size -----------------------------------------------------------------


async def test_maximum_packet_size_per_client(broker: RunningBroker, clients: Clients) -> None:
    small, _ = await clients.v5("mps-small", properties=mb.proplist((mb.MAXIMUM_PACKET_SIZE, 100)))
    await subscribe5(small, 1, "mps/#", 1)
    large = await clients.paho("mps-large", protocol=V5)
    assert await large.subscribe("mps/#", 1) == [1]
    pub, _ = await clients.v5("mps-pub")
    await publish5(pub, "mps/big", b"B" * 500, qos=1, mid=1)
    got = await large.next_message()
    assert (got.topic, got.payload) == ("mps/big", b"B" * 500)
    await absent(small)
    assert broker.broker.core.stats.messages_dropped_too_large == 1
    await publish5(pub, "mps/small", b"s", qos=1, mid=2)  # the small client still gets these
    got_small = parse_publish(await small.read_packet())
    assert (got_small.topic, got_small.payload) == ("mps/small", b"s")
    assert (await large.next_message()).payload == b"s"


@pytest.mark.broker_settings(max_packet_size=200)
async def test_inbound_packet_too_large(clients: Clients) -> None:
    raw, ack = await clients.v5("mps-in")
    assert ack.prop(mb.MAXIMUM_PACKET_SIZE) == 200
    await publish5(raw, "mps/in", b"y" * 150, qos=1, mid=1, ack=0x10)  # fits
    await raw.send(mb.gen_publish("mps/in", qos=1, mid=2, payload=b"z" * 300, proto_ver=5))
    assert await raw.expect_closed() == v5_disconnect(0x95)


# --- Subscription Identifiers, No Local, property pass-through ---------------------------


async def test_subscription_identifiers(clients: Clients) -> None:
    sub, _ = await clients.v5("sid-sub")
    sid = mb.SUBSCRIPTION_IDENTIFIER
    await subscribe5(sub, 1, "sid/#", 0, properties=mb.proplist((sid, 7)))
    await subscribe5(sub, 2, "sid/+/x", 0, properties=mb.proplist((sid, 300)))
    await subscribe5(sub, 3, "plain/#", 0)
    pub, _ = await clients.v5("sid-pub")
    for topic in ("sid/a/x", "sid/b", "plain/c"):
        await publish5(pub, topic)
    both, one, none = [parse_publish(await sub.read_packet()) for _ in range(3)]
    assert both.topic == "sid/a/x"
    assert len(both.props) == 2  # one PUBLISH carrying both identifiers
    assert sorted(both.all(sid)) == [7, 300]
    assert (one.topic, one.all(sid)) == ("sid/b", [7])
    assert (none.topic, none.all(sid)) == ("plain/c", [])


async def test_subscription_identifier_paho(clients: Clients) -> None:
    sub = await clients.paho("sid-paho", protocol=V5)
    sub.client.subscribe(
        "sidp/#", qos=1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=42)
    )
    assert await asyncio.to_thread(sub.subacks.get, True, 5.0) == [1]
    pub = await clients.paho("sid-paho-pub", protocol=V5)
    await pub.publish("sidp/t", b"hi", qos=1)
    got = await sub.next_message()
    assert got.properties.SubscriptionIdentifier == [42]


async def test_no_local(clients: Clients) -> None:
    me, _ = await clients.v5("nl-me")
    await subscribe5(me, 1, "nl/#", 1, no_local=True)
    other, _ = await clients.v5("nl-other")
    await subscribe5(other, 1, "nl/#", 1)
    await publish5(me, "nl/mine", b"from me", qos=1, mid=1)  # matched: other gets it
    got = parse_publish(await other.read_packet())
    assert (got.topic, got.payload) == ("nl/mine", b"from me")
    await other.send(mb.gen_puback(got.pid, proto_ver=5))
    await absent(me)
    await publish5(other, "nl/theirs", b"from other")
    mine = parse_publish(await me.read_packet())
    assert (mine.topic, mine.payload) == ("nl/theirs", b"from other")


USER_PROPS = [("k", "1"), ("a", "2"), ("k", "3"), ("k", "1")]


async def test_properties_passed_through(clients: Clients) -> None:
    raw_sub, _ = await clients.v5("pp-raw")
    await subscribe5(raw_sub, 1, "pp/#", 1)
    paho_sub = await clients.paho("pp-paho", protocol=V5)
    assert await paho_sub.subscribe("pp/#", 1) == [1]
    pub = await clients.paho("pp-pub", protocol=V5)
    pub_props = props(
        PacketTypes.PUBLISH,
        UserProperty=list(USER_PROPS),
        PayloadFormatIndicator=1,
        ContentType="application/json",
        ResponseTopic="pp/reply",
        CorrelationData=b"\x00\x01corr\xff",
    )
    await pub.publish("pp/t", b'{"a": 1}', qos=1, properties=pub_props)

    got = parse_publish(await raw_sub.read_packet())
    assert (got.topic, got.payload) == ("pp/t", b'{"a": 1}')
    assert got.all(mb.USER_PROPERTY) == USER_PROPS  # order kept, duplicates kept
    assert got.prop(mb.PAYLOAD_FORMAT_INDICATOR) == 1
    assert got.prop(mb.CONTENT_TYPE) == "application/json"
    assert got.prop(mb.RESPONSE_TOPIC) == "pp/reply"
    assert got.prop(mb.CORRELATION_DATA) == b"\x00\x01corr\xff"
    assert got.prop(mb.TOPIC_ALIAS) is None

    seen = (await paho_sub.next_message()).properties
    assert seen.UserProperty == USER_PROPS
    assert seen.PayloadFormatIndicator == 1
    assert seen.ContentType == "application/json"
    assert seen.ResponseTopic == "pp/reply"
    assert seen.CorrelationData == b"\x00\x01corr\xff"


async def test_properties_passed_through_raw(clients: Clients) -> None:
    sub, _ = await clients.v5("ppr-sub")
    await subscribe5(sub, 1, "ppr/#", 0)
    pub, _ = await clients.v5("ppr-pub")
    items = [
        (mb.USER_PROPERTY, ("z", "last")),
        (mb.CONTENT_TYPE, "text/plain"),
        (mb.USER_PROPERTY, ("a", "first")),
        (mb.USER_PROPERTY, ("z", "last")),
        (mb.CORRELATION_DATA, b""),
    ]
    await publish5(pub, "ppr/t", b"body", properties=mb.proplist(*items))
    got = parse_publish(await sub.read_packet())
    assert got.all(mb.USER_PROPERTY) == [("z", "last"), ("a", "first"), ("z", "last")]
    assert got.prop(mb.CONTENT_TYPE) == "text/plain"
    assert got.prop(mb.CORRELATION_DATA) == b""


async def test_payload_format_invalid_utf8(clients: Clients) -> None:
    sub, _ = await clients.v5("pfi-sub")
    await subscribe5(sub, 1, "pfi/#", 0)
    pub, _ = await clients.v5("pfi-pub")
    utf8_marked = mb.proplist((mb.PAYLOAD_FORMAT_INDICATOR, 1))
    await publish5(pub, "pfi/t", b"\xff\xfe bad", qos=1, mid=1, properties=utf8_marked, ack=0x99)
    await absent(sub)
    await publish5(pub, "pfi/t", "gut \u00e9".encode(), qos=1, mid=2, properties=utf8_marked)
    got = parse_publish(await sub.read_packet())
    assert got.payload == "gut \u00e9".encode()
    # Without the indicator the same bytes are just binary.
    await publish5(pub, "pfi/t", b"\xff\xfe bin", qos=1, mid=3)
    assert parse_publish(await sub.read_packet()).payload == b"\xff\xfe bin"


# --- Message Expiry ----------------------------------------------------------------------

PERSISTENT = mb.proplist((mb.SESSION_EXPIRY_INTERVAL, 60))


async def _offline_subscriber(clients: Clients, client_id: str) -> None:
    sub, _ = await clients.v5(client_id, properties=PERSISTENT)
    await subscribe5(sub, 1, "exp/#", 1)
    await sub.send(mb.gen_disconnect(proto_ver=5))
    assert await sub.expect_closed() == b""


async def test_message_expiry_counted_down(clients: Clients) -> None:
    await _offline_subscriber(clients, "exp-sub")
    pub, _ = await clients.v5("exp-pub")
    expiry = mb.proplist((mb.MESSAGE_EXPIRY_INTERVAL, 5))
    await publish5(pub, "exp/a", b"later", qos=1, mid=1, properties=expiry)
    await asyncio.sleep(1.2)
    sub, ack = await clients.v5("exp-sub", properties=PERSISTENT, clean=False)
    assert ack.session_present
    got = parse_publish(await sub.read_packet())
    assert got.payload == b"later"
    assert 1 <= got.prop(mb.MESSAGE_EXPIRY_INTERVAL) <= 4


async def test_expired_message_not_delivered(broker: RunningBroker, clients: Clients) -> None:
    await _offline_subscriber(clients, "exp-gone")
    pub, _ = await clients.v5("exp-pub2")
    expiry = mb.proplist((mb.MESSAGE_EXPIRY_INTERVAL, 1))
    await publish5(pub, "exp/old", b"old", qos=1, mid=1, properties=expiry)
    await publish5(pub, "exp/new", b"new", qos=1, mid=2)
    await asyncio.sleep(1.5)
    sub, ack = await clients.v5("exp-gone", properties=PERSISTENT, clean=False)
    assert ack.session_present
    got = parse_publish(await sub.read_packet())
    assert (got.topic, got.payload) == ("exp/new", b"new")
    assert got.prop(mb.MESSAGE_EXPIRY_INTERVAL) is None
    await sub.send(mb.gen_puback(got.pid, proto_ver=5))
    await absent(sub)
    assert broker.broker.core.stats.messages_expired >= 1


# --- CONNECT-time features, AUTH ---------------------------------------------------------


async def test_request_response_information(clients: Clients) -> None:
    _, ack = await clients.v5("rri", properties=mb.proplist((mb.REQUEST_RESPONSE_INFORMATION, 1)))
    info = ack.prop(mb.RESPONSE_INFORMATION)
    assert isinstance(info, str)
    assert info
    _, plain = await clients.v5("rri-not")
    assert plain.prop(mb.RESPONSE_INFORMATION) is None


async def test_authentication_method_refused(clients: Clients) -> None:
    raw = await clients.raw()
    auth = mb.proplist((mb.AUTHENTICATION_METHOD, "SCRAM-SHA-256"))
    await raw.send(mb.gen_connect("am", proto_ver=5, properties=auth))
    data = await raw.expect_closed()
    assert parse_connack(data).rc == 0x8C


async def test_auth_packet_after_connect(clients: Clients) -> None:
    raw, _ = await clients.v5("auth-late")
    await raw.send(
        mb.gen_auth(reason_code=0x19, properties=mb.proplist((mb.AUTHENTICATION_METHOD, "X")))
    )
    assert await raw.expect_closed() == v5_disconnect(0x82)


# --- reason codes on acknowledgements ----------------------------------------------------


async def test_puback_no_matching_subscribers(clients: Clients) -> None:
    pub, _ = await clients.v5("nms")
    await publish5(pub, "nobody/home", qos=1, mid=1, ack=0x10)
    await publish5(pub, "nobody/home", qos=2, mid=2, ack=0x10)
    await pub.send(mb.gen_pubrel(2, proto_ver=5))
    await pub.expect(mb.gen_pubcomp(2, proto_ver=5))  # 0x10 is a success: the flow goes on
    sub, _ = await clients.v5("nms-sub")
    await subscribe5(sub, 1, "nobody/#", 0)
    await publish5(pub, "nobody/home", qos=1, mid=3, ack=0)


async def test_publish_denied_by_hook(broker: RunningBroker, clients: Clients) -> None:
    sub, _ = await clients.v5("deny-sub")
    await subscribe5(sub, 1, "deny/#", 0)
    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, lambda e: Decision.DENY)
    pub, _ = await clients.v5("deny-pub")
    await publish5(pub, "deny/t", qos=1, mid=1, ack=0x87)
    await publish5(pub, "deny/t", qos=2, mid=2, ack=0x87)
    v3 = await clients.v4("deny-v3")
    await v3.send(mb.gen_publish("deny/t", qos=1, mid=1, payload=b"v3"))
    await v3.expect(mb.gen_puback(1))
    await absent(sub)


async def test_subscribe_denied_by_hook(broker: RunningBroker, clients: Clients) -> None:
    broker.broker.hooks.register(HookPoint.AUTHORIZE_SUBSCRIBE, lambda e: Decision.DENY)
    sub, _ = await clients.v5("sdeny-v5")
    await subscribe5(sub, 1, "sdeny/#", 1, granted=0x87)
    v3 = await clients.v4("sdeny-v3")
    await v3.send(mb.gen_subscribe_one(1, "sdeny/#", 1))
    await v3.expect(mb.gen_suback(1, [0x80]))
    pub, _ = await clients.v5("sdeny-pub")
    await publish5(pub, "sdeny/t", qos=1, mid=1, ack=0x10)


@pytest.mark.broker_settings(max_qos=1)
async def test_maximum_qos(clients: Clients) -> None:
    raw, ack = await clients.v5("mq")
    assert ack.prop(mb.MAXIMUM_QOS) == 1
    await subscribe5(raw, 1, "mq/#", 2, granted=1)
    await raw.send(mb.gen_publish("mq/t", qos=1, mid=1, payload=b"q1", proto_ver=5))
    packets = [await raw.read_packet() for _ in range(2)]  # its own copy and the PUBACK
    assert mb.gen_puback(1, proto_ver=5) in packets
    got = parse_publish(next(p for p in packets if p[0] >> 4 == 3))
    assert (got.payload, got.qos) == (b"q1", 1)
    await raw.send(mb.gen_publish("mq/t", qos=2, mid=2, payload=b"q2", proto_ver=5))
    assert await raw.expect_closed() == v5_disconnect(0x9B)


@pytest.mark.broker_settings(retain_available=False)
async def test_retain_not_available(clients: Clients) -> None:
    raw, ack = await clients.v5("ra")
    assert ack.prop(mb.RETAIN_AVAILABLE) == 0
    await publish5(raw, "ra/t", b"plain")  # not retained: fine
    await raw.send(mb.gen_publish("ra/t", payload=b"kept", retain=True, proto_ver=5))
    assert await raw.expect_closed() == v5_disconnect(0x9A)


async def test_capabilities_absent_by_default(clients: Clients) -> None:
    _, ack = await clients.v5("caps")
    assert ack.prop(mb.MAXIMUM_QOS) is None  # 2 is the default and goes unsaid
    assert ack.prop(mb.RETAIN_AVAILABLE) is None
