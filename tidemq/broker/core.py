"""``BrokerCore``: the one owner of broker state (rumqttd's Router).

It holds the sessions, the subscription trie, the retained tree, the scheduler and the
counters, and it routes messages: ``publish`` matches the topic once, merges overlapping
subscriptions of one session into a single delivery at the highest granted QoS carrying
every matching Subscription Identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3], picks one member
per shared-subscription group, and hands each delivery to the session's connection or
queues it while the session is offline.

Connections reach it through ``ClientHandler`` (one per link, see ``handler.py``); other
packages reach it only through ``hooks`` and ``publish_internal``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from tidemq.protocol import NO_PROPERTIES, Properties, Will

from .hooks import ClientInfo, Decision, HookPoint, Hooks, MessageEvent, PublishAuthEvent
from .message import Message
from .retain import RetainedTree
from .session import QueuedDelivery, Session, SubOptions
from .settings import NEVER_EXPIRES, BrokerSettings
from .stats import Stats
from .timers import Scheduler, TimerEntry
from .topic_tree import TopicTree

if TYPE_CHECKING:
    from .interfaces import Link
    from .persist import Persistence

from .handler import ClientHandler

log = logging.getLogger("tidemq.broker")


SHARED_STRATEGIES = ("round_robin", "random", "sticky", "hash_clientid")


class BrokerCore:
    def __init__(
        self,
        settings: BrokerSettings,
        *,
        hooks: Hooks | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if settings.shared_subscription_strategy not in SHARED_STRATEGIES:
            raise ValueError(
                f"unknown shared subscription strategy {settings.shared_subscription_strategy!r}"
            )
        self.settings = settings
        self.hooks = hooks or Hooks()
        self.loop = loop or asyncio.get_running_loop()
        self.scheduler = Scheduler(self.loop)
        self.stats = Stats()
        self.sessions: dict[str, Session] = {}
        self.handlers: set[ClientHandler] = set()
        self.online = 0  # sessions whose handler is set; see ClientHandler._accept/_session_closed
        self.tree: TopicTree[Session, SubOptions] = TopicTree()
        self.retained: RetainedTree[Message] = RetainedTree()
        self.closing = False
        # Topic names a client may publish to (not $SYS, within max_topic_levels), as
        # checked before: most traffic repeats a few topics. Bounded, cleared when full.
        self.publishable: set[str] = set()
        self._sticky: dict[tuple[str, str], Session] = {}
        self._sweep = self.scheduler.call_later(settings.sweep_interval, self._sweep_expired)
        self.sys_publisher: Callable[[], None] | None = None
        self._connecting: deque[ClientHandler] = deque()  # see watch_connect
        self._connect_timer: TimerEntry | None = None
        # Set by the composition root when the broker persists (see persist.py).
        self.persist: Persistence | None = None

    # --- connections -----------------------------------------------------------------

    def watch_connect(self, handler: ClientHandler) -> None:
        """Close *handler* if no CONNECT comes by its deadline. Deadlines grow with arrival
        (one ``connect_timeout`` for all), so a FIFO and one timer serve every connection:
        no heap entry per connection."""
        self._connecting.append(handler)
        if self._connect_timer is None:
            self._connect_timer = self.scheduler.call_at(
                handler.connect_deadline(), self._connect_sweep
            )

    def _connect_sweep(self) -> None:
        self._connect_timer = None
        now = self.loop.time()
        waiting = self._connecting
        while waiting:
            handler = waiting[0]
            if not handler.awaiting_connect:
                waiting.popleft()  # connected (or gone) since
                continue
            deadline = handler.connect_deadline()
            if deadline > now:
                self._connect_timer = self.scheduler.call_at(deadline, self._connect_sweep)
                return
            waiting.popleft()
            handler.connect_timeout()

    def connection_made(self, link: Link) -> ClientHandler:
        """Transport handler factory: one ``ClientHandler`` per accepted link."""
        handler = ClientHandler(self, link)
        self.handlers.add(handler)
        self.stats.connections_total += 1
        return handler

    def connected_clients(self) -> list[ClientInfo]:
        """Every client whose CONNECT was accepted and whose connection is still open (a
        snapshot: disconnecting them while iterating is safe). O(connections): for
        administrative sweeps such as a new ban, never per packet."""
        return [h.info for h in self.handlers if h.ready and h.info is not None]

    def disconnect_client(self, client_id: str, reason_code: int, reason: str) -> bool:
        """Close the connection of *client_id* from the server side: MQTT 5 gets
        DISCONNECT *reason_code* with *reason* as Reason String (when configured), MQTT 3
        a plain close; the will is published as on any server-side close. False when the
        client is not connected."""
        session = self.sessions.get(client_id)
        handler = session.handler if session is not None else None
        if handler is None or not handler.ready:
            return False
        handler.disconnect(reason_code, reason)
        return True

    @property
    def connected_count(self) -> int:
        """Sessions with a live connection (kept as a counter: read on every CONNECT)."""
        return self.online

    # --- routing ---------------------------------------------------------------------

    def publish(self, message: Message, sender: Session | None) -> int:
        """Route *message* to every matching subscription; returns how many sessions got
        (or queued) it. Retained storage is the caller's job (see ``retain``)."""
        result = self.tree.match(message.topic)
        plain = result.plain
        count = 0
        if plain:
            if len(plain) == 1:
                session, opts = plain[0]
                if not (opts.no_local and session is sender):
                    sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
                    qos = opts.qos if opts.qos < message.qos else message.qos
                    retain = message.retain and opts.retain_as_published
                    handler = session.handler  # ``deliver``, inline for the common case
                    if handler is not None and handler.ready:
                        handler.send_message(message, qos, retain, sub_ids)
                    else:
                        self.enqueue(session, message, qos, retain, sub_ids)
                    count = 1
            else:
                count = self._publish_merged(plain, message, sender)
        if result.shared:
            for group in result.shared:
                picked = self._pick_shared(group, message)
                if picked is not None:
                    session, opts = picked
                    sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
                    # Retain flag is cleared towards shared subscribers unless RAP.
                    self.deliver(
                        session,
                        message,
                        min(opts.qos, message.qos),
                        message.retain and opts.retain_as_published,
                        sub_ids,
                    )
                    count += 1
        return count

    def _publish_merged(
        self, plain: list[tuple[Session, SubOptions]], message: Message, sender: Session | None
    ) -> int:
        # One delivery per session at the highest granted QoS with every matching
        # Subscription Identifier [MQTT-3.3.4-2] [MQTT-3.3.4-3].
        merged: dict[Session, list[object]] = {}
        for session, opts in plain:
            if opts.no_local and session is sender:
                continue  # [MQTT-3.8.3-3]
            entry = merged.get(session)
            if entry is None:
                merged[session] = [
                    opts.qos,
                    opts.retain_as_published,
                    () if opts.subscription_id is None else (opts.subscription_id,),
                ]
            else:
                if opts.qos > entry[0]:  # type: ignore[operator]
                    entry[0] = opts.qos
                if opts.retain_as_published:
                    entry[1] = True
                if opts.subscription_id is not None:
                    entry[2] = (*entry[2], opts.subscription_id)  # type: ignore[misc]
        mqos = message.qos
        for session, (qos, rap, sub_ids) in merged.items():
            self.deliver(
                session,
                message,
                qos if qos < mqos else mqos,  # type: ignore[arg-type, operator]
                message.retain and bool(rap),
                sub_ids,  # type: ignore[arg-type]
            )
        return len(merged)

    def _pick_shared(self, group: object, message: Message) -> tuple[Session, SubOptions] | None:
        members: list[tuple[Session, SubOptions]] = group.members  # type: ignore[attr-defined]
        if not members:
            return None
        online = [m for m in members if m[0].handler is not None]
        candidates = online or members
        strategy = self.settings.shared_subscription_strategy
        if strategy == "round_robin":
            cursor: int = group.cursor  # type: ignore[attr-defined]
            pick = candidates[cursor % len(candidates)]
            group.cursor = cursor + 1  # type: ignore[attr-defined]
            return pick
        if strategy == "random":
            return random.choice(candidates)
        if strategy == "hash_clientid":
            key = (message.sender or "").encode()
            return candidates[zlib.crc32(key) % len(candidates)]
        # sticky: keep the same member while it stays subscribed and online.
        sticky_key = (group.name, group.filter)  # type: ignore[attr-defined]
        chosen = self._sticky.get(sticky_key)
        for member in candidates:
            if member[0] is chosen:
                return member
        pick = random.choice(candidates)
        self._sticky[sticky_key] = pick[0]
        return pick

    def deliver(
        self, session: Session, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]
    ) -> None:
        handler = session.handler
        if handler is not None and handler.ready:
            handler.send_message(message, qos, retain, sub_ids)
        else:
            self.enqueue(session, message, qos, retain, sub_ids)

    def enqueue(
        self, session: Session, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]
    ) -> bool:
        """Queue a delivery for later; False (and counted) when dropped."""
        if qos == 0 and not self.settings.queue_qos0:
            self.stats.messages_dropped += 1
            return False
        queue = session.queue
        if queue is None:
            queue = session.queue = deque()
        if len(queue) >= self.settings.max_queued_messages:
            session.dropped += 1
            self.stats.messages_dropped += 1
            self.stats.messages_dropped_queue_full += 1
            if self.hooks.has(HookPoint.MESSAGE_DROPPED):
                self.hooks.notify(
                    HookPoint.MESSAGE_DROPPED,
                    _message_event(message, receiver=session.client_id, reason="queue_full"),
                )
            return False
        item = QueuedDelivery(message, qos, retain, sub_ids)
        queue.append(item)
        if session.persistent:
            persist = self.persist
            assert persist is not None
            persist.enqueue(session, item)
        return True

    # --- retained --------------------------------------------------------------------

    def retain(self, message: Message) -> None:
        """Store, replace or (empty payload) clear the retained message of a topic
        [MQTT-3.3.1-5] [MQTT-3.3.1-6] [MQTT-3.3.1-7]."""
        persist = self.persist
        if message.payload:
            self.retained.set(message.topic, message)
            if persist is not None:
                persist.set_retained(message)
        else:
            self.retained.delete(message.topic)
            if persist is not None:
                persist.delete_retained(message.topic)

    def retained_for(self, topic_filter: str) -> list[Message]:
        now = time.monotonic()
        out = []
        for _topic, message in self.retained.match(topic_filter):
            if message.expired(now):
                self.retained.delete(message.topic)
                self.stats.messages_expired += 1
                continue
            out.append(message)
        return out

    def publish_internal(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        properties: Properties = NO_PROPERTIES,
    ) -> int:
        """Publish a broker-originated message ($SYS, rules, API) through the normal path."""
        message = Message.from_publish_properties(topic, payload, qos, retain, properties, None)
        if retain:
            self.retain(message)
        return self.publish(message, None)

    # --- sessions --------------------------------------------------------------------

    def discard_session(self, session: Session) -> None:
        """End a session: drop its subscriptions, queue and timers (will handled before)."""
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for topic_filter in session.subscriptions:
            self.tree.unsubscribe(topic_filter, session)
        session.subscriptions.clear()
        session.queue = None
        session.inflight.clear()
        if session.expiry_entry is not None:
            session.expiry_entry.cancel()
            session.expiry_entry = None
        if session.persistent:
            session.persistent = False
            persist = self.persist
            assert persist is not None
            persist.delete_session(session.client_id)

    def session_offline(self, session: Session) -> None:
        """The session's connection is gone: expire now, later, or never."""
        interval = session.expiry_interval
        if interval == 0:
            self.end_session(session)
            return
        if interval != NEVER_EXPIRES:
            session.expiry_entry = self.scheduler.call_later(interval, self.expire_session, session)
        if session.persistent:
            persist = self.persist
            assert persist is not None
            persist.put_session(session)  # offline since now, with its pending will

    def expire_session(self, session: Session) -> None:
        session.expiry_entry = None
        if session.handler is None and self.sessions.get(session.client_id) is session:
            log.debug("session %s expired", session.client_id)
            self.end_session(session)

    def end_session(self, session: Session) -> None:
        # A will still pending at session end goes now: whichever comes first
        # (MQTT 5.0 §3.1.3.2.2, [MQTT-3.1.3-9]).
        if session.will is not None:
            will = session.will
            session.will = None
            if session.will_entry is not None:
                session.will_entry.cancel()
                session.will_entry = None
            self.publish_will(session, will)
        self.discard_session(session)

    def schedule_will(self, session: Session) -> None:
        """Publish the session's will now or after its Will Delay Interval, whichever of
        that and the session expiry comes first; session expiry 0 means at once."""
        will = session.will
        if will is None:
            return
        delay = will.properties.will_delay_interval or 0
        delay = min(delay, session.expiry_interval)
        if delay <= 0:
            session.will = None
            self.publish_will(session, will)
            return
        session.will_entry = self.scheduler.call_later(delay, self.will_due, session)

    def will_due(self, session: Session) -> None:
        session.will_entry = None
        will = session.will
        if will is not None and session.handler is None:
            session.will = None
            self.publish_will(session, will)
            if session.persistent:
                persist = self.persist
                assert persist is not None
                persist.put_session(session)  # the will is gone from storage too

    def cancel_will(self, session: Session) -> None:
        if session.will_entry is not None:
            session.will_entry.cancel()
            session.will_entry = None
        session.will = None

    def publish_will(self, session: Session, will: Will) -> None:
        answer = self._authorize_will(session, will)
        if answer is not Decision.ALLOW:
            if answer is not Decision.DENY:
                self.loop.create_task(self._publish_will_when_decided(session, will, answer))  # type: ignore[arg-type]
                return
            log.info("will of %s denied by ACL on %s", session.client_id, will.topic)
            return
        self._publish_will(session, will)

    def _authorize_will(self, session: Session, will: Will) -> object:
        """The ACL's answer for a will, asked as its client (a denied will is not sent)."""
        if session.superuser or not self.hooks.has(HookPoint.AUTHORIZE_PUBLISH):
            return Decision.ALLOW
        info = session.info or ClientInfo(
            client_id=session.client_id,
            username=session.username,
            peer=None,
            listener="",
            protocol_version=session.protocol_version,
        )
        event = PublishAuthEvent(client=info, topic=will.topic, qos=will.qos, retain=will.retain)
        answer = self.hooks.decide(HookPoint.AUTHORIZE_PUBLISH, event, Decision.ALLOW)
        if answer.__class__ is Decision and answer is not Decision.ALLOW:
            return Decision.DENY
        return answer

    async def _publish_will_when_decided(
        self, session: Session, will: Will, answer: Awaitable[Decision]
    ) -> None:
        try:
            decision = await asyncio.wait_for(answer, self.settings.auth_timeout)
        except TimeoutError:
            decision = Decision.DENY
        if decision is Decision.ALLOW:
            self._publish_will(session, will)
        else:
            log.info("will of %s denied by ACL on %s", session.client_id, will.topic)

    def _publish_will(self, session: Session, will: Will) -> None:
        message = Message.from_publish_properties(
            will.topic, will.payload, will.qos, will.retain, will.properties, session.client_id
        )
        if message.properties is not NO_PROPERTIES and (
            message.properties.will_delay_interval is not None
        ):
            from dataclasses import replace

            message.properties = replace(message.properties, will_delay_interval=None)
        log.debug("publishing will of %s on %s", session.client_id, will.topic)
        if will.retain:
            self.retain(message)
        self.publish(message, None)

    # --- housekeeping ----------------------------------------------------------------

    def _sweep_expired(self) -> None:
        now = time.monotonic()
        removed = self.retained.remove_if(lambda m: m.expired(now))
        self.stats.messages_expired += removed
        timeout = self.settings.await_rel_timeout
        loop_now = self.loop.time()
        if self.settings.retry_interval:
            for handler in self.handlers:
                handler.retry_inflight(loop_now)
        for session in self.sessions.values():
            awaiting = session.awaiting_rel
            if awaiting:
                # A PUBREL that never came: forget the packet id after await_rel_timeout
                # (EMQX's await_rel_timeout); a later PUBREL gets PUBCOMP 0x92.
                stale = [p for p, t in awaiting.items() if loop_now - t > timeout]
                for pid in stale:
                    del awaiting[pid]
                    if session.handler is not None:
                        session.handler.conn.forget_incoming_qos2(pid)
                    if session.persistent:
                        persist = self.persist
                        assert persist is not None
                        persist.delete_incoming_qos2(session, pid)
        if not self.closing:
            self._sweep = self.scheduler.call_later(
                self.settings.sweep_interval, self._sweep_expired
            )

    def close(self) -> None:
        self.closing = True
        self.scheduler.close()
        if self.persist is not None:
            self.persist.close()


def _message_event(
    message: Message, *, receiver: str | None = None, reason: str = ""
) -> MessageEvent:
    return MessageEvent(
        client_id=message.sender,
        topic=message.topic,
        payload=message.payload,
        qos=message.qos,
        retain=message.retain,
        properties=message.properties,
        receiver=receiver,
        reason=reason,
    )
