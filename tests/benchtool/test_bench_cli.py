"""``tidemq bench pub|sub|conn`` run as users run them, against an in-process broker.

Counts are exact: every bench is bounded by -L (messages per client) or --duration, and the
sub bench is ready (its "subscribed" line on stderr) before the pub bench starts.
"""

from __future__ import annotations

import pytest

from tidemq.app import Broker
from tidemq.client import Client
from tidemq.testing import RunningBroker, broker_settings

from .conftest import WAIT, TLSBroker, bench, free_port, start_bench, target

pytestmark = pytest.mark.timeout(30)


# QoS 0 is paced (-I 50: never two publishes in one read before the DISCONNECT), see
# test_qos0_burst_then_disconnect_is_delivered for why.
@pytest.mark.parametrize(
    ("qos", "version", "interval"), [(0, "5", "50"), (1, "4", "0"), (2, "5", "0")]
)
async def test_pub_to_sub_counts_are_exact(
    broker: RunningBroker, qos: int, version: str, interval: str
) -> None:
    # 3 publishers x 50 messages, each received by 2 subscribers: 300 deliveries.
    sub = await start_bench(
        "sub", *target(broker.port), "-c", "2", "-i", "0", "-t", "exact/#", "-q", str(qos), "-V",
        version, "-L", "150", "--duration", "15", "--json",
    )  # fmt: skip
    assert "2/2 clients subscribed" in await sub.wait_ready()
    pub = await bench(
        "pub", *target(broker.port), "-c", "3", "-i", "0", "-t", "exact/%i", "-q", str(qos), "-V",
        version, "-L", "50", "-I", interval, "-s", "64", "--json",
    )  # fmt: skip
    assert pub.status == 0, pub.stderr
    sent = pub.report
    assert sent["command"] == "pub"
    assert sent["stopped_by"] == "limit"
    assert sent["connections"] == {
        **sent["connections"],
        "attempted": 3,
        "connected": 3,
        "failed": 0,
        "lost": 0,
    }
    assert sent["messages"]["sent"] == 150
    assert sent["messages"]["finished_clients"] == 3
    assert sent["errors"] == {}
    if qos:
        assert sent["messages"]["acked"] == 150
        assert sent["messages"]["latency_kind"] == "ack"
        assert sent["messages"]["latency_ms"]["count"] == 150
    else:
        assert sent["messages"]["acked"] == 0
        assert sent["messages"]["latency_ms"] is None

    got = await sub.result()
    assert got.status == 0, got.stderr
    received = got.report
    assert received["stopped_by"] == "limit"
    assert received["subscribed"] == 2
    messages = received["messages"]
    assert messages["received"] == 300
    assert messages["with_timestamp"] == 300
    assert messages["finished_clients"] == 2
    assert messages["latency_kind"] == "end_to_end"
    latency = messages["latency_ms"]
    assert latency["count"] == 300
    assert 0 <= latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] <= latency["max"] < 15_000


async def test_qos0_burst_then_disconnect_is_delivered(broker: RunningBroker) -> None:
    # Each publisher writes its 50 messages and its DISCONNECT in one burst.
    sub = await start_bench(
        "sub", *target(broker.port), "-t", "burst/#", "-L", "100", "--duration", "3", "--json"
    )
    assert "1/1 clients subscribed" in await sub.wait_ready()
    pub = await bench(
        "pub", *target(broker.port), "-c", "2", "-i", "0", "-t", "burst/%i", "-L", "50", "-I", "0"
    )
    assert pub.status == 0, pub.stderr
    got = await sub.result()
    assert got.report["messages"]["received"] == 100


async def test_json_report_fields(broker: RunningBroker) -> None:
    result = await bench(
        "pub", *target(broker.port), "-c", "2", "-i", "0", "-t", "fields/%i", "-q", "1", "-L", "5",
        "-I", "0", "-s", "100", "-F", "4", "--json", "--quiet",
    )  # fmt: skip
    assert result.status == 0, result.stderr
    report = result.report
    assert set(report) >= {
        "tool", "command", "url", "mqtt_version", "clients", "workers", "loop", "stopped_by",
        "duration_s", "connections", "errors", "qos", "topics", "payload_size", "interval_ms",
        "limit", "inflight", "messages",
    }  # fmt: skip
    assert report["url"] == f"mqtt://127.0.0.1:{broker.port}"
    assert (report["mqtt_version"], report["clients"], report["workers"]) == ("5.0", 2, 1)
    assert (report["qos"], report["payload_size"], report["inflight"]) == (1, 100, 4)
    assert report["topics"] == ["fields/%i"]
    assert report["loop"] in ("uvloop", "asyncio")
    conn_latency = report["connections"]["latency_ms"]
    assert set(conn_latency) == {"count", "min", "mean", "p50", "p90", "p99", "p999", "max"}
    assert conn_latency["count"] == 2
    messages = report["messages"]
    assert messages["sent"] == messages["acked"] == 10
    assert messages["rate"] > 0
    assert messages["rate_over_run"] > 0
    assert report["duration_s"] > 0


