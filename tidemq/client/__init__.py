"""tidemq.client: an asyncio MQTT 3.1.1 / 5.0 client on the sans-IO protocol core.

Imports only ``tidemq.protocol`` and ``tidemq.transport`` (never the broker), so it could
ship on its own. See docs/client.md.
"""

from __future__ import annotations

from tidemq.protocol import Properties, QoS, ReasonCode, RetainHandling, Will

from .builder import SessionBuilder, quick_connect, secure_connect
from .client import Client, ClientMetrics, ClientState, Subscription, parse_url
from .errors import (
    AuthenticationError,
    ClientError,
    ConfigurationError,
    ConnectionClosedError,
    ErrorCategory,
    ForwarderError,
    MQTTConnectionError,
    PublishError,
    StorageError,
    SubscriptionError,
)
from .events import Event, EventType
from .forwarder import (
    AndFilter,
    CompositeTransform,
    ForwardedMessage,
    Forwarder,
    ForwarderBuilder,
    ForwarderConfig,
    ForwarderMetrics,
    ForwarderRegistry,
    JsonSet,
    MessageFilter,
    NotFilter,
    OrFilter,
    PayloadFilter,
    PayloadTransform,
    TopicFilter,
    TopicRewrite,
    Transform,
)
from .manager import Listener, ManagerRoute, Session, SessionManager
from .message import Message, PublishResult
from .metrics import (
    JSONExporter,
    ManagerMetrics,
    PrometheusExporter,
    manager_metrics,
    session_metrics,
)
from .persistence import (
    FileStore,
    MemoryStore,
    MessageRecord,
    RedisStore,
    SessionState,
    SessionStore,
    SubscriptionRecord,
)
from .reconnect import ReconnectPolicy
from .streams import MessageStream

__all__ = [
    "AndFilter",
    "AuthenticationError",
    "Client",
    "ClientError",
    "ClientMetrics",
    "ClientState",
    "CompositeTransform",
    "ConfigurationError",
    "ConnectionClosedError",
    "ErrorCategory",
    "Event",
    "EventType",
    "FileStore",
    "ForwardedMessage",
    "Forwarder",
    "ForwarderBuilder",
    "ForwarderConfig",
    "ForwarderError",
    "ForwarderMetrics",
    "ForwarderRegistry",
    "JSONExporter",
    "JsonSet",
    "Listener",
    "MQTTConnectionError",
    "ManagerMetrics",
    "ManagerRoute",
    "MemoryStore",
    "Message",
    "MessageFilter",
    "MessageRecord",
    "MessageStream",
    "NotFilter",
    "OrFilter",
    "PayloadFilter",
    "PayloadTransform",
    "PrometheusExporter",
    "Properties",
    "PublishError",
    "PublishResult",
    "QoS",
    "ReasonCode",
    "ReconnectPolicy",
    "RedisStore",
    "RetainHandling",
    "Session",
    "SessionBuilder",
    "SessionManager",
    "SessionState",
    "SessionStore",
    "StorageError",
    "Subscription",
    "SubscriptionError",
    "SubscriptionRecord",
    "TopicFilter",
    "TopicRewrite",
    "Transform",
    "Will",
    "manager_metrics",
    "parse_url",
    "quick_connect",
    "secure_connect",
    "session_metrics",
]
