"""SessionManager, SessionBuilder, events and metrics, against TideMQ."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tidemq.client import (
    ClientState,
    ConfigurationError,
    Event,
    EventType,
    FileStore,
    JSONExporter,
    Message,
    MQTTConnectionError,
    PrometheusExporter,
    SessionBuilder,
    SessionManager,
    manager_metrics,
    quick_connect,
    secure_connect,
)

from .conftest import TideMQServer

WAIT = 5.0


def test_builder_defaults_follow_mqttx() -> None:
    session = SessionBuilder("dev").broker("mqtt://127.0.0.1:1").build()
    client = session.client
    assert client.client_id.startswith("tidemq-dev-")
    assert (client.keepalive, client.connect_timeout, client.clean_start) == (60, 30.0, True)
    policy = client.reconnect_policy
    assert policy is not None
    assert (policy.initial_delay, policy.factor, policy.max_delay) == (2.0, 1.5, 120.0)
    assert client.store is None
    assert session.status is ClientState.DISCONNECTED
    assert client.name == "dev"


def test_builder_reports_every_problem_at_once(tmp_path: Path) -> None:
    builder = (
        SessionBuilder("bad")
        .keepalive(70000)
        .reconnect(initial=5, maximum=1, factor=0.5)
        .tls(ca=str(tmp_path / "missing.pem"))
        .file_storage(tmp_path)
        .subscribe("a", 3)
    )
    problems = builder.validate()
    assert len(problems) == 7, problems
    with pytest.raises(ConfigurationError) as info:
        builder.build()
    for words in (
        "no broker",
        "keepalive",
        "maximum reconnect",
        "factor",
        "missing.pem",
        "needs .persistent()",
        "QoS 3",
    ):
        assert words in str(info.value)
    with pytest.raises(ConfigurationError, match="fixed client_id"):
        SessionBuilder("p").broker("mqtt://h").persistent().build()
    with pytest.raises(ConfigurationError, match="unsupported scheme"):
        SessionBuilder("w").broker("http://h/mqtt").build()
    ws = SessionBuilder("w").broker("wss://h:8084/mqtt").build().client
    assert (ws.websocket, ws.websocket_path, ws.port, ws.ssl is not None) == (
        True,
        "/mqtt",
        8084,
        True,
    )
    assert builder.reset().broker("mqtt://h").validate() == []


def test_builder_persistence_and_shortcuts(tmp_path: Path) -> None:
    session = (
        SessionBuilder("p")
        .broker("mqtt://127.0.0.1:1")
        .client_id("p-1")
        .auth("u", "pw")
        .clean_session(False)
        .version(311)
        .disable_reconnect()
        .persistent()
        .file_storage(tmp_path)
        .build()
    )
    assert isinstance(session.client.store, FileStore)
    assert session.client.reconnect_policy is None
    assert session.persistent
    assert (session.client.username, session.client.password) == ("u", b"pw")
    assert quick_connect("q", "mqtt://127.0.0.1:1").client.ssl is None
    ca = tmp_path / "ca.pem"
    trustme = pytest.importorskip("trustme")
    trustme.CA().cert_pem.write_to_path(str(ca))
    secure = secure_connect("s", "mqtts://127.0.0.1:1", str(ca))
    assert secure.client.ssl is not None
    with pytest.raises(ConfigurationError, match="does not exist"):
        secure_connect("s", "mqtts://127.0.0.1:1", str(tmp_path / "nope.pem"))


async def test_manager_sessions_events_and_routing(tidemq: TideMQServer) -> None:
    events: list[Event] = []
    got_a: list[Message] = []
    async with SessionManager() as manager:
        manager.on_event(None, events.append)
        ready: asyncio.Queue[str] = asyncio.Queue()
        manager.on_event(EventType.SESSION_READY, lambda e: ready.put_nowait(e.session))
        manager.add_session(
            SessionBuilder("a").broker(tidemq.url).subscribe("to/a", 1, got_a.append).build()
        )
        manager.add_session(SessionBuilder("b").broker(tidemq.url).build())
        await manager.wait_for_all(WAIT)
        assert sorted([await ready.get(), await ready.get()]) == ["a", "b"]
        assert manager.list_sessions() == ["a", "b"]
        assert manager.statuses() == {"a": ClientState.CONNECTED, "b": ClientState.CONNECTED}
        kinds = [e.type for e in events if e.session == "a"]
        assert kinds[0] is EventType.SESSION_ADDED
        assert kinds.index(EventType.SESSION_CONNECTING) < kinds.index(EventType.SESSION_CONNECTED)
        assert kinds.index(EventType.SESSION_CONNECTED) < kinds.index(EventType.SESSION_READY)
        changed = [e.data for e in events if e.type is EventType.SESSION_STATE_CHANGED]
        assert {"old_state": "connecting", "new_state": "connected"} in changed
        assert all(e.timestamp > 0 for e in events)

        # listen() on every session: one publish, seen by both, each message says where.
        async with manager.listen("all/#", qos=1) as listener:
            await manager.publish_to("a", "all/x", "hi", qos=1)
            seen = sorted([(await listener.get(WAIT)).session for _ in range(2)])
        assert seen == ["a", "b"]

        # The builder's subscription and handle_to / route.stop().
        handled: asyncio.Queue[Message] = asyncio.Queue()
        route = await manager.handle_to("b", "h/#", handled.put_nowait, qos=1)
        await manager.publish_to("b", "to/a", "for a", qos=1)
        await manager.publish_to("a", "h/1", "for b", qos=1)
        assert (await asyncio.wait_for(handled.get(), WAIT)).payload == b"for b"
        route.stop()
        async with manager.listen_to("b", "h/#", qos=1) as only_b:
            await manager.publish_to("a", "h/2", "after stop", qos=1)
            assert (await only_b.get(WAIT)).payload == b"after stop"
        assert handled.empty()
        assert [m.payload for m in got_a] == [b"for a"]

        # To all.
        results = await manager.publish_to_all("fan", "x", qos=1)
        assert set(results) == {"a", "b"}
        assert all(not isinstance(r, Exception) for r in results.values())
        granted = await manager.subscribe_all("sa/#", qos=2)
        assert granted == {"a": [2], "b": [2]}
        assert (await manager.unsubscribe_all("sa/#")) == {"a": [0], "b": [0]}

        await manager.remove_session("b")
        assert manager.list_sessions() == ["a"]
        assert events[-1].type is EventType.SESSION_REMOVED
        with pytest.raises(ConfigurationError):
            manager.get_session("b")
    assert manager.status("a") is ClientState.CLOSED


async def test_handle_applies_to_sessions_added_later(tidemq: TideMQServer) -> None:
    seen: asyncio.Queue[str] = asyncio.Queue()
    async with SessionManager() as manager:
        manager.add_session(quick_connect("one", tidemq.url))
        await manager.wait_for_session("one", WAIT)
        await manager.handle("late/#", lambda m: seen.put_nowait(m.session), qos=1)
        manager.add_session(quick_connect("two", tidemq.url))
        await manager.wait_for_session("two", WAIT)
        await manager.publish_to("one", "late/x", "x", qos=1)
        got = sorted([await asyncio.wait_for(seen.get(), WAIT) for _ in range(2)])
        assert got == ["one", "two"]


async def test_waiting_for_a_session_whose_broker_is_down(tidemq: TideMQServer) -> None:
    await tidemq.stop()
    async with SessionManager() as manager:
        reconnecting: list[int] = []
        manager.on_event("session_reconnecting", lambda e: reconnecting.append(e.data["attempt"]))
        manager.add_session(
            SessionBuilder("late").broker(tidemq.url).reconnect(0.02, 0.1, 2).build()
        )
        with pytest.raises(MQTTConnectionError) as info:
            await manager.wait_for_session("late", 0.2)
        assert info.value.is_timeout
        assert manager.status("late") is ClientState.RECONNECTING
        queued = asyncio.create_task(manager.publish_to("late", "q", "buffered", qos=1))
        await tidemq.start()
        await manager.wait_for_session("late", WAIT)
        assert (await asyncio.wait_for(queued, WAIT)).packet_id > 0
        assert reconnecting[:2] == [1, 2]


async def test_metrics_and_exporters(tidemq: TideMQServer) -> None:
    async with SessionManager() as manager:
        manager.add_session(quick_connect("m", tidemq.url))
        await manager.wait_for_session("m", WAIT)
        session = manager.get_session("m")
        async with session.client.subscribe("met", qos=1) as sub:
            await session.publish("met", b"12345", qos=1)
            await session.publish("met", b"678", qos=1)
            for _ in range(2):
                await sub.get(WAIT)
        metrics = session.metrics
        assert (metrics.messages_sent, metrics.bytes_sent) == (2, 8)
        assert (metrics.messages_received, metrics.bytes_received) == (2, 8)
        totals = manager_metrics(manager)
        assert (totals.active_sessions, totals.total_messages, totals.total_bytes) == (1, 4, 16)

        data = json.loads(JSONExporter(pretty=True).export(manager))
        row = data["sessions"]["m"]
        assert row["messages_sent"] == 2
        assert row["status"] == "connected"
        assert row["message_rate"] > 0
        assert data["manager"]["total_messages"] == 4

        pytest.importorskip("prometheus_client")
        text = PrometheusExporter(manager).export()
        assert 'mqtt_session_messages_sent_total{session="m"} 2.0' in text
        assert 'mqtt_session_bytes_received_total{session="m"} 8.0' in text
        assert 'mqtt_session_connected{session="m"} 1.0' in text
        assert 'mqtt_session_status{session="m"} 2.0' in text
        assert 'mqtt_session_auto_reconnect{session="m"} 1.0' in text
        assert "mqtt_session_last_error_timestamp_seconds" not in text.split("# TYPE")[-1]
        session.reset_metrics()
        assert session.metrics.messages_sent == 0
