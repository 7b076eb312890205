"""Publish/subscribe round trips at QoS 0/1/2, MQTT 3.1.1 and 5.0, against TideMQ and
Mosquitto; subscriptions as async iterators and with handlers; unsubscribe."""

from __future__ import annotations

import asyncio

import pytest

from tidemq.client import Client, ClientState, ConfigurationError, Message, Properties

from .conftest import MosquittoServer, TideMQServer

WAIT = 5.0
Server = TideMQServer | MosquittoServer


@pytest.mark.parametrize("version", [5, 311])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_roundtrip(server: Server, version: int, qos: int) -> None:
    async with Client(server.url, version=version) as client:
        assert client.state is ClientState.CONNECTED
        sub = client.subscribe("rt/#", qos=qos)
        stream = sub.__aiter__()
        assert await sub == [qos]
        result = await client.publish("rt/x", f"hello {qos}", qos=qos)
        assert result.packet_id == 0 if qos == 0 else result.packet_id > 0
        msg = await stream.get(WAIT)
        assert (msg.topic, msg.payload, msg.qos, msg.retain) == (
            "rt/x",
            f"hello {qos}".encode(),
            qos,
            False,
        )
        assert client.inflight_count == 0
    assert client.state.name == "CLOSED"


@pytest.mark.parametrize("version", [5, 311])
async def test_async_for_over_subscribe(server: Server, version: int) -> None:
    async with (
        Client(server.url, version=version) as sub,
        Client(server.url, version=version) as pub,
    ):
        received: list[Message] = []
        subscribed = asyncio.Event()
        sub.add_listener(lambda event, data: subscribed.set() if event == "subscribed" else None)

        async def consume() -> None:
            async for msg in sub.subscribe("it/+", qos=1):
                received.append(msg)
                if len(received) == 3:
                    return

        task = asyncio.create_task(consume())
        # The iterator subscribes on its first step; wait until the broker has it.
        await asyncio.wait_for(subscribed.wait(), WAIT)
        for i in range(3):
            await pub.publish(f"it/{i}", str(i), qos=1)
        await asyncio.wait_for(task, WAIT)
        assert [m.payload for m in received] == [b"0", b"1", b"2"]
        assert [m.topic for m in received] == ["it/0", "it/1", "it/2"]


async def test_handlers_sync_and_async(server: Server) -> None:
    got_sync: list[str] = []
    got_async: asyncio.Queue[str] = asyncio.Queue()

    def on_sync(msg: Message) -> None:
        got_sync.append(msg.text)

    async def on_async(msg: Message) -> None:
        await got_async.put(msg.text)

    async with Client(server.url) as client:
        assert await client.subscribe("h/a", qos=1, handler=on_sync) == [1]
        assert await client.subscribe("h/+", qos=2, handler=on_async) == [2]
        await client.publish("h/a", "one", qos=1)
        await client.publish("h/b", "two", qos=2)
        assert await asyncio.wait_for(got_async.get(), WAIT) == "one"
        assert await asyncio.wait_for(got_async.get(), WAIT) == "two"
        assert got_sync == ["one"]


async def test_messages_iterator_sees_everything(server: Server) -> None:
    async with Client(server.url) as client:
        async with client.messages() as stream:
            await client.subscribe(["m/a", "m/b"], qos=1)
            await client.publish("m/a", b"\x00\x01", qos=1)
            await client.publish("m/b", b"", qos=0)
            first = await stream.get(WAIT)
            second = await stream.get(WAIT)
        assert (first.topic, first.payload) == ("m/a", b"\x00\x01")
        assert (second.topic, second.payload) == ("m/b", b"")
        assert stream.closed


async def test_unsubscribe_ends_the_iterator(server: Server) -> None:
    async with Client(server.url) as client:
        sub = client.subscribe("u/#", qos=1)
        stream = sub.__aiter__()
        await sub
        await client.publish("u/1", "a", qos=1)
        assert (await stream.get(WAIT)).payload == b"a"
        assert await sub.unsubscribe() == [0]
        assert "u/#" not in client.subscriptions
        with pytest.raises(StopAsyncIteration):
            await stream.get(WAIT)
        # The broker no longer sends it: a later message goes nowhere.
        async with client.messages() as all_msgs:
            await client.subscribe("v", qos=1)
            await client.publish("u/2", "b", qos=1)
            await client.publish("v", "c", qos=1)
            assert (await all_msgs.get(WAIT)).topic == "v"


