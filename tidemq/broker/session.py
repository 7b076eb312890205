"""``Session``: the state MQTT keeps for a client id across connections. No I/O.

A session outlives its connections when its expiry interval is non-zero: subscriptions,
QoS 1/2 deliveries not yet acknowledged (``inflight``), messages queued while offline or
while the client's Receive Maximum is full (``queue``), incoming QoS 2 packet ids awaiting
PUBREL (``awaiting_rel``, for exactly-once across reconnects) and a pending will.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tidemq.protocol import RetainHandling, Will

if TYPE_CHECKING:
    from .handler import ClientHandler
    from .hooks import ClientInfo
    from .message import Message
    from .timers import TimerEntry


@dataclass(frozen=True, slots=True)
class SubOptions:
    """One subscription of a session, as stored in the topic tree."""

    topic_filter: str  # the filter as subscribed, including any $share/<group>/ prefix
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE
    subscription_id: int | None = None
    share_group: str | None = None


class Inflight:
    """A QoS 1/2 delivery sent to the client and not yet completed."""

    __slots__ = ("message", "qos", "released", "retain", "sent_at", "seq", "sub_ids")

    def __init__(
        self,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        sent_at: float = 0.0,
    ) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.released = False  # QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP
        self.sent_at = sent_at  # loop time of the last send, for MQTT 3.x retries
        self.seq = 0  # send order in storage (persistent sessions)


class QueuedDelivery:
    __slots__ = ("message", "qos", "retain", "seq", "sub_ids")

    def __init__(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.seq = 0  # its key in the stored queue (persistent sessions; 0: not stored)


class Session:
    __slots__ = (
        "awaiting_rel",
        "client_id",
        "created_at",
        "dropped",
        "expiry_entry",
        "expiry_interval",
        "handler",
        "inflight",
        "info",
        "persistent",
        "protocol_version",
        "queue",
        "seq",
        "subscriptions",
        "superuser",
        "username",
        "will",
        "will_entry",
    )

    def __init__(self, client_id: str, protocol_version: int, created_at: float) -> None:
        self.client_id = client_id
        self.protocol_version = protocol_version
        self.username: str | None = None
        self.created_at = created_at
        self.expiry_interval = 0
        self.subscriptions: dict[str, SubOptions] = {}
        self.inflight: dict[int, Inflight] = {}
        # Created on first use: an empty deque costs ~760 bytes per idle session.
        self.queue: deque[QueuedDelivery] | None = None
        # Incoming QoS 2 packet ids awaiting PUBREL → loop time received; created on first
        # use (None: none), as most sessions never publish at QoS 2.
        self.awaiting_rel: dict[int, float] | None = None
        self.handler: ClientHandler | None = None
        # Who the client was at its last CONNECT: its will is authorized as that client.
        self.info: ClientInfo | None = None
        self.superuser = False
        self.will: Will | None = None
        self.will_entry: TimerEntry | None = None
        self.expiry_entry: TimerEntry | None = None
        self.dropped = 0
        # Mirrored into storage (a broker with storage, and an expiry interval > 0).
        self.persistent = False
        self.seq = 0  # the last queue/in-flight order number given in storage

    @property
    def connected(self) -> bool:
        return self.handler is not None

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} subs={len(self.subscriptions)}>"
