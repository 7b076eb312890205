"""What a transport calls: the ``ConnectionHandler`` protocol (implemented above us)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .stream import StreamConnection


class ConnectionHandler(Protocol):
    """Receives the byte stream of one connection. Implemented by the broker and client."""

    def data_received(self, data: bytes) -> None: ...

    def connection_lost(self, exc: BaseException | None) -> None: ...


HandlerFactory = Callable[["StreamConnection"], ConnectionHandler]
"""Called once per accepted connection with the connection object (the broker's Link)."""
