"""``StreamConnection``: the asyncio.Protocol under every byte-stream listener.

Writes are batched: ``write`` appends to a per-connection list and marks the connection
dirty in the loop-wide ``WriteBatcher``; one ``call_soon`` callback flushes every dirty
connection once, after the current read burst (nats ``addToPCD``/``flushClients``). A
message fanned out to 100 subscribers while handling one read therefore costs 100 appends
and at most one ``transport.write`` per subscriber, not one per message.

Flow control: when the kernel buffer is full asyncio calls ``pause_writing``; the
connection records it (``writing_paused``) and exposes ``buffered_bytes()`` so the broker
can decide to queue or drop instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from .interfaces import ConnectionHandler, HandlerFactory

log = logging.getLogger("tidemq.transport")


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


class StreamConnection(asyncio.Protocol):
    """One accepted byte-stream connection; the broker sees it as a ``Link``."""

    __slots__ = (
        "_batcher",
        "_closing",
        "_factory",
        "_handler",
        "_out",
        "_out_size",
        "listener",
        "peer",
        "transport",
        "writing_paused",
    )

    def __init__(self, factory: HandlerFactory, batcher: WriteBatcher, listener: str) -> None:
        self._factory = factory
        self._batcher = batcher
        self.listener = listener
        self._handler: ConnectionHandler | None = None
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._closing = False
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.writing_paused = False

    # --- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they quack alike.
        self.transport = cast("asyncio.Transport", transport)
        # TCP_NODELAY: asyncio and uvloop both set it on every TCP transport already.
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = (str(peer[0]), int(peer[1]))
        self._handler = self._factory(self)

    def data_received(self, data: bytes) -> None:
        handler = self._handler
        if handler is not None:
            handler.data_received(data)

    def eof_received(self) -> bool:
        return False  # close the transport; the handler hears it in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._out = None
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
        transport.write(out[0] if len(out) == 1 else b"".join(out))

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
        self._closing = True
        if self.transport is not None:
            self.transport.close()

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
