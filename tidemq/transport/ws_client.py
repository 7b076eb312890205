"""The client side of a WebSocket byte stream (``ws://``, ``wss://``), on wsproto.

``open_websocket`` connects (TCP, TLS for ``wss``), sends the HTTP upgrade with the
subprotocols asked for, and once the server answered 101 hands the caller's
``asyncio.Protocol`` a transport that looks like a TCP one: ``write`` sends the bytes as
one masked binary frame, received binary frames reach ``data_received`` as they arrive
(the protocol above does its own framing), pings are answered, and ``close`` performs the
closing handshake. Nothing here knows what the bytes mean.

Writes are framed here rather than by wsproto: a client frame is a header, a fresh 4-byte
mask and the payload XORed with it (RFC 6455 §5.3), a few lines that spare wsproto's
per-frame cost. Control frames and everything received go through wsproto.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError as WSLocalProtocolError
from wsproto.utilities import RemoteProtocolError as WSRemoteProtocolError

__all__ = ["CLOSE_TIMEOUT", "WebSocketClientTransport", "WebSocketHandshakeError", "open_websocket"]

log = logging.getLogger("tidemq.transport")

#: Seconds ``close()`` waits for the server to answer our close frame before dropping the
#: connection (RFC 6455 §7.1.1 lets the client close TCP once the server has).
CLOSE_TIMEOUT = 5.0
#: The largest body of an HTTP refusal kept for the error message.
_MAX_REJECT_BODY = 512

_HEADER_SHORT = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")
_BINARY_FIN = 0x82
_MASKED = 0x80


class WebSocketHandshakeError(ConnectionError):
    """The server did not upgrade the connection.

    Attributes:
        status: the HTTP status it answered with (None: it closed, or the answer was not a
            valid upgrade).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _mask(payload: bytes, key: bytes) -> bytes:
    """XOR *payload* with the repeated 4-byte *key*, as one big-integer operation."""
    n = len(payload)
    if not n:
        return b""
    pad = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


