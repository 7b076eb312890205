"""Plain counters read by $SYS, the HTTP API and metrics. Incremented inline; no locks."""

from __future__ import annotations

import time


class Stats:
    __slots__ = (
        "bytes_received",
        "bytes_sent",
        "clients_maximum",
        "connections_total",
        "messages_dropped",
        "messages_dropped_acl",
        "messages_dropped_queue_full",
        "messages_dropped_too_large",
        "messages_expired",
        "messages_received",
        "messages_sent",
        "publish_received",
        "publish_sent",
        "started_at",
        "started_monotonic",
    )

    def __init__(self) -> None:
        self.started_at = time.time()
        self.started_monotonic = time.monotonic()
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0  # every control packet received (Mosquitto's meaning)
        self.messages_sent = 0
        self.publish_received = 0
        self.publish_sent = 0
        self.messages_dropped = 0
        self.messages_dropped_acl = 0  # deliveries refused by AUTHORIZE_DELIVERY
        self.messages_dropped_queue_full = 0
        self.messages_dropped_too_large = 0
        self.messages_expired = 0
        self.connections_total = 0
        self.clients_maximum = 0

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}
