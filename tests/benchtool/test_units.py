"""Options, topic templates, the progress line and the report, without subprocesses (the
in-process run uses the test's own broker and loop)."""

from __future__ import annotations

import io
import random

import pytest

from tidemq.benchtool import OptionsError, options_from_args
from tidemq.benchtool.options import BenchOptions, TopicTemplate
from tidemq.benchtool.runner import Progress, run_in_process
from tidemq.benchtool.stats import Totals, WorkerStats
from tidemq.cli import build_parser
from tidemq.testing import RunningBroker


def parse(*argv: str) -> BenchOptions:
    return options_from_args(build_parser().parse_args(["bench", *argv]))


def test_defaults_follow_emqtt_bench() -> None:
    opts = parse("pub", "-t", "t")
    assert opts.url == "mqtt://localhost:1883"
    assert (opts.count, opts.start_number, opts.version, opts.keepalive) == (1, 1, 5, 300)
    assert opts.connect_interval == pytest.approx(0.010)
    assert opts.msg_interval == pytest.approx(1.0)
    assert (opts.size, opts.qos, opts.inflight, opts.limit, opts.workers) == (256, 0, 1, 0, 1)
    assert opts.duration is None
    assert opts.clean


@pytest.mark.parametrize(
    ("argv", "url"),
    [
        (("-h", "broker.example", "-p", "1884"), "mqtt://broker.example:1884"),
        (("-S",), "mqtts://localhost:8883"),
        (("--cafile", "ca.pem"), "mqtts://localhost:8883"),
        (("--ws",), "ws://localhost:8083/mqtt"),
        (("--ws", "-S", "-p", "9001"), "wss://localhost:9001/mqtt"),
        (("--url", "tcp://10.0.0.1:1999"), "mqtt://10.0.0.1:1999"),
        (("--url", "ssl://h:8883"), "mqtts://h:8883"),
        (("--url", "ws://h:8083/mqtt", "--cafile", "ca.pem"), "wss://h:8083/mqtt"),
        (("--url", "wss://h/mqtt?x=1"), "wss://h/mqtt?x=1"),
        (("-h", "::1"), "mqtt://[::1]:1883"),
    ],
)
def test_broker_url(argv: tuple[str, ...], url: str) -> None:
    assert parse("conn", *argv).url == url


def test_rates_and_intervals() -> None:
    # -r is the total over all clients: 10 clients at 2,000 msg/s = 5 ms each.
    assert parse("pub", "-t", "t", "-c", "10", "-r", "2000").msg_interval == pytest.approx(0.005)
    assert parse("pub", "-t", "t", "-I", "0").msg_interval == 0
    assert parse("conn", "--connect-rate", "250").connect_interval == pytest.approx(0.004)
    assert parse("conn", "-i", "0").connect_interval == 0
    assert parse("conn", "-c", "2", "--workers", "8").workers == 2  # never idle processes
    assert parse("sub", "-t", "a", "-t", "b/%i").topics == ("a", "b/%i")


@pytest.mark.parametrize(
    "argv",
    [
        ("conn", "-V", "2"),
        ("conn", "--key", "k.pem"),
        ("conn", "--url", "ftp://h"),
        ("conn", "--url", "mqtt://h", "--ws"),
        ("conn", "-k", "70000"),
        ("pub", "-t", "t", "-F", "0"),
        ("pub", "-t", "t", "-s", "-1"),
        ("sub", "-t", "t", "-L", "-1"),
        ("conn", "--connect-rate", "0"),
    ],
)
def test_invalid_options(argv: tuple[str, ...]) -> None:
    with pytest.raises(OptionsError):
        parse(*argv)


def test_template_per_client_variables() -> None:
    tpl = TopicTemplate("d/%i/%c/%u", number=42, client_id="p_pub_42", username="bob")
    assert not tpl.per_message
    assert tpl.expand(7) == tpl.text == "d/42/p_pub_42/bob"
    assert TopicTemplate("%u/x", number=1, client_id="c", username=None).text == "/x"


def test_template_per_message_variables() -> None:
    random.seed(3)
    tpl = TopicTemplate("s/%i/%s/r%rand_5", number=3, client_id="c", username=None)
    assert tpl.per_message
    topics = [tpl.expand(seq) for seq in range(1, 201)]
    assert topics[0].startswith("s/3/1/r")
    assert topics[199].startswith("s/3/200/r")
    drawn = {int(t.rsplit("/r", 1)[1]) for t in topics}
    assert drawn == {1, 2, 3, 4, 5}
    # Subscribers draw once.
    assert TopicTemplate("x/%rand_1", number=1, client_id="c", username=None).fixed_once() == "x/1"


def stats_with(**counters: int) -> WorkerStats:
    st = WorkerStats()
    for name, value in counters.items():
        setattr(st, name, value)
    return st


def test_progress_line_on_a_terminal_is_rewritten_in_place() -> None:
    opts = BenchOptions(command="pub", url="mqtt://h:1", count=2, qos=1, topics=("t",))
    stream = io.StringIO()
    progress = Progress(opts, stream, tty=True)
    totals = Totals(1)
    st = stats_with(connected=2, active=2, sent=10, acked=9)
    st.latency.record(1500)
    totals.add(0, st.snapshot())
    progress.tick(totals)
    st.sent, st.acked = 30, 30
    st.error("publish_refused")
    totals.add(0, st.snapshot())
    progress.tick(totals)
    progress.close()
    text = stream.getvalue()
    lines = text.split("\r")[1:]
    assert len(lines) == 2
    assert "conns 2/2" in lines[0]
    assert "sent 10" in lines[0]
    assert "acked 9" in lines[0]
    assert "p50 1.50ms" in lines[0]
    assert "errors 0" in lines[0]
    assert "sent 30" in lines[1]
    assert "errors 1" in lines[1]
    assert "p50" not in lines[1]  # nothing recorded in that second
    assert text.endswith("\x1b[K\n")


def test_progress_is_plain_lines_elsewhere_and_quiet_keeps_ready_notes() -> None:
    opts = BenchOptions(command="conn", url="mqtt://h:1", count=3, quiet=True)
    stream = io.StringIO()
    progress = Progress(opts, stream, tty=False)
    totals = Totals(1)
    st = stats_with(attempted=3, connected=3, active=3)
    st.ready = True
    totals.add(0, st.snapshot())
    progress.tick(totals)
    progress.tick(totals)
    assert stream.getvalue().count("\n") == 1
    assert stream.getvalue().startswith("tidemq bench conn: 3/3 clients connected")


async def test_in_process_run_reports_to_the_given_streams(broker: RunningBroker) -> None:
    opts = BenchOptions(
        command="pub",
        url=broker.url,
        count=2,
        connect_interval=0,
        msg_interval=0,
        qos=1,
        limit=20,
        inflight=4,
        topics=("inproc/%i/%s",),
        size=8,  # too small for a timestamp: still sent
    )
    out, err = io.StringIO(), io.StringIO()
    status, report = await run_in_process(opts, out, err, handle_signals=False)
    assert status == 0, out.getvalue()
    assert report["messages"]["sent"] == report["messages"]["acked"] == 40
    assert report["messages"]["latency_ms"]["count"] == 40
    assert "40 sent, 40 acknowledged" in out.getvalue()
    assert "tidemq bench pub: 2/2 clients connected" in err.getvalue()
