"""Smoke: publish/subscribe round trip at every QoS for 3.1.1 and 5.0, and raw CONNECT."""

from __future__ import annotations

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, connect
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker


@pytest.mark.parametrize("protocol", [V311, V5])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_pub_sub_roundtrip(broker: RunningBroker, protocol: int, qos: int) -> None:
    sub = await connect(broker.port, "sub", protocol=protocol)
    assert await sub.subscribe("smoke/#", qos) == [qos]
    pub = await connect(broker.port, "pub", protocol=protocol)
    await pub.publish("smoke/a", b"payload", qos=qos)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == ("smoke/a", b"payload", qos, False)
    await pub.disconnect()
    await sub.disconnect()


async def test_raw_connect_connack(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("raw-1"))
    await raw.expect(mb.gen_connack(rc=0))
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())
    await raw.send(mb.gen_disconnect())
    assert await raw.expect_closed() == b""
    await raw.close()
