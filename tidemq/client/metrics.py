"""Client metrics: per session and per manager, exported as JSON or for Prometheus.

Per session (``Client.metrics``): messages and payload bytes sent and received, errors,
reconnects, offline drops, the times of the last message and the last error, and average
rates since the counters started. Per manager: the sums, the number of connected
sessions, and the latest times.

``PrometheusExporter`` (needs ``prometheus_client``: ``pip install 'tidemq[prometheus]'``)
exposes MQTTX's metric names, each with a ``session`` label::

    mqtt_session_messages_sent_total, mqtt_session_messages_received_total,
    mqtt_session_bytes_sent_total, mqtt_session_bytes_received_total,
    mqtt_session_errors_total, mqtt_session_reconnects_total, mqtt_session_dropped_total,
    mqtt_session_connected, mqtt_session_status, mqtt_session_subscriptions,
    mqtt_session_last_message_timestamp_seconds, mqtt_session_last_error_timestamp_seconds,
    mqtt_session_persistent, mqtt_session_clean_session, mqtt_session_auto_reconnect,
    mqtt_session_message_rate, mqtt_session_bytes_rate

It is a custom collector: values are read from the sessions at scrape time, nothing is
counted twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .options import ClientState, rates

if TYPE_CHECKING:
    from .manager import Session, SessionManager

__all__ = [
    "JSONExporter",
    "ManagerMetrics",
    "PrometheusExporter",
    "manager_metrics",
    "session_metrics",
]


@dataclass(frozen=True, slots=True)
class ManagerMetrics:
    active_sessions: int
    total_sessions: int
    total_messages: int
    total_bytes: int
    error_count: int
    reconnect_count: int
    dropped_count: int
    last_update: float
    last_message_time: float | None
    last_error_time: float | None


def session_metrics(session: Session, now: float | None = None) -> dict[str, Any]:
    """One session's metrics as a flat dict (MQTTX's names, plus status and rates)."""
    m = session.metrics
    message_rate, bytes_rate = rates(m, now)
    client = session.client
    return {
        "session": session.name,
        "status": session.status.name.lower(),
        "status_code": int(session.status),
        "connected": session.is_connected,
        "messages_sent": m.messages_sent,
        "messages_received": m.messages_received,
        "bytes_sent": m.bytes_sent,
        "bytes_received": m.bytes_received,
        "errors": m.errors,
        "reconnects": m.reconnects,
        "dropped": m.dropped,
        "last_message": m.last_message,
        "last_error": m.last_error,
        "message_rate": message_rate,
        "bytes_rate": bytes_rate,
        "subscriptions": len(client.subscriptions),
        "persistent": session.persistent,
        "clean_session": client.clean_start,
        "auto_reconnect": client.reconnect_policy is not None,
    }


def manager_metrics(manager: SessionManager) -> ManagerMetrics:
    sessions = [manager.get_session(n) for n in manager.list_sessions()]
    metrics = [s.metrics for s in sessions]
    last_messages = [m.last_message for m in metrics if m.last_message is not None]
    last_errors = [m.last_error for m in metrics if m.last_error is not None]
    return ManagerMetrics(
        active_sessions=sum(1 for s in sessions if s.status is ClientState.CONNECTED),
        total_sessions=len(sessions),
        total_messages=sum(m.messages_sent + m.messages_received for m in metrics),
        total_bytes=sum(m.bytes_sent + m.bytes_received for m in metrics),
        error_count=sum(m.errors for m in metrics),
        reconnect_count=sum(m.reconnects for m in metrics),
        dropped_count=sum(m.dropped for m in metrics),
        last_update=time.time(),
        last_message_time=max(last_messages, default=None),
        last_error_time=max(last_errors, default=None),
    )


class JSONExporter:
    """``export(manager)``: ``{"manager": {...}, "sessions": {name: {...}}}`` as JSON."""

    def __init__(self, pretty: bool = False) -> None:
        self.pretty = pretty

    def data(self, manager: SessionManager) -> dict[str, Any]:
        now = time.time()
        return {
            "manager": asdict(manager_metrics(manager)),
            "sessions": {
                name: session_metrics(manager.get_session(name), now)
                for name in manager.list_sessions()
            },
        }

    def export(self, manager: SessionManager) -> str:
        return json.dumps(self.data(manager), indent=2 if self.pretty else None, sort_keys=True)


# (name suffix, help, kind, key in session_metrics)
_SERIES = (
    ("messages_sent_total", "Messages published", "counter", "messages_sent"),
    ("messages_received_total", "Messages received", "counter", "messages_received"),
    ("bytes_sent_total", "Payload bytes published", "counter", "bytes_sent"),
    ("bytes_received_total", "Payload bytes received", "counter", "bytes_received"),
    ("errors_total", "Errors", "counter", "errors"),
    ("reconnects_total", "Reconnect attempts", "counter", "reconnects"),
    ("dropped_total", "Publishes dropped while offline", "counter", "dropped"),
    ("connected", "1 when connected", "gauge", "connected"),
    (
        "status",
        "0 disconnected, 1 connecting, 2 connected, 3 reconnecting, 4 closed",
        "gauge",
        "status_code",
    ),
    ("subscriptions", "Topic filters subscribed", "gauge", "subscriptions"),
    ("last_message_timestamp_seconds", "Time of the last message", "gauge", "last_message"),
    ("last_error_timestamp_seconds", "Time of the last error", "gauge", "last_error"),
    ("persistent", "1 when the session is persisted", "gauge", "persistent"),
    ("clean_session", "1 for a clean session", "gauge", "clean_session"),
    ("auto_reconnect", "1 when reconnecting automatically", "gauge", "auto_reconnect"),
    ("message_rate", "Messages per second (average)", "gauge", "message_rate"),
    ("bytes_rate", "Payload bytes per second (average)", "gauge", "bytes_rate"),
)


class PrometheusExporter:
    """A ``prometheus_client`` collector over a manager's sessions.

    ``exporter.register(registry)`` adds it to a registry (the default one if omitted);
    ``exporter.export()`` returns the text exposition format directly.
    """

    def __init__(self, manager: SessionManager, prefix: str = "mqtt_session") -> None:
        self.manager = manager
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        now = time.time()
        rows = [
            (name, session_metrics(self.manager.get_session(name), now))
            for name in self.manager.list_sessions()
        ]
        for suffix, text, kind, key in _SERIES:
            name = f"{self.prefix}_{suffix}"
            family: Any
            if kind == "counter":
                family = CounterMetricFamily(name.removesuffix("_total"), text, labels=["session"])
            else:
                family = GaugeMetricFamily(name, text, labels=["session"])
            for session, row in rows:
                value = row[key]
                if value is None:
                    continue
                family.add_metric([session], float(value))
            yield family

    def register(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY

        (registry or REGISTRY).register(self)

    def export(self) -> str:
        from prometheus_client import CollectorRegistry, generate_latest

        registry = CollectorRegistry()
        registry.register(self)
        return generate_latest(registry).decode("utf-8")
