"""The public ``mqtt_broker`` fixture from ``tidemq.testing`` works as users will use it."""

from __future__ import annotations

from tests.helpers.paho import connect
from tidemq.testing import RunningBroker


async def test_mqtt_broker_fixture_serves_clients(mqtt_broker: RunningBroker) -> None:
    assert mqtt_broker.host == "127.0.0.1"
    assert mqtt_broker.port > 0
    assert mqtt_broker.url == f"mqtt://127.0.0.1:{mqtt_broker.port}"
    client = await connect(mqtt_broker.port, "plugin-user")
    assert await client.subscribe("plugin/t", 1) == [1]
    await client.publish("plugin/t", b"ok", qos=1)
    assert (await client.next_message()).payload == b"ok"
    await client.disconnect()
