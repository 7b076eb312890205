"""Hook points seen from a plugin: notifications for connect, subscriptions and
message delivery/acknowledgement, and the message chain rewriting or dropping messages."""

from __future__ import annotations

import pytest

from tests.helpers.paho import V5, V311, connect
from tidemq.broker import Decision, HookPoint, MessageEvent
from tidemq.testing import RunningBroker


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_delivery_and_ack_notifications(broker: RunningBroker, protocol: int) -> None:
    hooks = broker.broker.hooks
    seen: list[tuple[str, str | None, str, int]] = []
    hooks.register(
        HookPoint.MESSAGE_DELIVERED,
        lambda e: seen.append(("delivered", e.receiver, e.topic, e.qos)),
    )
    hooks.register(
        HookPoint.MESSAGE_ACKED, lambda e: seen.append(("acked", e.receiver, e.topic, e.qos))
    )
    sub = await connect(broker.port, "h-sub", protocol=protocol)
    await sub.subscribe("h/#", 1)
    pub = await connect(broker.port, "h-pub", protocol=protocol)
    await pub.publish("h/0", b"zero", qos=0)
    await pub.publish("h/1", b"one", qos=1)
    assert (await sub.next_message()).topic == "h/0"
    assert (await sub.next_message()).topic == "h/1"
    await pub.publish("h/end", b"", qos=1)  # its ack by the subscriber orders the checks
    await sub.next_message()
    await pub.disconnect()
    await sub.disconnect()
    assert seen[:3] == [
        ("delivered", "h-sub", "h/0", 0),
        ("delivered", "h-sub", "h/1", 1),
        ("acked", "h-sub", "h/1", 1),
    ]


async def test_connect_subscribe_disconnect_notifications(broker: RunningBroker) -> None:
    hooks = broker.broker.hooks
    seen: list[str] = []
    hooks.register(HookPoint.CLIENT_CONNECTED, lambda e: seen.append(f"conn {e.client.client_id}"))
    hooks.register(HookPoint.SESSION_SUBSCRIBED, lambda e: seen.append(f"sub {e.topic_filter}"))
    hooks.register(HookPoint.SESSION_UNSUBSCRIBED, lambda e: seen.append(f"unsub {e.topic_filter}"))
    client = await connect(broker.port, "h-life")
    await client.subscribe("life/t", 0)
    await client.unsubscribe("life/t")
    assert seen == ["conn h-life", "sub life/t", "unsub life/t"]
    await client.disconnect()


async def test_message_chain_rewrites_and_drops(broker: RunningBroker) -> None:
    def chain(event: MessageEvent) -> MessageEvent | Decision | None:
        if event.topic == "drop/me":
            return Decision.DENY
        if event.topic == "rewrite/me":
            return MessageEvent(
                client_id=event.client_id,
                topic="rewritten",
                payload=event.payload.upper(),
                qos=event.qos,
                retain=event.retain,
                properties=event.properties,
            )
        return None

    broker.broker.hooks.register(HookPoint.MESSAGE_PUBLISH, chain)
    sub = await connect(broker.port, "chain-sub")
    await sub.subscribe("#", 1)
    pub = await connect(broker.port, "chain-pub")
    await pub.publish("drop/me", b"gone", qos=1)
    await pub.publish("rewrite/me", b"loud", qos=1)
    msg = await sub.next_message()
    assert (msg.topic, msg.payload) == ("rewritten", b"LOUD")
    await pub.disconnect()
    await sub.disconnect()
