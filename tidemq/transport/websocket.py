"""MQTT over WebSocket (``ws://`` and ``wss://``), on h11 and wsproto, no web framework.

``WebSocketConnection`` is a ``StreamConnection`` whose application layer is WebSocket:

1. **Upgrade** (h11): the request line and headers are parsed by ``h11``; a wrong path is
   answered 404, a request that is not a WebSocket upgrade 400, another method 405, an
   unsupported ``Sec-WebSocket-Version`` 426, an ``Origin`` outside ``allowed_origins``
   403, and a subprotocol list without ``mqtt``/``mqttv3.1`` 400; each with one log line,
   then the connection closes. An accepted upgrade answers 101 with the subprotocol the
   client offered (``mqtt`` for 3.1.1 and 5.0 clients, ``mqttv3.1`` for 3.1 ones, as
   [MQTT-6.0.0-3] asks) and, when enabled and offered, ``permessage-deflate``.
2. **Frames** (wsproto): binary frames are a byte stream. MQTT packets may be split across
   frames or packed several to a frame in any way [MQTT-6.0.0-2]; the payload goes to the
   broker's handler as it arrives, the MQTT layer does the packet framing. Pings are
   answered with pongs. A text frame closes with 1003 [MQTT-6.0.0-1], a frame (or, with
   compression, a decompressed message) above ``max_frame_size`` with 1009, a protocol
   violation with the code wsproto gives (1002, 1007); a close from the client is echoed.
3. **Writes** are batched as for TCP (``WriteBatcher``): everything the broker queued in
   one loop pass leaves as one binary frame. Without compression the server's unmasked
   frame header is built here (RFC 6455 §5.2, a few bytes); with it wsproto compresses.

A broker-side close sends close 1000, or 1001 Going Away while the listener shuts down.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from .stream import ListenerState, StreamConnection, WriteBatcher

# The optional C frame scanner (setup.py builds it when a compiler is there). It takes
# exactly the frames the pure-Python loop of _fast_receive takes as binary frames.
# TIDEMQ_NO_EXTENSIONS=1 in the environment leaves it unused (the pure-Python path, e.g. to
# compare the two with bench/websocket.py --pure-too).
_c_scan: Callable[[bytes, int, int], tuple[bytes, int]] | None
try:
    from ._wsframe import scan as _c_scan
except ImportError:  # pragma: no cover - depends on how the package was installed
    _c_scan = None
if os.environ.get("TIDEMQ_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes"):
    _c_scan = None

#: Whether the C frame scanner was built and is in use (``tidemq --version`` says so).
C_SCANNER = _c_scan is not None

if TYPE_CHECKING:
    from .interfaces import HandlerFactory

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "MAX_HTTP_HEADER_SIZE",
    "SUBPROTOCOLS",
    "WebSocketConnection",
    "WebSocketOptions",
]

log = logging.getLogger("tidemq.transport")

#: The subprotocols MQTT registers with IANA: ``mqtt`` (3.1.1 and 5.0) and ``mqttv3.1``.
SUBPROTOCOLS: tuple[str, ...] = ("mqtt", "mqttv3.1")
#: Largest request line plus headers of the upgrade request: h11's own default, argued in
#: its source from what node.js, Tomcat, IIS and Apache accept.
MAX_HTTP_HEADER_SIZE = 16 * 1024
#: Largest frame payload accepted: twice the default maximum MQTT packet (1 MiB), so one
#: frame holds a largest packet and more. EMQX's websocket max_frame_size is unlimited.
DEFAULT_MAX_FRAME_SIZE = 2 * 1024 * 1024

#: Largest frame the fast path (``WebSocketConnection._fast_receive``) buffers and decodes
#: itself; larger ones, rare from MQTT clients, go to wsproto, which streams them.
FAST_FRAME_MAX = 64 * 1024
_PING_PONG = (0x89, 0x8A)  # FIN + ping, FIN + pong
_MAX_CONTROL_PAYLOAD = 125  # RFC 6455 §5.5

_WEBSOCKET_VERSION = b"13"
_BINARY_FIN = 0x82  # FIN + opcode 2 (RFC 6455 §5.2)
_HEADER_SHORT = struct.Struct("!BB")
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


@dataclass(frozen=True, slots=True)
class WebSocketOptions:
    """How a WebSocket listener accepts upgrades and frames.

    Attributes:
        path: the request path that is upgraded (``/mqtt``); any other is 404.
        allowed_origins: ``Origin`` values accepted, e.g. ``https://app.example.com``;
            empty: any. A request without ``Origin`` (not from a browser) is accepted.
        compression: negotiate ``permessage-deflate`` when the client offers it.
        max_frame_size: largest frame payload, and with compression the largest
            decompressed message, in bytes; larger closes with 1009. 0 = unlimited.
        subprotocols: accepted ``Sec-WebSocket-Protocol`` values.
    """

    path: str = "/mqtt"
    allowed_origins: tuple[str, ...] = ()
    compression: bool = False
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    subprotocols: tuple[str, ...] = SUBPROTOCOLS


class _FrameSizeLimit(Extension):
    """Closes with 1009 as soon as a data frame's header announces more than the limit.

    Not negotiated with the peer (it uses no RSV bit); it rides in wsproto's extension
    chain because that is where the frame header is seen before its payload.
    """

    name = "tidemq-frame-size-limit"

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if payload_length > self.limit and not opcode.iscontrol():
            return CloseReason.MESSAGE_TOO_BIG
        return RsvBits(False, False, False)


class _BoundedDeflate(PerMessageDeflate):
    """``permessage-deflate`` that never inflates a message beyond *limit* bytes.

    wsproto's version inflates each chunk without bound, so 256 KiB of compressed zeros
    could become 256 MiB; here ``decompress`` gets ``max_length`` and an overrun is 1009.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._inflated = 0

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._inbound_compressed or not self._inbound_is_compressible or not self._limit:
            return super().frame_inbound_payload_data(proto, data)
        decompressor = self._decompressor
        assert decompressor is not None
        room = self._limit - self._inflated
        try:
            out = decompressor.decompress(data, room + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if len(out) > room or decompressor.unconsumed_tail:
            return CloseReason.MESSAGE_TOO_BIG
        self._inflated += len(out)
        return out

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        result = super().frame_inbound_complete(proto, fin)
        if fin:
            self._inflated = 0
        return result


def _unmask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 §5.3: XOR with the 4-byte key, as one big-integer operation."""
    n = len(payload)
    if not n:
        return b""
    mask = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(mask, "little")).to_bytes(
        n, "little"
    )


def _tokens(values: Sequence[bytes]) -> list[str]:
    """Comma-separated header values as stripped tokens (latin-1: never fails)."""
    return [t.strip() for v in values for t in v.decode("latin-1").split(",") if t.strip()]


def _frame_header(length: int) -> bytes:
    if length < 126:
        return _HEADER_SHORT.pack(_BINARY_FIN, length)
    if length < 0x10000:
        return _HEADER_16.pack(_BINARY_FIN, 126, length)
    return _HEADER_64.pack(_BINARY_FIN, 127, length)


class WebSocketConnection(StreamConnection):
    """One WebSocket connection; the broker sees it as a ``Link``, like a TCP one.

    Attributes:
        subprotocol: the subprotocol agreed in the upgrade (``mqtt``, ``mqttv3.1``), if any.
    """

    __slots__ = ("_fast_frames", "_fast_in", "_http", "_inbuf", "_options", "_ws", "subprotocol")

    _upgrade = True

    def __init__(
        self,
        factory: HandlerFactory,
        batcher: WriteBatcher,
        listener: str,
        state: ListenerState | None = None,
        options: WebSocketOptions | None = None,
    ) -> None:
        super().__init__(factory, batcher, listener, state)
        self._options = options or WebSocketOptions()
        self._http: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_HTTP_HEADER_SIZE
        )
        self._ws: WSConnection | None = None
        self._fast_frames = True  # no extension touches frames: build and read them here
        self._fast_in = True  # inbound frames still go through the fast path (see _fast_receive)
        self._inbuf = b""  # the start of a frame the fast path is waiting to complete
        self._wrapped = True
        self.subprotocol: str | None = None

    # --- inbound ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._layered:
            data = self._unwrap(data)
            if not data:
                return
        if self._closing:
            return  # our close frame (or HTTP error) is out; wsproto may be CLOSED already
        ws = self._ws
        if ws is not None:
            if self._fast_in:
                self._fast_receive(ws, data)
                return
            ws.receive_data(data)
            self._ws_events(ws)
        elif self._http is not None:
            self._http_received(self._http, data)

    def _transport_ready(self) -> None:
        pass  # the broker gets the connection after the HTTP upgrade

    def _fast_receive(self, ws: WSConnection, data: bytes) -> None:
        """The common frames without wsproto's per-frame cost; everything else to wsproto.

        Consumes only *complete* frames of the kinds MQTT clients send all the time:
        masked, unfragmented binary frames up to ``FAST_FRAME_MAX`` (and the frame size
        limit), and pings and pongs. Their payloads reach the handler in one call per read,
        as TCP bytes do. At the first frame of any other kind (close, text, fragments, RSV
        bits, unmasked, larger) the rest of the stream goes to wsproto, for good: it is
        then at a frame boundary with no message in progress, exactly as if it had decoded
        everything itself, and it answers every error with its close code.
        """
        buf = self._inbuf + data if self._inbuf else data
        size = len(buf)
        limit = self._options.max_frame_size
        if not limit or limit > FAST_FRAME_MAX:
            limit = FAST_FRAME_MAX
        pos = 0
        scan = _c_scan
        # With the C scanner: the unmasked payloads, in order. Without it, the masked
        # payloads of the binary frames and their masks, unmasked together below: one
        # big-integer XOR per read instead of one per frame.
        payloads: list[bytes] = []
        masks: list[bytes] = []
        handover = False
        while True:
            if scan is not None:
                # Every binary frame from here up to the next frame of another kind (or
                # the end of the complete frames); the loop body sees only those.
                chunk, pos = scan(buf, pos, limit)
                if chunk:
                    payloads.append(chunk)
            if size - pos < 2:
                break
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 6  # 2 header bytes + 4 mask bytes
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start += 2
                if length < 126:
                    handover = True  # not the minimal encoding: wsproto's protocol error
                    break
            elif length == 127:
                handover = True  # 64-bit lengths are beyond FAST_FRAME_MAX
                break
            if (
                not b1 & 0x80
                or length > limit
                or (b0 != 0x82 and (b0 not in _PING_PONG or length > _MAX_CONTROL_PAYLOAD))
            ):
                handover = True
                break
            end = start + length
            if end > size:
                break  # wait for the rest of this frame
            if b0 == 0x82:
                if length:
                    payloads.append(buf[start:end])
                    key = buf[start - 4 : start]
                    masks.append((key * ((length >> 2) + 1))[:length])
            elif b0 == 0x89:
                payload = _unmask(buf[start:end], buf[start - 4 : start])
                self._send(ws.send(Ping(payload=payload).response()))
            pos = end
        rest = buf[pos:]
        self._inbuf = b"" if handover else rest
        handler = self._handler
        if payloads and handler is not None:
            if scan is not None:
                data = payloads[0] if len(payloads) == 1 else b"".join(payloads)
            else:
                if len(payloads) == 1:
                    masked, mask = payloads[0], masks[0]
                else:
                    masked, mask = b"".join(payloads), b"".join(masks)
                n = len(masked)
                data = (int.from_bytes(masked, "little") ^ int.from_bytes(mask, "little")).to_bytes(
                    n, "little"
                )
            handler.data_received(data)
        if handover and not self._closing:
            self._fast_in = False
            ws.receive_data(rest)
            self._ws_events(ws)

    def _ws_events(self, ws: WSConnection) -> None:
        for event in ws.events():
            if self._closing:
                return
            if isinstance(event, BytesMessage):
                handler = self._handler
                if handler is not None:
                    handler.data_received(bytes(event.data))
            elif isinstance(event, Ping):
                self._send(ws.send(event.response()))
            elif isinstance(event, Pong):
                pass
            elif isinstance(event, TextMessage):
                self._ws_close(CloseReason.UNSUPPORTED_DATA, "text frame (MQTT uses binary frames)")
                return
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The client closed: echo its close, then end the connection.
                    self._finish(ws.send(event.response()))
                else:
                    # wsproto found a protocol violation and names the code to send.
                    self._ws_close(event.code, event.reason or "protocol error")
                return

    def _ws_close(self, code: int, reason: str) -> None:
        log.info(
            "closing %s on %s: %s (WebSocket close %d)",
            self._peer_text(),
            self.listener,
            reason,
            int(code),
        )
        ws = self._ws
        last = b""
        if ws is not None and ws.state is ConnectionState.OPEN:
            last = ws.send(CloseConnection(code=code, reason=reason))
        self._finish(last)

    # --- the HTTP upgrade ------------------------------------------------------------

    def _http_received(self, http: h11.Connection, data: bytes) -> None:
        http.receive_data(data)
        while True:
            try:
                event = http.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(exc.error_status_hint, f"bad HTTP request: {exc}")
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_request(http, event)
                return

    def _on_request(self, http: h11.Connection, request: h11.Request) -> None:
        options = self._options
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        if path != options.path:
            self._reject(404, f"no WebSocket endpoint at {path!r} (it is {options.path!r})")
            return
        if request.method != b"GET":
            method = request.method.decode("latin-1")
            self._reject(405, f"method {method} (a WebSocket upgrade is a GET)", [("allow", "GET")])
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in request.headers:
            headers.setdefault(name, []).append(value)
        connection = [t.lower() for t in _tokens(headers.get(b"connection", []))]
        upgrade = [t.lower() for t in _tokens(headers.get(b"upgrade", []))]
        if "upgrade" not in connection or "websocket" not in upgrade:
            self._reject(400, "plain HTTP request, not a WebSocket upgrade")
            return
        if headers.get(b"content-length", [b"0"]) != [b"0"] or b"transfer-encoding" in headers:
            self._reject(400, "an upgrade request has no body")
            return
        if headers.get(b"sec-websocket-version") != [_WEBSOCKET_VERSION]:
            self._reject(426, "unsupported WebSocket version", [("sec-websocket-version", "13")])
            return
        keys = headers.get(b"sec-websocket-key", [])
        try:
            valid_key = len(keys) == 1 and len(base64.b64decode(keys[0], validate=True)) == 16
        except (binascii.Error, ValueError):
            valid_key = False
        if not valid_key:
            self._reject(400, "missing or malformed Sec-WebSocket-Key")
            return
        if options.allowed_origins:
            origins = headers.get(b"origin")
            if origins is not None:
                origin = origins[0].decode("latin-1").strip().rstrip("/").lower()
                allowed = {o.rstrip("/").lower() for o in options.allowed_origins}
                if origin not in allowed:
                    self._reject(403, f"origin {origin!r} is not allowed")
                    return
        offered = _tokens(headers.get(b"sec-websocket-protocol", []))
        subprotocol: str | None = None
        if offered:
            subprotocol = next((p for p in offered if p in options.subprotocols), None)
            if subprotocol is None:
                self._reject(
                    400,
                    f"subprotocols {', '.join(offered)} offered; "
                    f"this listener speaks {', '.join(options.subprotocols)}",
                )
                return
        response: list[tuple[bytes, bytes]] = [
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-accept", generate_accept_token(keys[0])),
        ]
        if subprotocol is not None:
            response.append((b"sec-websocket-protocol", subprotocol.encode("ascii")))
        extensions: list[Extension] = []
        if options.max_frame_size:
            extensions.append(_FrameSizeLimit(options.max_frame_size))
        if options.compression:
            deflate = _BoundedDeflate(options.max_frame_size)
            accepted = server_extensions_handshake(
                _tokens(headers.get(b"sec-websocket-extensions", [])), [deflate]
            )
            if accepted:
                response.append((b"sec-websocket-extensions", accepted))
                extensions.append(deflate)
                self._fast_frames = False
                self._fast_in = False
        # Drain the request's end (and h11's pause) so the switch leaves the rest as
        # trailing data: the first WebSocket frames may have come with the request.
        try:
            while http.next_event() not in (h11.PAUSED, h11.NEED_DATA):
                pass
        except h11.RemoteProtocolError as exc:
            self._reject(exc.error_status_hint, f"bad HTTP request: {exc}")
            return
        self._send(
            http.send(
                h11.InformationalResponse(
                    status_code=101, headers=response, reason=b"Switching Protocols"
                )
            )
            or b""
        )
        trailing, _ = http.trailing_data
        self._http = None
        self.subprotocol = subprotocol
        ws = self._ws = WSConnection(ConnectionType.SERVER, extensions)
        self._open()
        if trailing and not self._closing:
            ws.receive_data(trailing)
            self._ws_events(ws)

    def _reject(self, status: int, reason: str, extra: Sequence[tuple[str, str]] = ()) -> None:
        """Answer the upgrade request with an HTTP error and close; one log line."""
        log.info("closing %s on %s: HTTP %d: %s", self._peer_text(), self.listener, status, reason)
        body = f"{status} {reason}\n".encode()
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("content-length", str(len(body))),
            ("connection", "close"),
            *extra,
        ]
        http = self._http
        try:
            if http is None:
                raise h11.LocalProtocolError("no HTTP connection")
            data = http.send(h11.Response(status_code=status, headers=headers)) or b""
            data += http.send(h11.Data(data=body)) or b""
            data += http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            lines = [f"HTTP/1.1 {status} Error", *(f"{k}: {v}" for k, v in headers)]
            data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self._http = None
        self._finish(data)

    # --- outbound --------------------------------------------------------------------

    def _frame(self, data: bytes) -> bytes:
        if self._fast_frames:
            return _frame_header(len(data)) + data
        ws = self._ws
        assert ws is not None
        return ws.send(BytesMessage(data=data))

    def _goodbye(self) -> bytes:
        ws = self._ws
        if ws is None or ws.state is not ConnectionState.OPEN:
            return b""
        state = self._state
        if state is not None and state.closing:
            return ws.send(
                CloseConnection(code=CloseReason.GOING_AWAY, reason="server shutting down")
            )
        return ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))
