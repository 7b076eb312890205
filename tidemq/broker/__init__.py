"""The broker core: sessions, routing, retained messages, wills, timers and hooks.

It knows connections only through the ``Link`` interface and is wired to transports,
storage and plugins by ``tidemq.app``.
"""

from __future__ import annotations

from .core import BrokerCore
from .hooks import (
    HOOK_API_VERSION,
    AuthenticateEvent,
    AuthResult,
    AuthStep,
    ClientInfo,
    ConnectedEvent,
    Decision,
    DeliveryAuthEvent,
    DisconnectedEvent,
    EnhancedAuthEvent,
    EnhancedAuthResult,
    HookPoint,
    Hooks,
    MessageEvent,
    PublishAuthEvent,
    SubscribeAuthEvent,
    SubscriptionEvent,
)
from .interfaces import Link
from .settings import BrokerSettings

__all__ = [
    "HOOK_API_VERSION",
    "AuthResult",
    "AuthStep",
    "AuthenticateEvent",
    "BrokerCore",
    "BrokerSettings",
    "ClientInfo",
    "ConnectedEvent",
    "Decision",
    "DeliveryAuthEvent",
    "DisconnectedEvent",
    "EnhancedAuthEvent",
    "EnhancedAuthResult",
    "HookPoint",
    "Hooks",
    "Link",
    "MessageEvent",
    "PublishAuthEvent",
    "SubscribeAuthEvent",
    "SubscriptionEvent",
]
