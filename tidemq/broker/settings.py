"""The broker core's own settings (``app.py`` fills them from ``tidemq.config``).

Each limit is a named default whose comment gives its precedent; ``docs/config.md``
documents the config keys that set them.
"""

from __future__ import annotations

from dataclasses import dataclass

# EMQX's default max_packet_size is 1 MB; Mosquitto accepts up to 256 MB by default.
DEFAULT_MAX_PACKET_SIZE = 1_048_576
# Maximum simultaneous connections; EMQX's listener default is 1,024,000 (we are one process).
DEFAULT_MAX_CONNECTIONS = 100_000
# Outgoing QoS 1/2 window per client and the Receive Maximum we announce (EMQX max_inflight 32).
DEFAULT_MAX_INFLIGHT = 32
# Offline/overflow queue per session (EMQX max_mqueue_len 1000; Mosquitto max_queued_messages).
DEFAULT_MAX_QUEUED_MESSAGES = 1000
# Topic levels (EMQX max_topic_levels 128).
DEFAULT_MAX_TOPIC_LEVELS = 128
# Client identifier length (EMQX max_clientid_len 65535; MQTT 3.1 suggested 23).
DEFAULT_MAX_CLIENT_ID_LENGTH = 65_535
# Incoming QoS 2 messages awaiting PUBREL per client, and how long (EMQX 100 / 300 s).
DEFAULT_MAX_AWAITING_REL = 100
DEFAULT_AWAIT_REL_TIMEOUT = 300.0
# Sockets that never send CONNECT are closed after this (EMQX idle_timeout 15 s).
DEFAULT_CONNECT_TIMEOUT = 15.0
# Session expiry given to MQTT 3 persistent sessions (EMQX session_expiry_interval 2 h).
DEFAULT_SESSION_EXPIRY = 7200
# Re-send unacknowledged QoS 1/2 deliveries to connected MQTT 3.x clients after this many
# seconds (EMQX retry_interval 30 s). MQTT 5 forbids resending except on reconnect
# [MQTT-4.4.0-1], so v5 clients are never retried. 0 disables.
DEFAULT_RETRY_INTERVAL = 30.0
NEVER_EXPIRES = 0xFFFF_FFFF
DEFAULT_SWEEP_INTERVAL = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerSettings:
    node_name: str = "tidemq"
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    queue_qos0: bool = True
    max_topic_levels: int = DEFAULT_MAX_TOPIC_LEVELS
    max_client_id_length: int = DEFAULT_MAX_CLIENT_ID_LENGTH
    max_subscriptions_per_client: int = 0  # 0 = unlimited
    max_awaiting_rel: int = DEFAULT_MAX_AWAITING_REL
    await_rel_timeout: float = DEFAULT_AWAIT_REL_TIMEOUT
    max_keepalive: int = 65_535
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    topic_alias_maximum: int = 65_535
    max_qos: int = 2
    retain_available: bool = True
    wildcard_subscription_available: bool = True
    shared_subscription_available: bool = True
    subscription_identifier_available: bool = True
    default_session_expiry: int = DEFAULT_SESSION_EXPIRY
    max_session_expiry: int = NEVER_EXPIRES
    retry_interval: float = DEFAULT_RETRY_INTERVAL
    message_expiry_max: int = 0  # cap on any message's lifetime in seconds; 0 = no cap
    # How often expired retained messages, stale awaiting-PUBREL ids and MQTT 3 retries are
    # swept, as one scheduler entry; those timeouts are accurate to this interval.
    sweep_interval: float = DEFAULT_SWEEP_INTERVAL
    allow_anonymous: bool = True
    shared_subscription_strategy: str = "round_robin"
    assign_topic_aliases: bool = True
    # MQTT 5 Reason Strings on refusals, failing acks and DISCONNECTs (off by default, as in
    # Mosquitto and EMQX: they cost bytes and reveal why a request failed).
    reason_strings: bool = False
    sys_interval: float = 10.0
    auth_timeout: float = 5.0
    version: str = ""
