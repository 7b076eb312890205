"""The in-memory backend: the reference implementation of ``Storage`` and the baseline of
the contract tests. Nothing survives the process; ``durability`` has no effect.

A batch is applied in two phases: first every operation is matched to its handler (an
operation the backend does not know fails the whole batch here), then the handlers run,
and they cannot fail. So a batch is applied whole or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Any, TypeVar

from tidemq.storage.api import (
    AclRuleRecord,
    AclWhoKind,
    BanKind,
    BanRecord,
    DeleteIncomingQos2,
    DeleteInflight,
    DeleteMessage,
    DeleteRetained,
    DeleteSession,
    DeleteSubscription,
    Dequeue,
    Durability,
    Enqueue,
    IncomingQos2Record,
    InflightRecord,
    MessageRecord,
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
    UserRecord,
    WriteBatch,
)

__all__ = ["MemoryStorage", "from_url"]

R = TypeVar("R")


class MemoryStorage(Storage):
    """``Storage`` in dictionaries."""

    name = "memory"

    def __init__(self, durability: Durability = "sync") -> None:
        super().__init__(durability)
        self._open = False
        self.sessions: dict[str, SessionRecord] = {}
        self.subscriptions: dict[str, dict[str, SubscriptionRecord]] = {}
        self.queues: dict[str, dict[int, QueuedRecord]] = {}
        self.inflight: dict[str, dict[int, InflightRecord]] = {}
        self.incoming: dict[str, dict[int, IncomingQos2Record]] = {}
        self.messages: dict[int, MessageRecord] = {}
        self.retained: dict[str, RetainedRecord] = {}
        self.users: dict[str, UserRecord] = {}
        self.bans: dict[tuple[str, str], BanRecord] = {}
        self.acl_rules: dict[int, AclRuleRecord] = {}  # by rule id, in insertion order
        self._last_rule_id = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            PutSession: self._put_session,
            DeleteSession: self._delete_session,
            PutSubscription: self._put_subscription,
            DeleteSubscription: self._delete_subscription,
            PutMessage: self._put_message,
            DeleteMessage: self._delete_message,
            Enqueue: self._enqueue,
            Dequeue: self._dequeue,
            PutInflight: self._put_inflight,
            DeleteInflight: self._delete_inflight,
            PutIncomingQos2: self._put_incoming,
            DeleteIncomingQos2: self._delete_incoming,
            SetRetained: self._set_retained,
            DeleteRetained: self._delete_retained,
        }

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check(self) -> None:
        if not self._open:
            raise StorageError("memory storage is not open")

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        self._check()
        handlers = self._handlers
        steps = []
        for op in batch.ops:
            handler = handlers.get(type(op))
            if handler is None:
                raise StorageError(f"unknown storage operation {op!r}")
            steps.append((handler, op))
        for handler, op in steps:
            handler(op)

    def _put_session(self, op: PutSession) -> None:
        self.sessions[op.record.client_id] = op.record

    def _delete_session(self, op: DeleteSession) -> None:
        client_id = op.client_id
        self.sessions.pop(client_id, None)
        for table in (self.subscriptions, self.queues, self.inflight, self.incoming):
            table.pop(client_id, None)

    def _put_subscription(self, op: PutSubscription) -> None:
        record = op.record
        self.subscriptions.setdefault(record.client_id, {})[record.topic_filter] = record

    def _delete_subscription(self, op: DeleteSubscription) -> None:
        _pop(self.subscriptions, op.client_id, op.topic_filter)

    def _put_message(self, op: PutMessage) -> None:
        self.messages[op.record.message_id] = op.record

    def _delete_message(self, op: DeleteMessage) -> None:
        self.messages.pop(op.message_id, None)

    def _enqueue(self, op: Enqueue) -> None:
        record = op.record
        self.queues.setdefault(record.client_id, {})[record.seq] = record

    def _dequeue(self, op: Dequeue) -> None:
        _pop(self.queues, op.client_id, op.seq)

    def _put_inflight(self, op: PutInflight) -> None:
        record = op.record
        self.inflight.setdefault(record.client_id, {})[record.packet_id] = record

    def _delete_inflight(self, op: DeleteInflight) -> None:
        _pop(self.inflight, op.client_id, op.packet_id)

    def _put_incoming(self, op: PutIncomingQos2) -> None:
        record = op.record
        self.incoming.setdefault(record.client_id, {})[record.packet_id] = record

    def _delete_incoming(self, op: DeleteIncomingQos2) -> None:
        _pop(self.incoming, op.client_id, op.packet_id)

    def _set_retained(self, op: SetRetained) -> None:
        self.retained[op.record.topic] = op.record

    def _delete_retained(self, op: DeleteRetained) -> None:
        self.retained.pop(op.topic, None)

    # --- loads ---------------------------------------------------------------------------

    async def load_sessions(self) -> list[SessionRecord]:
        self._check()
        return [self.sessions[k] for k in sorted(self.sessions)]

    async def load_subscriptions(self, client_id: str | None = None) -> list[SubscriptionRecord]:
        self._check()
        return _rows(self.subscriptions, client_id)

    async def load_queue(self, client_id: str | None = None) -> list[QueuedRecord]:
        self._check()
        return _rows(self.queues, client_id)

    async def load_inflight(self, client_id: str | None = None) -> list[InflightRecord]:
        self._check()
        rows = _rows(self.inflight, client_id)
        rows.sort(key=lambda r: (r.client_id, r.seq, r.packet_id))
        return rows

    async def load_incoming_qos2(self, client_id: str | None = None) -> list[IncomingQos2Record]:
        self._check()
        return _rows(self.incoming, client_id)

    async def load_retained(self) -> list[RetainedRecord]:
        self._check()
        return [self.retained[k] for k in sorted(self.retained)]

    async def get_messages(self, message_ids: Collection[int]) -> dict[int, MessageRecord]:
        self._check()
        messages = self.messages
        return {i: messages[i] for i in message_ids if i in messages}

    async def max_message_id(self) -> int:
        self._check()
        return max(self.messages, default=0)

    # --- expiry --------------------------------------------------------------------------

    async def purge_expired(self, now: float) -> int:
        self._check()
        removed = 0
        for client_id, session in list(self.sessions.items()):
            if session.expires_at is not None and session.expires_at <= now:
                self._delete_session(DeleteSession(client_id))
                removed += 1
        for topic, retained in list(self.retained.items()):
            if retained.expires_at is not None and retained.expires_at <= now:
                del self.retained[topic]
                removed += 1
        messages = self.messages
        expired = {
            i for i, m in messages.items() if m.expires_at is not None and m.expires_at <= now
        }
        referenced: set[int] = set()
        for queue in self.queues.values():
            if expired:
                for seq in [s for s, q in queue.items() if q.message_id in expired]:
                    del queue[seq]
            referenced.update(q.message_id for q in queue.values())
        for inflight in self.inflight.values():
            referenced.update(e.message_id for e in inflight.values())
        for message_id in [i for i in messages if i not in referenced]:
            del messages[message_id]
            removed += 1
        for key in [k for k, b in self.bans.items() if b.until is not None and b.until <= now]:
            del self.bans[key]
            removed += 1
        return removed

    # --- users and bans ------------------------------------------------------------------

    async def get_user(self, username: str) -> UserRecord | None:
        self._check()
        return self.users.get(username)

    async def put_user(self, record: UserRecord) -> None:
        self._check()
        self.users[record.username] = record

    async def delete_user(self, username: str) -> bool:
        self._check()
        return self.users.pop(username, None) is not None

    async def list_users(self) -> list[UserRecord]:
        self._check()
        return [self.users[k] for k in sorted(self.users)]

    async def put_ban(self, record: BanRecord) -> None:
        self._check()
        self.bans[(record.kind, record.value)] = record

    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        self._check()
        return self.bans.pop((kind, value), None) is not None

    async def list_bans(self) -> list[BanRecord]:
        self._check()
        return [self.bans[k] for k in sorted(self.bans)]

    # --- built-in ACL rules ---------------------------------------------------------------

    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        self._check()
        self._last_rule_id += 1  # never reused, as the databases' sequences
        stored = replace(record, rule_id=self._last_rule_id)
        self.acl_rules[stored.rule_id] = stored
        return stored

    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        self._check()
        rules = self.acl_rules.values()
        if who_kind is None:
            return list(rules)
        if who_kind == "all":
            return [r for r in rules if r.who_kind == "all"]
        return [r for r in rules if r.who_kind == who_kind and r.who == who]

    async def delete_acl_rule(self, rule_id: int) -> bool:
        self._check()
        return self.acl_rules.pop(rule_id, None) is not None


def _pop(table: dict[str, dict[Any, Any]], client_id: str, key: object) -> None:
    entries = table.get(client_id)
    if entries is not None:
        entries.pop(key, None)
        if not entries:
            del table[client_id]


def _rows(table: dict[str, dict[Any, R]], client_id: str | None) -> list[R]:
    """The records of one client or of all, by client id and then key."""
    clients = [client_id] if client_id is not None else sorted(table)
    return [table[c][k] for c in clients if c in table for k in sorted(table[c])]


def from_url(url: str, data_dir: str, durability: Durability) -> MemoryStorage:
    """The ``create_storage`` hook: the memory backend takes no URL."""
    if url:
        raise StorageError(f"the memory storage backend takes no URL (got {url!r})")
    return MemoryStorage(durability)
