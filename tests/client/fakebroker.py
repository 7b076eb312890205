"""A scripted broker for client tests that need to control the wire: it accepts
connections, answers CONNECT with the CONNACK configured in ``connack``/``version`` (unless
``answer`` is False) and hands each to the test as a ``RawClient`` (raw bytes, no tidemq
codec)."""

from __future__ import annotations

import asyncio

from tests.helpers.raw import RawClient
from tests.mqttbytes import gen_connack


class FakeBroker:
    def __init__(self) -> None:
        self._accepted: asyncio.Queue[tuple[RawClient, bytes]] = asyncio.Queue()
        # What the next CONNECTs are answered with (set before connecting).
        self.version = 5
        self.connack: dict[str, object] = {}
        self.answer = True
        self._server: asyncio.Server | None = None
        self._peers: list[RawClient] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _on_accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = RawClient(reader, writer)
        self._peers.append(peer)
        try:
            connect = await peer.read_packet()
        except (EOFError, TimeoutError):
            return
        assert connect[0] == 0x10, connect
        if self.answer:
            await peer.send(gen_connack(proto_ver=self.version, **self.connack))  # type: ignore[arg-type]
        self._accepted.put_nowait((peer, connect))

    async def accept(self, timeout: float = 5.0) -> tuple[RawClient, bytes]:
        """The next connection and its CONNECT bytes (already answered with ``connack``)."""
        return await asyncio.wait_for(self._accepted.get(), timeout)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self._peers:
            await peer.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
