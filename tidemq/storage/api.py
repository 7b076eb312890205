"""The one storage interface: record types, the write batch, and the ``Storage`` contract.

Rules
-----
1. This module is the only part of ``tidemq.storage`` that the rest of the broker imports
   (``tests/test_layering.py``). Backends (``memory``, ``sqlite``, ``redis``, ``postgres``,
   ``mysql``) import this module, ``tidemq.protocol`` and their driver, and nothing else of
   ours. ``tidemq.storage.open_storage`` picks one by name for the composition root.
2. Records are frozen, slotted, keyword-only dataclasses of plain values (str, int, float,
   bool, bytes, tuples), built by the broker and trusted: they are not validated, the way the
   codec's decoder trusts what it has just parsed. Times in records are wall-clock seconds
   (``time.time()``), never the broker's ``time.monotonic()`` deadlines, since they must
   survive a restart. MQTT 5 properties are stored as their encoded property block
   (``encode_properties``; ``b"\\x00"`` when empty).
3. Every write goes through ``Storage.apply(batch)``: a ``WriteBatch`` is applied atomically,
   in one transaction with one commit (one fsync under ``durability = "sync"``), or not at
   all. That is what makes group commit possible: ``GroupCommit`` collects the writes of one
   event-loop pass into one batch while the previous batch commits.
4. Failures are ``StorageError``. ``StorageUnavailable`` (a subclass) means a server backend
   cannot be reached right now; callers may treat it as temporary: the backend reconnects by
   itself on a later call, and nothing of the failed call was applied.

Theory of operation
-------------------
The message store holds each application message once (``MessageRecord``, keyed by an
integer ``message_id`` from ``MessageIds``). Offline-queue entries (``QueuedRecord``) and
outgoing in-flight entries (``InflightRecord``) reference it by id, as the broker's in-memory
queues share one ``Message``. A stored message lives while some queue or in-flight entry
references it: ``purge_expired`` garbage-collects the others (there is no reference
counting), so **put a message in the same batch as its first reference**. Retained messages
are self-contained (``RetainedRecord`` carries the message fields), one per topic.

Puts are upserts (the whole record is replaced); deletes of a missing key do nothing.
``delete_session`` cascades to the client's subscriptions, queue, in-flight and incoming
QoS 2 entries. Loads return lists in a stable order; the per-client loads take an optional
client id (``None`` = every client, which is what a restart uses).

Users and bans
--------------
Built-in users (``UserRecord``) and bans (``BanRecord``) are administrative data, written
by ``tidemq ctl`` (possibly from another process while the broker runs) and read by the
auth sources. They are not part of the write batch: each ``put_*`` / ``delete_*`` is one
small transaction of its own. ``purge_expired`` also deletes bans whose ``until`` has passed.

Built-in ACL rules (``AclRuleRecord``, schema version 3) are administrative data of the
same kind, written by ``tidemq ctl acl`` and read by the ``builtin`` ACL source. Each rule
gets a ``rule_id`` from the store when it is added: ids only grow and are never reused, so
they are both the rules' order (the order they were added) and the handle to delete one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import ClassVar, Final, Literal, Self, TypeAlias, get_args

from tidemq.protocol import (
    NO_PROPERTIES,
    WILL,
    MQTTError,
    PacketType,
    Properties,
    decode_properties,
    encode_properties,
)

__all__ = [
    "ACL_WHO_KINDS",
    "BACKENDS",
    "BAN_KINDS",
    "DURABILITY_MODES",
    "EMPTY_PROPERTIES",
    "AclAction",
    "AclPermission",
    "AclRuleRecord",
    "AclWhoKind",
    "Backend",
    "BanKind",
    "BanRecord",
    "DeleteIncomingQos2",
    "DeleteInflight",
    "DeleteMessage",
    "DeleteRetained",
    "DeleteSession",
    "DeleteSubscription",
    "Dequeue",
    "Durability",
    "Enqueue",
    "GroupCommit",
    "IncomingQos2Record",
    "InflightRecord",
    "MessageIds",
    "MessageRecord",
    "Op",
    "PutIncomingQos2",
    "PutInflight",
    "PutMessage",
    "PutSession",
    "PutSubscription",
    "QueuedRecord",
    "RetainedRecord",
    "SessionRecord",
    "SetRetained",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "SubscriptionRecord",
    "UserRecord",
    "WillRecord",
    "WriteBatch",
    "properties_from_bytes",
    "properties_to_bytes",
]

log = logging.getLogger(__name__)

Backend: TypeAlias = Literal["memory", "sqlite", "redis", "postgres", "mysql"]
BACKENDS: Final[tuple[str, ...]] = get_args(Backend)

Durability: TypeAlias = Literal["sync", "batch", "none"]
"""How hard a commit is pushed to disk, and so when the broker may acknowledge:

