"""Client options that need no connection: URLs, states, counters, payload conversion."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import IntEnum
from urllib.parse import unquote, urlsplit

from .errors import ConfigurationError

__all__ = ["ClientMetrics", "ClientState", "Endpoint", "parse_url", "payload_bytes", "rates"]

DEFAULT_PORTS = {
    "mqtt": 1883,
    "tcp": 1883,
    "mqtts": 8883,
    "ssl": 8883,
    "tls": 8883,
    # WebSocket URLs are web URLs: without a port they mean the HTTP(S) ports.
    "ws": 80,
    "wss": 443,
}
TLS_SCHEMES = ("mqtts", "ssl", "tls", "wss")
WEBSOCKET_SCHEMES = ("ws", "wss")
# The WebSocket path when the URL has none: where EMQX, Mosquitto setups, MQTTX and
# TideMQ's own listener serve MQTT.
DEFAULT_WEBSOCKET_PATH = "/mqtt"
# MQTTX defaults: keepalive 60 s, connect timeout 30 s.
DEFAULT_KEEPALIVE = 60
DEFAULT_CONNECT_TIMEOUT = 30.0
# Publishes kept while offline before new ones are dropped (MQTTX's MaxPendingMessages
# default is 1000 as well).
DEFAULT_MAX_BUFFERED = 1000
# Topic aliases we let the broker use towards us (MQTT 5); 0 would disable them.
DEFAULT_TOPIC_ALIAS_MAXIMUM = 16
# How long close() waits for the broker to close after our DISCONNECT.
CLOSE_TIMEOUT = 5.0

# Subscription identifiers are variable byte integers of 1..268,435,455 (MQTT 5.0 §3.8.2.1.2).
MAX_SUBSCRIPTION_ID = 268_435_455

VERSIONS = {3: 3, 31: 3, 4: 4, 311: 4, 5: 5, 50: 5}


class ClientState(IntEnum):
    """Connection status; the numbers are MQTTX's session status codes."""

    DISCONNECTED = 0
    CONNECTING = 1
    CONNECTED = 2
    RECONNECTING = 3
    CLOSED = 4


@dataclass(slots=True)
class ClientMetrics:
    """Counters of one client (payload bytes; times from ``time.time()``)."""

    started: float = field(default_factory=time.time)
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    errors: int = 0
    reconnects: int = 0
    dropped: int = 0
    last_message: float | None = None
    last_error: float | None = None


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    websocket: bool = False
    path: str = ""  # WebSocket only: the request target (path and query)


def parse_url(url: str) -> Endpoint:
    """Parse ``mqtt://[user:pass@]host[:port]`` (also ``tcp``, ``mqtts``, ``ssl``, ``tls``)
    or ``ws://[user:pass@]host[:port][/path]`` (also ``wss``; path ``/mqtt`` if none).

    Raises:
        ConfigurationError: anything that is not a broker URL.
    """
    if "://" not in url:
        url = "mqtt://" + url
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ConfigurationError(f"unsupported scheme in broker URL {url!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"bad port in broker URL {url!r}") from exc
    host = parts.hostname
    if not host:
        raise ConfigurationError(f"no host in broker URL {url!r}")
    websocket = scheme in WEBSOCKET_SCHEMES
    path = ""
    if websocket:
        path = parts.path or DEFAULT_WEBSOCKET_PATH
        if parts.query:
            path += "?" + parts.query
    return Endpoint(
        host=host,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        tls=scheme in TLS_SCHEMES,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        websocket=websocket,
        path=path,
    )


def payload_bytes(payload: bytes | bytearray | memoryview | str | float | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8")
    if isinstance(payload, bytearray | memoryview):
        return bytes(payload)
    if isinstance(payload, int | float) and not isinstance(payload, bool):
        return str(payload).encode("ascii")
    raise ConfigurationError(f"payload must be bytes, str, int or float, not {type(payload)}")


def rates(metrics: ClientMetrics, now: float | None = None) -> tuple[float, float]:
    """(messages per second, payload bytes per second), sent and received, on average
    since the counters started."""
    elapsed = max((now if now is not None else time.time()) - metrics.started, 1e-9)
    messages = metrics.messages_sent + metrics.messages_received
    return messages / elapsed, (metrics.bytes_sent + metrics.bytes_received) / elapsed
