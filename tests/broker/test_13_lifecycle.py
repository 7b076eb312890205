"""Broker lifecycle: graceful shutdown reason codes; QoS 2 awaiting-PUBREL timeout."""

from __future__ import annotations

import asyncio

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker


async def _connected(port: int, client_id: str, proto_ver: int) -> RawClient:
    raw = await RawClient.connect(port)
    await raw.send(mb.gen_connect(client_id, proto_ver=proto_ver))
    packet = await raw.read_packet()
    assert packet[0] == 0x20  # CONNACK
    assert packet[3] == 0  # success
    return raw


async def test_shutdown_sends_v5_disconnect_0x8b_and_closes_v3(broker: RunningBroker) -> None:
    v5 = await _connected(broker.port, "shut-v5", 5)
    v3 = await _connected(broker.port, "shut-v3", 4)
    await broker.broker.stop()
    # MQTT 5: DISCONNECT "Server shutting down", then the close.
    assert await v5.read_packet() == mb.gen_disconnect(reason_code=0x8B, proto_ver=5)
    assert await v5.expect_closed() == b""
    # MQTT 3 has no server DISCONNECT: a plain close.
    assert await v3.expect_closed() == b""
    # Listeners are closed too: new connections are refused.
    with pytest.raises(ConnectionRefusedError):
        await RawClient.connect(broker.port)
    await v5.close()
    await v3.close()


@pytest.mark.broker_settings(await_rel_timeout=0.2, sweep_interval=0.05)
async def test_awaiting_pubrel_forgotten_after_timeout(broker: RunningBroker) -> None:
    pub = await _connected(broker.port, "rel-timeout", 5)
    await pub.send(mb.gen_publish("t/rel", qos=2, mid=5, payload=b"x", proto_ver=5))
    await pub.expect(mb.gen_pubrec(5, reason_code=0x10, proto_ver=5))
    # A PUBREL arriving in time would complete normally; this one comes after the
    # await_rel_timeout, when the broker has forgotten the id: PUBCOMP 0x92.
    session = broker.broker.core.sessions["rel-timeout"]
    deadline = asyncio.get_running_loop().time() + 5
    while session.awaiting_rel:  # the sweep forgets the id once await_rel_timeout passed
        assert asyncio.get_running_loop().time() < deadline, "the PUBREL id was never forgotten"
        await asyncio.sleep(0.02)
    await pub.send(mb.gen_pubrel(5, proto_ver=5))
    await pub.expect(mb.gen_pubcomp(5, reason_code=0x92, proto_ver=5))
    await pub.close()


@pytest.mark.broker_settings(await_rel_timeout=30, sweep_interval=0.05)
async def test_pubrel_in_time_completes(broker: RunningBroker) -> None:
    pub = await _connected(broker.port, "rel-ok", 5)
    await pub.send(mb.gen_publish("t/rel", qos=2, mid=6, payload=b"x", proto_ver=5))
    await pub.expect(mb.gen_pubrec(6, reason_code=0x10, proto_ver=5))
    await asyncio.sleep(0.2)  # several sweeps pass; the id is kept until the timeout
    await pub.send(mb.gen_pubrel(6, proto_ver=5))
    await pub.expect(mb.gen_pubcomp(6, proto_ver=5))
    await pub.close()
