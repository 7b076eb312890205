"""``Persistence``: the broker's state mirrored into a ``Storage``, and restored from it.

The broker's in-memory state stays the authority while it runs; this module writes every
change that must survive a restart into one ``WriteBatch`` per event-loop pass and commits
it in one transaction (group commit), while the previous batch commits. What is written:

* persistent sessions (expiry interval > 0): the session with its will, subscriptions,
  queued deliveries, outgoing QoS 1/2 in flight and incoming QoS 2 packet ids;
* retained messages, whoever publishes them;
* each application message once in the message store, referenced by queue and in-flight
  entries (``store_id``), put in the same batch as its first reference.

The durability rule (docs/storage.md): a QoS 1/2 PUBLISH whose handling added writes is
acknowledged only when the batch holding them has committed (``commit()`` returns the
future the handler waits on), unless ``durability = "none"``. Acknowledgements of one
connection keep their order whatever they wait for [MQTT-4.6.0-2].

A failing backend (a server gone away) never loses in-memory state: the batch is retried
with backoff until it commits, later writes queue behind it in order, waiting acks are held
(QoS 0 traffic flows), and everything resumes when the backend is back. A batch that fails
with a permanent error several times is dropped with an error log; its waiters get the
error (v5 publishers: PUBACK/PUBREC 0x80).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from tidemq.protocol import NO_PROPERTIES, RetainHandling, Will
from tidemq.storage.api import (
    IncomingQos2Record,
    InflightRecord,
    MessageIds,
    MessageRecord,
    QueuedRecord,
    RetainedRecord,
    SessionRecord,
    Storage,
    StorageError,
    SubscriptionRecord,
    WillRecord,
    WriteBatch,
    properties_from_bytes,
    properties_to_bytes,
)

from .message import Message
from .session import Inflight, QueuedDelivery, Session, SubOptions
from .settings import NEVER_EXPIRES

if TYPE_CHECKING:
    from .core import BrokerCore

log = logging.getLogger("tidemq.storage")

#: Backoff between retries of a batch that failed (seconds): first, cap.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 5.0
#: How many times a batch failing with a permanent (non-temporary) error is tried.
PERMANENT_ATTEMPTS: Final = 3


def _wall_deadline(monotonic_deadline: float | None) -> float | None:
    """A ``time.monotonic()`` deadline as wall-clock seconds (what survives a restart)."""
    if monotonic_deadline is None:
        return None
    return time.time() + (monotonic_deadline - time.monotonic())


def _monotonic_deadline(wall_deadline: float | None) -> float | None:
    if wall_deadline is None:
        return None
    return time.monotonic() + (wall_deadline - time.time())


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class Persistence:
    """Writes broker state to *storage* by group commit; restores it with ``restore``."""

    __slots__ = (
        "_attempts",
        "_done",
        "_purge_due",
        "_purge_entry",
        "_task",
        "available",
        "batch",
        "batches_committed",
        "ids",
        "purge_interval",
        "storage",
        "wait",
        "write_failures",
    )

    def __init__(self, storage: Storage, *, purge_interval: float = 300.0) -> None:
        self.storage = storage
        # Acknowledgements wait for the commit unless durability is "none".
        self.wait = storage.durability != "none"
        self.purge_interval = purge_interval
        self.ids = MessageIds()
        self.batch = WriteBatch()
        self.available = True  # False while the backend fails; $SYS and logs say so
        self.batches_committed = 0
        self.write_failures = 0
        self._done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._purge_due = False
        self._purge_entry: asyncio.TimerHandle | None = None
        self._attempts = 0

    # --- group commit ----------------------------------------------------------------

    def pending(self) -> int:
        """How many writes the current batch holds (a handler compares it before and
        after handling a PUBLISH to learn whether its ack must wait)."""
        return len(self.batch.ops)

    def commit(self) -> asyncio.Future[None]:
        """The future of the commit of everything written so far. The commit starts at
        the end of this loop pass, or when the batch committing now is done."""
        done = self._done
        if done is None:
            done = self._done = asyncio.get_running_loop().create_future()
            done.add_done_callback(_retrieve)
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run())
        return done

    def _touch(self) -> None:
        if self._done is None:
            self.commit()

    async def _run(self) -> None:
        try:
            while self._done is not None or self._purge_due:
                done = self._done
                batch = self.batch
                self.batch, self._done = WriteBatch(), None
                error = await self._apply(batch)
                if done is not None:
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
                if self._purge_due and self._done is None:
                    self._purge_due = False
                    await self._purge()
        finally:
            self._task = None

    async def _apply(self, batch: WriteBatch) -> StorageError | None:
        if not batch.ops:
            return None
        delay = RETRY_FIRST
        attempts = 0
        while True:
            attempts += 1
            try:
                await self.storage.apply(batch)
            except StorageError as exc:
                self.write_failures += 1
                if self.available:
                    self.available = False
                    log.error(
                        "storage %s failed (%s); holding %d writes and their acks until it "
                        "recovers",
                        self.storage.name,
                        exc,
                        len(batch),
                    )
                if not exc.temporary and attempts >= PERMANENT_ATTEMPTS:
                    log.error("dropping a batch of %d writes after %d tries", len(batch), attempts)
                    return exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if not self.available:
                self.available = True
                log.warning("storage %s is back; writes resume", self.storage.name)
            self.batches_committed += 1
            return None

    async def drain(self) -> None:
        """Wait until everything written so far is committed (or dropped)."""
        while self._task is not None:
            await asyncio.wait((self._task,))

    # --- purge -----------------------------------------------------------------------

    def start_purge_schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.purge_interval > 0:
            self._purge_entry = loop.call_later(self.purge_interval, self._request_purge, loop)

    def _request_purge(self, loop: asyncio.AbstractEventLoop) -> None:
        # The purge runs inside the commit task, between batches: a message stored by a
        # batch is never collected before the batch holding its first reference commits.
        self._purge_due = True
        if self._task is None:
            self._task = loop.create_task(self._run())
        self._purge_entry = loop.call_later(self.purge_interval, self._request_purge, loop)

    async def _purge(self) -> None:
        try:
            removed = await self.storage.purge_expired(time.time())
        except StorageError as exc:
            log.warning("purge of expired state failed: %s", exc)
            return
        if removed:
            log.info("purged %d expired sessions and messages", removed)

    def close(self) -> None:
        if self._purge_entry is not None:
            self._purge_entry.cancel()
            self._purge_entry = None

    # --- writes ----------------------------------------------------------------------

    def put_session(self, session: Session) -> None:
        """The session as it is now: connected, or offline since now with its will."""
        will = session.will
        will_record = None
        if will is not None:
            will_record = WillRecord(
                topic=will.topic,
                payload=will.payload,
                qos=will.qos,
                retain=will.retain,
                properties=properties_to_bytes(will.properties),
                delay=will.properties.will_delay_interval or 0,
            )
        disconnected_at = expires_at = None
        if session.handler is None:
            disconnected_at = time.time()
            if session.expiry_interval != NEVER_EXPIRES:
                expires_at = disconnected_at + session.expiry_interval
        self.batch.put_session(
            SessionRecord(
                client_id=session.client_id,
                expiry_interval=session.expiry_interval,
                protocol_version=session.protocol_version,
                username=session.username,
                disconnected_at=disconnected_at,
                expires_at=expires_at,
                will=will_record,
            )
        )
        self._touch()

    def delete_session(self, client_id: str) -> None:
        self.batch.delete_session(client_id)
        self._touch()

    def put_subscription(self, session: Session, opts: SubOptions) -> None:
        self.batch.put_subscription(
            SubscriptionRecord(
                client_id=session.client_id,
                topic_filter=opts.topic_filter,
                qos=opts.qos,
                no_local=opts.no_local,
                retain_as_published=opts.retain_as_published,
                retain_handling=int(opts.retain_handling),
                subscription_id=opts.subscription_id,
                share_group=opts.share_group,
            )
        )
        self._touch()

    def delete_subscription(self, session: Session, topic_filter: str) -> None:
        self.batch.delete_subscription(session.client_id, topic_filter)
        self._touch()

    def _store(self, message: Message) -> int:
        """The message's id in the message store, writing it on first use."""
        store_id = message.store_id
        if store_id:
            return store_id
        store_id = message.store_id = self.ids.next()
        props = message.properties
        self.batch.put_message(
            MessageRecord(
                message_id=store_id,
                topic=message.topic,
                payload=message.payload,
                qos=message.qos,
                retain=message.retain,
                created_at=time.time(),
                properties=properties_to_bytes(props) if props is not NO_PROPERTIES else b"\x00",
                sender=message.sender,
                expires_at=_wall_deadline(message.expires_at),
            )
        )
        return store_id

    def enqueue(self, session: Session, item: QueuedDelivery) -> None:
        seq = session.seq = session.seq + 1
        item.seq = seq
        self.batch.enqueue(
            QueuedRecord(
                client_id=session.client_id,
                seq=seq,
                message_id=self._store(item.message),
                qos=item.qos,
                retain=item.retain,
                sub_ids=item.sub_ids,
            )
        )
        self._touch()

    def dequeue(self, session: Session, item: QueuedDelivery) -> None:
        if item.seq:
            self.batch.dequeue(session.client_id, item.seq)
            self._touch()

    def put_inflight(self, session: Session, packet_id: int, entry: Inflight) -> None:
        if not entry.seq:
            entry.seq = session.seq = session.seq + 1
        self.batch.put_inflight(
            InflightRecord(
                client_id=session.client_id,
                packet_id=packet_id,
                message_id=self._store(entry.message),
                qos=entry.qos,
                retain=entry.retain,
                sub_ids=entry.sub_ids,
                released=entry.released,
                seq=entry.seq,
            )
        )
        self._touch()

    def delete_inflight(self, session: Session, packet_id: int) -> None:
        self.batch.delete_inflight(session.client_id, packet_id)
        self._touch()

    def put_incoming_qos2(self, session: Session, packet_id: int) -> None:
        self.batch.put_incoming_qos2(
            IncomingQos2Record(
                client_id=session.client_id, packet_id=packet_id, received_at=time.time()
            )
        )
        self._touch()

    def delete_incoming_qos2(self, session: Session, packet_id: int) -> None:
        self.batch.delete_incoming_qos2(session.client_id, packet_id)
        self._touch()

    def set_retained(self, message: Message) -> None:
        props = message.properties
        self.batch.set_retained(
            RetainedRecord(
                topic=message.topic,
                payload=message.payload,
                qos=message.qos,
                created_at=time.time(),
                properties=properties_to_bytes(props) if props is not NO_PROPERTIES else b"\x00",
                sender=message.sender,
                expires_at=_wall_deadline(message.expires_at),
            )
        )
        self._touch()

    def delete_retained(self, topic: str) -> None:
        self.batch.delete_retained(topic)
        self._touch()

    # --- restore ---------------------------------------------------------------------

    async def restore(self, core: BrokerCore) -> None:
        """Load sessions, subscriptions, queues, in-flight state, retained messages and
        will timers into *core* (before any listener accepts a client)."""
        storage = self.storage
        started = time.monotonic()
        self.ids = MessageIds(await storage.max_message_id())
        now = time.time()
        for kept in await storage.load_retained():
            if kept.expires_at is not None and kept.expires_at <= now:
                continue
            retained = Message.from_publish_properties(
                kept.topic,
                kept.payload,
                kept.qos,
                True,
                properties_from_bytes(kept.properties),
                kept.sender,
            )
            retained.expires_at = _monotonic_deadline(kept.expires_at)
            core.retained.set(kept.topic, retained)
        sessions: dict[str, Session] = {}
        expired: list[tuple[Session, Will | None]] = []
        loop_now = core.loop.time()
        for record in await storage.load_sessions():
            session = Session(record.client_id, record.protocol_version, loop_now)
            session.username = record.username
            session.expiry_interval = record.expiry_interval
            session.persistent = True
            will = None
            w = record.will
            if w is not None:
                will = Will(
                    topic=w.topic,
                    payload=w.payload,
                    qos=w.qos,
                    retain=w.retain,
                    properties=properties_from_bytes(w.properties, will=True),
                )
            # A session connected when the broker stopped lost its connection then.
            disconnected_at = record.disconnected_at or now
            expires_at = record.expires_at
            if expires_at is None and record.expiry_interval != NEVER_EXPIRES:
                expires_at = disconnected_at + record.expiry_interval
            if expires_at is not None and expires_at <= now:
                expired.append((session, will))
                continue
            sessions[record.client_id] = session
            core.sessions[record.client_id] = session
            if expires_at is not None:
                session.expiry_entry = core.scheduler.call_later(
                    expires_at - now, core.expire_session, session
                )
            if will is not None and w is not None:
                delay = min(w.delay, record.expiry_interval)
                due = disconnected_at + delay
                session.will = will
                if due <= now:
                    expired.append((session, None))  # publish now, keep the session
                else:
                    session.will_entry = core.scheduler.call_later(
                        due - now, core.will_due, session
                    )
        for sub in await storage.load_subscriptions():
            subscriber = sessions.get(sub.client_id)
            if subscriber is None:
                continue
            opts = SubOptions(
                topic_filter=sub.topic_filter,
                qos=sub.qos,
                no_local=sub.no_local,
                retain_as_published=sub.retain_as_published,
                retain_handling=RetainHandling(sub.retain_handling),
                subscription_id=sub.subscription_id,
                share_group=sub.share_group,
            )
            subscriber.subscriptions[sub.topic_filter] = opts
            core.tree.subscribe(sub.topic_filter, subscriber, opts)
        queued = await storage.load_queue()
        inflight = await storage.load_inflight()
        ids = {r.message_id for r in queued} | {r.message_id for r in inflight}
        records = await storage.get_messages(ids) if ids else {}
        messages: dict[int, Message] = {}

        def message_for(message_id: int) -> Message | None:
            found = messages.get(message_id)
            if found is None:
                record = records.get(message_id)
                if record is None:
                    return None
                found = Message.from_publish_properties(
                    record.topic,
                    record.payload,
                    record.qos,
                    record.retain,
                    properties_from_bytes(record.properties),
                    record.sender,
                )
                found.expires_at = _monotonic_deadline(record.expires_at)
                found.store_id = message_id
                messages[message_id] = found
            return found

        for item in inflight:
            owner = sessions.get(item.client_id)
            stored = message_for(item.message_id)
            if owner is None or stored is None:
                continue
            entry = Inflight(stored, item.qos, item.retain, item.sub_ids)
            entry.released = item.released
            entry.seq = item.seq
            owner.inflight[item.packet_id] = entry
            owner.seq = max(owner.seq, item.seq)
        for q in queued:
            owner = sessions.get(q.client_id)
            stored = message_for(q.message_id)
            if owner is None or stored is None:
                continue
            delivery = QueuedDelivery(stored, q.qos, q.retain, q.sub_ids)
            delivery.seq = q.seq
            if owner.queue is None:
                owner.queue = deque()
            owner.queue.append(delivery)
            owner.seq = max(owner.seq, q.seq)
        for incoming in await storage.load_incoming_qos2():
            owner = sessions.get(incoming.client_id)
            if owner is not None:
                owner.awaiting_rel[incoming.packet_id] = loop_now
        log.info(
            "restored %d sessions, %d retained messages, %d queued and %d in-flight "
            "deliveries from %s in %.2f s",
            len(sessions),
            len(core.retained),
            len(queued),
            len(inflight),
            storage.name,
            time.monotonic() - started,
        )
        # Wills that came due while the broker was down go out now; sessions that
        # expired are then removed (their wills first, MQTT 5.0 §3.1.3.2.2).
        for session, will in expired:
            if session.client_id in sessions:
                pending = session.will
                session.will = None
                if pending is not None:
                    core.publish_will(session, pending)
                self.put_session(session)
            else:
                if will is not None:
                    core.publish_will(session, will)
                self.delete_session(session.client_id)
        self.start_purge_schedule(core.loop)
