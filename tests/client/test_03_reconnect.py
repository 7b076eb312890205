"""Reconnect: backoff policy, resubscribe, in-flight resend with DUP, the offline buffer,
and a QoS 1 publishing session across a broker stopped and started on the same port."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest

from tests.mqttbytes import gen_puback, gen_pubcomp, gen_pubrec, gen_suback
from tidemq.client import (
    AuthenticationError,
    Client,
    ClientState,
    PublishError,
    ReconnectPolicy,
)
from tidemq.client.errors import ConfigurationError

from .conftest import MosquittoServer, TideMQServer
from .fakebroker import FakeBroker
from .test_02_acks_and_flow import publish_fields

WAIT = 10.0
FAST = ReconnectPolicy(initial_delay=0.02, factor=2, max_delay=0.1, jitter=0)
Server = TideMQServer | MosquittoServer


@pytest.fixture
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def test_backoff_defaults_follow_mqttx() -> None:
    policy = ReconnectPolicy(jitter=0)
    delays = policy.delays()
    assert [next(delays) for _ in range(4)] == [2.0, 3.0, 4.5, 6.75]
    assert max(next(delays) for _ in range(30)) == 120.0


def test_backoff_jitter_and_attempt_limit() -> None:
    policy = ReconnectPolicy(initial_delay=1, factor=1.5, max_delay=10, jitter=0.5, max_attempts=6)
    delays = list(policy.delays(random.Random(7)))
    assert len(delays) == 6
    nominal = [1, 1.5, 2.25, 3.375, 5.0625, 7.59375]
    for got, want in zip(delays, nominal, strict=True):
        assert want * 0.5 <= got <= want
    assert len(set(delays)) == 6
    with pytest.raises(ConfigurationError):
        ReconnectPolicy(factor=0.5)


def events_of(client: Client) -> asyncio.Queue[str]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    client.add_listener(lambda event, data: queue.put_nowait(event))
    return queue


async def next_event(queue: asyncio.Queue[str], name: str) -> None:
    while await asyncio.wait_for(queue.get(), WAIT) != name:
        pass


async def test_qos1_session_survives_broker_restart(server: Server) -> None:
    """Every message published before, during and after the outage arrives."""
    async with Client(server.url, reconnect=FAST, client_id="survivor") as client:
        events = events_of(client)
        received: set[bytes] = set()
        sub = client.subscribe("rs/#", qos=1, handler=lambda m: received.add(m.payload))
        await sub
        before = [await client.publish("rs/a", f"before {i}", qos=1) for i in range(10)]
        assert all(r.packet_id for r in before)
        # In flight or buffered at the moment the broker goes away.
        racing = [
            asyncio.create_task(client.publish("rs/b", f"racing {i}", qos=1)) for i in range(10)
        ]
        await asyncio.sleep(0)  # let them reach the socket
        await server.kill()
        await next_event(events, "disconnected")
        assert client.state is ClientState.RECONNECTING
        offline = [
            asyncio.create_task(client.publish("rs/c", f"offline {i}", qos=1)) for i in range(10)
        ]
        await asyncio.sleep(0)
        assert client.buffered_count >= 10
        await server.start()
        await next_event(events, "connected")
        assert not client.session_present  # a fresh broker: the client resubscribed
        await asyncio.wait_for(asyncio.gather(*racing, *offline), WAIT)
        after = [await client.publish("rs/d", f"after {i}", qos=1) for i in range(10)]
        assert len(after) == 10
        expected = {
            f"{k} {i}".encode() for k in ("before", "racing", "offline", "after") for i in range(10)
        }
        async with client.messages() as stream:
            while not expected <= received:
                await stream.get(WAIT)
        assert client.metrics.reconnects >= 1
        assert client.inflight_count == 0
        assert client.buffered_count == 0


async def test_offline_buffer_is_bounded(server: Server) -> None:
    async with Client(server.url, reconnect=FAST, max_buffered=3) as client:
        events = events_of(client)
        await client.subscribe("ob", qos=1)
        await server.kill()
        await next_event(events, "disconnected")
        kept = [asyncio.create_task(client.publish("ob", str(i), qos=1)) for i in range(3)]
        await asyncio.sleep(0)
        assert client.buffered_count == 3
        with pytest.raises(PublishError) as info:
            await client.publish("ob", "dropped", qos=1)
        assert info.value.is_temporary
        with pytest.raises(PublishError):
            await client.publish("ob", "dropped too", qos=0)
        assert client.metrics.dropped == 2
        async with client.messages() as stream:
            await server.start()
            await asyncio.wait_for(asyncio.gather(*kept), WAIT)
            got = sorted([(await stream.get(WAIT)).payload for _ in range(3)])
        assert got == [b"0", b"1", b"2"]


@pytest.mark.parametrize("qos", [1, 2])
async def test_inflight_resent_with_dup_when_session_present(fake: FakeBroker, qos: int) -> None:
    fake.connack = {"session_present": False}
    async with Client(fake.url, reconnect=FAST, clean_start=False, client_id="d") as client:
        peer, _ = await fake.accept()
        task = asyncio.create_task(client.publish("t", "x", qos=qos))
        first, pid, _ = publish_fields(await peer.read_packet())
        assert not first & 0x08
        fake.connack = {"session_present": True}
        await peer.close()
        peer, connect = await fake.accept()
        assert connect[9] & 0x02 == 0  # clean start stays off
        first, again, topic = publish_fields(await peer.read_packet())
        assert first == 0x30 | qos << 1 | 0x08  # DUP set
        assert (again, topic) == (pid, b"t")
        if qos == 2:
            await peer.send(gen_pubrec(pid, proto_ver=5))
            await peer.expect(bytes((0x62, 2)) + pid.to_bytes(2, "big"))
            # Lost again after PUBREC: only PUBREL is re-sent.
            await peer.close()
            peer, _ = await fake.accept()
            await peer.expect(bytes((0x62, 2)) + pid.to_bytes(2, "big"))
            await peer.send(gen_pubcomp(pid, proto_ver=5))
        else:
            await peer.send(gen_puback(pid, proto_ver=5))
        assert (await asyncio.wait_for(task, WAIT)).packet_id == pid


async def test_resubscribe_only_when_the_session_is_gone(fake: FakeBroker) -> None:
    async with Client(fake.url, reconnect=FAST, clean_start=False, client_id="r") as client:
        peer, _ = await fake.accept()
        task = asyncio.ensure_future(client.subscribe("a/#", qos=1))
        sub = await peer.read_packet()
        await peer.send(gen_suback(int.from_bytes(sub[2:4], "big"), [1], proto_ver=5))
        assert await asyncio.wait_for(task, WAIT) == [1]
        fake.connack = {"session_present": True}
        await peer.close()
        peer, _ = await fake.accept()
        with pytest.raises(TimeoutError):
            await peer.read_packet(timeout=0.2)  # the broker kept the subscription
        fake.connack = {"session_present": False}
        await peer.close()
        peer, _ = await fake.accept()
        again = await peer.read_packet()
        assert again[0] == 0x82
        assert b"a/#" in again


async def test_gives_up_on_a_permanent_refusal(fake: FakeBroker) -> None:
    client = Client(fake.url, reconnect=FAST)
    await client.connect()
    events = events_of(client)
    peer, _ = await fake.accept()
    fake.connack = {"rc": 0x86}
    await peer.close()
    await next_event(events, "disconnected")
    task = asyncio.create_task(client.publish("t", "x", qos=1))
    with pytest.raises(AuthenticationError):
        await asyncio.wait_for(task, WAIT)
    assert client.state is ClientState.DISCONNECTED
    with pytest.raises(AuthenticationError):
        await client.wait_connected(1)
    await client.close()


async def test_without_reconnect_pending_operations_fail(fake: FakeBroker) -> None:
    from tidemq.client import MQTTConnectionError

    client = Client(fake.url, reconnect=False)
    await client.connect()
    peer, _ = await fake.accept()
    async with client.messages() as stream:
        task = asyncio.create_task(client.publish("t", "x", qos=1))
        await peer.read_packet()
        await peer.close()
        with pytest.raises(MQTTConnectionError):
            await asyncio.wait_for(task, WAIT)
        with pytest.raises(MQTTConnectionError):
            await stream.get(WAIT)
    assert client.state is ClientState.DISCONNECTED
    await client.close()
