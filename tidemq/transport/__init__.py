"""Thin asyncio.Protocol listeners turning sockets into byte callbacks. No MQTT semantics.

``tcp://``, ``tls://``, ``ws://`` and ``wss://`` listeners (``listener.py``), each
optionally behind the PROXY protocol (``proxy.py``); TLS (``tls.py``) and WebSocket
(``websocket.py``) are layers inside the same protocol objects.
"""

from __future__ import annotations

from .interfaces import ConnectionHandler, HandlerFactory
from .listener import Listener, ListenerSpec, parse_listen_url, start_listener
from .proxy import ProxyHeaderParser, ProxyInfo, ProxyProtocolError
from .stream import ListenerState, StreamConnection, WriteBatcher
from .tls import ServerTLS, TLSOptions, TLSSession
from .websocket import WebSocketConnection, WebSocketOptions

__all__ = [
    "ConnectionHandler",
    "HandlerFactory",
    "Listener",
    "ListenerSpec",
    "ListenerState",
    "ProxyHeaderParser",
    "ProxyInfo",
    "ProxyProtocolError",
    "ServerTLS",
    "StreamConnection",
    "TLSOptions",
    "TLSSession",
    "WebSocketConnection",
    "WebSocketOptions",
    "WriteBatcher",
    "parse_listen_url",
    "start_listener",
]
