"""The one read path of a client connection: an ``asyncio.Protocol`` around a sans-IO
``MQTTConnection(Role.CLIENT)``.

``data_received`` feeds the bytes to the connection and hands every completed packet to
the owning client synchronously; no task is created per packet (uvicorn's shell around
h11). Writes are batched: ``write`` appends to a list flushed by one ``call_soon`` per
loop pass, so a burst of publishes or acknowledgements becomes one ``transport.write``
(nats ``flushClients``). ``drain()`` gives publishers back-pressure: it flushes and, while
asyncio has paused writing, waits for ``resume_writing`` (aiohttp ``base_protocol``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import TYPE_CHECKING, Protocol, cast

from tidemq.protocol import MQTTConnection, Packet, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger("tidemq.client")

# Bytes queued in our batch before a publisher is asked to wait for the socket. asyncio's
# own transport high-water mark is 64 KiB; ours only bounds what accumulates between flushes.
WRITE_HIGH_WATER = 256 * 1024


class PacketSink(Protocol):
    """What the protocol reports to (implemented by ``Client``)."""

    def _packets_received(self, proto: ClientProtocol, packets: Sequence[Packet]) -> None: ...

    def _protocol_error(self, proto: ClientProtocol, exc: RemoteProtocolError) -> None: ...

    def _connection_lost(self, proto: ClientProtocol, exc: BaseException | None) -> None: ...


class ClientProtocol(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_drain_waiter",
        "_loop",
        "_out",
        "_out_size",
        "_paused",
        "_scheduled",
        "_sink",
        "conn",
        "transport",
    )

    def __init__(
        self, sink: PacketSink, conn: MQTTConnection, loop: asyncio.AbstractEventLoop
    ) -> None:
        self._sink = sink
        self.conn = conn
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._out_size = 0
        self._scheduled = False
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = loop.create_future()

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # not fatal: the peer may already be gone

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        try:
            packets = conn.receive_data(data, self._loop.time())
        except RemoteProtocolError as exc:
            reply = conn.data_to_send()
            if reply:
                self.write(reply)
            self._sink._protocol_error(self, exc)
            self.close()
            return
        if packets:
            self._sink._packets_received(self, packets)
        auto = conn.data_to_send()
        if auto:
            self.write(auto)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._out.clear()
        self._out_size = 0
        self.transport = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)
        self._sink._connection_lost(self, exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- writing ---------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._out.append(data)
        self._out_size += len(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def send(self, packet: Packet) -> None:
        """Encode *packet* through the connection (which checks it) and queue the bytes.

        Raises:
            LocalProtocolError: the packet may not be sent now; nothing was queued.
        """
        self.write(self.conn.send(packet, self._loop.time()))

    def flush(self) -> None:
        self._scheduled = False
        out = self._out
        if not out:
            return
        transport = self.transport
        if transport is None:
            out.clear()
            self._out_size = 0
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_size = 0
        transport.write(data)

    @property
    def needs_drain(self) -> bool:
        return self._out_size >= WRITE_HIGH_WATER or self._paused

    async def drain(self) -> None:
        """Flush, then wait while the transport's buffer is above its high-water mark."""
        self.flush()
        if not self._paused or self.transport is None:
            return
        waiter = self._drain_waiter
        if waiter is None or waiter.done():
            waiter = self._drain_waiter = self._loop.create_future()
        await waiter

    def close(self) -> None:
        """Flush what is queued and close gracefully."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)
