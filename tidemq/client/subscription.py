"""``Subscription``: what ``Client.subscribe`` returns (awaitable, iterable, context)."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any

from tidemq.protocol import Properties
from tidemq.protocol import Subscription as SubscriptionOptions

from .message import Message
from .options import ClientState
from .streams import Handler, MessageStream, Route

if TYPE_CHECKING:
    from ._messaging import _Messaging

__all__ = ["Subscription"]


class Subscription:
    """What ``Client.subscribe`` returns: awaitable, async-iterable, and a context manager.

    * ``await client.subscribe(...)`` subscribes and returns the granted reason codes.
    * ``async for msg in client.subscribe(...)`` subscribes and yields matching messages.
    * ``async with client.subscribe(...) as sub`` subscribes, and unsubscribes on exit.
    """

    def __init__(
        self,
        client: _Messaging,
        options: tuple[SubscriptionOptions, ...],
        *,
        handler: Handler | None,
        subscription_identifier: int | None,
        properties: Properties,
        queue_size: int,
    ) -> None:
        self._client = client
        self.options = options
        self.handler = handler
        self.subscription_identifier = subscription_identifier
        self.properties = properties
        self.queue_size = queue_size
        self.granted: list[int] | None = None
        self.routes: list[Route] = []
        self._stream: MessageStream | None = None
        self._task: asyncio.Future[list[int]] | None = None

    @property
    def topic_filters(self) -> list[str]:
        return [o.topic_filter for o in self.options]

    def _ensure_stream(self) -> MessageStream:
        if self._stream is None:
            # Messages that arrived between awaiting and iterating were not kept: call
            # ``aiter()`` (or use ``async with``) before awaiting to see them all.
            self._stream = MessageStream(self.queue_size)
        return self._stream

    def _start(self) -> asyncio.Future[list[int]]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._client._subscribe(self))
        return self._task

    def __await__(self) -> Generator[Any, None, list[int]]:
        return self._start().__await__()

    def __aiter__(self) -> Subscription:
        self._ensure_stream()
        return self

    async def __anext__(self) -> Message:
        stream = self._ensure_stream()
        await self._start()
        return await stream.__anext__()

    async def __aenter__(self) -> Subscription:
        self._ensure_stream()
        await self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client.state is ClientState.CONNECTED:
            await self.unsubscribe()
        else:
            self._client._remove_routes(self.routes)

    async def get(self, timeout: float | None = None) -> Message:
        """The next matching message (subscribing first if needed)."""
        stream = self._ensure_stream()
        await self._start()
        return await stream.get(timeout)

    async def unsubscribe(self) -> list[int]:
        """Unsubscribe these filters and end iteration."""
        return await self._client.unsubscribe(self.topic_filters)