async def test_text_report_and_progress_lines(broker: RunningBroker) -> None:
    # Not a terminal: one plain progress line a second on stderr, the report on stdout.
    result = await bench(
        "pub", *target(broker.port), "-c", "2", "-i", "0", "-t", "text/%i", "-I", "100",
        "--duration", "1.5",
    )  # fmt: skip
    assert result.status == 0, result.stderr
    assert "tidemq bench pub: 2/2 clients connected" in result.stderr
    progress = [line for line in result.stderr.splitlines() if "  pub  " in line]
    assert progress, result.stderr
    assert "\r" not in result.stderr
    assert "sent" in progress[0]
    assert "errors 0" in progress[0]
    out = result.stdout
    assert "stopped: duration" in out
    assert "2/2 connected, 0 failed, 0 lost" in out
    assert "msg/s" in out
    assert "errors        none" in out
    # -I 100 for 1.5 s: 15 or 16 messages per client, 2 clients.
    sent = int(out.split("messages      ")[1].split(" sent")[0].replace(",", ""))
    assert 28 <= sent <= 34


async def test_workers_aggregate_counters(broker: RunningBroker) -> None:
    sub = await start_bench(
        "sub", *target(broker.port), "-c", "2", "-i", "0", "--workers", "2", "-t", "workers/#",
        "-q", "1", "-L", "100", "--duration", "15", "--json",
    )  # fmt: skip
    assert "2/2 clients subscribed" in await sub.wait_ready()
    pub = await bench(
        "pub", *target(broker.port), "-c", "4", "-i", "0", "--workers", "2", "-t", "workers/%i",
        "-q", "1", "-L", "25", "-I", "0", "--json",
    )  # fmt: skip
    assert pub.status == 0, pub.stderr
    report = pub.report
    assert report["workers"] == 2
    assert report["connections"]["connected"] == 4
    assert report["connections"]["latency_ms"]["count"] == 4
    assert report["messages"]["sent"] == report["messages"]["acked"] == 100
    assert report["messages"]["latency_ms"]["count"] == 100
    assert report["stopped_by"] == "limit"
    got = await sub.result()
    assert got.status == 0, got.stderr
    received = got.report
    assert received["workers"] == 2
    assert received["messages"]["received"] == 200
    assert received["messages"]["latency_ms"]["count"] == 200
    assert received["stopped_by"] == "limit"


async def test_topic_templates_expand_per_client_and_message(broker: RunningBroker) -> None:
    seen: list[str] = []
    async with Client(broker.url) as watcher, watcher.subscribe("tpl/#") as topics:
        result = await bench(
            "pub", *target(broker.port), "-c", "3", "-n", "7", "-i", "0", "--prefix", "dev", "-u",
            "alice", "-t", "tpl/%i/%c/%u/%s", "-L", "2", "-I", "0", "-q", "1", "--json",
        )  # fmt: skip
        assert result.status == 0, result.stderr
        # The bench's messages were routed before its DISCONNECT; a message we publish
        # now reaches us after all of them.
        await watcher.publish("tpl/end", b"", qos=1)
        while not seen or seen[-1] != "tpl/end":
            seen.append((await topics.get(WAIT)).topic)
    expected = {f"tpl/{n}/dev_pub_{n}/alice/{s}" for n in (7, 8, 9) for s in (1, 2)}
    assert set(seen) - {"tpl/end"} == expected
    assert len(seen) == 7


async def test_conn_holds_connections_for_the_duration(broker: RunningBroker) -> None:
    result = await bench(
        "conn", *target(broker.port), "-c", "20", "--connect-rate", "500", "--duration", "1",
        "--json",
    )  # fmt: skip
    assert result.status == 0, result.stderr
    report = result.report
    conn = report["connections"]
    assert (conn["attempted"], conn["connected"], conn["failed"], conn["lost"]) == (20, 20, 0, 0)
    assert conn["latency_ms"]["count"] == 20
    # 500 starts a second: 20 connections take about 40 ms.
    assert 50 <= conn["rate"] <= 1000
    assert report["stopped_by"] == "duration"
    assert 0.9 <= report["duration_s"] < 3
    assert "messages" not in report


async def test_refused_connections_are_counted_and_fail_the_run() -> None:
    result = await bench("conn", *target(free_port()), "-c", "3", "-i", "0", "--json")
    assert result.status == 1
    report = result.report
    assert report["errors"] == {"connection_refused": 3}
    conn = report["connections"]
    assert (conn["attempted"], conn["connected"], conn["failed"]) == (3, 0, 3)
    assert report["stopped_by"] == "all clients ended"


async def test_refused_connections_with_workers_and_text_report() -> None:
    result = await bench("pub", *target(free_port()), "-c", "4", "--workers", "2", "-t", "x")
    assert result.status == 1
    assert "errors        connection_refused: 4" in result.stdout


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_ctrl_c_stops_and_still_reports(broker: RunningBroker, workers: str) -> None:
    running = await start_bench(
        "conn", *target(broker.port), "-c", "4", "-i", "0", "--workers", workers, "--json"
    )
    assert "4/4 clients connected" in await running.wait_ready()
    running.interrupt()
    result = await running.result()
    assert result.status == 0, result.stderr
    report = result.report
    assert report["stopped_by"] == "interrupted"
    assert report["connections"]["connected"] == 4
    assert report["errors"] == {}


