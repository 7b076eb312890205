"""A raw-bytes MQTT test client over asyncio streams. Frames packets by hand (fixed header
+ remaining length) and never uses tidemq's codec, so broker and test cannot share a bug.
"""

from __future__ import annotations

import asyncio

DEFAULT_TIMEOUT = 5.0


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_packet(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """The next whole packet's bytes; raises ``EOFError`` if the broker closed."""
        return await asyncio.wait_for(self._read_packet(), timeout)

    async def _read_packet(self) -> bytes:
        try:
            first = await self.reader.readexactly(1)
            length = 0
            shift = 0
            header = bytearray(first)
            while True:
                b = (await self.reader.readexactly(1))[0]
                header.append(b)
                length |= (b & 0x7F) << shift
                shift += 7
                if not b & 0x80:
                    break
            body = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise EOFError("connection closed by the broker") from exc
        return bytes(header) + body

    async def expect(self, expected: bytes, timeout: float = DEFAULT_TIMEOUT) -> None:
        got = await self.read_packet(timeout)
        assert got == expected, f"expected {expected!r}, got {got!r}"

    async def expect_closed(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Read until EOF; returns whatever bytes came before the close."""
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
