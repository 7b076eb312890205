"""Publishing, receiving and subscribing: the message half of ``Client``.

``_Messaging`` is a base class of ``Client`` and holds no state of its own: the attributes
it uses are declared here and set by ``Client.__init__``. The connection half (connecting,
keepalive, reconnecting) lives in client.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from tidemq.protocol import (
    NO_PROPERTIES,
    ConnAck,
    LocalProtocolError,
    Packet,
    PacketType,
    Properties,
    ProtocolVersion,
    PubAck,
    Publish,
    PubRec,
    RetainHandling,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from tidemq.protocol import Subscription as SubscriptionOptions

from ._protocol import ClientProtocol
from ._session import ClientSession, Outgoing
from .errors import (
    TEMPORARY_CODES,
    ClientError,
    ConfigurationError,
    ConnectionClosedError,
    PublishError,
    SubscriptionError,
    reason_name,
)
from .message import Message, PublishResult
from .options import MAX_SUBSCRIPTION_ID, ClientMetrics, ClientState, payload_bytes
from .persistence import SessionStore, SubscriptionRecord
from .streams import Handler, MessageStream, Route
from .subscription import Subscription

log = logging.getLogger("tidemq.client")

_E = TypeVar("_E", bound=ClientError)


def _mark_retrieved(fut: asyncio.Future[Any]) -> None:
    # Nobody may be awaiting a failed future (a caller that gave up); mark it retrieved so
    # asyncio does not log "exception was never retrieved".
    if not fut.cancelled():
        fut.exception()


_new = object.__new__
_set = object.__setattr__


def _with_id(packet: Publish, packet_id: int, dup: bool) -> Publish:
    """*packet* with another packet id and DUP flag, without validating it again (it was
    validated when built; ``dataclasses.replace`` would cost several microseconds)."""
    out: Publish = _new(Publish)
    _set(out, "topic", packet.topic)
    _set(out, "payload", packet.payload)
    _set(out, "qos", packet.qos)
    _set(out, "retain", packet.retain)
    _set(out, "dup", dup)
    _set(out, "packet_id", packet_id)
    _set(out, "properties", packet.properties)
    return out


class _Messaging:
    # Set by Client.__init__ / the connection half.
    version: ProtocolVersion
    name: str
    state: ClientState
    store: SessionStore | None
    max_buffered: int
    outbound_topic_aliases: bool
    metrics: ClientMetrics
    connack: ConnAck | None
    error: ClientError | None
    _proto: ClientProtocol | None
    _session: ClientSession
    _routes: list[Route]
    _streams: list[MessageStream]
    _requests: dict[int, asyncio.Future[Packet]]
    _listeners: list[Callable[[str, dict[str, Any]], None]]

    async def wait_connected(self, timeout: float | None = None) -> None:
        raise NotImplementedError

    def _emit(self, event: str, **data: Any) -> None:
        for listener in self._listeners:
            try:
                listener(event, data)
            except Exception:
                log.exception("client event listener failed on %s", event)

    def _count(self, error: _E) -> _E:
        self.metrics.errors += 1
        self.metrics.last_error = time.time()
        return error

    # --- publishing ------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | memoryview | str | float | None = b"",
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
        *,
        timeout: float | None = None,
    ) -> PublishResult:
        """Publish a message; for QoS 1/2, return once the broker acknowledged it.

        QoS 0 returns once the bytes are queued for the socket. While the client is
        reconnecting, the message waits in the offline buffer (and, at QoS 1/2, this call
        waits until it is acknowledged after the reconnect).

        Returns:
            the packet id and the acknowledgement's reason code and properties.

        Raises:
            PublishError: a failing reason code (``reason_code``), the offline buffer is
                full (``is_temporary``) or *timeout* passed (``is_timeout``).
            MQTTConnectionError: not connected and not reconnecting; ``ConnectionClosedError``
                when the client is closed (or gives up) before the acknowledgement.
            ConfigurationError: an invalid topic, QoS or properties.
        """
        data = payload_bytes(payload)
        props = properties or NO_PROPERTIES
        if props is not NO_PROPERTIES and self.version != 5:
            raise ConfigurationError("PUBLISH properties need MQTT 5")
        state = self.state
        proto = self._proto
        if state is ClientState.CONNECTED and proto is not None and not self._session.pending:
            conn = proto.conn
            if not qos:
                try:
                    packet = Publish(topic=topic, payload=data, retain=retain, properties=props)
                    self._write_publish(proto, packet)
                except LocalProtocolError as exc:
                    raise ConfigurationError(f"invalid PUBLISH: {exc}") from exc
                if proto.needs_drain:
                    await proto.drain()
                return PublishResult()
            if conn.send_quota > 0 and self.store is None:
                pid = conn.next_packet_id()
                try:
                    packet = Publish(
                        topic=topic,
                        payload=data,
                        qos=qos,
                        retain=retain,
                        packet_id=pid,
                        properties=props,
                    )
                except LocalProtocolError as exc:
                    raise ConfigurationError(f"invalid PUBLISH: {exc}") from exc
                waiter: asyncio.Future[PublishResult] = asyncio.get_running_loop().create_future()
                entry = Outgoing(packet, waiter)
                self._send_entry(proto, entry, pid, packet)
                return await self._await_ack(entry, timeout)
        elif state in (ClientState.DISCONNECTED, ClientState.CLOSED):
            raise self.error or ConnectionClosedError(
                "not connected" if state is ClientState.DISCONNECTED else "the client is closed"
            )
        try:
            packet = Publish(topic=topic, payload=data, qos=qos, retain=retain, properties=props)
        except LocalProtocolError as exc:
            raise ConfigurationError(f"invalid PUBLISH: {exc}") from exc
        if (
            self.state is not ClientState.CONNECTED
            and len(self._session.pending) >= self.max_buffered
        ):
            self.metrics.dropped += 1
            raise self._count(
                PublishError(
                    f"offline buffer full ({self.max_buffered} messages); dropped",
                    temporary=True,
                )
            )
        entry = Outgoing(packet, asyncio.get_running_loop().create_future())
        self._session.pending.append(entry)
        if qos and self.store is not None:
            await self._session.flush()  # on disk before it is on the wire
        self._pump()
        if not qos:
            return PublishResult()
        return await self._await_ack(entry, timeout)

    async def _await_ack(self, entry: Outgoing, timeout: float | None) -> PublishResult:
        future = entry.future
        assert future is not None
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._forget_unsent(entry)
            raise self._count(
                PublishError(f"no acknowledgement within {timeout} s", timeout=True)
            ) from None
        except asyncio.CancelledError:
            self._forget_unsent(entry)
            raise

    def _forget_unsent(self, entry: Outgoing) -> None:
        # A message not yet on the wire is withdrawn; one in flight completes anyway.
        if not entry.sent:
            with contextlib.suppress(ValueError):
                self._session.pending.remove(entry)
                self._session.persist_soon()

    def _write_publish(self, proto: ClientProtocol, packet: Publish) -> None:
        if self.outbound_topic_aliases:
            packet = self._aliased(proto, packet)
        proto.send(packet)
        metrics = self.metrics
        metrics.messages_sent += 1
        metrics.bytes_sent += len(packet.payload)
        metrics.last_message = time.time()

    def _aliased(self, proto: ClientProtocol, packet: Publish) -> Publish:
        if packet.properties.topic_alias is not None:
            return packet
        found = proto.conn.outgoing_alias(packet.topic)
        if found is None:
            return packet
        alias, new = found
        props = replace(packet.properties, topic_alias=alias)
        return replace(packet, topic=packet.topic if new else "", properties=props)

    def _send_entry(
        self, proto: ClientProtocol, entry: Outgoing, pid: int, wire: Publish | None = None
    ) -> None:
        if wire is None:
            wire = _with_id(entry.packet, pid, entry.sent)
        entry.packet_id = pid
        self._write_publish(proto, wire)
        entry.sent = True
        self._session.inflight[pid] = entry
        if self.store is not None:
            self._session.persist_soon()  # record the packet id: a new process re-sends with it

    def _pump(self) -> None:
        """Send pending messages while connected and the broker's Receive Maximum allows."""
        proto = self._proto
        if proto is None or self.state is not ClientState.CONNECTED:
            return
        conn = proto.conn
        pending = self._session.pending
        while pending:
            entry = pending[0]
            future = entry.future
            if future is not None and future.done():
                pending.popleft()
                continue
            if not entry.packet.qos:
                pending.popleft()
                self._write_publish(proto, entry.packet)
                if future is not None:
                    future.set_result(PublishResult())
                continue
            if conn.send_quota <= 0:
                break
            pending.popleft()
            self._send_entry(proto, entry, conn.next_packet_id())

    def _acked(self, pid: int, code: int, props: Properties) -> None:
        entry = self._session.inflight.pop(pid, None)
        if entry is None:
            return
        if code >= 0x80:
            packet = PacketType.PUBACK if entry.packet.qos == 1 else PacketType.PUBREC
            text = f"publish to {entry.packet.topic!r} refused: {reason_name(code, packet)}"
            if props.reason_string:
                text += f": {props.reason_string}"
            error = self._count(
                PublishError(text, reason_code=code, temporary=code in TEMPORARY_CODES)
            )
            future = entry.future
            if future is not None and not future.done():
                future.set_exception(error)
                _mark_retrieved(future)
        else:
            self._complete(entry, PublishResult(pid, code, props))
        if self.store is not None:
            self._session.persist_soon()

    def _complete(self, entry: Outgoing, result: PublishResult) -> None:
        future = entry.future
        if future is not None and not future.done():
            future.set_result(result)

    # --- receiving -------------------------------------------------------------------

    def _deliver(self, proto: ClientProtocol, packet: Publish) -> None:
        msg = Message.from_publish(packet, self.name)
        metrics = self.metrics
        metrics.messages_received += 1
        metrics.bytes_received += len(packet.payload)
        metrics.last_message = time.time()
        for stream in self._streams:
            stream.put(msg)
        topic = msg.topic
        ids = packet.properties.subscription_identifiers
        delivered: list[object] | None = None
        for route in self._routes:
            if ids and route.sub_id:
                if route.sub_id not in ids:
                    continue
                # The filters of one SUBSCRIBE share its identifier: one delivery per
                # subscription, not one per filter of it.
                group = route.group
                if delivered is None:
                    delivered = [group]
                elif group in delivered:
                    continue
                else:
                    delivered.append(group)
                route.deliver(msg)
            elif route.matches(topic):
                route.deliver(msg)
        qos = packet.qos
        if qos == 1:
            proto.send(PubAck(packet_id=packet.packet_id))
        elif qos == 2:
            proto.send(PubRec(packet_id=packet.packet_id))

    def messages(self, queue_size: int = 0) -> MessageStream:
        """An async iterator of every message this client receives, from now on.

        Use it as ``async with client.messages() as stream: async for msg in stream`` (or
        call ``stream.close()``) so that it stops collecting when you are done.

        Args:
            queue_size: keep at most this many unread messages, dropping the oldest.
        """
        stream = MessageStream(queue_size, on_close=self._remove_stream)
        if self.state is ClientState.CLOSED:
            stream.finish()
        else:
            self._streams.append(stream)
        return stream

    def _remove_stream(self, stream: MessageStream) -> None:
        with contextlib.suppress(ValueError):
            self._streams.remove(stream)

    # --- subscribing -----------------------------------------------------------------

    def subscribe(
        self,
        topic: str | Iterable[str],
        qos: int = 0,
        handler: Handler | None = None,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = RetainHandling.SEND_ON_SUBSCRIBE,
        subscription_identifier: int | None = None,
        properties: Properties | None = None,
        queue_size: int = 0,
    ) -> Subscription:
        """Subscribe to one or more topic filters.

        ``await`` the result for the granted reason codes (one per filter: the granted
        QoS 0-2), or iterate it with ``async for`` to receive the matching messages, or
        pass *handler* (a function or coroutine function taking a ``Message``).

        Raises (when awaited):
            SubscriptionError: the broker refused a filter (``reason_codes``).
            ConfigurationError: an invalid filter or option (e.g. no_local with MQTT 3).
            MQTTConnectionError: not connected.
        """
        topics = [topic] if isinstance(topic, str) else list(topic)
        if not topics:
            raise ConfigurationError("subscribe needs at least one topic filter")
        if self.version != 5 and (
            no_local or retain_as_published or retain_handling or subscription_identifier
        ):
            raise ConfigurationError("subscription options need MQTT 5")
        try:
            options = tuple(
                SubscriptionOptions(
                    topic_filter=t,
                    qos=qos,
                    no_local=no_local,
                    retain_as_published=retain_as_published,
                    retain_handling=RetainHandling(retain_handling),
                )
                for t in topics
            )
            props = properties or NO_PROPERTIES
            if subscription_identifier is not None:
                props = replace(props, subscription_identifiers=(subscription_identifier,))
        except (LocalProtocolError, ValueError) as exc:
            raise ConfigurationError(f"invalid subscription: {exc}") from exc
        return Subscription(
            self,
            options,
            handler=handler,
            subscription_identifier=subscription_identifier,
            properties=props,
            queue_size=queue_size,
        )

    async def _subscribe(self, sub: Subscription) -> list[int]:
        proto = await self._connected_protocol()
        props = sub.properties
        sub_id = sub.subscription_identifier
        if sub_id is None and self._auto_sub_ids():
            self._session.last_sub_id = sub_id = self._session.last_sub_id % MAX_SUBSCRIPTION_ID + 1
            props = replace(props, subscription_identifiers=(sub_id,))
        routes = [
            Route(o.topic_filter, handler=sub.handler, stream=sub._stream, sub_id=sub_id, group=sub)
            for o in sub.options
        ]
        if sub.handler is not None or sub._stream is not None:
            self._routes.extend(routes)
        pid = proto.conn.next_packet_id()
        packet = Subscribe(packet_id=pid, subscriptions=sub.options, properties=props)
        try:
            suback = await self._request(proto, pid, packet)
        except BaseException:
            self._remove_routes(routes)
            raise
        assert isinstance(suback, SubAck)
        codes = list(suback.reason_codes)
        failed = []
        for option, route, code in zip(sub.options, routes, codes, strict=False):
            if code >= 0x80:
                failed.append(route)
                continue
            self._session.subscriptions[option.topic_filter] = SubscriptionRecord(
                topic_filter=option.topic_filter,
                qos=option.qos,
                no_local=option.no_local,
                retain_as_published=option.retain_as_published,
                retain_handling=int(option.retain_handling),
                subscription_identifier=sub_id,
            )
            # A repeated SUBSCRIBE replaces the filter's identifier for earlier routes too.
            for other in self._routes:
                if other.filter == option.topic_filter:
                    other.sub_id = sub_id
        sub.routes = [r for r in routes if r not in failed]
        self._session.persist_soon()
        sub.granted = codes
        self._emit("subscribed", topics=sub.topic_filters, reason_codes=codes)
        if failed:
            self._remove_routes(failed)
            names = ", ".join(
                f"{r.filter!r}: {reason_name(c, PacketType.SUBACK)}"
                for r, c in zip(routes, codes, strict=False)
                if c >= 0x80
            )
            raise self._count(
                SubscriptionError(f"subscription refused ({names})", reason_codes=tuple(codes))
            )
        return codes

    def _auto_sub_ids(self) -> bool:
        connack = self.connack
        return (
            self.version == 5
            and connack is not None
            and connack.properties.subscription_identifier_available != 0
        )

    async def unsubscribe(
        self, topic: str | Iterable[str], properties: Properties | None = None
    ) -> list[int]:
        """Unsubscribe from topic filters; their iterators end and handlers stop.

        Returns:
            the UNSUBACK reason codes (MQTT 5; ``[0] * n`` for MQTT 3).

        Raises:
            SubscriptionError: a failing UNSUBACK code (MQTT 5).
        """
        topics = [topic] if isinstance(topic, str) else list(topic)
        proto = await self._connected_protocol()
        pid = proto.conn.next_packet_id()
        try:
            packet = Unsubscribe(
                packet_id=pid,
                topic_filters=tuple(topics),
                properties=properties or NO_PROPERTIES,
            )
        except LocalProtocolError as exc:
            raise ConfigurationError(f"invalid UNSUBSCRIBE: {exc}") from exc
        unsuback = await self._request(proto, pid, packet)
        assert isinstance(unsuback, UnsubAck)
        codes = list(unsuback.reason_codes) or [0] * len(topics)
        for t in topics:
            self._session.subscriptions.pop(t, None)
        self._remove_routes([r for r in self._routes if r.filter in topics])
        self._session.persist_soon()
        if any(code >= 0x80 for code in codes):
            raise self._count(SubscriptionError("unsubscribe refused", reason_codes=tuple(codes)))
        return codes

    def _remove_routes(self, routes: Sequence[Route]) -> None:
        for route in routes:
            with contextlib.suppress(ValueError):
                self._routes.remove(route)
            route.stop()

    async def _connected_protocol(self) -> ClientProtocol:
        if self.state in (ClientState.CONNECTING, ClientState.RECONNECTING):
            await self.wait_connected()
        proto = self._proto
        if self.state is not ClientState.CONNECTED or proto is None:
            raise self.error or ConnectionClosedError("not connected")
        return proto

    async def _request(self, proto: ClientProtocol, pid: int, packet: Packet) -> Packet:
        future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
        self._requests[pid] = future
        try:
            proto.send(packet)
        except LocalProtocolError as exc:
            self._requests.pop(pid, None)
            raise ConfigurationError(str(exc)) from exc
        return await future

    def _resubscribe(self, proto: ClientProtocol) -> None:
        for record in list(self._session.subscriptions.values()):
            props = NO_PROPERTIES
            if record.subscription_identifier is not None and self.version == 5:
                props = Properties(subscription_identifiers=(record.subscription_identifier,))
            pid = proto.conn.next_packet_id()
            packet = Subscribe(
                packet_id=pid,
                subscriptions=(_options(record, self.version),),
                properties=props,
            )
            future: asyncio.Future[Packet] = asyncio.get_running_loop().create_future()
            future.add_done_callback(functools.partial(self._resubscribed, record.topic_filter))
            self._requests[pid] = future
            proto.send(packet)
            log.debug("resubscribing to %r", record.topic_filter)

    def _resubscribed(self, topic: str, fut: asyncio.Future[Packet]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            return  # the connection went away; the next connect resubscribes
        suback = fut.result()
        assert isinstance(suback, SubAck)
        code = suback.reason_codes[0]
        if code >= 0x80:
            log.error("resubscribing to %r failed: %s", topic, reason_name(code, PacketType.SUBACK))
            self._session.subscriptions.pop(topic, None)
            self._count(SubscriptionError("resubscribe failed", reason_codes=(code,)))
            self._session.persist_soon()


def _options(record: SubscriptionRecord, version: int) -> SubscriptionOptions:
    if version != 5:
        return SubscriptionOptions(topic_filter=record.topic_filter, qos=record.qos)
    return SubscriptionOptions(
        topic_filter=record.topic_filter,
        qos=record.qos,
        no_local=record.no_local,
        retain_as_published=record.retain_as_published,
        retain_handling=RetainHandling(record.retain_handling),
    )