async def test_tls_pub_sub_and_conn(tls_broker: TLSBroker) -> None:
    url = f"mqtts://localhost:{tls_broker.port('tls')}"
    tls = ("--url", url, "--cafile", tls_broker.ca_file)
    sub = await start_bench("sub", *tls, "-c", "1", "-t", "tls/#", "-q", "1", "-L", "20", "--json")
    assert "1/1 clients subscribed" in await sub.wait_ready()
    pub = await bench(
        "pub", *tls, "--cert", tls_broker.client_file, "-c", "2", "-i", "0", "-t", "tls/%i", "-q",
        "1", "-L", "10", "-I", "0", "--json",
    )  # fmt: skip
    assert pub.status == 0, pub.stderr
    assert pub.report["url"] == url
    assert pub.report["messages"]["acked"] == 20
    got = await sub.result()
    assert got.status == 0, got.stderr
    assert got.report["messages"]["received"] == 20
    conn = await bench("conn", *tls, "-c", "3", "-i", "0", "--duration", "0.3", "--json")
    assert conn.status == 0, conn.stderr
    assert conn.report["connections"]["connected"] == 3


async def test_tls_with_an_untrusted_ca_is_a_tls_error(tls_broker: TLSBroker) -> None:
    port = str(tls_broker.port("tls"))
    result = await bench(
        "conn", "-h", "localhost", "-p", port, "--cafile", tls_broker.stranger_ca_file, "-c", "2",
        "-i", "0", "--json",
    )  # fmt: skip
    assert result.status == 1
    assert result.report["url"] == f"mqtts://localhost:{port}"
    assert result.report["errors"] == {"tls_error": 2}


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_websocket_urls(tls_broker: TLSBroker, scheme: str, loop: str) -> None:
    url = f"{scheme}://localhost:{tls_broker.port(scheme)}/mqtt"
    env = {"TIDEMQ_NO_UVLOOP": "1"} if loop == "asyncio" else {}
    result = await bench(
        "conn", "--url", url, "--cafile", tls_broker.ca_file, "-c", "2", "-i", "0",
        "--duration", "0.3", "--connect-timeout", "3", "--json", env=env,
    )  # fmt: skip
    report = result.report
    # --cafile turns ws:// into wss://; the URL is passed to the client as given.
    assert report["url"] == f"wss://localhost:{tls_broker.port(scheme)}/mqtt"
    if scheme == "ws":
        # TLS towards a plain WebSocket listener: a failure, counted.
        assert result.status == 1
        assert report["connections"]["failed"] == 2
        return
    assert report["loop"] == loop
    assert result.status == 0, result.stderr
    assert report["connections"]["connected"] == 2


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_plain_websocket_pub_sub(tls_broker: TLSBroker, loop: str) -> None:
    url = f"ws://127.0.0.1:{tls_broker.port('ws')}/mqtt"
    env = {"TIDEMQ_NO_UVLOOP": "1"} if loop == "asyncio" else {}
    common = ("--url", url, "--connect-timeout", "3", "--json")
    sub = await start_bench("sub", *common, "-t", "ws/#", "-q", "1", "-L", "10", env=env)
    assert "1/1 clients subscribed" in await sub.wait_ready()
    pub = await bench(
        "pub", *common, "-c", "2", "-i", "0", "-t", "ws/%i", "-q", "1", "-L", "5", "-I", "0",
        env=env,
    )  # fmt: skip
    assert pub.status == 0, pub.stderr
    assert pub.report["url"] == url
    assert pub.report["messages"]["acked"] == 10
    got = await sub.result()
    assert got.report["messages"]["received"] == 10


@pytest.mark.parametrize(
    "args",
    [
        ("conn", "-V", "6"),
        ("conn", "--url", "mqtt://127.0.0.1:1", "-p", "2"),
        ("conn", "--url", "http://127.0.0.1:1"),
        ("sub", "-t", "x", "--workers", "0"),
        ("conn", "-c", "0"),
        ("pub", "-t", "x", "-r", "0"),
    ],
)
async def test_bad_options_exit_2(args: tuple[str, ...]) -> None:
    result = await bench(*args)
    assert result.status == 2
    assert "tidemq bench:" in result.stderr or "error:" in result.stderr


async def test_connections_lost_when_the_broker_stops() -> None:
    server = Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings())
    await server.start()
    try:
        running = await start_bench("conn", *target(server.port), "-c", "3", "-i", "0", "--json")
        assert "3/3 clients connected" in await running.wait_ready()
    finally:
        await server.stop()
    result = await running.result()
    assert result.status == 1
    report = result.report
    assert report["errors"] == {"connection_lost": 3}
    assert (report["connections"]["connected"], report["connections"]["lost"]) == (3, 3)
    assert report["stopped_by"] == "all clients ended"