* ``sync`` (the default): QoS 1/2 are acknowledged only after their batch is committed and
  flushed to stable storage (SQLite ``synchronous=FULL``, PostgreSQL
  ``synchronous_commit=on``); nothing acknowledged is lost, even on power failure.
* ``batch``: acknowledged after the commit, which does not wait for the flush (SQLite
  ``synchronous=NORMAL``, PostgreSQL ``synchronous_commit=off``); a broker crash loses
  nothing, an operating-system crash or power failure may lose the last moments.
* ``none``: acknowledged without waiting for the write, which still happens (SQLite
  ``synchronous=OFF``); a broker crash may lose the writes of its last moments.
"""
DURABILITY_MODES: Final[tuple[str, ...]] = get_args(Durability)

BanKind: TypeAlias = Literal["clientid", "username", "address"]
"""What a ban matches: a client id, a username, or a peer address (an IP or a CIDR)."""
BAN_KINDS: Final[tuple[str, ...]] = get_args(BanKind)

AclWhoKind: TypeAlias = Literal["username", "clientid", "all"]
"""Whom a built-in ACL rule is for: one username, one client id, or every client."""
ACL_WHO_KINDS: Final[tuple[str, ...]] = get_args(AclWhoKind)
AclPermission: TypeAlias = Literal["allow", "deny"]
AclAction: TypeAlias = Literal["publish", "subscribe", "all"]

#: The encoded form of an empty MQTT 5 property block.
EMPTY_PROPERTIES: Final = b"\x00"


# --- errors --------------------------------------------------------------------------------


class StorageError(Exception):
    """A storage operation failed; nothing of it was applied.

    Attributes:
        temporary: True when retrying later may succeed (see ``StorageUnavailable``).
    """

    temporary: ClassVar[bool] = False


class StorageUnavailable(StorageError):
    """A server backend (Redis, PostgreSQL, MySQL) cannot be reached. The backend
    reconnects on a later call; callers may hold or refuse durable work meanwhile."""

    temporary: ClassVar[bool] = True


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class WillRecord:
    """A session's will message, kept until it is published or cancelled."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: bytes = EMPTY_PROPERTIES  # the encoded Will Properties
    delay: int = 0  # Will Delay Interval, seconds; due at disconnected_at + delay


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRecord:
    """A persistent session (one whose expiry interval is not zero)."""

    client_id: str
    expiry_interval: int  # seconds; 0xFFFFFFFF = never expires
    protocol_version: int  # 3, 4 or 5
    username: str | None = None
    disconnected_at: float | None = None  # wall clock; None while connected
    expires_at: float | None = None  # wall clock; None while connected or never expiring
    will: WillRecord | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionRecord:
    """One subscription of a session, with every option it was made with."""

    client_id: str
    topic_filter: str  # as subscribed, including any $share/<group>/ prefix
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0  # a protocol.RetainHandling value
    subscription_id: int | None = None
    share_group: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRecord:
    """An application message in the message store, referenced by queues and in-flight
    entries (and, in later issues, by history and delayed publish)."""

    message_id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created_at: float  # wall clock
    properties: bytes = EMPTY_PROPERTIES  # encoded; never a Topic Alias or Subscription Id
    sender: str | None = None  # client id of the publisher; None for the broker's own
    expires_at: float | None = None  # wall clock; None = never


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedRecord:
    """A delivery queued for a session (offline, or beyond its in-flight window)."""

    client_id: str
    seq: int  # the queue's order, increasing per client
    message_id: int
    qos: int  # the delivery's QoS (min of message and subscription)
    retain: bool = False
    sub_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class InflightRecord:
    """An outgoing QoS 1/2 delivery sent and not yet acknowledged."""

    client_id: str
    packet_id: int
    message_id: int
    qos: int
    retain: bool = False
    sub_ids: tuple[int, ...] = ()
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent, awaiting PUBCOMP
    seq: int = 0  # send order: loads return a client's entries by (seq, packet_id)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingQos2Record:
    """An incoming QoS 2 packet id awaiting PUBREL (exactly-once across a restart)."""

    client_id: str
    packet_id: int
    received_at: float  # wall clock


