"""``StreamConnection``: the asyncio.Protocol under every byte-stream listener.

Writes are batched: ``write`` appends to a per-connection list and marks the connection
dirty in the loop-wide ``WriteBatcher``; one ``call_soon`` callback flushes every dirty
connection once, after the current read burst (nats ``addToPCD``/``flushClients``). A
message fanned out to 100 subscribers while handling one read therefore costs 100 appends
and at most one ``transport.write`` per subscriber, not one per message.

Flow control: when the kernel buffer is full asyncio calls ``pause_writing``; the
connection records it (``writing_paused``) and exposes ``buffered_bytes()`` so the broker
can decide to queue or drop instead of growing memory without bound.

Layers: a listener may put a PROXY protocol header (``proxy.py``) and TLS (``tls.py``)
under the MQTT bytes, in that order on the wire. Both are sans-IO objects driven from
here; the broker's handler is created only once they are done (and, for WebSocket, once
the HTTP upgrade is accepted), so it sees the real peer address and the client
certificate from its first byte. Until then the listener's ``handshake_timeout`` runs.
A plain TCP connection has no layer and keeps the direct path: bytes in, handler.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, cast

from .proxy import ProxyHeaderParser, ProxyProtocolError
from .tls import certificate_identity

if TYPE_CHECKING:
    from .interfaces import ConnectionHandler, HandlerFactory
    from .tls import ServerTLS, TLSSession

log = logging.getLogger("tidemq.transport")

#: Time allowed for everything before MQTT: the PROXY header, the TLS handshake and the
#: WebSocket upgrade (EMQX listener handshake_timeout 15s). The broker's own CONNECT
#: timeout starts after it.
DEFAULT_HANDSHAKE_TIMEOUT = 15.0


class WriteBatcher:
    """Collects connections with pending output and flushes them once per loop pass."""

    __slots__ = ("_dirty", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[StreamConnection] = []
        self._scheduled = False

    def mark(self, conn: StreamConnection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()


class ListenerState:
    """What the connections of one listener share (uvicorn's ``ServerState``): its options,
    its TLS context and the set of its open connections.

    Attributes:
        name: the listener's name, as links report it (``Link.listener``).
        max_connections: most concurrent connections on this listener; 0 = unlimited.
        proxy_protocol: every connection starts with a PROXY protocol v1/v2 header.
        handshake_timeout: seconds for the PROXY header, TLS and WebSocket handshakes.
        tls: the listener's TLS contexts (``tls://``, ``wss://``), else None.
        connections: the open connections, handshaking ones included.
        closing: set when the listener stops; WebSocket closes then say 1001 Going Away.
    """

    __slots__ = (
        "closing",
        "connections",
        "handshake_timeout",
        "max_connections",
        "name",
        "proxy_protocol",
        "tls",
    )

    def __init__(
        self,
        name: str,
        *,
        max_connections: int = 0,
        proxy_protocol: bool = False,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        tls: ServerTLS | None = None,
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.proxy_protocol = proxy_protocol
        self.handshake_timeout = handshake_timeout
        self.tls = tls
        self.connections: set[StreamConnection] = set()
        self.closing = False


class StreamConnection(asyncio.Protocol):
    """One accepted byte-stream connection; the broker sees it as a ``Link``.

    Attributes:
        listener: the listener's name.
        peer: the client's (address, port): from the PROXY header when the listener
            expects one, else the socket's.
        cert_common_name: the CN of the verified client certificate (TLS), else None.
        cert_identity: what replaces the CONNECT username under the listener's
            ``cert_as_username`` (the CN or the RFC 4514 DN), else None.
        cert_identity_required: the listener's ``cert_as_username`` is ``cn`` or ``dn``:
            a client whose certificate yields no identity must be refused, never fall
            back to the username it claims (Mosquitto's use_identity_as_username).
    """

    __slots__ = (
        "_batcher",
        "_closing",
        "_factory",
        "_handler",
        "_layered",
        "_out",
        "_out_size",
        "_proxy",
        "_state",
        "_timer",
        "_tls",
        "_wrapped",
        "cert_common_name",
        "cert_identity",
        "cert_identity_required",
        "listener",
        "peer",
        "transport",
        "writing_paused",
    )

    #: The application protocol has its own handshake after TLS (WebSocket's HTTP upgrade).
    _upgrade = False

    def __init__(
        self,
        factory: HandlerFactory,
        batcher: WriteBatcher,
        listener: str,
        state: ListenerState | None = None,
    ) -> None:
        self._factory = factory
        self._batcher = batcher
        self.listener = listener
        self._state = state
        self._handler: ConnectionHandler | None = None
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._closing = False
        self._proxy: ProxyHeaderParser | None = None
        self._tls: TLSSession | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._layered = False  # inbound bytes go through the PROXY parser or TLS first
        self._wrapped = False  # outbound bytes go through framing or TLS (``_frame``/``_send``)
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.writing_paused = False
        self.cert_common_name: str | None = None
        self.cert_identity: str | None = None
        self.cert_identity_required = False

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they quack alike.
        self.transport = cast("asyncio.Transport", transport)
        # TCP_NODELAY: asyncio and uvloop both set it on every TCP transport already.
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        state = self._state
        if state is None:
            self._open()
            return
        if state.closing:
            self.abort()
            return
        if state.max_connections and len(state.connections) >= state.max_connections:
            log.info(
                "refusing %s on %s: the listener is at max_connections (%d)",
                self._peer_text(),
                self.listener,
                state.max_connections,
            )
            self.abort()
            return
        state.connections.add(self)
        if state.proxy_protocol:
            self._proxy = ProxyHeaderParser()
        if state.tls is not None:
            self._tls = state.tls.session()
            self._wrapped = True
        self._layered = self._proxy is not None or self._tls is not None
        if self._layered or self._upgrade:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(state.handshake_timeout, self._handshake_timeout)
        if not self._layered:
            self._transport_ready()

    def data_received(self, data: bytes) -> None:
        if self._layered:
            data = self._unwrap(data)
            if not data:
                return
        handler = self._handler
        if handler is not None:
            handler.data_received(data)

    def eof_received(self) -> bool:
        return False  # close the transport; the handler hears it in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._out = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._state is not None:
            self._state.connections.discard(self)
        handler = self._handler
        self._handler = None
        if handler is not None:
            handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False

    # --- Link ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Queue *data*; it is written with everything else queued in this loop pass."""
        if self._closing:
            return
        out = self._out
        if out is None:
            self._out = [data]
            self._batcher.mark(self)
        else:
            out.append(data)
        self._out_size += len(data)

    def flush(self) -> None:
        out = self._out
        if out is None:
            return
        self._out = None
        self._out_size = 0
        transport = self.transport
        if transport is None or self._closing:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        if self._wrapped:
            self._send(self._frame(data))
        else:
            transport.write(data)

    def buffered_bytes(self) -> int:
        """Bytes queued here plus those waiting in the transport's buffer."""
        transport = self.transport
        pending = transport.get_write_buffer_size() if transport is not None else 0
        return self._out_size + pending

    def close(self) -> None:
        """Flush what is queued, then close gracefully."""
        if self._closing:
            return
        self.flush()
        self._finish(self._goodbye())

    def abort(self) -> None:
        self._closing = True
        self._out = None
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()

    # --- layers ----------------------------------------------------------------------

    def _open(self) -> None:
        """Everything before MQTT is done: hand the connection to the broker."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._handler = self._factory(self)

    def _transport_ready(self) -> None:
        """The PROXY header and TLS handshake are done (or were never expected)."""
        self._open()

    def _frame(self, data: bytes) -> bytes:
        """Application framing of outbound MQTT bytes (WebSocket frames them)."""
        return data

    def _goodbye(self) -> bytes:
        """Application bytes that end the connection (a WebSocket close frame)."""
        return b""

    def _send(self, data: bytes) -> None:
        """Write application-level bytes now, through TLS when the listener has it."""
        transport = self.transport
        if transport is None:
            return
        tls = self._tls
        if tls is not None:
            data = tls.encrypt(data)
        if data:
            transport.write(data)

    def _finish(self, last: bytes = b"") -> None:
        """Send *last* and TLS's close_notify, then close the transport gracefully."""
        self._closing = True
        self._out = None
        transport = self.transport
        if transport is None:
            return
        tls = self._tls
        if tls is not None:
            if tls.handshake_done:
                data = tls.encrypt(last) if last else b""
                data += tls.close()
                if data:
                    transport.write(data)
        elif last:
            transport.write(last)
        transport.close()

    def _fail(self, reason: str) -> None:
        """Close because of bad input before or around MQTT; one log line."""
        log.info("closing %s on %s: %s", self._peer_text(), self.listener, reason)
        self._finish()

    def _unwrap(self, data: bytes) -> bytes:
        """Run *data* through the PROXY parser and TLS; returns the plaintext for above."""
        proxy = self._proxy
        if proxy is not None:
            try:
                result = proxy.feed(data)
            except ProxyProtocolError as exc:
                self._fail(f"bad PROXY protocol header: {exc}")
                return b""
            if result is None:
                return b""
            info, data = result
            self._proxy = None
            if info.source is not None:
                self.peer = info.source
            if self._tls is None:
                self._layered = False
                self._transport_ready()
            if not data or self._closing:
                return b""
        tls = self._tls
        if tls is None:
            return data
        transport = self.transport
        assert transport is not None
        handshaking = not tls.handshake_done
        try:
            plain = tls.receive(data)
        except ssl.SSLError as exc:
            alert = tls.data_to_send()
            if alert:
                transport.write(alert)
            what = "TLS handshake failed" if handshaking else "TLS error"
            self._fail(f"{what}: {exc.reason or exc}")
            return b""
        out = tls.data_to_send()
        if out:
            transport.write(out)
        if handshaking and tls.handshake_done:
            state = self._state
            mode = state.tls.options.cert_as_username if state and state.tls else "none"
            self.cert_common_name, self.cert_identity = certificate_identity(
                tls.peer_certificate(), mode
            )
            self.cert_identity_required = mode != "none"
            self._transport_ready()
        if tls.eof:
            # close_notify from the peer: answer it; what came before it is still delivered.
            self.close()
        return plain

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._handler is not None or self._closing:
            return
        state = self._state
        timeout = state.handshake_timeout if state is not None else DEFAULT_HANDSHAKE_TIMEOUT
        log.info(
            "closing %s on %s: handshake not completed within %g s",
            self._peer_text(),
            self.listener,
            timeout,
        )
        self.abort()

    def _peer_text(self) -> str:
        peer = self.peer
        if peer is None:
            return "?"
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
