"""``Client``: an asyncio MQTT 3.1.1 / 5.0 client on the sans-IO ``tidemq.protocol`` core.

Theory of operation:

* One ``ClientProtocol`` per network connection reads bytes, feeds the connection's
  ``MQTTConnection(Role.CLIENT)`` and calls ``_packets_received`` synchronously. Received
  messages go to streams and handlers right there; acknowledgements complete futures.
* ``publish`` at QoS 1/2 creates an ``Outgoing`` entry with a future completed by
  PUBACK/PUBCOMP (or failed by a failing reason code). An entry is either *pending* (not on
  the wire: offline, or the broker's Receive Maximum is used up) or *in flight* (sent,
  awaiting acknowledgement). ``_pump`` moves pending entries onto the wire whenever the
  send quota allows.
* On connection loss the in-flight entries stay. After reconnecting the client first
  re-subscribes (when the broker kept no session), then re-sends every in-flight entry in
  its original order with DUP set (PUBREL for QoS 2 exchanges already past PUBREC), then
  drains the pending ones. Publishes made while offline wait in the pending FIFO, bounded by
  ``max_buffered``; beyond it they are dropped (counted in ``metrics.dropped``) and the
  caller gets a temporary ``PublishError``.
* Keepalive is one timer handle re-armed from ``last_sent`` (no task); a PINGREQ without
  any answer within ``ping_timeout`` aborts the connection, which then reconnects.
* Reconnecting (and ``start()``'s background connect) is the only task a client runs on
  its own, plus one per coroutine handler and a coalescing save task with a store.

This module is the connection half (connecting, keepalive, reconnecting, the packet
dispatch); the message half (publish, subscribe, delivery) is ``_messaging._Messaging``,
its base class, and the session state is ``_session.ClientSession``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any, TypeVar

from tidemq.protocol import (
    NO_PROPERTIES,
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    MQTTConnection,
    OutgoingState,
    Packet,
    PacketType,
    PingReq,
    Properties,
    ProtocolVersion,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RemoteProtocolError,
    Role,
    SubAck,
    UnsubAck,
    Will,
)
from tidemq.transport.ws_client import WebSocketHandshakeError, open_websocket

from ._messaging import _mark_retrieved, _Messaging
from ._protocol import ClientProtocol
from ._session import ClientSession, Outgoing
from .errors import (
    ClientError,
    ConfigurationError,
    ConnectionClosedError,
    MQTTConnectionError,
    connack_error,
    reason_name,
)
from .message import PublishResult
from .options import (
    CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_BUFFERED,
    DEFAULT_TOPIC_ALIAS_MAXIMUM,
    VERSIONS,
    ClientMetrics,
    ClientState,
    parse_url,
)
from .persistence import SessionState, SessionStore, SubscriptionRecord
from .reconnect import ReconnectPolicy
from .streams import MessageStream, Route
from .subscription import Subscription

__all__ = ["Client", "ClientMetrics", "ClientState", "Subscription", "parse_url"]

log = logging.getLogger("tidemq.client")

_E = TypeVar("_E", bound=ClientError)


class Client(_Messaging):
    """An asyncio MQTT client.

    Args:
        url: ``mqtt://host:port``, ``mqtts://host:port`` (TLS), ``ws://host:port/path`` or
            ``wss://host:port/path`` (WebSocket, path ``/mqtt`` if none); credentials may
            be in the URL.
        client_id: the client identifier (default: ``tidemq-<random>``; with MQTT 5, ``""``
            lets the broker assign one).
        version: 5 (MQTT 5.0), 4 or 311 (3.1.1), 3 or 31 (3.1).
        username, password: credentials.
        keepalive: seconds; 0 disables keepalive.
        clean_start: start a new session (MQTT 3: clean session).
        session_expiry: MQTT 5 Session Expiry Interval in seconds (None: not sent = 0).
        will: the Will message (``tidemq.protocol.Will``).
        properties: further MQTT 5 CONNECT properties.
        ssl: an ``ssl.SSLContext`` (or True for the default context); implied by mqtts://
            and wss://.
        server_hostname: TLS server name, when it differs from the URL's host.
        connect_timeout: seconds for TCP + TLS + CONNACK.
        reconnect: True for the MQTTX defaults, a ``ReconnectPolicy``, or False.
        max_buffered: publishes kept while offline; more are dropped.
        topic_alias_maximum: aliases the broker may use towards us (MQTT 5).
        outbound_topic_aliases: use topic aliases for what we publish, within the broker's
            Topic Alias Maximum (MQTT 5).
        receive_maximum: how many QoS 1/2 messages the broker may send us unacknowledged.
        max_packet_size: the largest packet we accept (MQTT 5 tells the broker).
        ping_timeout: seconds to wait for a PINGRESP (default: half the keepalive, >= 1).
        store: a ``SessionStore`` to persist subscriptions and unacknowledged messages.
        session_name: the key in *store* (default: the client id).
        name: a name for logs and ``Message.session`` (``SessionManager`` sets it).
        websocket_headers: extra HTTP headers of the WebSocket upgrade request (e.g. a
            token for a proxy); ws:// and wss:// only.

    Raises:
        ConfigurationError: invalid options.
    """

    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        client_id: str | None = None,
        version: int = 5,
        username: str | None = None,
        password: str | bytes | None = None,
        keepalive: int = DEFAULT_KEEPALIVE,
        clean_start: bool = True,
        session_expiry: int | None = None,
        will: Will | None = None,
        properties: Properties | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        reconnect: bool | ReconnectPolicy = True,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        topic_alias_maximum: int = DEFAULT_TOPIC_ALIAS_MAXIMUM,
        outbound_topic_aliases: bool = False,
        receive_maximum: int | None = None,
        max_packet_size: int | None = None,
        ping_timeout: float | None = None,
        store: SessionStore | None = None,
        session_name: str | None = None,
        name: str | None = None,
        websocket_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        endpoint = parse_url(url)
        self.url = url
        self.host = endpoint.host
        self.port = endpoint.port
        self.websocket = endpoint.websocket
        self.websocket_path = endpoint.path
        if websocket_headers and not endpoint.websocket:
            raise ConfigurationError("websocket_headers need a ws:// or wss:// URL")
        self.websocket_headers = tuple(websocket_headers)
        if version not in VERSIONS:
            raise ConfigurationError(f"unknown MQTT version {version!r} (use 5, 311 or 31)")
        self.version = ProtocolVersion(VERSIONS[version])
        self._explicit_client_id = client_id is not None
        self.client_id = client_id if client_id is not None else f"tidemq-{os.urandom(6).hex()}"
        if not self.client_id and self.version is not ProtocolVersion.V5 and not clean_start:
            raise ConfigurationError("an empty client id needs clean_start with MQTT 3")
        self.username = username if username is not None else endpoint.username
        if password is None and endpoint.password is not None:
            password = endpoint.password
        self.password = password.encode("utf-8") if isinstance(password, str) else password
        if not 0 <= keepalive <= 0xFFFF:
            raise ConfigurationError("keepalive must be 0..65535 seconds")
        self.keepalive = keepalive
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.will = will
        self.connect_properties = properties or NO_PROPERTIES
        if self.version is not ProtocolVersion.V5 and (
            self.connect_properties or session_expiry is not None
        ):
            raise ConfigurationError("CONNECT properties and session expiry need MQTT 5")
        if ssl is True or (ssl is None and endpoint.tls):
            ssl = ssl_module.create_default_context()
        self.ssl: ssl_module.SSLContext | None = ssl or None
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        if reconnect is True:
            reconnect = ReconnectPolicy()
        self.reconnect_policy: ReconnectPolicy | None = reconnect or None
        if max_buffered < 0:
            raise ConfigurationError("max_buffered must not be negative")
        self.max_buffered = max_buffered
        self.topic_alias_maximum = topic_alias_maximum if self.version == 5 else 0
        self.outbound_topic_aliases = outbound_topic_aliases and self.version == 5
        self.receive_maximum = receive_maximum
        self.max_packet_size = max_packet_size
        self.ping_timeout = ping_timeout
        self.store = store
        self.session_name = session_name
        self.name = name or ""
        self.metrics = ClientMetrics()
        self._session = ClientSession(
            store,
            lambda: (self.client_id, int(self.version), self.session_expiry or 0),
            self._count,
        )

        self.state = ClientState.DISCONNECTED
        self.connack: ConnAck | None = None
        self.session_present = False
        self.disconnect_reason: Disconnect | None = None
        self.error: ClientError | None = None

        self._proto: ClientProtocol | None = None
        self._connack_future: asyncio.Future[ConnAck] | None = None
        self._connected: asyncio.Event | None = None
        self._routes: list[Route] = []
        self._streams: list[MessageStream] = []
        self._requests: dict[int, asyncio.Future[Packet]] = {}
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._ping_sent: float | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closing = False
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self.state is ClientState.CONNECTED

    @property
    def subscriptions(self) -> dict[str, SubscriptionRecord]:
        """The topic filters this session is subscribed to (resubscribed on a new session)."""
        return dict(self._session.subscriptions)

    @property
    def inflight_count(self) -> int:
        """QoS 1/2 messages sent and not yet completely acknowledged."""
        return len(self._session.inflight)

    @property
    def buffered_count(self) -> int:
        """Messages accepted by ``publish`` and not yet sent (offline or quota-limited)."""
        return len(self._session.pending)

    def add_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call ``listener(event, data)`` on connecting, connected, disconnected,
        reconnecting and state_changed (used by ``SessionManager``)."""
        self._listeners.append(listener)

    def _set_state(self, new: ClientState) -> None:
        old = self.state
        if old is new:
            return
        self.state = new
        self._emit("state_changed", old_state=old, new_state=new)

    async def connect(self) -> ConnAck:
        """Connect (loading the persisted session first, if there is a store).

        Returns:
            the broker's CONNACK (``session_present``, v5 properties).

        Raises:
            MQTTConnectionError: network failure, timeout, or a refusing CONNACK.
            AuthenticationError: credentials refused.
            StorageError: the persisted session could not be loaded.
        """
        self._check_startable()
        await self._prepare()
        self._set_state(ClientState.CONNECTING)
        try:
            connack = await self._open()
        except BaseException:
            if self.state is ClientState.CONNECTING:
                self._set_state(ClientState.DISCONNECTED)
            raise
        return connack

    def start(self) -> None:
        """Connect in the background, retrying by the reconnect policy until it succeeds.

        Unlike ``connect()``, a broker that is not up yet is not an error: publishes wait
        in the offline buffer, and ``wait_connected()`` tells when the client is up.
        """
        self._check_startable()
        self._set_state(ClientState.CONNECTING)
        self._reconnect_task = asyncio.get_running_loop().create_task(self._start())

    def _check_startable(self) -> None:
        if self.state in (ClientState.CONNECTED, ClientState.CONNECTING):
            raise ConfigurationError(f"client is already {self.state.name.lower()}")
        if self._reconnect_task is not None and not self._reconnect_task.done():
            raise ConfigurationError("client is already reconnecting")
        self._closing = False
        self.error = None
        if self._connected is None:
            self._connected = asyncio.Event()

    async def _prepare(self) -> None:
        if self.store is not None and not self._session.loaded:
            self._session.key = self.session_name or self.client_id
            stored_id = await self._session.load()
            if stored_id and not self._explicit_client_id:
                self.client_id = stored_id

    async def _start(self) -> None:
        try:
            await self._prepare()
        except ClientError as exc:
            self._give_up(exc)
            return
        await self._reconnect(immediate=True)

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the client is connected (after a reconnect, for example).

        Raises:
            MQTTConnectionError: timeout (``is_timeout``), or the client gave up / closed.
        """
        if self._connected is None:
            self._connected = asyncio.Event()
        if self.state is ClientState.CONNECTED:
            return
        if self.state in (ClientState.CLOSED, ClientState.DISCONNECTED) and (
            self._reconnect_task is None or self._reconnect_task.done()
        ):
            raise self.error or ConnectionClosedError("the client is not connecting")
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            raise MQTTConnectionError(
                "timed out waiting for the connection", timeout=True
            ) from None
        if not self.is_connected:
            raise self.error or ConnectionClosedError("the client closed")

    async def close(self, reason_code: int = 0, properties: Properties | None = None) -> None:
        """Disconnect gracefully and stop: no more reconnects; pending operations fail with
        ``ConnectionClosedError`` and message iterators end. Unacknowledged messages stay
        in the session store, if any, for the next process."""
        if self.state is ClientState.CLOSED:
            return
        self._closing = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._reconnect_task = None
        proto = self._proto
        if proto is not None:
            if self.state is ClientState.CONNECTED:
                try:
                    disconnect = Disconnect(
                        reason_code=reason_code, properties=properties or NO_PROPERTIES
                    )
                    proto.send(disconnect)
                except LocalProtocolError as exc:
                    log.debug("no DISCONNECT sent: %s", exc)
            proto.close()
            try:
                await asyncio.wait_for(proto.wait_closed(), CLOSE_TIMEOUT)
            except TimeoutError:
                proto.abort()
        self._cancel_keepalive()
        self._proto = None
        self._session.last_disconnected = time.time()
        self._set_state(ClientState.CLOSED)
        if self._connected is not None:
            self._connected.clear()
        await self._session.flush()
        self._fail_all(ConnectionClosedError("the client was closed"), streams_error=None)
        routes, self._routes = self._routes, []
        await asyncio.gather(*(route.wait_stopped() for route in routes))

    disconnect = close

    # --- connecting ------------------------------------------------------------------

    def _connect_packet(self) -> Connect:
        props = self.connect_properties
        extra: dict[str, Any] = {}
        if self.version == 5:
            if self.session_expiry is not None:
                extra["session_expiry_interval"] = self.session_expiry
            if self.topic_alias_maximum and props.topic_alias_maximum is None:
                extra["topic_alias_maximum"] = self.topic_alias_maximum
            if self.receive_maximum is not None:
                extra["receive_maximum"] = self.receive_maximum
            if self.max_packet_size is not None:
                extra["maximum_packet_size"] = self.max_packet_size
        if extra:
            props = replace(props, **extra)
        try:
            return Connect(
                protocol_version=self.version,
                client_id=self.client_id,
                clean_start=self.clean_start,
                keepalive=self.keepalive,
                username=self.username,
                password=self.password,
                will=self.will,
                properties=props,
            )
        except LocalProtocolError as exc:
            raise ConfigurationError(f"invalid CONNECT: {exc}") from exc

    async def _open(self) -> ConnAck:
        loop = asyncio.get_running_loop()
        packet = self._connect_packet()
        conn = MQTTConnection(
            Role.CLIENT,
            max_packet_size=self.max_packet_size,
            topic_alias_maximum=self.topic_alias_maximum,
        )
        deadline = loop.time() + self.connect_timeout
        self._emit("connecting", host=self.host, port=self.port)
        try:
            proto = await asyncio.wait_for(
                self._connect_transport(loop, conn), self.connect_timeout
            )
        except WebSocketHandshakeError as exc:
            status = exc.status
            raise self._count(
                MQTTConnectionError(
                    f"{self.host}:{self.port}: {exc}",
                    # A missing endpoint or a refused origin stays so; an overloaded or
                    # restarting server (5xx, 429) or a dropped upgrade may recover.
                    temporary=status is None or status >= 500 or status in (408, 429),
                )
            ) from exc
        except TimeoutError as exc:
            raise self._count(
                MQTTConnectionError(
                    f"connecting to {self.host}:{self.port} timed out", timeout=True
                )
            ) from exc
        except ssl_module.SSLCertVerificationError as exc:
            raise self._count(MQTTConnectionError(f"TLS verification failed: {exc}")) from exc
        except OSError as exc:
            raise self._count(
                MQTTConnectionError(
                    f"cannot connect to {self.host}:{self.port}: {exc}", temporary=True
                )
            ) from exc
        future: asyncio.Future[ConnAck] = loop.create_future()
        self._connack_future = future
        self._proto = proto
        try:
            proto.send(packet)
            connack = await asyncio.wait_for(
                asyncio.shield(future), max(0.0, deadline - loop.time())
            )
        except TimeoutError as exc:
            proto.abort()
            raise self._count(MQTTConnectionError("no CONNACK in time", timeout=True)) from exc
        except BaseException:
            proto.abort()
            raise
        finally:
            self._connack_future = None
        if connack.reason_code >= 0x80:
            proto.abort()
            self._proto = None
            raise self._count(connack_error(connack.reason_code, connack.properties.reason_string))
        self._on_connected(proto, connack)
        return connack

    async def _connect_transport(
        self, loop: asyncio.AbstractEventLoop, conn: MQTTConnection
    ) -> ClientProtocol:
        """TCP (+ TLS), or with ws:// and wss:// also the WebSocket upgrade."""
        hostname = (self.server_hostname or self.host) if self.ssl else None
        if not self.websocket:
            _, proto = await loop.create_connection(
                lambda: ClientProtocol(self, conn, loop),
                self.host,
                self.port,
                ssl=self.ssl,
                server_hostname=hostname,
            )
            return proto
        _, inner = await open_websocket(
            lambda: ClientProtocol(self, conn, loop),
            self.host,
            self.port,
            path=self.websocket_path,
            # mqttv3.1 is the subprotocol name of MQTT 3.1 [MQTT-6.0.0-3].
            subprotocols=("mqttv3.1",) if self.version == 3 else ("mqtt",),
            headers=self.websocket_headers,
            ssl=self.ssl,
            server_hostname=hostname,
        )
        assert isinstance(inner, ClientProtocol)
        return inner

    def _on_connected(self, proto: ClientProtocol, connack: ConnAck) -> None:
        conn = proto.conn
        self.connack = connack
        self.session_present = connack.session_present
        self.disconnect_reason = None
        assigned = connack.properties.assigned_client_identifier
        if assigned:
            self.client_id = assigned
        self._session.last_connected = time.time()
        self._set_state(ClientState.CONNECTED)
        assert self._connected is not None
        self._connected.set()
        log.info(
            "connected to %s:%d as %r (MQTT %s, session present: %s)",
            self.host,
            self.port,
            self.client_id,
            "5.0" if self.version == 5 else "3.1.1" if self.version == 4 else "3.1",
            connack.session_present,
        )
        if connack.session_present:
            for pid in self._session.in_qos2:
                conn.restore_incoming_qos2(pid)
        else:
            self._session.in_qos2 = []
            self._resubscribe(proto)
        self._resend_inflight(proto)
        self._arm_keepalive()
        self._pump()
        self._session.persist_soon()
        self._emit("connected", session_present=connack.session_present)

    def _resend_inflight(self, proto: ClientProtocol) -> None:
        """Re-send unacknowledged exchanges in their original order [MQTT-4.4.0-1]."""
        conn = proto.conn
        entries = list(self._session.inflight.values())
        self._session.inflight = {}
        quota = conn.peer_receive_maximum
        requeue: list[Outgoing] = []
        for entry in entries:
            pid = entry.packet_id
            if entry.released:
                if not self.session_present:
                    # The broker took the message (PUBREC) and then lost the session: it
                    # was delivered, and there is no exchange left to finish.
                    self._complete(entry, PublishResult(pid, 0))
                    continue
                conn.restore_outgoing(pid, OutgoingState.AWAIT_PUBCOMP)
                proto.send(PubRel(packet_id=pid))
                self._session.inflight[pid] = entry
                continue
            if len(self._session.inflight) >= quota:
                entry.packet_id = 0  # sent again later, under a new id
                requeue.append(entry)
                continue
            state = (
                OutgoingState.AWAIT_PUBACK if entry.packet.qos == 1 else OutgoingState.AWAIT_PUBREC
            )
            conn.restore_outgoing(pid, state)
            self._send_entry(proto, entry, pid)
        if requeue:
            self._session.pending.extendleft(reversed(requeue))

    # --- connection events (called by ClientProtocol) --------------------------------

    def _packets_received(self, proto: ClientProtocol, packets: Sequence[Packet]) -> None:
        pumped = False
        for packet in packets:
            kind = type(packet)
            if kind is Publish:
                assert isinstance(packet, Publish)
                self._deliver(proto, packet)
            elif kind is PubAck or kind is PubComp:
                assert isinstance(packet, PubAck | PubComp)
                self._acked(packet.packet_id, packet.reason_code, packet.properties)
                pumped = True
            elif kind is PubRec:
                assert isinstance(packet, PubRec)
                entry = self._session.inflight.get(packet.packet_id)
                if packet.reason_code >= 0x80:
                    self._acked(packet.packet_id, packet.reason_code, packet.properties)
                    pumped = True
                elif entry is not None and not entry.released:
                    entry.released = True
                    self._session.persist_soon()
            elif kind is SubAck or kind is UnsubAck:
                assert isinstance(packet, SubAck | UnsubAck)
                request = self._requests.pop(packet.packet_id, None)
                if request is not None and not request.done():
                    request.set_result(packet)
            elif kind is ConnAck:
                assert isinstance(packet, ConnAck)
                connack = self._connack_future
                if connack is not None and not connack.done():
                    connack.set_result(packet)
            elif kind is Disconnect:
                assert isinstance(packet, Disconnect)
                self.disconnect_reason = packet
                log.warning(
                    "broker disconnected us: %s%s",
                    reason_name(packet.reason_code, PacketType.DISCONNECT),
                    f" ({packet.properties.reason_string})"
                    if packet.properties.reason_string
                    else "",
                )
                proto.close()
                # The connection is over now, not when the transport reports it closed.
                self._connection_lost(proto, None)
            elif packet.type is PacketType.AUTH:
                log.error("the broker started enhanced authentication, which is not supported")
                proto.close()
        if pumped and self._session.pending:
            self._pump()

    def _protocol_error(self, proto: ClientProtocol, exc: RemoteProtocolError) -> None:
        log.error("protocol error from the broker: %s", exc)
        self._count(MQTTConnectionError(f"protocol error: {exc}", reason_code=exc.reason_code))
        self._connection_lost(proto, exc)

    def _connection_lost(self, proto: ClientProtocol, exc: BaseException | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        self._cancel_keepalive()
        self._session.in_qos2 = proto.conn.incoming_qos2()
        lost = MQTTConnectionError(self._loss_reason(exc), temporary=True)
        for future in self._requests.values():
            if not future.done():
                future.set_exception(lost)
                _mark_retrieved(future)
        self._requests.clear()
        connack = self._connack_future
        if connack is not None and not connack.done():
            connack.set_exception(MQTTConnectionError("connection closed before CONNACK"))
            _mark_retrieved(connack)
        if self.state is not ClientState.CONNECTED or self._closing:
            return
        assert self._connected is not None
        self._connected.clear()
        self._session.last_disconnected = time.time()
        self._count(lost)
        log.warning("connection to %s:%d lost: %s", self.host, self.port, lost.message)
        self._emit("disconnected", error=lost)
        if self.reconnect_policy is None:
            self._set_state(ClientState.DISCONNECTED)
            self.error = lost
            self._fail_all(lost, streams_error=lost)
        else:
            self._set_state(ClientState.RECONNECTING)
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())
        self._session.persist_soon()

    def _loss_reason(self, exc: BaseException | None) -> str:
        reason = self.disconnect_reason
        if reason is not None:
            return "broker sent DISCONNECT: " + reason_name(
                reason.reason_code, PacketType.DISCONNECT
            )
        return f"connection lost: {exc}" if exc else "connection closed by the broker"

    async def _reconnect(self, *, immediate: bool = False) -> None:
        """Connect again by the policy; *immediate* makes a first attempt without delay."""
        policy = self.reconnect_policy
        error: ClientError | None = None
        if immediate:
            try:
                await self._open()
                return
            except ClientError as exc:
                error = exc
                log.warning("connecting failed: %s", exc)
            if policy is None or not error.is_temporary:
                self._give_up(error)
                return
            self._set_state(ClientState.RECONNECTING)
        assert policy is not None
        for attempt, delay in enumerate(policy.delays(), 1):
            self._emit("reconnecting", attempt=attempt, delay=delay)
            log.info("reconnecting in %.2f s (attempt %d)", delay, attempt)
            await asyncio.sleep(delay)  # the backoff itself, not a readiness wait
            self.metrics.reconnects += 1
            try:
                await self._open()
            except ClientError as exc:
                error = exc
                log.warning("reconnect attempt %d failed: %s", attempt, exc)
                if not exc.is_temporary:
                    break
                continue
            return
        self._give_up(error or ConnectionClosedError("gave up reconnecting"))

    def _give_up(self, error: ClientError) -> None:
        self.error = error
        log.error("giving up connecting: %s", error)
        self._set_state(ClientState.DISCONNECTED)
        if self._connected is not None:
            self._connected.set()  # wake wait_connected(), which reports the error
            self._connected.clear()
        self._fail_all(error, streams_error=error)

    def _fail_all(self, error: ClientError, *, streams_error: ClientError | None) -> None:
        entries = [*self._session.inflight.values(), *self._session.pending]
        self._session.inflight.clear()
        self._session.pending.clear()
        for entry in entries:
            future = entry.future
            if future is not None and not future.done():
                future.set_exception(error)
                _mark_retrieved(future)
        for request in self._requests.values():
            if not request.done():
                request.set_exception(error)
                _mark_retrieved(request)
        self._requests.clear()
        streams, self._streams = self._streams, []
        for stream in streams:
            stream.finish(streams_error)
        for route in self._routes:
            route.stop(streams_error)

    # --- keepalive -------------------------------------------------------------------

    def _arm_keepalive(self) -> None:
        proto = self._proto
        if proto is None or not proto.conn.keepalive:
            return
        self._ping_sent = None
        loop = asyncio.get_running_loop()
        self._keepalive_timer = loop.call_at(
            proto.conn.last_sent + proto.conn.keepalive, self._keepalive_tick
        )

    def _cancel_keepalive(self) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
            self._keepalive_timer = None

    def _keepalive_tick(self) -> None:
        self._keepalive_timer = None
        proto = self._proto
        if proto is None:
            return
        conn = proto.conn
        loop = asyncio.get_running_loop()
        now = loop.time()
        interval = conn.keepalive
        timeout = self.ping_timeout or max(1.0, interval / 2)
        sent = self._ping_sent
        if sent is not None:
            if conn.last_received >= sent:
                self._ping_sent = sent = None
            elif now - sent >= timeout:
                log.warning("no PINGRESP within %.1f s: dropping the connection", timeout)
                self._count(MQTTConnectionError("keepalive timeout", timeout=True))
                proto.abort()
                return
        due = conn.last_sent + interval
        if now >= due:
            try:
                proto.send(PingReq())
            except LocalProtocolError:
                return  # the connection is closing; connection_lost follows
            self._ping_sent = sent = now
            due = now + interval
        when = due if sent is None else min(due, sent + timeout)
        self._keepalive_timer = loop.call_at(when, self._keepalive_tick)

    # --- persistence -----------------------------------------------------------------

    @property
    def last_connected(self) -> float | None:
        """When the session last connected (``time.time()``; persisted with the store)."""
        return self._session.last_connected

    @property
    def last_disconnected(self) -> float | None:
        return self._session.last_disconnected

    def snapshot(self) -> SessionState:
        """The session state as it would be persisted now."""
        return self._session.snapshot()

    async def save_session(self) -> None:
        """Write the session state to the store now (it is also saved on every change).

        Raises:
            ConfigurationError: the client has no store.
        """
        if self.store is None:
            raise ConfigurationError("the client has no session store")
        await self._session.flush()

    def __repr__(self) -> str:
        label = f"{self.name} " if self.name else ""
        return (
            f"<Client {label}{self.client_id!r} {self.host}:{self.port} {self.state.name.lower()}>"
        )
