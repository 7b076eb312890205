"""Message delivery targets: async-iterable streams and handler routes.

A ``MessageStream`` is a FIFO the client appends to from its read path (synchronously, no
task) and a consumer drains with ``async for``. A ``Route`` pairs a topic filter with a
stream or a handler. Synchronous handlers run inline on the read path; each coroutine
handler gets one worker task that drains its own FIFO in order (one task per handler,
never one per message).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from tidemq.protocol import parse_shared, topic_matches

from .message import Message

__all__ = ["Handler", "MessageStream", "Route"]

log = logging.getLogger("tidemq.client")

Handler = Callable[[Message], Any] | Callable[[Message], Awaitable[Any]]


class MessageStream:
    """An async iterator of ``Message`` objects fed by the client.

    Args:
        maxsize: keep at most this many unread messages, dropping the oldest (0: no bound).
        on_close: called once when the stream is closed by its consumer.

    Attributes:
        dropped: messages dropped because the stream was full.
    """

    __slots__ = ("_closed", "_error", "_items", "_on_close", "_waiter", "dropped", "maxsize")

    def __init__(self, maxsize: int = 0, on_close: Callable[[MessageStream], None] | None = None):
        self.maxsize = maxsize
        self._items: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._on_close = on_close
        self.dropped = 0

    def put(self, msg: Message) -> None:
        if self._closed:
            return
        items = self._items
        if self.maxsize and len(items) >= self.maxsize:
            items.popleft()
            self.dropped += 1
        items.append(msg)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def finish(self, error: BaseException | None = None) -> None:
        """End the stream: readers get what is queued, then *error* or the end."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def close(self) -> None:
        """Stop receiving: unregister from the client and end iteration."""
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close(self)
        self.finish()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        items = self._items
        while not items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        return items.popleft()

    async def get(self, timeout: float | None = None) -> Message:
        """The next message; raises ``TimeoutError`` or ``StopAsyncIteration`` at the end."""
        if timeout is None:
            return await self.__anext__()
        return await asyncio.wait_for(self.__anext__(), timeout)

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Route:
    """A topic filter and where its messages go (a stream or a handler)."""

    __slots__ = (
        "_stream",
        "_task",
        "filter",
        "group",
        "handler",
        "match",
        "name",
        "stream",
        "sub_id",
    )

    def __init__(
        self,
        topic_filter: str,
        *,
        handler: Handler | None = None,
        stream: MessageStream | None,
        sub_id: int | None = None,
        group: object = None,
    ) -> None:
        self.filter = topic_filter
        # The routes of one subscription (its filters) share a group: a message matched
        # by its identifier is delivered once per group.
        self.group = self if group is None else group
        # With MQTT 5 each subscription carries an identifier the broker echoes in every
        # message it matched, so a message goes exactly to the subscriptions that asked
        # for it (even when a broker sends one copy per overlapping subscription).
        self.sub_id = sub_id
        shared = parse_shared(topic_filter)
        self.match = shared.filter if shared is not None else topic_filter
        self.handler = handler
        self.stream = stream
        self.name = getattr(handler, "__qualname__", repr(handler)) if handler else ""
        self._task: asyncio.Task[None] | None = None
        self._stream: MessageStream | None = None
        if handler is not None and inspect.iscoroutinefunction(handler):
            self._stream = MessageStream()
            self._task = asyncio.get_running_loop().create_task(self._worker())

    def matches(self, topic: str) -> bool:
        return topic_matches(self.match, topic)

    def deliver(self, msg: Message) -> None:
        if self.stream is not None:
            self.stream.put(msg)
        if self._stream is not None:
            self._stream.put(msg)
        elif self.handler is not None:
            try:
                self.handler(msg)
            except Exception:
                log.exception("message handler %s failed on %s", self.name, msg.topic)

    async def _worker(self) -> None:
        assert self._stream is not None
        assert self.handler is not None
        async for msg in self._stream:
            try:
                await self.handler(msg)
            except Exception:
                log.exception("message handler %s failed on %s", self.name, msg.topic)

    def stop(self, error: BaseException | None = None) -> None:
        if self.stream is not None:
            self.stream.finish(error)
        if self._stream is not None:
            # Let the worker finish what is queued, then end.
            self._stream.finish()

    async def wait_stopped(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
