"""``ClientHandler``: one client connection inside the broker (Mosquitto's handle_*.c).

It owns the connection's sans-IO ``MQTTConnection`` (server role) and its ``Link``, and
runs each inbound packet through its handler. Errors map to reason codes in one place
(``_protocol_error``): the protocol object has already queued the DISCONNECT or CONNACK
the specification asks for; the handler flushes it, logs one line and closes.

Hot path: ``data_received`` → ``MQTTConnection.receive_data`` → ``_on_publish`` →
``BrokerCore.publish`` → ``send_message`` → ``Link.write`` (batched per loop pass).
No task, timer or log call per packet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from tidemq.protocol import (
    NO_PROPERTIES,
    Auth,
    ConnAck,
    Connect,
    ConnectionState,
    Disconnect,
    LocalProtocolError,
    MQTTConnection,
    OutgoingState,
    Packet,
    PacketType,
    PingReq,
    Properties,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    RemoteProtocolError,
    Role,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode_publish_parts,
    parse_shared,
    reason_code_allowed,
    topic_filter_error,
    v3_suback_code,
)

from .hooks import (
    AuthenticateEvent,
    AuthResult,
    AuthStep,
    ClientInfo,
    ConnectedEvent,
    Decision,
    DeliveryAuthEvent,
    DisconnectedEvent,
    EnhancedAuthEvent,
    HookPoint,
    MessageEvent,
    PublishAuthEvent,
    SubscribeAuthEvent,
    SubscriptionEvent,
)
from .message import Message
from .persist import Durable
from .session import Inflight, Session, SubOptions

if TYPE_CHECKING:
    from .core import BrokerCore
    from .interfaces import Link

log = logging.getLogger("tidemq.broker.client")

_RC = ReasonCode


class ClientHandler:
    __slots__ = (
        "_acks",
        "_aliases_sent",
        "_auth",
        "_check_delivery",
        "_expiry",
        "_held",
        "_problem_info",
        "_timer_at",
        "client_id",
        "conn",
        "core",
        "info",
        "link",
        "ready",
        "session",
        "superuser",
        "v5",
        "version",
    )

    def __init__(self, core: BrokerCore, link: Link) -> None:
        self.core = core
        self.link = link
        settings = core.settings
        self.conn = MQTTConnection(
            Role.SERVER,
            max_packet_size=settings.max_packet_size,
            receive_maximum=settings.max_inflight,
            topic_alias_maximum=settings.topic_alias_maximum,
            reason_strings=settings.reason_strings,
        )
        self.session: Session | None = None
        self.client_id = ""
        self.info: ClientInfo | None = None
        self.version = 0
        self.v5 = False
        self.ready = False  # CONNACK sent, deliveries may flow
        self.superuser = False
        # Whether each delivery asks AUTHORIZE_DELIVERY (set at CONNACK): one attribute
        # test per delivery when nothing is registered.
        self._check_delivery = False
        self._problem_info = True
        self._aliases_sent: set[int] | None = None  # topic aliases the client has seen
        self._held: list[Packet] | None = None  # packets that arrive during async auth
        self._auth: _EnhancedAuth | None = None
        # When the client's credentials expire (a JWT's exp): a scheduler entry of its
        # own, made only for such clients; None for everyone else.
        self._expiry: _CredentialsExpiry | None = None
        # Acks waiting for a storage commit, in arrival order: (commit or None, ...).
        self._acks: deque[tuple[Durable | None, Publish, int, str]] | None = None
        # The connect timeout until CONNECT (watched by the core, in arrival order), then
        # the keepalive deadline (the handler is its own timer entry, see ``fire``);
        # 0.0 = none.
        self._timer_at = core.loop.time() + settings.connect_timeout
        core.watch_connect(self)

    # --- transport callbacks ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        core = self.core
        core.stats.bytes_received += len(data)
        conn = self.conn
        try:
            packets = conn.receive_data(data, core.loop.time())
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        if self._held is not None:
            for packet in packets:
                if type(packet) is Auth and self._auth is not None:
                    self._on_auth(packet)  # the exchange goes on while other packets wait
                else:
                    self._held.append(packet)
        else:
            self._handle(packets)
        out = conn.data_to_send()
        if out:
            self._write(out, _count_packets(out))

    def _handle(self, packets: list[Packet]) -> None:
        stats = self.core.stats
        stats.messages_received += len(packets)
        for i, packet in enumerate(packets):
            if type(packet) is Publish:
                if self._on_publish(packet) is _HOLD:
                    # An ACL source went async: keep the rest, in order, until it answers.
                    self._held = list(packets[i + 1 :])
                    return
            else:
                handler = _DISPATCH[type(packet)]
                if handler(self, packet) is _HOLD:
                    # Authentication went async: keep the rest until it completes.
                    self._held = list(packets[i + 1 :])
                    return
            if self.link.is_closing():
                # We closed it. (Not ``conn.state``: a DISCONNECT at the end of this read
                # already moved the protocol to CLOSED, yet the packets before it count.)
                return

    def connection_lost(self, exc: BaseException | None) -> None:
        self.core.handlers.discard(self)
        self._cancel_timers()
        session = self.session
        if session is None or session.handler is not self:
            return
        reason = "connection lost" if exc is None else f"connection lost: {exc}"
        self._session_closed(reason, _RC.UNSPECIFIED_ERROR, publish_will=True)

    def _write(self, data: bytes, packets: int = 1) -> None:
        """Hand bytes to the link, counting them for $SYS and metrics."""
        stats = self.core.stats
        stats.bytes_sent += len(data)
        stats.messages_sent += packets
        self.link.write(data)

    # --- closing ---------------------------------------------------------------------

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        """The single error → reason-code path: the protocol object queued the reply."""
        peer = self.link.peer
        log.info(
            "closing %s (%s): %s [0x%02x]",
            self.client_id or "?",
            f"{peer[0]}:{peer[1]}" if peer else self.link.listener,
            exc,
            exc.reason_code,
        )
        out = self.conn.data_to_send()
        if out:
            self._write(out, _count_packets(out))
        self._close(f"protocol error: {exc}", exc.reason_code, publish_will=True)

    def disconnect(self, reason_code: int, reason: str, *, publish_will: bool = True) -> None:
        """Close from our side; v5 clients get a DISCONNECT with *reason_code* first (or,
        before our CONNACK, a CONNACK carrying it: CONNACK must come first [MQTT-3.2.0-1])."""
        if self.conn.state is ConnectionState.CONNECTING and self.session is None:
            self._refuse(reason_code, reason)
            return
        if self.v5 and self.conn.state in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
            try:
                props = self._reason(reason)
                self._write(self.conn.send(Disconnect(reason_code=reason_code, properties=props)))
            except LocalProtocolError:
                pass  # state changed under us; closing anyway
        self._close(reason, reason_code, publish_will=publish_will)

    def _close(self, reason: str, reason_code: int, *, publish_will: bool) -> None:
        self._cancel_timers()
        self.conn.state = ConnectionState.CLOSED
        session = self.session
        if session is not None and session.handler is self:
            self._session_closed(reason, reason_code, publish_will=publish_will)
        self.link.close()

    def _cancel_timers(self) -> None:
        self._timer_at = 0.0
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    @property
    def cancelled(self) -> bool:
        """For the scheduler: no deadline is pending."""
        return self._timer_at == 0.0

    def fire(self, when: float) -> None:
        """The scheduler reached the keepalive deadline *when*, unless this heap entry is
        stale (the deadline was cancelled or moved since)."""
        if when != self._timer_at:
            return
        self._timer_at = 0.0
        self._keepalive_check()

    @property
    def awaiting_connect(self) -> bool:
        """No CONNECT yet, and its timeout not cancelled."""
        return self.session is None and self._timer_at != 0.0

    def connect_deadline(self) -> float:
        return self._timer_at

    def connect_timeout(self) -> None:
        """The core's connect sweep found no CONNECT in time."""
        self._timer_at = 0.0
        self._connect_timeout()

    def _arm(self, deadline: float) -> None:
        self._timer_at = deadline
        self.core.scheduler.push(deadline, self)

    def _session_closed(self, reason: str, reason_code: int, *, publish_will: bool) -> None:
        core = self.core
        session = self.session
        assert session is not None
        self.ready = False
        session.handler = None
        core.online -= 1
        # Keep in-flight QoS 2 receipts for exactly-once on resume.
        for pid in self.conn.incoming_qos2():
            if session.awaiting_rel is None:
                session.awaiting_rel = {}
            session.awaiting_rel.setdefault(pid, core.loop.time())
        if publish_will and session.will is not None:
            core.schedule_will(session)
        else:
            core.cancel_will(session)
        if self.info is not None and core.hooks.has(HookPoint.CLIENT_DISCONNECTED):
            core.hooks.notify(
                HookPoint.CLIENT_DISCONNECTED,
                DisconnectedEvent(client=self.info, reason=reason, reason_code=reason_code),
            )
        core.session_offline(session)

    def _connect_timeout(self) -> None:
        if self.session is None and not self.link.is_closing():
            log.info("closing %s: no CONNECT within the connect timeout", self.link.peer)
            self.link.abort()

    def _keepalive_check(self) -> None:
        deadline = self.conn.keepalive_deadline
        if deadline is None or self.conn.state is ConnectionState.CLOSED:
            return
        now = self.core.loop.time()
        if now >= deadline:
            log.info("closing %s: keepalive timeout", self.client_id)
            self.disconnect(_RC.KEEP_ALIVE_TIMEOUT, "keepalive timeout")
        else:
            # Lazy deadline: activity moved it; re-arm once for the new time.
            self._arm(deadline)

    # --- CONNECT ---------------------------------------------------------------------

    def _on_connect(self, packet: Connect) -> object:
        core = self.core
        settings = core.settings
        identity = getattr(self.link, "cert_identity", None)
        if identity is not None and identity != packet.username:
            # The listener's cert_as_username: the client certificate names the user.
            packet = dataclasses.replace(packet, username=identity)
        self._timer_at = 0.0  # CONNECT came: no connect timeout any more
        self.version = version = int(packet.protocol_version)
        self.v5 = version == 5
        if identity is None and getattr(self.link, "cert_identity_required", False):
            # cert_as_username: the certificate must name the user; a client whose
            # certificate names none never falls back to the username it claims.
            self._refuse(_RC.NOT_AUTHORIZED, "client certificate names no user")
            return None
        if not self.v5:
            # MQTT 3 announces no Receive Maximum; inbound QoS 2 is bounded by
            # max_awaiting_rel instead, and QoS 1 is acknowledged at once.
            self.conn.receive_maximum = 65_535
        if len(core.handlers) > settings.max_connections:
            # Every live connection counts, this one included. CONNACK 0x89 Server busy
            # (MQTT 3: 0x03 Server unavailable), then close.
            self._refuse(_RC.SERVER_BUSY, "too many connections")
            return None
        client_id = packet.client_id
        props = packet.properties
        assigned: str | None = None
        if not client_id:
            if version == 3 or (version == 4 and not packet.clean_start):
                # MQTT 3.1 needs a client id; 3.1.1 allows none only with clean session
                # [MQTT-3.1.3-7] [MQTT-3.1.3-8].
                self._refuse(_RC.CLIENT_IDENTIFIER_NOT_VALID, "empty client id")
                return None
            client_id = "tidemq-" + secrets.token_hex(8)
            if self.v5:
                assigned = client_id  # [MQTT-3.2.2-16]
        if len(client_id) > settings.max_client_id_length:
            self._refuse(_RC.CLIENT_IDENTIFIER_NOT_VALID, "client id too long")
            return None
        keepalive = packet.keepalive
        server_keepalive: int | None = None
        if keepalive > settings.max_keepalive or (
            keepalive == 0 and settings.max_keepalive < 65_535
        ):
            if self.v5:
                server_keepalive = settings.max_keepalive  # [MQTT-3.2.2-21]
                self.conn.keepalive = settings.max_keepalive
            else:
                # MQTT 3 cannot be told another keepalive: refuse, as Mosquitto does.
                self._refuse(_RC.CLIENT_IDENTIFIER_NOT_VALID, "keepalive above maximum")
                return None
        method = props.authentication_method
        if method is not None and not core.hooks.has(HookPoint.ENHANCED_AUTH):
            # Enhanced authentication needs a configured method (MQTT 5.0 §4.12).
            self._refuse(_RC.BAD_AUTHENTICATION_METHOD, "no enhanced auth configured")
            return None
        if packet.will is not None:
            will = packet.will
            if will.qos > settings.max_qos:
                self._refuse(_RC.QOS_NOT_SUPPORTED, "will QoS above maximum")
                return None
            if will.retain and not settings.retain_available:
                self._refuse(_RC.RETAIN_NOT_SUPPORTED, "will retain not available")
                return None
        self.client_id = client_id
        self._problem_info = props.request_problem_information != 0
        peer = self.link.peer
        self.info = ClientInfo(
            client_id=client_id,
            username=packet.username,
            peer=peer,
            listener=self.link.listener,
            protocol_version=version,
            cert_common_name=getattr(self.link, "cert_common_name", None),
        )
        if method is not None:
            # MQTT 5 enhanced authentication replaces the password chain (as in EMQX).
            self._held = []
            self._auth = _EnhancedAuth(packet, client_id, assigned, server_keepalive, method)
            core.loop.create_task(self._enhanced_step(props.authentication_data))
            return _HOLD
        if core.hooks.has(HookPoint.AUTHENTICATE):
            event = AuthenticateEvent(
                client=self.info,
                password=packet.password,
                auth_method=props.authentication_method,
                auth_data=props.authentication_data,
            )
            anonymous = settings.allow_anonymous or packet.username is not None
            answer = core.hooks.authenticate_now(
                event, Decision.ALLOW if anonymous else Decision.DENY, settings.auth_timeout
            )
            if isinstance(answer, AuthResult):
                self._authenticated(answer, packet, client_id, assigned, server_keepalive)
                return None
            self._held = []
            core.loop.create_task(
                self._authenticate(answer, packet, client_id, assigned, server_keepalive)
            )
            return _HOLD
        if not settings.allow_anonymous and packet.username is None:
            self._refuse(_RC.NOT_AUTHORIZED, "anonymous clients are not allowed")
            return None
        self._accept(packet, client_id, assigned, server_keepalive)
        return None

    async def _authenticate(
        self,
        answer: Awaitable[AuthResult],
        packet: Connect,
        client_id: str,
        assigned: str | None,
        server_keepalive: int | None,
    ) -> None:
        result = await answer
        if self._closed():
            return
        self._authenticated(result, packet, client_id, assigned, server_keepalive)
        self._release_held()

    def _authenticated(
        self,
        result: AuthResult,
        packet: Connect,
        client_id: str,
        assigned: str | None,
        server_keepalive: int | None,
    ) -> None:
        if result.decision is Decision.DENY:
            code = result.reason_code or (
                _RC.BAD_USER_NAME_OR_PASSWORD if packet.password is not None else _RC.NOT_AUTHORIZED
            )
            self._refuse(code, "authentication failed")
            return
        self.superuser = result.superuser
        self._accept(packet, client_id, assigned, server_keepalive)
        if result.expires_at is not None:
            self._expire_credentials_at(result.expires_at)

    def _expire_credentials_at(self, expires_at: float | None) -> None:
        """Disconnect the client when its credentials expire (*expires_at*, wall-clock
        epoch seconds; None: never), replacing any earlier deadline. EMQX's JWT
        ``disconnect_after_expire``: MQTT 5 gets DISCONNECT 0x87, MQTT 3 a close."""
        entry = self._expiry
        if entry is not None:
            entry.cancel()
            self._expiry = None
        if expires_at is None or not self.ready:
            return
        core = self.core
        # The scheduler runs on loop time, the credentials on the wall clock: convert once.
        deadline = core.loop.time() + max(0.0, expires_at - time.time())
        entry = self._expiry = _CredentialsExpiry(self)
        core.scheduler.push(deadline, entry)

    def _credentials_expired(self) -> None:
        self._expiry = None
        if self.conn.state is not ConnectionState.CONNECTED:
            return
        log.info("disconnecting %s: its credentials expired", self.client_id)
        self.disconnect(_RC.NOT_AUTHORIZED, "authentication expired")

    def _release_held(self) -> None:
        """Handle the packets that arrived while authentication was pending."""
        held = self._held or []
        self._held = None
        if held and not self.link.is_closing():
            self._handle(held)
        out = self.conn.data_to_send()
        if out:
            self._write(out, _count_packets(out))

    async def _enhanced_step(self, data: bytes | None) -> None:
        """Run one step of an enhanced authentication (MQTT 5.0 §4.12) and answer it."""
        core = self.core
        state = self._auth
        assert state is not None
        assert self.info is not None
        reauth = self.ready
        event = EnhancedAuthEvent(
            client=self.info, method=state.method, data=data, step=state.step, reauthenticate=reauth
        )
        state.step += 1
        state.waiting = False
        result = await core.hooks.enhanced_auth(event, core.settings.auth_timeout)
        if self._closed():
            return
        auth_props = Properties(authentication_method=state.method, authentication_data=result.data)
        if result.step is AuthStep.CONTINUE:
            state.waiting = True
            auth = Auth(reason_code=_RC.CONTINUE_AUTHENTICATION, properties=auth_props)
            self._write(self.conn.send(auth))
            return
        if reauth:
            if result.step is AuthStep.SUCCESS:
                self._write(self.conn.send(Auth(reason_code=_RC.SUCCESS, properties=auth_props)))
                # The new credentials decide when the connection must end.
                self._expire_credentials_at(result.expires_at)
            else:
                self.disconnect(
                    result.reason_code or _RC.NOT_AUTHORIZED, "re-authentication failed"
                )
            return
        if result.step is AuthStep.SUCCESS:
            self.superuser = result.superuser
            self._accept(
                state.connect,
                state.client_id,
                state.assigned,
                state.server_keepalive,
                auth_props={
                    "authentication_method": state.method,
                    "authentication_data": result.data,
                },
            )
            if result.expires_at is not None:
                self._expire_credentials_at(result.expires_at)
            self._release_held()
        elif result.step is AuthStep.UNSUPPORTED:
            self._refuse(_RC.BAD_AUTHENTICATION_METHOD, f"authentication method {state.method!r}")
        else:
            self._refuse(result.reason_code or _RC.NOT_AUTHORIZED, "enhanced authentication failed")

    def _closed(self) -> bool:
        return self.conn.state is ConnectionState.CLOSED or self.link.is_closing()

    def _refuse(self, code: int, reason: str) -> None:
        log.info("refusing %s (%s): %s", self.client_id or "?", self.link.peer, reason)
        if self.v5 and not reason_code_allowed(code, PacketType.CONNACK):
            code = _RC.UNSPECIFIED_ERROR
        try:
            if self.v5 or code in (0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C):
                props = self._reason(reason)
                self._write(self.conn.send(ConnAck(reason_code=code, properties=props)))
        except LocalProtocolError:
            pass  # no MQTT 3 equivalent: close without CONNACK
        self.conn.state = ConnectionState.CLOSED
        self.link.close()

    def _accept(
        self,
        packet: Connect,
        client_id: str,
        assigned: str | None,
        server_keepalive: int | None,
        auth_props: dict[str, Any] | None = None,
    ) -> None:
        core = self.core
        settings = core.settings
        now = core.loop.time()
        props = packet.properties
        # Session expiry: MQTT 5 from the property (absent = 0); MQTT 3 persistent sessions
        # get the configured default, clean sessions end with the connection.
        requested_expiry: int
        if self.v5:
            requested_expiry = props.session_expiry_interval or 0
        else:
            requested_expiry = 0 if packet.clean_start else settings.default_session_expiry
        expiry = min(requested_expiry, settings.max_session_expiry)

        session = core.sessions.get(client_id)
        if session is not None and session.handler is not None:
            # Take-over: the old connection is closed, v5 with DISCONNECT 0x8E
            # [MQTT-3.1.4-3]; its will follows the usual rules.
            old = session.handler
            log.info("client %s taken over by a new connection", client_id)
            old.disconnect(_RC.SESSION_TAKEN_OVER, "session taken over")
            session = core.sessions.get(client_id)
        session_present = False
        if session is not None and packet.clean_start:
            # Clean Start ends the old session; a will still pending goes now.
            core.end_session(session)
            session = None
        if session is not None:
            session_present = True
            if session.expiry_entry is not None:
                session.expiry_entry.cancel()
                session.expiry_entry = None
            # Reconnected before the Will Delay Interval ran out: no will [MQTT-3.1.3-9].
            core.cancel_will(session)
        else:
            session = Session(client_id, self.version, now)
            core.sessions[client_id] = session
        session.protocol_version = self.version
        session.username = packet.username
        session.expiry_interval = expiry
        session.will = packet.will
        session.handler = self
        session.info = self.info
        session.superuser = self.superuser
        core.online += 1
        self.session = session
        persist = core.persist
        if persist is not None and expiry:
            if not session.persistent:
                # Newly persistent: what it already holds goes to storage with it.
                session.persistent = True
                persist.put_session(session)
                for opts in session.subscriptions.values():
                    persist.put_subscription(session, opts)
            else:
                persist.put_session(session)  # connected, with this connection's will
        elif session.persistent:
            # Reconnected with expiry 0: it now ends with this connection, so storage
            # forgets it (MQTT 5: the expiry comes from each CONNECT).
            session.persistent = False
            assert persist is not None
            persist.delete_session(client_id)

        ack_props: dict[str, Any] = {}
        if self.v5:
            if expiry != requested_expiry:
                ack_props["session_expiry_interval"] = expiry
            ack_props["receive_maximum"] = settings.max_inflight
            ack_props["maximum_packet_size"] = settings.max_packet_size
            if settings.topic_alias_maximum:
                ack_props["topic_alias_maximum"] = settings.topic_alias_maximum
            if assigned is not None:
                ack_props["assigned_client_identifier"] = assigned
            if server_keepalive is not None:
                ack_props["server_keep_alive"] = server_keepalive
            if settings.max_qos < 2:
                ack_props["maximum_qos"] = settings.max_qos
            if not settings.retain_available:
                ack_props["retain_available"] = 0
            if not settings.wildcard_subscription_available:
                ack_props["wildcard_subscription_available"] = 0
            if not settings.subscription_identifier_available:
                ack_props["subscription_identifier_available"] = 0
            if not settings.shared_subscription_available:
                ack_props["shared_subscription_available"] = 0
            if props.request_response_information == 1:
                ack_props["response_information"] = f"response/{client_id}"
            if auth_props:
                ack_props.update(auth_props)
        ack = ConnAck(
            session_present=session_present and self.version != 3,
            properties=Properties(**ack_props) if ack_props else NO_PROPERTIES,
        )
        self._write(self.conn.send(ack))
        self.ready = True
        self._check_delivery = not self.superuser and _AUTHORIZE_DELIVERY in core.hooks.active
        if self.conn.keepalive:
            deadline = self.conn.keepalive_deadline
            assert deadline is not None
            self._arm(deadline)
        live = core.connected_count
        if live > core.stats.clients_maximum:
            core.stats.clients_maximum = live
        if session_present:
            self._resume(session)
        if core.hooks.has(HookPoint.CLIENT_CONNECTED):
            assert self.info is not None
            core.hooks.notify(
                HookPoint.CLIENT_CONNECTED,
                ConnectedEvent(
                    client=self.info,
                    session_present=session_present,
                    clean_start=packet.clean_start,
                    keepalive=packet.keepalive,
                ),
            )

    def _resume(self, session: Session) -> None:
        """Re-send unacknowledged deliveries with DUP [MQTT-4.4.0-1], then the queue."""
        conn = self.conn
        for pid in session.awaiting_rel or ():
            conn.restore_incoming_qos2(pid)
        stale: list[int] = []
        for pid, entry in session.inflight.items():
            if entry.released:
                conn.restore_outgoing(pid, OutgoingState.AWAIT_PUBCOMP)
                self._write(conn.send(PubRel(packet_id=pid)))
                continue
            message = entry.message
            if message.expired():
                stale.append(pid)
                continue
            conn.restore_outgoing(
                pid,
                OutgoingState.AWAIT_PUBACK if entry.qos == 1 else OutgoingState.AWAIT_PUBREC,
            )
            props = message.properties_for(entry.sub_ids) if self.v5 else b""
            head, tail = encode_publish_parts(
                message.topic_bytes, message.payload, entry.qos, entry.retain, True, props
            )
            self._write(head + pid.to_bytes(2, "big") + tail)
        for pid in stale:
            gone = session.inflight.pop(pid)
            self.core.stats.messages_expired += 1
            if session.persistent:
                persist = self.core.persist
                assert persist is not None
                persist.delete_inflight(session, pid, gone)
        self._drain_queue()

    def retry_inflight(self, now: float) -> None:
        """MQTT 3.x only: re-send deliveries unacknowledged for ``retry_interval`` (EMQX's
        retry_interval); MQTT 5 resends only on reconnect [MQTT-4.4.0-1]."""
        session = self.session
        interval = self.core.settings.retry_interval
        if session is None or self.v5 or not interval or not self.ready:
            return
        for pid, entry in session.inflight.items():
            if now - entry.sent_at < interval:
                continue
            entry.sent_at = now
            if entry.released:
                self._write(_pubrel_bytes(pid))
                continue
            message = entry.message
            head, tail = encode_publish_parts(
                message.topic_bytes, message.payload, entry.qos, entry.retain, True, b""
            )
            self._write(head + pid.to_bytes(2, "big") + tail)

    # --- PUBLISH in ------------------------------------------------------------------

    def _on_publish(self, packet: Publish, decided: Decision | None = None) -> object:
        core = self.core
        stats = core.stats
        stats.publish_received += 1
        settings = core.settings
        qos = packet.qos
        topic = packet.topic
        if qos > settings.max_qos:
            self.disconnect(_RC.QOS_NOT_SUPPORTED, "QoS above maximum")  # [MQTT-3.2.2-11]
            return None
        if packet.retain and not settings.retain_available:
            self.disconnect(_RC.RETAIN_NOT_SUPPORTED, "retain not available")  # [MQTT-3.2.2-14]
            return None
        if topic not in core.publishable:
            if topic.startswith("$SYS") or topic.count("/") >= settings.max_topic_levels:
                # Clients may not publish to $SYS (Mosquitto and EMQX drop these), and
                # topics deeper than the limit are refused.
                self._ack_publish(
                    packet, _RC.TOPIC_NAME_INVALID if self.v5 else 0, "topic not allowed"
                )
                return None
            if len(core.publishable) >= _PUBLISHABLE_CACHE:
                core.publishable.clear()
            core.publishable.add(topic)
        props = packet.properties
        if (
            props is not NO_PROPERTIES
            and props.payload_format_indicator == 1
            and not _is_utf8(packet.payload)
        ):
            # [MQTT-3.3.2-4] allows the receiver to check; we answer 0x99.
            self._ack_publish(
                packet, _RC.PAYLOAD_FORMAT_INVALID if self.v5 else 0, "payload is not UTF-8"
            )
            return None
        hooks = core.hooks
        if decided is None and not self.superuser and _AUTHORIZE_PUBLISH in hooks.active:
            answer = self.authorize_publish(topic, qos, packet.retain)
            if answer.__class__ is not Decision:
                self._held = []
                core.loop.create_task(self._publish_when_decided(packet, answer))  # type: ignore[arg-type]
                return _HOLD
            decided = answer
        if decided is not None and decided is not Decision.ALLOW:
            self._ack_publish(
                packet, _RC.NOT_AUTHORIZED if self.v5 else 0, "publish not authorized"
            )
            return None
        session = self.session
        assert session is not None
        if qos == 2:
            awaiting = session.awaiting_rel
            if awaiting is None:
                awaiting = session.awaiting_rel = {}
            if len(awaiting) >= settings.max_awaiting_rel:
                self._ack_publish(
                    packet, _RC.QUOTA_EXCEEDED if self.v5 else 0, "too many QoS 2 awaiting PUBREL"
                )
                return None
            awaiting[packet.packet_id] = core.loop.time()
        persist = core.persist
        mark = 0
        if persist is not None and qos:
            mark = persist.pending()
            if qos == 2 and session.persistent:
                persist.put_incoming_qos2(session, packet.packet_id)
        if props is NO_PROPERTIES:
            message = Message(topic, packet.payload, qos, packet.retain, props, self.client_id)
        else:
            message = Message.from_publish_properties(
                topic, packet.payload, qos, packet.retain, props, self.client_id
            )
        cap = settings.message_expiry_max
        if cap:
            limit = time.monotonic() + cap
            if message.expires_at is None or message.expires_at > limit:
                message.expires_at = limit
        if _MESSAGE_PUBLISH in hooks.active:
            event = hooks.transform(HookPoint.MESSAGE_PUBLISH, _to_event(message))
            if event is None:
                self._ack_publish(packet, 0)
                return None
            message = _from_event(event, message)
        if message.retain:
            core.retain(message)
        matched = core.publish(message, session)
        if qos:
            code = 0
            if not matched and self.v5:
                code = _RC.NO_MATCHING_SUBSCRIBERS
            if persist is not None and persist.wait and persist.pending() != mark:
                # Durable before acknowledged: the PUBACK/PUBREC waits for the commit of
                # the writes this PUBLISH caused (docs/storage.md, durability).
                self._ack_after(persist.durable_since(mark), packet, code)
            else:
                self._ack_publish(packet, code)
        return None

    def _ack_after(self, commit: Durable, packet: Publish, code: int) -> None:
        """Acknowledge *packet* once *commit* is done, after every ack queued before it."""
        acks = self._acks
        if acks is None:
            acks = self._acks = deque()
        if not acks or acks[-1][0] is not commit:
            commit.add_done_callback(self._flush_acks)
        acks.append((commit, packet, code, ""))

    def _flush_acks(self, _: object = None) -> None:
        acks = self._acks
        if acks is None:
            return
        while acks:
            commit, packet, code, reason = acks[0]
            if commit is not None and not commit.done():
                return
            acks.popleft()
            if self.conn.state is not ConnectionState.CONNECTED:
                continue
            if commit is not None and (commit.cancelled() or commit.exception() is not None):
                if not self.v5:
                    # MQTT 3 cannot refuse a PUBLISH: no ack, and the client resends it
                    # on its next connection.
                    self.disconnect(_RC.UNSPECIFIED_ERROR, "storage failed")
                    return
                code, reason = _RC.UNSPECIFIED_ERROR, "storage failed"
            self._send_ack(packet, code, reason)
        self._acks = None

    def _ack_publish(self, packet: Publish, code: int, reason: str = "") -> None:
        if not packet.qos:
            return
        acks = self._acks
        if acks is not None:
            acks.append((None, packet, code, reason))  # behind the acks waiting [MQTT-4.6.0-2]
            return
        self._send_ack(packet, code, reason)

    def _send_ack(self, packet: Publish, code: int, reason: str = "") -> None:
        qos = packet.qos
        session = self.session
        if qos == 2 and code >= 0x80 and session is not None and session.awaiting_rel:
            session.awaiting_rel.pop(packet.packet_id, None)
        if code >= 0x80 and reason and self._problem_info:
            props = self._reason(reason)
            if props is not NO_PROPERTIES:
                ack: Packet = (PubAck if qos == 1 else PubRec)(
                    packet_id=packet.packet_id, reason_code=code, properties=props
                )
                self._write(self.conn.send(ack))
                return
        self._write(self.conn.ack_publish(packet.packet_id, qos, code))

    def _reason(self, text: str) -> Properties:
        """A Reason String property when configured (``mqtt.reason_strings``) and MQTT 5."""
        if self.v5 and self.core.settings.reason_strings and text:
            return Properties(reason_string=text[:256])
        return NO_PROPERTIES

    def authorize_publish(
        self, topic: str, qos: int, retain: bool
    ) -> Decision | Awaitable[Decision]:
        """The ACL's answer for a PUBLISH (or the will) of this client; an awaitable when
        a source must do I/O to answer."""
        if self.superuser or self.info is None:
            return Decision.ALLOW
        hooks = self.core.hooks
        if not hooks.has(HookPoint.AUTHORIZE_PUBLISH):
            return Decision.ALLOW
        event = PublishAuthEvent(client=self.info, topic=topic, qos=qos, retain=retain)
        return hooks.decide(HookPoint.AUTHORIZE_PUBLISH, event, Decision.ALLOW)

    async def _decided(self, answer: Awaitable[Decision]) -> Decision:
        """An async ACL answer, bounded by ``auth_timeout`` (a timeout denies)."""
        try:
            return await asyncio.wait_for(answer, self.core.settings.auth_timeout)
        except TimeoutError:
            log.warning("authorization for %s timed out; denying", self.client_id)
            return Decision.DENY

    async def _publish_when_decided(self, packet: Publish, answer: Awaitable[Decision]) -> None:
        decision = await self._decided(answer)
        if self._closed():
            return
        self._on_publish(packet, decision)
        self._release_held()

    # --- PUBLISH out -----------------------------------------------------------------

    def send_message(
        self,
        message: Message,
        qos: int,
        retain: bool,
        sub_ids: tuple[int, ...],
        *,
        from_queue: bool = False,
    ) -> None:
        """Deliver one message to this client now, or queue it behind Receive Maximum.

        *from_queue*: the delivery was just taken off the head of the session queue, so
        the rest of the queue must not send it to the back again.
        """
        if message.expires_at is not None and message.expired():
            self.core.stats.messages_expired += 1
            return
        if self._check_delivery and not self._may_receive(message, qos, retain):
            return  # before it takes a queue slot, a packet id or an alias
        conn = self.conn
        session = self.session
        if qos:
            assert session is not None
            if (session.queue and not from_queue) or len(session.inflight) >= self._window():
                # Never exceed the client's Receive Maximum [MQTT-3.3.4-7]: queue instead,
                # before a topic alias is spent on a delivery that does not go out now.
                self.core.enqueue(session, message, qos, retain, sub_ids)
                return
        v5 = self.v5
        announce = 0
        if v5 and conn.peer_topic_alias_maximum and self.core.settings.assign_topic_aliases:
            head, tail, announce = self._aliased(message, qos, retain, sub_ids)
        else:
            head, tail = message.wire(v5, qos, retain, sub_ids)
        limit = conn.peer_max_packet_size
        if limit is not None and len(head) + len(tail) + (2 if qos else 0) > limit:
            # Too large for this client: dropped for it alone [MQTT-3.1.2-25].
            self.core.stats.messages_dropped_too_large += 1
            self.core.stats.messages_dropped += 1
            return
        if announce:
            # The client learns an alias only from a PUBLISH it actually receives.
            if self._aliases_sent is None:
                self._aliases_sent = set()
            self._aliases_sent.add(announce)
        core = self.core
        if not qos:
            self._write(head + tail)
            core.stats.publish_sent += 1
        else:
            assert session is not None
            pid = conn.next_packet_id()
            conn.track_outgoing(pid, qos)
            entry = session.inflight[pid] = Inflight(
                message, qos, retain, sub_ids, core.loop.time()
            )
            if session.persistent:
                persist = core.persist
                assert persist is not None
                persist.put_inflight(session, pid, entry)
            self._write(head + pid.to_bytes(2, "big") + tail)
            core.stats.publish_sent += 1
        if _MESSAGE_DELIVERED in core.hooks.active:
            core.hooks.notify(HookPoint.MESSAGE_DELIVERED, _to_event(message, self.client_id))

    def _may_receive(self, message: Message, qos: int, retain: bool) -> bool:
        """AUTHORIZE_DELIVERY for one delivery (Mosquitto's read check on each message);
        a denied message is dropped for this client alone and counted."""
        info = self.info
        if info is None:
            return True
        core = self.core
        event = DeliveryAuthEvent(client=info, topic=message.topic, qos=qos, retain=retain)
        if core.hooks.decide_now(_AUTHORIZE_DELIVERY, event, Decision.ALLOW) is Decision.ALLOW:
            return True
        stats = core.stats
        stats.messages_dropped_acl += 1
        stats.messages_dropped += 1
        if _MESSAGE_DROPPED in core.hooks.active:
            dropped = dataclasses.replace(
                _to_event(message, self.client_id), reason="not_authorized"
            )
            core.hooks.notify(HookPoint.MESSAGE_DROPPED, dropped)
        return False

    def _aliased(
        self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...]
    ) -> tuple[bytes, bytes, int]:
        """The PUBLISH parts with a topic alias, and the alias to record as announced
        once the packet is really sent (0: nothing to record)."""
        found = self.conn.outgoing_alias(message.topic)
        if found is None:
            head, tail = message.wire(True, qos, retain, sub_ids)
            return head, tail, 0
        alias = found[0]
        props = message.properties_for(sub_ids, topic_alias=alias)
        sent = self._aliases_sent
        if sent is not None and alias in sent:
            # A known alias goes with an empty topic name (MQTT 5.0 §3.3.2.3.4).
            head, tail = encode_publish_parts(b"", message.payload, qos, retain, False, props)
            return head, tail, 0
        # New, or assigned to a delivery the client never got (dropped as too large): the
        # topic name goes along until a PUBLISH carrying both has been sent.
        head, tail = encode_publish_parts(
            message.topic_bytes, message.payload, qos, retain, False, props
        )
        return head, tail, alias

    def _window(self) -> int:
        """The outgoing QoS 1/2 window: the client's Receive Maximum, capped by our
        ``max_inflight`` (which also bounds MQTT 3 clients, who announce none)."""
        peer = self.conn.peer_receive_maximum
        cap = self.core.settings.max_inflight
        return cap if cap < peer else peer

    def _drain_queue(self) -> None:
        session = self.session
        if session is None:
            return
        queue = session.queue
        window = self._window()
        while queue and len(session.inflight) < window:
            item = queue.popleft()
            if item.qos and len(session.inflight) >= window:
                queue.appendleft(item)
                return
            if item.seq:
                # Off the stored queue in the same batch as its in-flight entry.
                persist = self.core.persist
                assert persist is not None
                persist.dequeue(session, item)
            self.send_message(item.message, item.qos, item.retain, item.sub_ids, from_queue=True)
            if item.seq:
                persist = self.core.persist
                assert persist is not None
                persist._carry = None  # not sent after all (expired, too large, ACL): stays due

    # --- acknowledgements ------------------------------------------------------------

    def _completed(self, packet_id: int) -> None:
        """A QoS 1/2 delivery finished (PUBACK, PUBCOMP, or a failing PUBREC)."""
        session = self.session
        if session is None:
            return
        entry = session.inflight.pop(packet_id, None)
        if entry is None:
            return
        if session.persistent:
            persist = self.core.persist
            assert persist is not None
            persist.delete_inflight(session, packet_id, entry)
        hooks = self.core.hooks
        if hooks.has(HookPoint.MESSAGE_ACKED):
            hooks.notify(HookPoint.MESSAGE_ACKED, _to_event(entry.message, self.client_id))
        if session.queue:
            self._drain_queue()

    def _on_puback(self, packet: PubAck) -> None:
        self._completed(packet.packet_id)

    def _on_pubrec(self, packet: PubRec) -> None:
        session = self.session
        if session is None:
            return
        entry = session.inflight.get(packet.packet_id)
        if entry is None:
            return
        if packet.reason_code >= 0x80:
            self._completed(packet.packet_id)
        else:
            entry.released = True  # PUBREL was queued by the protocol object
            if session.persistent:
                persist = self.core.persist
                assert persist is not None
                persist.put_inflight(session, packet.packet_id, entry)

    def _on_pubcomp(self, packet: PubComp) -> None:
        self._completed(packet.packet_id)

    def _on_pubrel(self, packet: PubRel) -> None:
        session = self.session
        if (
            session is not None
            and session.awaiting_rel is not None
            and session.awaiting_rel.pop(packet.packet_id, None) is not None
            and session.persistent
        ):
            persist = self.core.persist
            assert persist is not None
            persist.delete_incoming_qos2(session, packet.packet_id)

    # --- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------

    def _on_subscribe(
        self, packet: Subscribe, decisions: list[Decision | None] | None = None
    ) -> object:
        core = self.core
        settings = core.settings
        session = self.session
        assert session is not None
        hooks = core.hooks
        if decisions is None and not self.superuser and hooks.has(HookPoint.AUTHORIZE_SUBSCRIBE):
            # Ask the ACL first, for every valid filter; an async answer holds the packet.
            assert self.info is not None
            answers: list[Decision | Awaitable[Decision] | None] = []
            for sub in packet.subscriptions:
                if topic_filter_error(sub.topic_filter):
                    answers.append(None)
                    continue
                event = SubscribeAuthEvent(
                    client=self.info,
                    topic_filter=sub.topic_filter,
                    qos=min(sub.qos, settings.max_qos),
                )
                answers.append(hooks.decide(HookPoint.AUTHORIZE_SUBSCRIBE, event, Decision.ALLOW))
            if any(a is not None and a.__class__ is not Decision for a in answers):
                self._held = []
                core.loop.create_task(self._subscribe_when_decided(packet, answers))
                return _HOLD
            decisions = answers  # type: ignore[assignment]
        sub_id = (
            packet.properties.subscription_identifiers[0]
            if packet.properties.subscription_identifiers
            else None
        )
        if sub_id is not None and not settings.subscription_identifier_available:
            self.disconnect(_RC.SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED, "no sub ids")
            return None
        codes: list[int] = []
        retained: list[tuple[SubOptions, list[Message]]] = []
        for index, sub in enumerate(packet.subscriptions):
            decision = decisions[index] if decisions is not None else None
            code = self._subscribe_one(session, sub, sub_id, retained, decision)
            codes.append(code if self.v5 else v3_suback_code(code))
        if self.version == 3 and 0x80 in codes:
            # MQTT 3.1's SUBACK has no failure code (the encoder refuses 0x80): the only
            # honest answer to a refused subscription is to close the connection.
            log.info("closing %s: subscription refused, MQTT 3.1 cannot say so", self.client_id)
            self._close("subscription refused", _RC.UNSPECIFIED_ERROR, publish_will=True)
            return None
        self._write(self.conn.send(SubAck(packet_id=packet.packet_id, reason_codes=tuple(codes))))
        # Retained messages follow the SUBACK, with RETAIN set [MQTT-3.3.1-9].
        for opts, messages in retained:
            sub_ids = () if opts.subscription_id is None else (opts.subscription_id,)
            for message in messages:
                core.deliver(session, message, min(opts.qos, message.qos), True, sub_ids)
        return None

    def _subscribe_one(
        self,
        session: Session,
        sub: Any,
        sub_id: int | None,
        retained: list[tuple[SubOptions, list[Message]]],
        decision: Decision | None = None,
    ) -> int:
        core = self.core
        settings = core.settings
        topic_filter: str = sub.topic_filter
        requested: int = sub.qos
        if topic_filter_error(topic_filter):
            return _RC.TOPIC_FILTER_INVALID
        shared = parse_shared(topic_filter)
        bare = shared.filter if shared else topic_filter
        if shared and not settings.shared_subscription_available:
            return _RC.SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
        if ("+" in bare or "#" in bare) and not settings.wildcard_subscription_available:
            return _RC.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED
        if bare.count("/") >= settings.max_topic_levels:
            return _RC.TOPIC_FILTER_INVALID
        existed = topic_filter in session.subscriptions
        limit = settings.max_subscriptions_per_client
        if not existed and limit and len(session.subscriptions) >= limit:
            return _RC.QUOTA_EXCEEDED
        granted = min(requested, settings.max_qos)
        hooks = core.hooks
        if decision is not None and decision is not Decision.ALLOW:
            return _RC.NOT_AUTHORIZED
        opts = SubOptions(
            topic_filter=topic_filter,
            qos=granted,
            no_local=sub.no_local,
            retain_as_published=sub.retain_as_published,
            retain_handling=sub.retain_handling,
            subscription_id=sub_id,
            share_group=shared.group if shared else None,
        )
        session.subscriptions[topic_filter] = opts
        core.tree.subscribe(topic_filter, session, opts)
        if session.persistent:
            persist = core.persist
            assert persist is not None
            persist.put_subscription(session, opts)
        # Retained messages are not sent to shared subscriptions (MQTT 5.0 §4.8.2);
        # Retain Handling 1 sends them only for a new subscription, 2 never.
        handling = int(sub.retain_handling)
        if shared is None and (handling == 0 or (handling == 1 and not existed)):
            messages = core.retained_for(topic_filter)
            if messages:
                retained.append((opts, messages))
        if hooks.has(HookPoint.SESSION_SUBSCRIBED) and self.info is not None:
            hooks.notify(
                HookPoint.SESSION_SUBSCRIBED,
                SubscriptionEvent(client=self.info, topic_filter=topic_filter, qos=granted),
            )
        return granted

    async def _subscribe_when_decided(
        self, packet: Subscribe, answers: list[Decision | Awaitable[Decision] | None]
    ) -> None:
        decisions: list[Decision | None] = []
        for answer in answers:
            if answer is None or answer.__class__ is Decision:
                decisions.append(answer)
            else:
                decisions.append(await self._decided(answer))  # type: ignore[arg-type]
        if self._closed():
            return
        self._on_subscribe(packet, decisions)
        self._release_held()

    def _on_unsubscribe(self, packet: Unsubscribe) -> None:
        core = self.core
        session = self.session
        assert session is not None
        codes = []
        for topic_filter in packet.topic_filters:
            if session.subscriptions.pop(topic_filter, None) is not None:
                core.tree.unsubscribe(topic_filter, session)
                codes.append(0)
                if session.persistent:
                    persist = core.persist
                    assert persist is not None
                    persist.delete_subscription(session, topic_filter)
                if core.hooks.has(HookPoint.SESSION_UNSUBSCRIBED) and self.info is not None:
                    core.hooks.notify(
                        HookPoint.SESSION_UNSUBSCRIBED,
                        SubscriptionEvent(client=self.info, topic_filter=topic_filter, qos=0),
                    )
            else:
                codes.append(_RC.NO_SUBSCRIPTION_EXISTED)
        ack = UnsubAck(packet_id=packet.packet_id, reason_codes=tuple(codes) if self.v5 else ())
        self._write(self.conn.send(ack))

    # --- DISCONNECT / AUTH / PING ----------------------------------------------------

    def _on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        code = packet.reason_code
        if session is not None and self.v5:
            new_expiry = packet.properties.session_expiry_interval
            if new_expiry is not None:
                if session.expiry_interval == 0 and new_expiry != 0:
                    # [MQTT-3.14.2-2]: cannot turn a 0 expiry into a session that lives on.
                    self.conn.state = ConnectionState.CONNECTED
                    self.disconnect(_RC.PROTOCOL_ERROR, "session expiry changed from 0")
                    return
                session.expiry_interval = min(new_expiry, self.core.settings.max_session_expiry)
        # Normal disconnection discards the will [MQTT-3.14.4-3]; 0x04 asks for it.
        self._close(
            "client disconnected",
            code,
            publish_will=code == _RC.DISCONNECT_WITH_WILL_MESSAGE,
        )

    def _on_auth(self, packet: Auth) -> None:
        state = self._auth
        if state is None:
            # No enhanced authentication was started at CONNECT: nothing to continue.
            self.disconnect(_RC.PROTOCOL_ERROR, "unexpected AUTH")
            return
        if packet.properties.authentication_method != state.method:
            # The method must stay the same throughout [MQTT-4.12.0-5].
            self.disconnect(_RC.PROTOCOL_ERROR, "AUTH with another authentication method")
            return
        code = packet.reason_code
        if code == _RC.CONTINUE_AUTHENTICATION and state.waiting:
            self.core.loop.create_task(self._enhanced_step(packet.properties.authentication_data))
        elif code == _RC.RE_AUTHENTICATE and self.ready and not state.waiting:
            state.step = 0
            self.core.loop.create_task(self._enhanced_step(packet.properties.authentication_data))
        else:
            self.disconnect(_RC.PROTOCOL_ERROR, "AUTH out of sequence")

    def _on_pingreq(self, packet: PingReq) -> None:
        pass  # PINGRESP is queued by the protocol object; receipt already moved keepalive