@dataclass(frozen=True, slots=True, kw_only=True)
class RetainedRecord:
    """The retained message of one topic, self-contained."""

    topic: str
    payload: bytes
    qos: int
    created_at: float  # wall clock
    properties: bytes = EMPTY_PROPERTIES
    sender: str | None = None
    expires_at: float | None = None  # wall clock; None = never


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    """A built-in user (``tidemq ctl users``), checked by the ``builtin`` authenticator."""

    username: str
    password_hash: str  # a PHC string (``$argon2id$...``, ``$pbkdf2-sha512$...``, bcrypt)
    superuser: bool = False  # bypasses authorization
    created_at: float  # wall clock
    updated_at: float | None = None  # wall clock of the last password or flag change


@dataclass(frozen=True, slots=True, kw_only=True)
class BanRecord:
    """A ban: CONNECTs matching it are refused (CONNACK 0x8A Banned) until ``until``.

    ``value`` is a client id, a username, or for ``address`` an IP address or a CIDR network
    in its normal form (``ipaddress.ip_network(v, strict=False)``), which is the key.
    """

    kind: BanKind
    value: str
    reason: str = ""
    created_at: float  # wall clock
    until: float | None = None  # wall clock; None = forever
    by: str = ""  # who banned: "ctl", "flapping", an API user...


@dataclass(frozen=True, slots=True, kw_only=True)
class AclRuleRecord:
    """A built-in ACL rule (``tidemq ctl acl``), checked by the ``builtin`` ACL source.

    ``topic`` is a topic filter, possibly with ``${username}`` / ``${clientid}``
    placeholders, or ``eq FILTER`` for a literal one. ``qos`` lists the QoS levels the rule
    applies to (empty: any); ``retain`` limits a publish rule to messages with that retain
    flag (None: either). ``rule_id`` is given by the store in ``add_acl_rule`` (0 before).
    """

    rule_id: int = 0
    who_kind: AclWhoKind
    who: str = ""  # the username or client id; "" for "all"
    permission: AclPermission
    action: AclAction
    topic: str
    qos: tuple[int, ...] = ()
    retain: bool | None = None
    created_at: float  # wall clock


# --- the write batch -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PutSession:
    record: SessionRecord


@dataclass(frozen=True, slots=True)
class DeleteSession:
    client_id: str


@dataclass(frozen=True, slots=True)
class PutSubscription:
    record: SubscriptionRecord


@dataclass(frozen=True, slots=True)
class DeleteSubscription:
    client_id: str
    topic_filter: str


@dataclass(frozen=True, slots=True)
class PutMessage:
    record: MessageRecord


@dataclass(frozen=True, slots=True)
class DeleteMessage:
    message_id: int


@dataclass(frozen=True, slots=True)
class Enqueue:
    record: QueuedRecord


@dataclass(frozen=True, slots=True)
class Dequeue:
    client_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class PutInflight:
    record: InflightRecord


@dataclass(frozen=True, slots=True)
class DeleteInflight:
    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class PutIncomingQos2:
    record: IncomingQos2Record


