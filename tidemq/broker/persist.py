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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from tidemq.protocol import NO_PROPERTIES, RetainHandling, Will
from tidemq.storage.api import (
    DeleteIncomingQos2,
    DeleteInflight,
    DeleteRetained,
    DeleteSession,
    DeleteSubscription,
    Dequeue,
    Enqueue,
    IncomingQos2Record,
    InflightRecord,
    MessageIds,
    MessageRecord,
    Op,
    PutIncomingQos2,
    PutInflight,
    PutMessage,
    PutSession,
    PutSubscription,
    QueuedRecord,
    RetainedRecord,
    SessionRecord,
    SetRetained,
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
#: Group-commit pacing: after a batch of at least PACE_BATCH writes (the broker is busy),
#: the next one starts no sooner than PACE_SECONDS after its first write.
#: Only while waiting pays: when at least PACE_CANCELLED of the last batch's writes were
#: cancelled before its commit (online subscribers acknowledging). Writes for offline
#: sessions never cancel, so their acknowledgements are never held back by pacing.
PACE_BATCH: Final = 256
PACE_SECONDS: Final = 0.1
PACE_CANCELLED: Final = 0.3
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


def _build(op: tuple[Any, ...], store_id: int) -> Op:
    """A deferred hot-path write as a storage op (at commit time, if still wanted)."""
    if op[0] == "I":
        _, cid, packet_id, entry = op
        return PutInflight(
            InflightRecord(
                client_id=cid,
                packet_id=packet_id,
                message_id=store_id,
                qos=entry.qos,
                retain=entry.retain,
                sub_ids=entry.sub_ids,
                released=entry.released,
                seq=entry.seq,
            )
        )
    _, cid, item = op
    return Enqueue(
        QueuedRecord(
            client_id=cid,
            seq=item.seq,
            message_id=store_id,
            qos=item.qos,
            retain=item.retain,
            sub_ids=item.sub_ids,
        )
    )


def _message_op(message: Message, store_id: int) -> Op:
    props = message.properties
    return PutMessage(
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


class Durable:
    """What a PUBLISH's acknowledgement waits for: the writes its handling added.

    Done when the batch holding them commits, or earlier when every one of them is
    cancelled within the batch (each delivery was acknowledged by its subscriber before
    the commit: nothing is left to make durable). Quacks like the ``asyncio.Future`` the
    handler's ack queue expects (``done``, ``cancelled``, ``exception``,
    ``add_done_callback``) without costing a future per PUBLISH.
    """

    __slots__ = ("_callbacks", "_done", "_error", "count")

    def __init__(self, count: int) -> None:
        self.count = count  # writes still to be committed or cancelled
        self._done = False
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Durable], object]] = []

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, callback: Callable[[Durable], object]) -> None:
        if self._done:
            callback(self)
        else:
            self._callbacks.append(callback)

    def resolve(self, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._error = error
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("acknowledgement callback failed")


class Persistence:
    """Writes broker state to *storage* by group commit; restores it with ``restore``."""

    __slots__ = (
        "_cancelled_share",
        "_carry",
        "_done",
        "_first_at",
        "_inflight_at",
        "_ops",
        "_purge_due",
        "_purge_entry",
        "_queued_at",
        "_task",
        "_token_of",
        "_tokens",
        "available",
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
        self.available = True  # False while the backend fails; $SYS and logs say so
        self.batches_committed = 0
        self.write_failures = 0
        # The batch being collected: storage ops, deferred hot-path entries (tuples, built
        # into records only if still wanted at commit time), or None for cancelled ones.
        self._ops: list[Op | tuple[Any, ...] | None] = []
        self._first_at = 0.0  # when the batch's first write came (monotonic)
        self._cancelled_share = 0.0  # of the last batch's writes, cancelled before commit
        # Where this batch holds the entries that a later write of the same batch may
        # cancel: a delivery acknowledged before its first write is committed is never
        # written at all. Keyed by the in-flight entry or queued item itself (identity).
        # A message is written to the message store only with the first of its
        # references that survives to a commit (``_take_batch``), so a message whose
        # deliveries were all acknowledged in time costs nothing here.
        self._inflight_at: dict[Inflight, list[Any]] = {}  # [fresh, index...]
        self._queued_at: dict[QueuedDelivery, int] = {}
        # Durability tokens of this batch, and which token each of its ops belongs to.
        self._tokens: list[Durable] = []
        self._token_of: dict[int, Durable] = {}
        self._carry: Durable | None = None  # a queued delivery's token, moving in flight
        self._done: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._purge_due = False
        self._purge_entry: asyncio.TimerHandle | None = None

    # --- group commit ----------------------------------------------------------------

    def pending(self) -> int:
        """Where the batch stands (a handler compares it before and after handling a
        PUBLISH to learn whether its ack must wait, and passes it to ``durable_since``).
        Only grows between two commits, which never happen inside a callback."""
        return len(self._ops)

    def durable_since(self, start: int) -> Durable:
        """The token of the writes added since ``pending()`` was *start*."""
        ops = self._ops
        token = Durable(0)
        token_of = self._token_of
        for index in range(start, len(ops)):
            if ops[index] is not None:
                token_of[index] = token
                token.count += 1
        if token.count:
            self._tokens.append(token)
        else:
            token.resolve()
        if self._done is None:
            self.commit()
        return token

    def _cancelled(self, index: int) -> None:
        """Op *index* of this batch will not be written: its token may be done."""
        token = self._token_of.pop(index, None)
        if token is not None:
            token.count -= 1
            if token.count == 0:
                token.resolve()

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

    def _add(self, op: Op | tuple[Any, ...]) -> int:
        ops = self._ops
        if not ops:
            self._first_at = time.monotonic()
        ops.append(op)
        if self._done is None:
            self.commit()
        return len(ops) - 1

    def _take_batch(self) -> WriteBatch:
        """The collected writes as a ``WriteBatch``; collection starts afresh."""
        ops = self._ops
        self._ops = []
        self._inflight_at.clear()
        self._queued_at.clear()
        self._token_of.clear()
        self._carry = None
        batch = WriteBatch()
        out = batch.ops
        cancelled = 0
        ids = self.ids
        for op in ops:
            if op is None:
                cancelled += 1
                continue
            if op.__class__ is tuple:
                message = op[-1].message
                store_id = message.store_id
                if not store_id:
                    # First reference to reach a commit: the message goes just before it.
                    store_id = message.store_id = ids.next()
                    out.append(_message_op(message, store_id))
                out.append(_build(op, store_id))
            else:
                out.append(op)  # type: ignore[arg-type]
        self._cancelled_share = cancelled / len(ops) if ops else 0.0
        return batch

    async def _run(self) -> None:
        try:
            while self._done is not None or self._purge_due:
                done = self._done
                tokens, self._tokens = self._tokens, []
                batch = self._take_batch()
                self._done = None
                error = await self._apply(batch)
                busy = len(batch) >= PACE_BATCH and self._cancelled_share >= PACE_CANCELLED
                if done is not None:
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
                for token in tokens:
                    token.resolve(error)
                if self._purge_due and self._done is None:
                    self._purge_due = False
                    await self._purge()
                if busy and self._ops:
                    # Under load, let the next batch age a little: deliveries acknowledged
                    # meanwhile cancel their writes (and release their PUBACKs at once), so
                    # less reaches the disk. Light load (small batches) never waits.
                    wait = self._first_at + PACE_SECONDS - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
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
        self._add(
            PutSession(
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
        )

    def delete_session(self, client_id: str) -> None:
        self._add(DeleteSession(client_id))

    def put_subscription(self, session: Session, opts: SubOptions) -> None:
        self._add(
            PutSubscription(
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
        )

    def delete_subscription(self, session: Session, topic_filter: str) -> None:
        self._add(DeleteSubscription(session.client_id, topic_filter))

    def enqueue(self, session: Session, item: QueuedDelivery) -> None:
        item.seq = session.seq = session.seq + 1
        self._queued_at[item] = self._add(("Q", session.client_id, item))

    def dequeue(self, session: Session, item: QueuedDelivery) -> None:
        if not item.seq:
            return
        index = self._queued_at.pop(item, None)
        if index is not None:
            self._ops[index] = None  # queued and taken in one batch: neither is written
            # The delivery goes in flight next (put_inflight): its PUBLISH's token follows
            # it there instead of counting this as done.
            self._carry = self._token_of.pop(index, None)
            return
        self._add(Dequeue(session.client_id, item.seq))

    def put_inflight(self, session: Session, packet_id: int, entry: Inflight) -> None:
        fresh = not entry.seq
        if fresh:
            entry.seq = session.seq = session.seq + 1
        index = self._add(("I", session.client_id, packet_id, entry))
        carried = self._carry
        if carried is not None:
            self._carry = None
            self._token_of[index] = carried
        at = self._inflight_at.get(entry)
        if at is None:
            self._inflight_at[entry] = [fresh, index]
        else:
            at.append(index)

    def delete_inflight(self, session: Session, packet_id: int, entry: Inflight) -> None:
        """*entry*, in flight as *packet_id*, is done (or dropped)."""
        at = self._inflight_at.pop(entry, None)
        if at is not None:
            ops = self._ops
            for index in at[1:]:
                ops[index] = None
                self._cancelled(index)
            if at[0]:
                return  # sent and acknowledged within one batch: nothing to write
        self._add(DeleteInflight(session.client_id, packet_id))

    def put_incoming_qos2(self, session: Session, packet_id: int) -> None:
        self._add(
            PutIncomingQos2(
                IncomingQos2Record(
                    client_id=session.client_id, packet_id=packet_id, received_at=time.time()
                )
            )
        )

    def delete_incoming_qos2(self, session: Session, packet_id: int) -> None:
        self._add(DeleteIncomingQos2(session.client_id, packet_id))

    def set_retained(self, message: Message) -> None:
        props = message.properties
        self._add(
            SetRetained(
                RetainedRecord(
                    topic=message.topic,
                    payload=message.payload,
                    qos=message.qos,
                    created_at=time.time(),
                    properties=properties_to_bytes(props)
                    if props is not NO_PROPERTIES
                    else b"\x00",
                    sender=message.sender,
                    expires_at=_wall_deadline(message.expires_at),
                )
            )
        )

    def delete_retained(self, topic: str) -> None:
        self._add(DeleteRetained(topic))

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
                if owner.awaiting_rel is None:
                    owner.awaiting_rel = {}
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