_HOLD = object()
# Most topic names remembered as allowed for PUBLISH (``BrokerCore.publishable``).
_PUBLISHABLE_CACHE = 4096
# Hook points checked for every message (``point in hooks.active``).
_AUTHORIZE_PUBLISH = HookPoint.AUTHORIZE_PUBLISH
_MESSAGE_PUBLISH = HookPoint.MESSAGE_PUBLISH
_MESSAGE_DELIVERED = HookPoint.MESSAGE_DELIVERED
_MESSAGE_DROPPED = HookPoint.MESSAGE_DROPPED
_AUTHORIZE_DELIVERY = HookPoint.AUTHORIZE_DELIVERY


class _CredentialsExpiry:
    """The scheduler entry that ends a connection when its credentials expire. Separate
    from the handler (which is its own keepalive entry) and dropping its reference to the
    handler when cancelled, so a closed connection is not kept alive in the heap until a
    far-off ``exp``."""

    __slots__ = ("handler",)

    def __init__(self, handler: ClientHandler) -> None:
        self.handler: ClientHandler | None = handler

    @property
    def cancelled(self) -> bool:
        return self.handler is None

    def cancel(self) -> None:
        self.handler = None

    def fire(self, when: float) -> None:
        handler, self.handler = self.handler, None
        if handler is not None:
            handler._credentials_expired()