@dataclass(frozen=True, slots=True)
class DeleteIncomingQos2:
    client_id: str
    packet_id: int


@dataclass(frozen=True, slots=True)
class SetRetained:
    record: RetainedRecord


@dataclass(frozen=True, slots=True)
class DeleteRetained:
    topic: str


Op: TypeAlias = (
    PutSession
    | DeleteSession
    | PutSubscription
    | DeleteSubscription
    | PutMessage
    | DeleteMessage
    | Enqueue
    | Dequeue
    | PutInflight
    | DeleteInflight
    | PutIncomingQos2
    | DeleteIncomingQos2
    | SetRetained
    | DeleteRetained
)


class WriteBatch:
    """Writes to apply together, in order, atomically: build one, then ``Storage.apply`` it.

    ``ops`` is the list of operations in the order they were added. Backends apply them in
    that order, in runs of consecutive operations of one type (``runs``), so a later write
    to the same key wins.
    """

    __slots__ = ("ops",)

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def __len__(self) -> int:
        return len(self.ops)

    def __repr__(self) -> str:
        return f"<WriteBatch ops={len(self.ops)}>"

    def put_session(self, record: SessionRecord) -> None:
        self.ops.append(PutSession(record))

    def delete_session(self, client_id: str) -> None:
        """Delete a session with its subscriptions, queue, in-flight and incoming QoS 2
        entries. Messages they referenced go at the next ``purge_expired``."""
        self.ops.append(DeleteSession(client_id))

    def put_subscription(self, record: SubscriptionRecord) -> None:
        self.ops.append(PutSubscription(record))

    def delete_subscription(self, client_id: str, topic_filter: str) -> None:
        self.ops.append(DeleteSubscription(client_id, topic_filter))

    def put_message(self, record: MessageRecord) -> None:
        """Store a message; add its first reference in the same batch."""
        self.ops.append(PutMessage(record))

    def delete_message(self, message_id: int) -> None:
        self.ops.append(DeleteMessage(message_id))

    def enqueue(self, record: QueuedRecord) -> None:
        self.ops.append(Enqueue(record))

    def dequeue(self, client_id: str, seq: int) -> None:
        self.ops.append(Dequeue(client_id, seq))

    def put_inflight(self, record: InflightRecord) -> None:
        self.ops.append(PutInflight(record))

    def delete_inflight(self, client_id: str, packet_id: int) -> None:
        self.ops.append(DeleteInflight(client_id, packet_id))

    def put_incoming_qos2(self, record: IncomingQos2Record) -> None:
        self.ops.append(PutIncomingQos2(record))

    def delete_incoming_qos2(self, client_id: str, packet_id: int) -> None:
        self.ops.append(DeleteIncomingQos2(client_id, packet_id))

    def set_retained(self, record: RetainedRecord) -> None:
        self.ops.append(SetRetained(record))

    def delete_retained(self, topic: str) -> None:
        self.ops.append(DeleteRetained(topic))

    def runs(self) -> Iterator[list[Op]]:
        """The operations in order, grouped into runs of consecutive operations of one
        type, so a backend can hand each run to its driver's ``executemany``."""
        run: list[Op] = []
        kind: type | None = None
        for op in self.ops:
            if type(op) is not kind:
                if run:
                    yield run
                run = []
                kind = type(op)
            run.append(op)
        if run:
            yield run


# --- the interface -------------------------------------------------------------------------


