"""Hook points seen from a plugin: notifications for connect, subscriptions and
message delivery/acknowledgement, and the message chain rewriting or dropping messages."""

from __future__ import annotations

import pytest

from tests import mqttbytes as mb
from tests.broker.conftest import MakeRaw
from tests.helpers.paho import V5, V311, connect
from tidemq.broker import Decision, HookPoint, MessageEvent
from tidemq.broker.hooks import Hooks, PublishAuthEvent, SubscribeAuthEvent
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


async def test_async_publish_decisions_keep_order(broker: RunningBroker, raw: MakeRaw) -> None:
    """An ACL callback that must do I/O returns an awaitable; the client's later packets
    wait for it, so messages keep their order and denials still get 0x87."""
    import asyncio

    async def slow(event: PublishAuthEvent) -> Decision:
        await asyncio.sleep(0.01 if event.topic.endswith("0") else 0)  # simulated I/O
        return Decision.DENY if event.topic.startswith("acl/deny") else Decision.ALLOW

    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, slow)
    sub = await connect(broker.port, "async-sub", protocol=V5)
    await sub.subscribe("acl/#", 1)
    pub = await connect(broker.port, "async-pub", protocol=V5)
    infos = [pub.client.publish(f"acl/ok/{i}", str(i).encode(), qos=1) for i in range(20)]
    for info in infos:
        await asyncio.to_thread(info.wait_for_publish, 5)
    got = [(await sub.next_message()).payload for _ in range(20)]
    assert got == [str(i).encode() for i in range(20)]
    await pub.disconnect()
    # Denied asynchronously: PUBACK 0x87 at QoS 1 (v5), plain PUBACK and dropped on v3.
    v5 = await raw("async-raw5", proto_ver=5)
    await v5.send(mb.gen_publish("acl/deny/0", qos=1, mid=7, payload=b"no", proto_ver=5))
    await v5.expect(mb.gen_puback(7, reason_code=0x87, proto_ver=5))
    v3 = await raw("async-raw3")
    await v3.send(mb.gen_publish("acl/deny/0", qos=1, mid=8, payload=b"no"))
    await v3.expect(mb.gen_puback(8))
    await sub.no_message(0.3)
    await sub.disconnect()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_async_subscribe_decisions(broker: RunningBroker, protocol: int) -> None:
    import asyncio

    async def slow(event: SubscribeAuthEvent) -> Decision:
        await asyncio.sleep(0)
        return Decision.DENY if "secret" in event.topic_filter else Decision.ALLOW

    broker.broker.hooks.register(HookPoint.AUTHORIZE_SUBSCRIBE, slow)
    client = await connect(broker.port, "async-subs", protocol=protocol)
    assert await client.subscribe("open/#", 1) == [1]
    assert await client.subscribe("secret/#", 1) == [0x87 if protocol == V5 else 0x80]
    await client.disconnect()


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_denied_will_is_not_published(broker: RunningBroker, asynchronous: bool) -> None:
    import asyncio

    def rule(event: PublishAuthEvent) -> Decision:
        return Decision.DENY if event.topic == "will/forbidden" else Decision.ALLOW

    async def async_rule(event: PublishAuthEvent) -> Decision:
        await asyncio.sleep(0)
        return rule(event)

    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, async_rule if asynchronous else rule)
    watcher = await connect(broker.port, "will-watch")
    await watcher.subscribe("will/#", 0)
    bad = await connect(broker.port, "will-bad", will=("will/forbidden", b"x", 0, False))
    good = await connect(broker.port, "will-good", will=("will/allowed", b"y", 0, False))
    await bad.kill()
    await good.kill()
    msg = await watcher.next_message()
    assert msg.topic == "will/allowed"
    await watcher.no_message(0.3)
    await watcher.disconnect()


def test_active_points_follow_register_and_unregister() -> None:
    hooks = Hooks()
    assert not hooks.active
    first = hooks.register(HookPoint.MESSAGE_PUBLISH, lambda event: event)
    second = hooks.register(HookPoint.MESSAGE_PUBLISH, lambda event: event)
    assert hooks.active == {HookPoint.MESSAGE_PUBLISH}
    assert hooks.has(HookPoint.MESSAGE_PUBLISH)
    first()
    assert HookPoint.MESSAGE_PUBLISH in hooks.active  # one callback is left
    second()
    second()  # a second call is harmless
    assert not hooks.active
    assert not hooks.has(HookPoint.MESSAGE_PUBLISH)