class _EnhancedAuth:
    """State of an MQTT 5 enhanced authentication exchange on one connection."""

    __slots__ = (
        "assigned",
        "client_id",
        "connect",
        "method",
        "server_keepalive",
        "step",
        "waiting",
    )

    def __init__(
        self,
        connect: Connect,
        client_id: str,
        assigned: str | None,
        server_keepalive: int | None,
        method: str,
    ) -> None:
        self.connect = connect
        self.client_id = client_id
        self.assigned = assigned
        self.server_keepalive = server_keepalive
        self.method = method
        self.step = 0
        self.waiting = False  # True while we wait for the client's AUTH 0x18


def _pubrel_bytes(packet_id: int) -> bytes:
    return bytes((0x62, 2, packet_id >> 8, packet_id & 0xFF))


def _count_packets(data: bytes) -> int:
    """How many whole packets *data* holds (automatic replies: a few short packets)."""
    count = i = 0
    end = len(data)
    while i < end:
        i += 1
        length = shift = 0
        while i < end:
            b = data[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        i += length
        count += 1
    return count


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _to_event(message: Message, receiver: str | None = None) -> MessageEvent:
    return MessageEvent(
        client_id=message.sender,
        topic=message.topic,
        payload=message.payload,
        qos=message.qos,
        retain=message.retain,
        properties=message.properties,
        receiver=receiver,
    )


def _from_event(event: MessageEvent, original: Message) -> Message:
    if (
        event.topic == original.topic
        and event.payload is original.payload
        and event.qos == original.qos
        and event.retain == original.retain
        and event.properties is original.properties
    ):
        return original
    return Message(
        event.topic,
        event.payload,
        event.qos,
        event.retain,
        event.properties,
        original.sender,
        original.expires_at,
    )


_DISPATCH: dict[type[Packet], Callable[[ClientHandler, Any], object]] = {
    Connect: ClientHandler._on_connect,
    Publish: ClientHandler._on_publish,
    PubAck: ClientHandler._on_puback,
    PubRec: ClientHandler._on_pubrec,
    PubRel: ClientHandler._on_pubrel,
    PubComp: ClientHandler._on_pubcomp,
    Subscribe: ClientHandler._on_subscribe,
    Unsubscribe: ClientHandler._on_unsubscribe,
    PingReq: ClientHandler._on_pingreq,
    Disconnect: ClientHandler._on_disconnect,
    Auth: ClientHandler._on_auth,
}
