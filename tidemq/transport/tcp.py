"""Kept for imports of ``tidemq.transport.tcp``: the listeners now live in ``listener.py``."""

from __future__ import annotations

from .listener import (
    DEFAULT_BACKLOG,
    DEFAULT_PORTS,
    Listener,
    ListenerSpec,
    parse_listen_url,
    start_listener,
)

__all__ = [
    "DEFAULT_BACKLOG",
    "DEFAULT_PORTS",
    "Listener",
    "ListenerSpec",
    "parse_listen_url",
    "start_listener",
]
