"""The final report: one dict (printed as JSON with ``--json``) and its text form.

Latencies are in milliseconds. ``messages.rate`` is measured over the message window (from
the first message sent or received to the last), so the connection ramp-up and the
disconnect at the end do not dilute it; ``messages.rate_over_run`` divides by the whole
duration instead.
"""

from __future__ import annotations

from typing import Any

from tidemq import __version__

from .histogram import Histogram
from .options import BenchOptions
from .stats import Totals

__all__ = ["build_report", "format_text"]

_VERSION_NAMES = {3: "3.1", 4: "3.1.1", 5: "5.0"}


def _latency(hist: Histogram) -> dict[str, float | int] | None:
    return hist.summary(scale=1000.0) if hist.count else None


def build_report(
    options: BenchOptions,
    totals: Totals,
    *,
    stopped_by: str,
    loop: str,
    extra_errors: dict[str, int] | None = None,
) -> dict[str, Any]:
    c = totals.counters()
    first_attempt = totals.mark("first_attempt") or totals.started
    stopped_at = totals.mark("stopped_at") or totals.started
    duration = max(stopped_at - totals.started, 0.0)
    last_connack = totals.mark("last_connack")
    connect_window = last_connack - first_attempt if last_connack else 0.0
    errors = totals.errors()
    for kind, n in (extra_errors or {}).items():
        errors[kind] = errors.get(kind, 0) + n
    messages = c["sent"] if options.command == "pub" else c["received"]
    first, last = totals.mark("first_message"), totals.mark("last_message")
    window = last - first if first and last > first else 0.0
    rate = (
        messages / window
        if messages > 1 and window > 0
        else (messages / duration if duration > 0 else 0.0)
    )
    report: dict[str, Any] = {
        "tool": f"tidemq {__version__} bench",
        "command": options.command,
        "url": options.url,
        "mqtt_version": _VERSION_NAMES[options.version],
        "clients": options.count,
        "workers": options.workers,
        "loop": loop,
        "stopped_by": stopped_by,
        "duration_s": round(duration, 3),
        "connections": {
            "attempted": c["attempted"],
            "connected": c["connected"],
            "failed": c["failed"],
            "lost": c["lost"],
            "aborted": c["aborted"],
            "rate": round(c["connected"] / connect_window, 1)
            if connect_window > 0
            else float(c["connected"]),
            "latency_ms": _latency(totals.connect_latency),
        },
        "errors": errors,
    }
    if options.command == "conn":
        return report
    report["qos"] = options.qos
    report["topics"] = list(options.topics)
    msgs: dict[str, Any] = {
        "window_s": round(window, 3),
        "rate": round(rate, 1),
        "rate_over_run": round(messages / duration, 1) if duration > 0 else 0.0,
        "latency_ms": _latency(totals.latency),
    }
    if options.command == "pub":
        report["payload_size"] = options.size
        report["interval_ms"] = round(options.msg_interval * 1000, 3)
        report["limit"] = options.limit
        report["inflight"] = options.inflight
        msgs = {
            "sent": c["sent"],
            "acked": c["acked"],
            "finished_clients": c["finished"],
            **msgs,
            "latency_kind": "ack" if options.qos else None,
        }
        if not options.qos:
            msgs["latency_ms"] = None
    else:
        report["limit"] = options.limit
        report["subscribed"] = c["subscribed"]
        msgs = {
            "received": c["received"],
            "with_timestamp": c["stamped"],
            "finished_clients": c["finished"],
            **msgs,
            "latency_kind": "end_to_end" if c["stamped"] else None,
        }
    report["messages"] = msgs
    return report


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _ms(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _latency_line(lat: dict[str, Any]) -> str:
    return (
        f"p50 {_ms(lat['p50'])}  p90 {_ms(lat['p90'])}  p99 {_ms(lat['p99'])}  "
        f"max {_ms(lat['max'])} ms  (mean {_ms(lat['mean'])} ms, {_plural(lat['count'], 'sample')})"
    )


def format_text(report: dict[str, Any]) -> str:
    """The report for people, one fact a line."""
    command = report["command"]
    lines = [f"{report['tool']} {command}: {report['url']}, MQTT {report['mqtt_version']}"]
    if command != "conn":
        detail = f"QoS {report['qos']}, topic {', '.join(report['topics'])}"
        if command == "pub":
            detail += f", {report['payload_size']}-byte payloads"
        lines.append(f"  {detail}")
    lines.append(
        f"  duration      {report['duration_s']:.2f} s (stopped: {report['stopped_by']}; "
        f"{report['workers']} worker{'s' if report['workers'] > 1 else ''}, {report['loop']})"
    )
    conn = report["connections"]
    lines.append(
        f"  connections   {conn['connected']:,}/{report['clients']:,} connected, "
        f"{conn['failed']:,} failed, {conn['lost']:,} lost ({conn['rate']:,.1f} conn/s)"
        + (f", {conn['aborted']:,} still connecting at the stop" if conn["aborted"] else "")
    )
    if conn["latency_ms"]:
        lines.append(f"  connect       {_latency_line(conn['latency_ms'])}")
    msgs = report.get("messages")
    if msgs is not None:
        if command == "pub":
            sent = f"{msgs['sent']:,} sent"
            if report["qos"]:
                sent += f", {msgs['acked']:,} acknowledged"
        else:
            sent = f"{msgs['received']:,} received by {_plural(report['subscribed'], 'subscriber')}"
        lines.append(f"  messages      {sent}")
        lines.append(
            f"  throughput    {msgs['rate']:,.1f} msg/s over {msgs['window_s']:.2f} s "
            f"({msgs['rate_over_run']:,.1f} msg/s over the whole run)"
        )
        if msgs["latency_ms"]:
            kind = "ack latency" if msgs["latency_kind"] == "ack" else "latency"
            lines.append(f"  {kind:<13} {_latency_line(msgs['latency_ms'])}")
        elif command == "sub" and msgs["received"]:
            lines.append("  latency       n/a (payloads carried no tidemq bench timestamp)")
    errors = report["errors"]
    if errors:
        lines.append("  errors        " + ", ".join(f"{k}: {v:,}" for k, v in errors.items()))
    else:
        lines.append("  errors        none")
    return "\n".join(lines) + "\n"