def _client_frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        header = _HEADER_SHORT.pack(_BINARY_FIN, _MASKED | n)
    elif n < 0x10000:
        header = _HEADER_16.pack(_BINARY_FIN, _MASKED | 126, n)
    else:
        header = _HEADER_64.pack(_BINARY_FIN, _MASKED | 127, n)
    key = os.urandom(4)
    return header + key + _mask(data, key)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class WebSocketClientTransport(asyncio.Transport):
    """What the inner protocol writes to: bytes in, binary frames out."""

    def __init__(self, outer: _WebSocketClientProtocol, raw: asyncio.Transport) -> None:
        super().__init__()
        self._outer = outer
        self._raw = raw

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._outer.closing or not data:
            return
        self._raw.write(_client_frame(bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        self._outer.start_close(CloseReason.NORMAL_CLOSURE)

    def abort(self) -> None:
        self._outer.closing = True
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._outer.closing or self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "subprotocol":
            return self._outer.subprotocol
        return self._raw.get_extra_info(name, default)

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._outer.inner

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        assert isinstance(protocol, asyncio.Protocol)
        self._outer.inner = protocol


class _WebSocketClientProtocol(asyncio.Protocol):
    """Owns the socket: the upgrade, then frames in both directions."""

    def __init__(
        self,
        inner: asyncio.Protocol,
        request: Request,
        loop: asyncio.AbstractEventLoop,
        close_timeout: float,
    ) -> None:
        self.inner = inner
        self._request = request
        self._loop = loop
        self._close_timeout = close_timeout
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._raw: asyncio.Transport | None = None
        self.transport: WebSocketClientTransport | None = None
        self.handshake: asyncio.Future[None] = loop.create_future()
        # Whoever awaited it may have given up (a timeout): never "exception not retrieved".
        self.handshake.add_done_callback(_retrieve)
        self.subprotocol: str | None = None
        self.closing = False
        self._reject_status: int | None = None
        self._reject_body = b""
        self._close_timer: asyncio.TimerHandle | None = None
        self._lost = False

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._raw = cast(asyncio.Transport, transport)
        self._raw.write(self._ws.send(self._request))

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, BytesMessage):
                    if not self.closing:
                        self.inner.data_received(bytes(event.data))
                elif isinstance(event, Ping):
                    self._send(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._closed_by_server(event)
                    return
                elif isinstance(event, TextMessage):
                    # MQTT travels in binary frames only [MQTT-6.0.0-1].
                    self.start_close(CloseReason.UNSUPPORTED_DATA, "text frame")
                    return
                elif isinstance(event, AcceptConnection):
                    self._accepted(event)
                elif isinstance(event, RejectConnection):
                    self._reject_status = event.status_code
                    if not event.has_body:
                        self._rejected()
                        return
                elif isinstance(event, RejectData):
                    room = _MAX_REJECT_BODY - len(self._reject_body)
                    self._reject_body += bytes(event.data[:room])
                    if event.body_finished:
                        self._rejected()
                        return
        except WSRemoteProtocolError as exc:
            self._fail(WebSocketHandshakeError(f"WebSocket protocol error: {exc}"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.closing = True
        if not self.handshake.done():
            if self._reject_status is not None:
                self._rejected()
            else:
                self.handshake.set_exception(
                    WebSocketHandshakeError("the server closed the connection during the upgrade")
                )
            return
        if self.transport is not None and not self._lost:
            self._lost = True
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.inner.resume_writing()

    # --- the upgrade -----------------------------------------------------------------

    def _accepted(self, event: AcceptConnection) -> None:
        assert self._raw is not None
        self.subprotocol = event.subprotocol
        self.transport = WebSocketClientTransport(self, self._raw)
        if not self.handshake.done():
            self.handshake.set_result(None)
        self.inner.connection_made(self.transport)

    def _rejected(self) -> None:
        status = self._reject_status
        body = self._reject_body.decode("utf-8", "replace").strip()
        text = f"WebSocket upgrade refused: HTTP {status}"
        if body:
            text += f": {body.splitlines()[0]}"
        self._fail(WebSocketHandshakeError(text, status))

    def _fail(self, exc: WebSocketHandshakeError) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        else:
            log.warning("%s", exc)
        self.closing = True
        if self._raw is not None:
            self._raw.abort()

    # --- closing ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if data and self._raw is not None and not self._raw.is_closing():
            self._raw.write(data)

    def start_close(self, code: int, reason: str = "") -> None:
        """Send a close frame, then drop the connection when the server answers (or
        after the close timeout)."""
        if self.closing:
            return
        self.closing = True
        raw = self._raw
        if raw is None:
            return
        try:
            if self._ws.state is ConnectionState.OPEN:
                self._send(self._ws.send(CloseConnection(code=code, reason=reason)))
        except WSLocalProtocolError:
            raw.close()
            return
        self._close_timer = self._loop.call_later(self._close_timeout, raw.abort)

    def _closed_by_server(self, event: CloseConnection) -> None:
        raw = self._raw
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            # The server closes first: echo its close (RFC 6455 §5.5.1).
            self._send(self._ws.send(event.response()))
        self.closing = True
        if raw is not None:
            raw.close()


async def open_websocket(
    protocol_factory: Callable[[], asyncio.Protocol],
    host: str,
    port: int,
    *,
    path: str = "/",
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    close_timeout: float = CLOSE_TIMEOUT,
) -> tuple[WebSocketClientTransport, asyncio.Protocol]:
    """Connect and upgrade; return the byte-stream transport and the protocol made by
    *protocol_factory* (already given ``connection_made``).

    Raises:
        WebSocketHandshakeError: the server refused the upgrade (``status``) or broke the
            protocol.
        OSError: the connection could not be made (also ``ssl.SSLError``).
    """
    loop = asyncio.get_running_loop()
    inner = protocol_factory()
    default_port = 443 if ssl is not None else 80
    name = f"[{host}]" if ":" in host else host
    request = Request(
        host=name if port == default_port else f"{name}:{port}",
        target=path or "/",
        subprotocols=list(subprotocols),
        extra_headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    )
    raw, outer = await loop.create_connection(
        lambda: _WebSocketClientProtocol(inner, request, loop, close_timeout),
        host,
        port,
        ssl=ssl,
        server_hostname=(server_hostname or host) if ssl is not None else None,
    )
    try:
        await outer.handshake
    except BaseException:
        raw.abort()
        raise
    assert outer.transport is not None
    return outer.transport, inner