class Storage(ABC):
    """What the broker persists, behind one interface (see the module docstring).

    Every method may raise ``StorageError``; server backends raise ``StorageUnavailable``
    while their server cannot be reached and recover by themselves when it returns. Calls
    before ``open`` or after ``close`` raise ``StorageError``.
    """

    #: The backend's name in config (``storage.backend``).
    name: ClassVar[str]

    def __init__(self, durability: Durability = "sync") -> None:
        if durability not in DURABILITY_MODES:
            raise StorageError(
                f"unknown durability {durability!r}: use one of {', '.join(DURABILITY_MODES)}"
            )
        self.durability: Durability = durability
        #: Set before ``open`` by an administrative process (``tidemq ctl``) that opens the
        #: store beside a running broker: SQLite then does not take the one-broker lock.
        self.shared = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema, and check it is ours.

        Raises:
            StorageError: a file or database that is not TideMQ's, a newer schema version,
                a corrupt file (never overwritten).
            StorageUnavailable: the server cannot be reached.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release connections, threads and locks. Idempotent."""

    @abstractmethod
    async def apply(self, batch: WriteBatch) -> None:
        """Apply *batch* atomically: in one transaction and one commit, or not at all."""

    @abstractmethod
    async def load_sessions(self) -> list[SessionRecord]:
        """Every stored session, expired or not, by client id (a restart publishes the
        wills of sessions that expired while the broker was down, then purges them)."""

    @abstractmethod
    async def load_subscriptions(self, client_id: str | None = None) -> list[SubscriptionRecord]:
        """Subscriptions of one client, or of all; by (client id, topic filter)."""

    @abstractmethod
    async def load_queue(self, client_id: str | None = None) -> list[QueuedRecord]:
        """Queued deliveries of one client, or of all; by (client id, seq)."""

    @abstractmethod
    async def load_inflight(self, client_id: str | None = None) -> list[InflightRecord]:
        """In-flight deliveries of one client, or of all; by (client id, seq, packet id)."""

    @abstractmethod
    async def load_incoming_qos2(self, client_id: str | None = None) -> list[IncomingQos2Record]:
        """Incoming QoS 2 packet ids awaiting PUBREL; by (client id, packet id)."""

    @abstractmethod
    async def load_retained(self) -> list[RetainedRecord]:
        """Every retained message, expired or not, by topic."""

    @abstractmethod
    async def get_messages(self, message_ids: Collection[int]) -> dict[int, MessageRecord]:
        """The stored messages among *message_ids*; missing ids are left out."""

    async def get_message(self, message_id: int) -> MessageRecord | None:
        """One stored message, or None."""
        return (await self.get_messages((message_id,))).get(message_id)

    @abstractmethod
    async def max_message_id(self) -> int:
        """The largest stored message id, 0 when there is none (seeds ``MessageIds``)."""

    @abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete what has expired at wall-clock time *now*, atomically:

        * sessions whose ``expires_at <= now``, cascading as ``delete_session`` does;
        * retained messages whose ``expires_at <= now``;
        * queue entries whose message has ``expires_at <= now`` (in-flight entries stay:
          their delivery has started [MQTT-3.3.2-5]);
        * then every stored message that no queue or in-flight entry references;
        * bans whose ``until <= now``.

        Returns:
            how many sessions, retained messages, stored messages and bans were deleted.
        """

    # --- users and bans (administrative data; each call is its own transaction) ----------

    @abstractmethod
    async def get_user(self, username: str) -> UserRecord | None:
        """The built-in user *username*, or None."""

    @abstractmethod
    async def put_user(self, record: UserRecord) -> None:
        """Create or replace the user ``record.username``."""

    @abstractmethod
    async def delete_user(self, username: str) -> bool:
        """Delete a user; True when it existed."""

    @abstractmethod
    async def list_users(self) -> list[UserRecord]:
        """Every built-in user, by username."""

    @abstractmethod
    async def put_ban(self, record: BanRecord) -> None:
        """Create or replace the ban of (``record.kind``, ``record.value``)."""

    @abstractmethod
    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        """Lift a ban; True when it existed."""

    @abstractmethod
    async def list_bans(self) -> list[BanRecord]:
        """Every stored ban, expired or not (until the next purge), by (kind, value)."""

    # --- built-in ACL rules (administrative data; each call is its own transaction) -------

    @abstractmethod
    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        """Store a new rule after every rule added before; returns it with its new
        ``rule_id`` (``record.rule_id`` is not used). Adding the same rule twice stores it
        twice, as EMQX does."""

    @abstractmethod
    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        """The rules of one username (``"username", NAME``), one client id
        (``"clientid", ID``) or for everyone (``"all"``; *who* is not used), or with
        *who_kind* None every rule; in the order they were added (by ``rule_id``)."""

    @abstractmethod
    async def delete_acl_rule(self, rule_id: int) -> bool:
        """Delete one rule; True when it existed."""


