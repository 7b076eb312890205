"""Listeners: ``tcp://``, ``tls://``, ``ws://`` and ``wss://`` on ``loop.create_server``.

``ListenerSpec`` says what to bind and how to treat each connection; ``start_listener``
binds it and returns a ``Listener``. Every scheme uses the same asyncio.Protocol family
(``StreamConnection``, ``WebSocketConnection``) feeding the same handler interface, and
TLS runs inside them (``tls.py``), never in ``create_server(ssl=...)``, so a PROXY header
can precede it and its failures are logged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from .interfaces import HandlerFactory
from .stream import DEFAULT_HANDSHAKE_TIMEOUT, ListenerState, StreamConnection, WriteBatcher
from .tls import ServerTLS, TLSOptions
from .websocket import WebSocketConnection, WebSocketOptions

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_PORTS",
    "Listener",
    "ListenerSpec",
    "parse_listen_url",
    "start_listener",
]

log = logging.getLogger("tidemq.transport")

DEFAULT_PORTS = {"tcp": 1883, "tls": 8883, "ws": 8083, "wss": 8084}
# Listen backlog: large enough for connection storms (Mosquitto uses 100; EMQX 1024).
DEFAULT_BACKLOG = 1024
_TLS_SCHEMES = ("tls", "wss")
_WS_SCHEMES = ("ws", "wss")
# ALPN: "mqtt" is the IANA-registered ALPN id for MQTT over TLS; secure WebSocket is HTTP.
_ALPN = {"tls": ("mqtt",), "wss": ("http/1.1",)}


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """A listener to start: a parsed URL such as ``tcp://0.0.0.0:1883`` plus its options.

    Attributes:
        scheme: ``tcp``, ``tls``, ``ws`` or ``wss``.
        host, port: where to bind (port 0: any free port).
        path: the WebSocket path (``/mqtt``); empty for ``tcp`` and ``tls``.
        name: the listener's name in logs and ``ClientInfo.listener``.
        max_connections: most concurrent connections on this listener; 0 = unlimited.
        proxy_protocol: connections start with a PROXY protocol v1/v2 header.
        handshake_timeout: seconds allowed for the PROXY, TLS and WebSocket handshakes.
        tls: certificates and client-certificate policy; required for ``tls``/``wss``.
        ws: WebSocket options for ``ws``/``wss`` (defaults when None; ``path`` wins).
    """

    scheme: str
    host: str
    port: int
    path: str = ""
    name: str = ""
    max_connections: int = 0
    proxy_protocol: bool = False
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    tls: TLSOptions | None = None
    ws: WebSocketOptions | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def parse_listen_url(url: str, name: str = "") -> ListenerSpec:
    """Parse ``scheme://host:port[/path]``; raises ``ValueError`` on anything else.

    Only the address is read here; options (TLS files, ...) come from the configuration
    (``tidemq.config``), which also reads the URL's query.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        known = ", ".join(f"{s}://" for s in DEFAULT_PORTS)
        raise ValueError(f"unsupported listener scheme in {url!r} (use {known})")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port in listener {url!r}") from exc
    host = parts.hostname or "0.0.0.0"  # noqa: S104 - a broker listens on all interfaces by default
    path = parts.path or ("/mqtt" if scheme in _WS_SCHEMES else "")
    if port is None:
        port = DEFAULT_PORTS[scheme]
    return ListenerSpec(scheme, host, port, path, name or f"{scheme}:{port}")


class Listener:
    """A started listener: its spec, the real bound addresses, its server and connections."""

    def __init__(self, spec: ListenerSpec, server: asyncio.Server, state: ListenerState) -> None:
        self.spec = spec
        self.server = server
        self.state = state

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for sock in self.server.sockets:
            addr = sock.getsockname()
            out.append((str(addr[0]), int(addr[1])))
        return out

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def connection_count(self) -> int:
        """Open connections, those still in their PROXY/TLS/WebSocket handshake included."""
        return len(self.state.connections)

    def close(self) -> None:
        """Stop accepting. Open connections stay; see ``close_connections``."""
        self.state.closing = True
        self.server.close()

    def close_connections(self) -> None:
        """Close every connection still open (the broker closes its own clients first)."""
        for conn in list(self.state.connections):
            conn.close()

    def reload_tls(self) -> bool:
        """Re-read this listener's certificate files for new connections (no-op without
        TLS); returns False when the files could not be loaded (the old ones stay)."""
        tls = self.state.tls
        return tls.reload() if tls is not None else True

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


async def start_listener(
    spec: ListenerSpec, factory: HandlerFactory, batcher: WriteBatcher
) -> Listener:
    """Bind *spec* (port 0 picks a free port) and serve connections through *factory*.

    Raises:
        ValueError: a ``tls``/``wss`` spec without TLS options, or bad options.
        OSError: the address cannot be bound, or a certificate file cannot be loaded.
    """
    tls: ServerTLS | None = None
    if spec.scheme in _TLS_SCHEMES:
        if spec.tls is None:
            raise ValueError(
                f"{spec.scheme}:// listener {spec.name} needs a certificate "
                "(listeners.tls.certfile)"
            )
        options = spec.tls
        if options.alpn == TLSOptions.__dataclass_fields__["alpn"].default:
            options = dataclasses.replace(options, alpn=_ALPN[spec.scheme])
        tls = ServerTLS(options, spec.name)
    state = ListenerState(
        spec.name,
        max_connections=spec.max_connections,
        proxy_protocol=spec.proxy_protocol,
        handshake_timeout=spec.handshake_timeout,
        tls=tls,
    )
    name = spec.name
    loop = asyncio.get_running_loop()
    if spec.scheme in _WS_SCHEMES:
        ws = dataclasses.replace(spec.ws or WebSocketOptions(), path=spec.path or "/mqtt")

        def make() -> StreamConnection:
            return WebSocketConnection(factory, batcher, name, state, ws)
    elif spec.scheme in ("tcp", "tls"):

        def make() -> StreamConnection:
            return StreamConnection(factory, batcher, name, state)
    else:
        raise ValueError(f"unsupported listener scheme {spec.scheme!r}")
    server = await loop.create_server(
        make,
        host=spec.host,
        port=spec.port,
        backlog=DEFAULT_BACKLOG,
        reuse_address=True,
    )
    return Listener(spec, server, state)
