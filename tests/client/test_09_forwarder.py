"""The forwarder: mapping, filters, transforms, metadata, QoS/retain, the bounded buffer,
loop detection, metrics and the registry; end to end against TideMQ and Mosquitto."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest

from tidemq.client import (
    AndFilter,
    Client,
    ClientState,
    CompositeTransform,
    ErrorCategory,
    ForwardedMessage,
    Forwarder,
    ForwarderBuilder,
    ForwarderConfig,
    ForwarderError,
    JsonSet,
    Message,
    NotFilter,
    OrFilter,
    PayloadFilter,
    PayloadTransform,
    Properties,
    ReconnectPolicy,
    SessionManager,
    TopicFilter,
    TopicRewrite,
    quick_connect,
)
from tidemq.client.forwarder import (
    META_FORWARDED_AT,
    META_FORWARDED_BY,
    META_SOURCE_SESSION,
    META_SOURCE_TOPIC,
)

from .conftest import MosquittoServer, TideMQServer, free_port

WAIT = 10.0
Server = TideMQServer | MosquittoServer


def msg(topic: str, payload: bytes = b"", **kw: object) -> Message:
    return Message(topic=topic, payload=payload, **kw)  # type: ignore[arg-type]


def forwarded(topic: str, payload: bytes = b"{}") -> ForwardedMessage:
    return ForwardedMessage(
        topic=topic,
        payload=payload,
        qos=1,
        retain=False,
        properties=Properties(),
        source=msg(topic, payload),
    )


# --- pieces, without a broker -------------------------------------------------------


def test_topic_mapping_exact_then_wildcard_templates() -> None:
    config = (
        ForwarderBuilder("m")
        .source("a", "#")
        .target("b")
        .map_topic("sensors/room1/temp", "special/room1")
        .map_topic("sensors/+/temp", "fleet/{1}/temperature")
        .map_topic("sensors/+/+/raw", "raw/{2}/{1}")
        .map_topic("logs/#", "archive/{session}/{1}")
        .map_topic("x/+", "copy-of/{topic}")
        .build()
    )
    fwd = Forwarder(config, SessionManager())
    assert fwd.map_topic("sensors/room1/temp") == "special/room1"  # exact wins
    assert fwd.map_topic("sensors/k7/temp") == "fleet/k7/temperature"
    assert fwd.map_topic("sensors/k7/a/raw") == "raw/a/k7"
    assert fwd.map_topic("logs/app/web/1", "plant") == "archive/plant/app/web/1"
    assert fwd.map_topic("x/y") == "copy-of/x/y"
    assert fwd.map_topic("unmapped/topic") == "unmapped/topic"


def test_builder_reports_every_problem() -> None:
    with pytest.raises(ForwarderError) as info:
        (
            ForwarderBuilder("bad")
            .source("a")
            .qos(3)
            .map_topic("a/+", "b/{2}")
            .map_topic("c/+", "d/+/{1}")
            .map_topic("e/#", "f/{1")
            .buffer_size(0)
            .metadata("forwarded_by", "me")
            .build()
        )
    text = str(info.value)
    for needle in (
        "no topic filter",
        "no target",
        "QoS 3",
        "{2} is not one of {1}..{1}",
        "wildcard",
        "unbalanced braces",
        "buffer_size",
        "reserved",
    ):
        assert needle in text, needle
    assert info.value.category is ErrorCategory.FORWARDER
    assert not info.value.is_temporary
    with pytest.raises(ForwarderError, match="bad topic regex"):
        TopicFilter("(", regex=True)
    with pytest.raises(ForwarderError, match="bad topic filter"):
        TopicFilter("a/#/b")


def test_filters_combine() -> None:
    temps = TopicFilter("sensors/+/temp")
    kitchen = TopicFilter(r"^sensors/kitchen/", regex=True)
    numeric = PayloadFilter(lambda p: p.replace(b".", b"").isdigit())
    assert temps(msg("sensors/a/temp"))
    assert not temps(msg("sensors/a/hum"))
    assert kitchen(msg("sensors/kitchen/temp"))
    assert not kitchen(msg("x/sensors/kitchen/t"))
    both = temps & numeric
    assert both(msg("sensors/a/temp", b"21.5"))
    assert not both(msg("sensors/a/temp", b"nan"))
    either = temps | kitchen
    assert either(msg("sensors/kitchen/hum"))
    assert not either(msg("other"))
    assert (~kitchen)(msg("sensors/hall/temp"))
    composed = AndFilter(OrFilter(temps, kitchen), NotFilter(lambda m: m.retain))
    assert composed(msg("sensors/a/temp"))
    assert not composed(msg("sensors/a/temp", retain=True))
    assert AndFilter()(msg("anything"))


def test_transforms() -> None:
    fm = forwarded("sensors/a/temp", b'{"c": 21.5, "meta": 3}')
    out = JsonSet("meta.site", "plant-1")(fm)
    assert json.loads(out.payload) == {"c": 21.5, "meta": {"site": "plant-1"}}
    out = JsonSet(["unit"], lambda f: f.source.topic.split("/")[-1])(fm)
    assert json.loads(out.payload)["unit"] == "temp"
    with pytest.raises(ForwarderError, match="not JSON"):
        JsonSet("a", 1)(forwarded("t", b"not json"))
    with pytest.raises(ForwarderError, match="not a JSON object"):
        JsonSet("a", 1)(forwarded("t", b"[1]"))
    upper = PayloadTransform(lambda p: p.decode().upper())
    assert upper(forwarded("t", b"abc")).payload == b"ABC"  # type: ignore[union-attr]
    assert PayloadTransform(lambda p: None)(fm) is None
    rewrite = TopicRewrite(r"^sensors/(\w+)/", r"site/\1/")
    assert rewrite(fm).topic == "site/a/temp"
    with pytest.raises(ForwarderError, match="invalid"):
        TopicRewrite("^.*$", "bad/+")(fm)
    both = CompositeTransform(rewrite, upper)
    out2 = both(forwarded("sensors/b/x", b"hi"))
    assert out2 is not None
    assert (out2.topic, out2.payload) == ("site/b/x", b"HI")
    assert CompositeTransform(PayloadTransform(lambda p: None), rewrite)(fm) is None


# --- end to end ---------------------------------------------------------------------


@pytest.fixture
async def manager(server: Server) -> AsyncIterator[SessionManager]:
    async with SessionManager() as mgr:
        mgr.add_session(quick_connect("plant", server.url))
        mgr.add_session(quick_connect("plant-2", server.url))
        mgr.add_session(quick_connect("cloud", server.url))
        await mgr.wait_for_all(WAIT)
        yield mgr


async def test_forwarding_end_to_end(server: Server, manager: SessionManager) -> None:
    """Two sources, wildcard mapping, filters, transforms and metadata, seen by a third
    client on the target topics."""
    config = (
        ForwarderBuilder("temps")
        .source("plant", "sensors/+/temp", "sensors/+/hum")
        .source("plant-2", "sensors/+/temp")
        .target("cloud")
        .qos(1)
        .map_topic("sensors/+/temp", "fleet/{session}/{1}/temperature")
        .map_topic("sensors/+/hum", "fleet/{session}/{1}/humidity")
        .filter(PayloadFilter(lambda p: not p.startswith(b'{"bad"')))
        .filter(NotFilter(TopicFilter(r"/ignored/", regex=True)))
        .transform(JsonSet("via", "temps"))
        .metadata("site", "north")
        .build()
    )
    before = int(time.time() * 1000)
    plant = manager.get_session("plant").client
    plant2 = manager.get_session("plant-2").client
    async with (
        Client(server.url) as watcher,
        plant.messages() as s1,
        plant2.messages() as s2,
        watcher.subscribe("fleet/#", qos=1) as out,
    ):
        fwd = await manager.forwarders.add(config)
        assert fwd.is_running
        await manager.publish_to("cloud", "sensors/k1/temp", '{"c":21}', qos=1)
        await manager.publish_to("cloud", "sensors/ignored/temp", '{"c":0}', qos=1)
        await manager.publish_to("cloud", "sensors/k2/temp", '{"bad":1}', qos=1)
        await manager.publish_to(
            "cloud",
            "sensors/k1/hum",
            '{"rh":40}',
            qos=1,
            properties=Properties(content_type="application/json"),
        )
        # Once both sources have everything, flush() waits for the forwarder.
        assert len([await s1.get(WAIT) for _ in range(4)]) == 4
        assert len([await s2.get(WAIT) for _ in range(3)]) == 3
        await fwd.flush(WAIT)
        got = [await out.get(WAIT) for _ in range(3)]
    by_topic = {m.topic: m for m in got}
    # Both sources subscribe sensors/+/temp: one copy through each, named by session.
    assert set(by_topic) == {
        "fleet/plant/k1/temperature",
        "fleet/plant-2/k1/temperature",
        "fleet/plant/k1/humidity",
    }
    hum = by_topic["fleet/plant/k1/humidity"]
    assert hum.json() == {"rh": 40, "via": "temps"}
    assert hum.qos == 1
    assert hum.properties.content_type == "application/json"  # kept from the source
    props = dict(hum.user_properties)
    assert props[META_FORWARDED_BY] == "temps"
    assert props[META_SOURCE_SESSION] == "plant"
    assert props[META_SOURCE_TOPIC] == "sensors/k1/hum"
    assert before <= int(props[META_FORWARDED_AT]) <= int(time.time() * 1000)
    assert props["site"] == "north"
    m = fwd.metrics()
    # plant saw 4 (3 temp + 1 hum), plant-2 saw 3 temps; 3 forwarded, 4 filtered.
    assert (m.received, m.forwarded, m.filtered, m.dropped, m.errors, m.loops) == (7, 3, 4, 0, 0, 0)
    assert m.last_forwarded is not None
    assert m.last_error is None
    assert manager.forwarders.metrics()["temps"].forwarded == 3


async def test_loop_is_detected_by_metadata(manager: SessionManager) -> None:
    """A forwarder whose output matches its own source filter: the copy that comes back
    carries its name and is dropped, not forwarded again and again."""
    plant = manager.get_session("plant").client
    config = ForwarderConfig(
        name="echo",
        sources=(("plant", ("loop/#",)),),
        target="plant",
        qos=1,
        topic_map={"loop/in": "loop/out"},
    )
    fwd = await manager.forwarders.add(config)
    async with plant.messages() as seen:
        await manager.publish_to("cloud", "loop/in", "x", qos=1)
        topics = [(await seen.get(WAIT)).topic for _ in range(2)]
    # The plant delivered loop/out to the forwarder in the same call that gave it to us.
    assert topics == ["loop/in", "loop/out"]
    await fwd.flush(WAIT)
    m = fwd.metrics()
    assert (m.received, m.forwarded, m.loops) == (2, 1, 1)


async def test_retain_and_qos_options(server: Server, manager: SessionManager) -> None:
    config = (
        ForwarderBuilder("keeper")
        .source("plant", "state/+")
        .target("cloud")
        .source_qos(1)
        .qos(2)
        .retain(True)
        .map_topic("state/+", "kept/{1}")
        .inject_metadata(False)
        .build()
    )
    fwd = await manager.forwarders.add(config)
    async with Client(server.url) as watcher:
        async with watcher.subscribe("kept/#", qos=2) as live:
            await manager.publish_to("cloud", "state/door", "open", qos=1)
            first = await live.get(WAIT)
        assert first.qos == 2
        assert not first.user_properties
        # A new subscriber gets it as a retained message: published with retain.
        async with watcher.subscribe("kept/door", qos=2) as late:
            retained = await late.get(WAIT)
        assert retained.retain
        assert retained.payload == b"open"
        await watcher.publish("kept/door", b"", retain=True)  # clean up the broker
    await fwd.flush(WAIT)
    assert fwd.metrics().forwarded == 1


async def test_mqtt3_target_gets_no_properties(server: Server, manager: SessionManager) -> None:
    v3 = Client(server.url, version=311, name="v3")
    manager.add_session(v3, "v3")
    await manager.wait_for_session("v3", WAIT)
    fwd = await manager.forwarders.add(
        ForwarderBuilder("to-v3")
        .source("plant", "v3in")
        .target("v3")
        .qos(1)
        .map_topic("v3in", "v3out")
        .build()
    )
    async with Client(server.url) as watcher, watcher.subscribe("v3out", qos=1) as out:
        await manager.publish_to("cloud", "v3in", "x", qos=1)
        got = await out.get(WAIT)
    # An MQTT 3 session cannot carry properties: the copy has no metadata.
    assert (got.payload, got.user_properties) == (b"x", ())
    await fwd.flush(WAIT)
    assert fwd.metrics().forwarded == 1


async def test_bounded_buffer_counts_drops(server: Server) -> None:
    """With the target offline and one publish awaiting its ack, the buffer fills and
    further messages are dropped; stopping drops what is left, and says so."""
    offline = Client(
        f"mqtt://127.0.0.1:{free_port()}",
        reconnect=ReconnectPolicy(initial_delay=0.05, max_delay=0.1, jitter=0),
    )
    async with SessionManager() as manager:
        manager.add_session(quick_connect("src", server.url))
        manager.add_session(offline, "down")
        await manager.wait_for_session("src", WAIT)
        assert manager.status("down") is not ClientState.CONNECTED
        fwd = await manager.forwarders.add(
            ForwarderBuilder("stuck")
            .source("src", "buf/#")
            .target("down")
            .qos(1)
            .buffer_size(2)
            .max_inflight(1)
            .build()
        )
        src = manager.get_session("src").client
        async with src.messages() as seen:
            async with Client(server.url) as publisher:
                for i in range(6):
                    await publisher.publish("buf/x", str(i), qos=1)
            for _ in range(6):
                await seen.get(WAIT)
        m = fwd.metrics()
        assert m.received == 6
        # At most one publish in flight, one taken by the worker, two queued.
        assert m.dropped >= 2
        assert m.dropped + m.queued + m.in_flight <= 6
        await manager.forwarders.stop("stuck", timeout=0.05)
        m = fwd.metrics()
        assert not m.running
        assert m.forwarded == 0
        assert m.dropped == 6  # nothing got out, and every loss is counted
        assert m.queued == 0
        assert m.in_flight == 0


async def test_registry_lifecycle(manager: SessionManager) -> None:
    registry = manager.forwarders
    config = ForwarderBuilder("r1").source("plant", "reg/#").target("cloud").disable().build()
    fwd = await registry.add(config)
    assert registry.list() == ["r1"]
    assert "r1" in registry
    assert not fwd.is_running  # disabled: registered, not started
    with pytest.raises(ForwarderError, match="already exists"):
        await registry.add(config)
    with pytest.raises(ForwarderError, match="no session named 'nowhere'"):
        await registry.add(ForwarderBuilder("r2").source("nowhere", "a").target("cloud").build())
    assert "r2" in registry
    assert not registry.get("r2").is_running
    await registry.remove("r2")
    await registry.start("r1")
    plant = manager.get_session("plant").client
    assert "reg/#" in plant.subscriptions
    await registry.stop("r1")
    assert not fwd.is_running
    assert "reg/#" not in plant.subscriptions  # unsubscribed: nothing else used it
    await registry.start("r1")  # restartable
    assert "reg/#" in plant.subscriptions
    assert set(registry.metrics()) == {"r1"}
    with pytest.raises(ForwarderError, match="no forwarder named"):
        registry.get("nope")
    await manager.close()  # stops every forwarder first
    assert not fwd.is_running


async def test_errors_are_counted_and_do_not_stop_it(manager: SessionManager) -> None:
    config = (
        ForwarderBuilder("json-only")
        .source("plant", "j/#")
        .target("cloud")
        .qos(1)
        .transform(JsonSet("ok", True))
        .build()
    )
    fwd = await manager.forwarders.add(config)
    async with manager.listen_to("cloud", "j/#", qos=1) as out:
        await manager.publish_to("cloud", "j/1", "not json", qos=1)
        await manager.publish_to("cloud", "j/2", '{"a":1}', qos=1)
        # The original j/1, j/2, then the forwarded j/2 (j/1 failed its transform).
        got = [await out.get(WAIT) for _ in range(3)]
        await fwd.flush(WAIT)
    assert [m.payload for m in got if m.user_properties] == [b'{"a":1,"ok":true}']
    m = fwd.metrics()
    assert (m.forwarded, m.errors) == (1, 1)
    assert m.last_error is not None
    assert "not JSON" in m.last_error
    assert m.last_error_time is not None