async def test_context_manager_subscription_unsubscribes(server: Server) -> None:
    async with Client(server.url) as client:
        async with client.subscribe("cm/#", qos=1) as sub:
            await client.publish("cm/1", "x", qos=1)
            assert (await sub.get(WAIT)).payload == b"x"
        assert client.subscriptions == {}


async def test_retained_message_and_retain_flag(server: Server) -> None:
    async with Client(server.url) as client:
        await client.publish("ret/t", "kept", qos=1, retain=True)
        async with client.subscribe("ret/#", qos=1) as sub:
            msg = await sub.get(WAIT)
        assert (msg.payload, msg.retain) == (b"kept", True)
        await client.publish("ret/t", b"", qos=1, retain=True)  # clear it


async def test_v5_properties_round_trip(server: Server) -> None:
    props = Properties(
        content_type="text/plain",
        response_topic="reply/here",
        correlation_data=b"\x01\x02",
        user_properties=(("k", "v"), ("k", "w")),
        message_expiry_interval=60,
        payload_format_indicator=1,
    )
    async with (
        Client(server.url, version=5) as client,
        client.subscribe("p/x", qos=1, subscription_identifier=7) as sub,
    ):
        await client.publish("p/x", "body", qos=1, properties=props)
        msg = await sub.get(WAIT)
    got = msg.properties
    assert got.content_type == "text/plain"
    assert got.response_topic == "reply/here"
    assert got.correlation_data == b"\x01\x02"
    assert msg.user_properties == (("k", "v"), ("k", "w"))
    assert got.subscription_identifiers == (7,)
    assert got.topic_alias is None  # aliases are resolved and hidden


async def test_no_local(server: Server) -> None:
    async with Client(server.url, version=5) as client:
        await client.subscribe("nl", qos=1, no_local=True)
        async with client.messages() as stream:
            await client.subscribe("nl2", qos=1)
            await client.publish("nl", "mine", qos=1)
            await client.publish("nl2", "other", qos=1)
            assert (await stream.get(WAIT)).topic == "nl2"


async def test_will_is_published_when_the_client_vanishes(server: Server) -> None:
    from tidemq.client import Will

    async with Client(server.url) as watcher, watcher.subscribe("will/#", qos=1) as sub:
        dying = Client(
            server.url, will=Will(topic="will/x", payload=b"gone", qos=1), reconnect=False
        )
        await dying.connect()
        assert dying._proto is not None
        dying._proto.abort()  # no DISCONNECT: the broker publishes the will
        msg = await sub.get(WAIT)
        assert (msg.topic, msg.payload) == ("will/x", b"gone")
        await dying.close()


async def test_invalid_arguments_are_configuration_errors(tidemq: TideMQServer) -> None:
    with pytest.raises(ConfigurationError):
        Client("http://127.0.0.1")
    with pytest.raises(ConfigurationError):
        Client(tidemq.url, version=6)
    async with Client(tidemq.url, version=311) as client:
        with pytest.raises(ConfigurationError):
            await client.publish("a/+", "x")
        with pytest.raises(ConfigurationError):
            await client.publish("a", "x", qos=3)
        with pytest.raises(ConfigurationError):
            await client.publish("a", "x", properties=Properties(content_type="x"))
        with pytest.raises(ConfigurationError):
            client.subscribe("a/#", no_local=True)
        with pytest.raises(ConfigurationError):
            client.subscribe("a/#x")


@pytest.mark.parametrize("version", [5, 311])
async def test_one_subscription_of_several_filters_delivers_once(
    server: Server, version: int
) -> None:
    """The filters of one SUBSCRIBE share its identifier (MQTT 5): a message matching one
    of them reaches the handler once, not once per filter."""
    got: list[str] = []
    async with Client(server.url, version=version) as client:
        await client.subscribe(
            ["multi/+/a", "multi/+/b"], qos=1, handler=lambda m: got.append(m.topic)
        )
        async with client.subscribe("multi/end", qos=1) as end:
            await client.publish("multi/x/a", "1", qos=1)
            await client.publish("multi/x/b", "2", qos=1)
            await client.publish("multi/end", "", qos=1)
            await end.get(WAIT)  # delivered in order: the others came first
    assert got == ["multi/x/a", "multi/x/b"]
