"""A raw WebSocket test client over asyncio streams: the upgrade request and the frames are
written by hand (RFC 6455 §4.1, §5.2), never with h11 or wsproto, so the broker's
WebSocket layer and the test cannot share a bug. MQTT packets are framed as in
``tests/helpers/raw.py``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
import zlib
from collections.abc import Iterable

DEFAULT_TIMEOUT = 5.0
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class HTTPResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


async def read_http_response(
    reader: asyncio.StreamReader, timeout: float = DEFAULT_TIMEOUT
) -> HTTPResponse:
    """The status and headers of an HTTP/1.1 response; the body when it has a length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return HTTPResponse(status, headers, body)


def upgrade_request(
    path: str = "/mqtt",
    *,
    subprotocols: Iterable[str] = ("mqtt",),
    headers: Iterable[tuple[str, str]] = (),
    key: str | None = None,
) -> tuple[bytes, str]:
    """An upgrade request and the Sec-WebSocket-Accept it must get back."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    protocols = list(subprotocols)
    if protocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(protocols)}")
    lines += [f"{k}: {v}" for k, v in headers]
    accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv1: bool = False,
    length: int | None = None,
) -> bytes:
    """One frame; *length* overrides the announced payload length (for oversize tests);
    *rsv1* marks a permessage-deflate compressed message."""
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", first, mbit | n)
    elif n < 0x10000:
        head = struct.pack("!BBH", first, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


class RawWebSocket:
    """A client-side WebSocket connection, upgraded; MQTT bytes ride in binary frames."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: HTTPResponse
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.response = response
        self._stream = bytearray()  # binary payload received, not yet read as MQTT

    @classmethod
    async def connect(
        cls,
        port: int,
        path: str = "/mqtt",
        *,
        subprotocols: Iterable[str] = ("mqtt",),
        headers: Iterable[tuple[str, str]] = (),
        ssl_context: ssl.SSLContext | None = None,
        prefix: bytes = b"",
    ) -> RawWebSocket:
        """Connect and upgrade; asserts the 101 and the accept token. *prefix* is sent
        first (a PROXY protocol header)."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ssl_context, server_hostname="localhost" if ssl_context else None
        )
        request, accept = upgrade_request(path, subprotocols=subprotocols, headers=headers)
        writer.write(prefix + request)
        response = await read_http_response(reader)
        assert response.status == 101, (response.status, response.body)
        assert response.headers["sec-websocket-accept"] == accept
        return cls(reader, writer, response)

    async def send_frame(self, opcode: int, payload: bytes, **kwargs: object) -> None:
        self.writer.write(frame(opcode, payload, **kwargs))  # type: ignore[arg-type]
        await self.writer.drain()

    async def send(self, data: bytes) -> None:
        """MQTT bytes in one binary frame."""
        await self.send_frame(BINARY, data)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame; raises EOFError on a close."""
        return await asyncio.wait_for(self._read_frame(), timeout)

    async def _read_frame(self) -> tuple[bool, int, bytes]:
        try:
            b0, b1 = await self.reader.readexactly(2)
            assert not b1 & 0x80, "server frames are never masked"
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed") from exc
        return bool(b0 & 0x80), b0 & 0x0F, payload

    async def read_packet(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """The next whole MQTT packet from the binary frames, however they are cut."""
        return await asyncio.wait_for(self._read_packet(), timeout)

    async def _read_packet(self) -> bytes:
        while True:
            size = _packet_size(self._stream)
            if size is not None and len(self._stream) >= size:
                packet = bytes(self._stream[:size])
                del self._stream[:size]
                return packet
            _, opcode, payload = await self._read_frame()
            if opcode == CLOSE:
                raise EOFError(f"WebSocket close {_close_code(payload)}")
            assert opcode in (BINARY, CONT), f"unexpected opcode {opcode}"
            self._stream += payload

    async def expect_close(self, timeout: float = DEFAULT_TIMEOUT) -> int | None:
        """Read until the server's close frame; returns its code. Then the TCP close."""
        while True:
            _, opcode, payload = await self.read_frame(timeout)
            if opcode == CLOSE:
                rest = await asyncio.wait_for(self.reader.read(), timeout)
                assert rest == b"", "nothing may follow a close frame"
                return _close_code(payload)

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def deflate(data: bytes) -> bytes:
    """A permessage-deflate message body (RFC 7692 §7.2.1: sync flush, tail removed)."""
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(wbits=-15).decompress(data + b"\x00\x00\xff\xff")


def _close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


def _packet_size(buf: bytearray) -> int | None:
    """The size of the MQTT packet at the start of *buf*, once its header is complete."""
    length = 0
    for i in range(1, min(len(buf), 5)):
        b = buf[i]
        length |= (b & 0x7F) << (7 * (i - 1))
        if not b & 0x80:
            return i + 1 + length
    return None
