"""Acknowledgements and flow control: publish returns only after the ack, failing reason
codes raise typed errors, Receive Maximum is honoured, topic aliases, keepalive.

A scripted broker (raw bytes, no tidemq codec) controls exactly when acks arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.mqttbytes import (
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS,
    TOPIC_ALIAS_MAXIMUM,
    gen_pingresp,
    gen_puback,
    gen_pubcomp,
    gen_pubrec,
    proplist,
)
from tidemq.broker.hooks import Decision, HookPoint
from tidemq.client import (
    AuthenticationError,
    Client,
    ClientState,
    ErrorCategory,
    MQTTConnectionError,
    PublishError,
    SubscriptionError,
)

from .conftest import TideMQServer
from .fakebroker import FakeBroker

WAIT = 5.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def publish_fields(data: bytes) -> tuple[int, int, bytes]:
    """(first byte, packet id, topic) of a v5 QoS>0 PUBLISH."""
    pos = 1
    while data[pos] & 0x80:
        pos += 1
    pos += 1
    tlen = int.from_bytes(data[pos : pos + 2], "big")
    topic = data[pos + 2 : pos + 2 + tlen]
    pid = int.from_bytes(data[pos + 2 + tlen : pos + 4 + tlen], "big")
    return data[0], pid, topic


@pytest.mark.parametrize(("qos", "version"), [(1, 5), (2, 5), (1, 4), (2, 4)])
async def test_publish_returns_only_after_the_ack(fake: FakeBroker, qos: int, version: int) -> None:
    fake.version = version
    async with Client(fake.url, version=version, reconnect=False) as client:
        peer, _ = await fake.accept()
        task = asyncio.create_task(client.publish("t", "x", qos=qos))
        first, pid, topic = publish_fields(await peer.read_packet())
        assert (first, topic) == (0x30 | qos << 1, b"t")
        assert not task.done()
        if qos == 1:
            await peer.send(gen_puback(pid, proto_ver=version))
        else:
            await peer.send(gen_pubrec(pid, proto_ver=version))
            await peer.expect(bytes((0x62, 2)) + pid.to_bytes(2, "big"))  # PUBREL
            await asyncio.sleep(0)
            assert not task.done()
            await peer.send(gen_pubcomp(pid, proto_ver=version))
        result = await asyncio.wait_for(task, WAIT)
        assert result.packet_id == pid
        assert client.inflight_count == 0


@pytest.mark.parametrize("qos", [1, 2])
async def test_failing_reason_code_raises(fake: FakeBroker, qos: int) -> None:
    async with Client(fake.url, reconnect=False) as client:
        peer, _ = await fake.accept()
        task = asyncio.create_task(client.publish("t", "x", qos=qos))
        _, pid, _ = publish_fields(await peer.read_packet())
        gen = gen_puback if qos == 1 else gen_pubrec
        await peer.send(
            gen(pid, reason_code=0x97, properties=proplist((REASON_STRING, "quota")), proto_ver=5)
        )
        with pytest.raises(PublishError) as info:
            await asyncio.wait_for(task, WAIT)
        err = info.value
        assert err.reason_code == 0x97
        assert err.category is ErrorCategory.PUBLISH
        assert err.is_temporary
        assert not err.is_timeout
        assert "quota" in str(err)
        # 0x10 "no matching subscribers" is a success.
        task = asyncio.create_task(client.publish("t", "y", qos=1))
        _, pid, _ = publish_fields(await peer.read_packet())
        await peer.send(gen_puback(pid, reason_code=0x10, proto_ver=5))
        assert (await asyncio.wait_for(task, WAIT)).reason_code == 0x10


async def test_publish_denied_by_tidemq(tidemq: TideMQServer) -> None:
    assert tidemq.broker is not None
    tidemq.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, lambda e: Decision.DENY)
    async with Client(tidemq.url, version=5) as client:
        with pytest.raises(PublishError) as info:
            await client.publish("secret", "x", qos=1)
        assert info.value.reason_code == 0x87
        assert not info.value.is_temporary
        with pytest.raises(PublishError):
            await client.publish("secret", "x", qos=2)
        assert client.metrics.errors == 2


@pytest.mark.parametrize("version", [5, 311])
async def test_subscribe_denied_raises(tidemq: TideMQServer, version: int) -> None:
    assert tidemq.broker is not None
    tidemq.broker.hooks.register(
        HookPoint.AUTHORIZE_SUBSCRIBE,
        lambda e: Decision.DENY if e.topic_filter == "no" else Decision.ALLOW,
    )
    async with Client(tidemq.url, version=version) as client:
        with pytest.raises(SubscriptionError) as info:
            await client.subscribe(["ok", "no"], qos=1)
        assert info.value.reason_codes[0] == 1
        assert info.value.reason_codes[1] >= 0x80
        assert info.value.category is ErrorCategory.SUBSCRIPTION
        assert list(client.subscriptions) == ["ok"]


@pytest.mark.broker_settings(allow_anonymous=False)
@pytest.mark.parametrize("version", [5, 311])
async def test_refused_connect_is_an_authentication_error(
    tidemq: TideMQServer, version: int
) -> None:
    client = Client(tidemq.url, version=version)
    with pytest.raises(AuthenticationError) as info:
        await client.connect()
    assert info.value.category is ErrorCategory.AUTHENTICATION
    assert not info.value.is_temporary
    assert client.state is ClientState.DISCONNECTED


async def test_connection_refused_is_temporary() -> None:
    from .conftest import free_port

    client = Client(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(MQTTConnectionError) as info:
        await client.connect()
    assert info.value.is_temporary
    assert not info.value.is_timeout


async def test_connack_timeout_is_a_timeout(fake: FakeBroker) -> None:
    fake.answer = False
    client = Client(fake.url, connect_timeout=0.2)
    with pytest.raises(MQTTConnectionError) as info:
        await client.connect()
    assert info.value.is_timeout
    assert info.value.is_temporary


async def test_receive_maximum_is_honoured(fake: FakeBroker) -> None:
    fake.connack = {"properties": proplist((RECEIVE_MAXIMUM, 2))}
    async with Client(fake.url, reconnect=False) as client:
        peer, _ = await fake.accept()
        tasks = [asyncio.create_task(client.publish(f"t/{i}", str(i), qos=1)) for i in range(5)]
        first = [publish_fields(await peer.read_packet()) for _ in range(2)]
        # Two in flight: the third waits for a slot instead of exceeding the maximum.
        with pytest.raises(TimeoutError):
            await peer.read_packet(timeout=0.2)
        assert client.inflight_count == 2
        assert client.buffered_count == 3
        await peer.send(gen_puback(first[0][1], proto_ver=5))
        third = publish_fields(await peer.read_packet())
        assert third[2] == b"t/2"
        rest = [first[1], third]
        for _, pid, _ in rest:
            await peer.send(gen_puback(pid, proto_ver=5))
        for _ in range(2):
            _, pid, _ = publish_fields(await peer.read_packet())
            await peer.send(gen_puback(pid, proto_ver=5))
        await asyncio.wait_for(asyncio.gather(*tasks), WAIT)


@pytest.mark.broker_settings(max_inflight=2)
async def test_receive_maximum_against_tidemq(tidemq: TideMQServer) -> None:
    # TideMQ disconnects a client exceeding its Receive Maximum (0x93); 50 concurrent
    # publishes all succeed only if the client keeps to 2 in flight.
    seen: list[int] = []
    async with Client(tidemq.url) as client:
        assert tidemq.broker is not None
        tidemq.broker.hooks.register(
            HookPoint.MESSAGE_PUBLISH, lambda e: seen.append(client.inflight_count)
        )
        assert client.connack is not None
        assert client.connack.properties.receive_maximum == 2
        await asyncio.gather(*(client.publish("rm", str(i), qos=1) for i in range(50)))
        assert client.state is ClientState.CONNECTED
    assert len(seen) == 50
    assert max(seen) <= 2


async def test_outbound_topic_aliases(fake: FakeBroker) -> None:
    fake.connack = {"properties": proplist((TOPIC_ALIAS_MAXIMUM, 1))}
    async with Client(fake.url, outbound_topic_aliases=True, reconnect=False) as client:
        peer, _ = await fake.accept()
        await client.publish("long/topic/name", "a")
        await client.publish("long/topic/name", "b")
        await client.publish("other", "c")  # no alias left: sent in full
        one = await peer.read_packet()
        two = await peer.read_packet()
        three = await peer.read_packet()
        alias = bytes((TOPIC_ALIAS, 0, 1))
        assert b"long/topic/name" in one
        assert alias in one
        assert b"long/topic/name" not in two
        assert alias in two
        assert two[2:4] == b"\x00\x00"  # empty topic
        assert b"other" in three
        assert bytes((TOPIC_ALIAS,)) not in three[2:10]


async def test_outbound_topic_aliases_with_tidemq(tidemq: TideMQServer) -> None:
    async with (
        Client(tidemq.url, outbound_topic_aliases=True) as client,
        client.subscribe("al/#", qos=1) as sub,
    ):
        for i in range(3):
            await client.publish("al/x", str(i), qos=1)
        got = [await sub.get(WAIT) for _ in range(3)]
    assert [(m.topic, m.payload) for m in got] == [("al/x", b"0"), ("al/x", b"1"), ("al/x", b"2")]


async def test_inbound_topic_aliases_are_resolved(fake: FakeBroker) -> None:
    from tests.mqttbytes import gen_publish

    async with Client(fake.url, reconnect=False) as client:
        peer, connect = await fake.accept()
        assert bytes((TOPIC_ALIAS_MAXIMUM, 0, 16)) in connect
        async with client.messages() as stream:
            await peer.send(
                gen_publish("a/b", payload="1", properties=proplist((TOPIC_ALIAS, 3)), proto_ver=5)
            )
            await peer.send(
                gen_publish("", payload="2", properties=proplist((TOPIC_ALIAS, 3)), proto_ver=5)
            )
            got = [await stream.get(WAIT) for _ in range(2)]
        assert [(m.topic, m.payload) for m in got] == [("a/b", b"1"), ("a/b", b"2")]


async def test_keepalive_sends_pings_and_detects_a_dead_broker(fake: FakeBroker) -> None:
    client = Client(fake.url, keepalive=1, ping_timeout=0.3, reconnect=False)
    await client.connect()
    try:
        peer, _connect = await fake.accept()
        await peer.expect(b"\xc0\x00", timeout=3)  # PINGREQ after 1 s of silence
        await peer.send(gen_pingresp())
        await peer.expect(b"\xc0\x00", timeout=3)  # and again
        # This time no PINGRESP: the client drops the connection.
        lost = asyncio.Event()
        client.add_listener(lambda event, data: lost.set() if event == "disconnected" else None)
        await asyncio.wait_for(lost.wait(), 3)
        assert client.state is ClientState.DISCONNECTED
    finally:
        await client.close()


def test_packet_id_copy_keeps_every_field() -> None:
    from dataclasses import replace

    from tidemq.client._messaging import _with_id
    from tidemq.protocol import Properties, Publish

    packet = Publish(
        topic="t/x",
        payload=b"p",
        qos=2,
        retain=True,
        packet_id=3,
        properties=Properties(content_type="c", user_properties=(("a", "b"),)),
    )
    assert _with_id(packet, 9, True) == replace(packet, packet_id=9, dup=True)
