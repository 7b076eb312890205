"""Thin asyncio.Protocol listeners turning sockets into byte callbacks. No MQTT semantics."""

from __future__ import annotations

from .interfaces import ConnectionHandler, HandlerFactory
from .stream import StreamConnection, WriteBatcher
from .tcp import Listener, ListenerSpec, parse_listen_url, start_listener

__all__ = [
    "ConnectionHandler",
    "HandlerFactory",
    "Listener",
    "ListenerSpec",
    "StreamConnection",
    "WriteBatcher",
    "parse_listen_url",
    "start_listener",
]