# --- helpers ---------------------------------------------------------------------------------


def properties_to_bytes(props: Properties) -> bytes:
    """The stored form of MQTT 5 properties: their encoded property block."""
    return encode_properties(props)


def properties_from_bytes(data: bytes, *, will: bool = False) -> Properties:
    """Properties back from ``properties_to_bytes`` (Will Properties when *will*).

    Raises:
        StorageError: the bytes are not a valid property block.
    """
    if not data or data == EMPTY_PROPERTIES:
        return NO_PROPERTIES
    try:
        props, end = decode_properties(data, 0, len(data), WILL if will else PacketType.PUBLISH)
    except MQTTError as exc:
        raise StorageError(f"stored properties are corrupt: {exc}") from exc
    if end != len(data):
        raise StorageError("stored properties are corrupt: trailing bytes")
    return props


class MessageIds:
    """Allocates message ids: strictly increasing integers, at least the wall clock in
    microseconds and above every id handed out before, so ids stay unique across restarts
    (seed with ``await storage.max_message_id()``) even if the clock steps back, and sort
    by publication time (for history)."""

    __slots__ = ("_last",)

    def __init__(self, floor: int = 0) -> None:
        self._last = floor

    def next(self) -> int:
        now = time.time_ns() // 1000
        last = self._last + 1
        self._last = now if now > last else last
        return self._last


def _retrieve(future: asyncio.Future[None]) -> None:
    # Mark a failed commit as seen, so nobody gets "exception was never retrieved" for a
    # batch whose writers did not wait for it (they were logged below instead).
    if not future.cancelled():
        future.exception()


class GroupCommit:
    """Group commit over a ``Storage``: writes made during one event-loop pass go to the
    store as one batch, in one transaction and one fsync, while the previous batch commits.

    Add operations to ``batch``, then call ``commit()``: it returns a future that completes
    when everything added so far is applied, or raises its ``StorageError``. Writers that
    must not acknowledge before the data is durable (QoS 1/2 under ``durability = "sync"``)
    await it; others may ignore it. One failed batch fails every writer in it.
    """

    __slots__ = ("_done", "_pending", "_running", "storage")

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._pending = WriteBatch()
        self._done: asyncio.Future[None] | None = None
        self._running: asyncio.Task[None] | None = None

    @property
    def batch(self) -> WriteBatch:
        """The batch collecting the writes of the current pass."""
        return self._pending

    @property
    def busy(self) -> bool:
        """True while a batch is committing or waiting to."""
        return self._running is not None or self._done is not None

    def commit(self) -> asyncio.Future[None]:
        """Schedule the current batch (at the end of this loop pass, or when the batch now
        committing finishes) and return the future of its completion."""
        done = self._done
        if done is None:
            loop = asyncio.get_running_loop()
            done = self._done = loop.create_future()
            done.add_done_callback(_retrieve)
            if self._running is None:
                loop.call_soon(self._start)
        return done

    async def drain(self) -> None:
        """Wait until every batch scheduled so far has been applied or has failed."""
        while self._running is not None or self._done is not None:
            waiter = self._done if self._done is not None else self._running
            assert waiter is not None
            await asyncio.wait((waiter,))

    def _start(self) -> None:
        done = self._done
        if self._running is not None or done is None:
            return
        batch = self._pending
        self._pending, self._done = WriteBatch(), None
        self._running = asyncio.get_running_loop().create_task(self._run(batch, done))

    async def _run(self, batch: WriteBatch, done: asyncio.Future[None]) -> None:
        try:
            if batch.ops:
                await self.storage.apply(batch)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            log.warning("group commit of %d writes failed: %s", len(batch), exc)
            done.set_exception(exc)
        else:
            done.set_result(None)
        finally:
            self._running = None
            if self._done is not None:
                self._start()
