"""The client's half of an MQTT session, and its persistence.

``ClientSession`` holds what outlives one network connection: the subscriptions (renewed
when the broker has no session), the QoS 1/2 messages not yet completely acknowledged (in
flight, by packet id, in sending order) and those accepted by ``publish`` but not yet sent
(the pending FIFO: offline buffer and Receive Maximum queue), and the incoming QoS 2 ids
awaiting PUBREL.

With a ``SessionStore`` it saves itself on every change, coalesced: a change marks the
state dirty and at most one save task runs, looping until nothing changed during a save.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from tidemq.protocol import LocalProtocolError, Publish

from .errors import ClientError
from .message import PublishResult
from .persistence import MessageRecord, SessionState, SessionStore, SubscriptionRecord

__all__ = ["ClientSession", "Outgoing"]

log = logging.getLogger("tidemq.client")


@dataclass(slots=True, eq=False)
class Outgoing:
    """One QoS 1/2 (or buffered QoS 0) message on its way to the broker."""

    packet: Publish  # as the user made it: full topic, no alias (packet id: see below)
    future: asyncio.Future[PublishResult] | None  # None: resumed from a store
    packet_id: int = 0
    sent: bool = False  # on the wire at least once → DUP when sent again
    released: bool = False  # QoS 2: PUBREC received, PUBREL sent


class ClientSession:
    """Session state kept across connections (and, with a store, across processes).

    Args:
        store: where to persist it (None: memory only).
        describe: returns (client id, protocol version, session expiry) for snapshots.
        on_error: called with a ``StorageError`` when a save fails.
    """

    def __init__(
        self,
        store: SessionStore | None,
        describe: Callable[[], tuple[str, int, int]],
        on_error: Callable[[ClientError], object],
    ) -> None:
        self.store = store
        self.key = ""
        self.subscriptions: dict[str, SubscriptionRecord] = {}
        self.inflight: dict[int, Outgoing] = {}
        self.pending: deque[Outgoing] = deque()
        self.in_qos2: list[int] = []
        self.last_connected: float | None = None
        self.last_disconnected: float | None = None
        self.last_sub_id = 0
        self.loaded = False
        self._describe = describe
        self._on_error = on_error
        self._dirty = False
        self._save_task: asyncio.Task[None] | None = None

    async def load(self) -> str | None:
        """Restore the stored state (once); returns the stored client id, if any."""
        if self.store is None or self.loaded:
            return None
        state = await self.store.load(self.key)
        self.loaded = True
        if state is None:
            return None
        self.restore(state)
        log.info(
            "resumed session %r: %d subscriptions, %d unacknowledged messages",
            self.key,
            len(self.subscriptions),
            len(self.inflight) + len(self.pending),
        )
        return state.client_id

    def restore(self, state: SessionState) -> None:
        self.last_connected = state.last_connected
        self.last_disconnected = state.last_disconnected
        for record in state.subscriptions:
            self.subscriptions.setdefault(record.topic_filter, record)
            if record.subscription_identifier:
                self.last_sub_id = max(self.last_sub_id, record.subscription_identifier)
        for stored in state.inflight:
            try:
                packet = Publish(
                    topic=stored.topic,
                    payload=stored.payload,
                    qos=stored.qos,
                    retain=stored.retain,
                    properties=stored.properties,
                )
            except LocalProtocolError as exc:
                log.warning("dropping a stored message that is not valid: %s", exc)
                continue
            pid = stored.packet_id
            entry = Outgoing(packet, None, pid, sent=bool(pid), released=stored.released)
            if pid and pid not in self.inflight:
                self.inflight[pid] = entry
            else:
                entry.packet_id = 0
                self.pending.append(entry)

    def snapshot(self) -> SessionState:
        """The state as it would be persisted now."""
        client_id, version, expiry = self._describe()
        inflight = [
            MessageRecord(
                topic=e.packet.topic,
                payload=e.packet.payload,
                qos=e.packet.qos,
                retain=e.packet.retain,
                properties=e.packet.properties,
                packet_id=e.packet_id,
                released=e.released,
            )
            for e in (*self.inflight.values(), *self.pending)
            if e.packet.qos and (e.future is None or not e.future.done())
        ]
        return SessionState(
            client_id=client_id,
            version=version,
            subscriptions=list(self.subscriptions.values()),
            inflight=inflight,
            last_connected=self.last_connected,
            last_disconnected=self.last_disconnected,
            session_expiry=expiry,
        )

    def persist_soon(self) -> None:
        """Note a change; a save follows (coalesced with other changes)."""
        if self.store is None:
            return
        self._dirty = True
        task = self._save_task
        if task is None or task.done():
            self._save_task = asyncio.get_running_loop().create_task(self._save_loop())

    async def flush(self) -> None:
        """Save now (if there is a store) and wait until the current state is stored."""
        if self.store is None:
            return
        self.persist_soon()
        task = self._save_task
        if task is not None:
            await asyncio.shield(task)

    async def _save_loop(self) -> None:
        store = self.store
        assert store is not None
        while self._dirty:
            self._dirty = False
            try:
                await store.save(self.key, self.snapshot())
            except ClientError as exc:
                self._on_error(exc)
                log.warning("cannot save session %r: %s", self.key, exc)
