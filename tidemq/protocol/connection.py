"""Per-connection protocol state for both roles: ``MQTTConnection(role)``.

Theory of operation (after h11 ``_connection.py`` / ``_state.py`` and h2 ``connection.py``):

* ``receive_data(data)`` feeds bytes and returns the packets they complete, after checking
  that each one is legal here: the connection machine (CONNECT first and exactly once,
  packet direction), the QoS 1/2 machines, Receive Maximum and topic aliases.
* ``send(packet) -> bytes`` checks that *we* may send the packet now, advances the state and
  returns the bytes to write. Breaking a rule on our side raises ``LocalProtocolError`` and
  changes nothing.
* Automatic replies (PINGRESP, PUBREL after PUBREC, PUBCOMP after PUBREL, a repeated PUBREC
  for a re-sent QoS 2 PUBLISH) are queued; the caller drains them with ``data_to_send()``.
* When the peer breaks the protocol, the connection queues what the specification says to
  send (a v5 DISCONNECT or CONNACK with the reason code, nothing for MQTT 3), moves to
  CLOSED and raises ``RemoteProtocolError`` with ``reply`` set. The caller writes
  ``data_to_send()`` and closes.
* No clocks: ``receive_data(data, now)`` records the time it is given, and
  ``keepalive_deadline`` is a number the caller's single scheduler compares against.

Rule 1 (from h11): everything that decides legality lives in the tables below or in this
class, never in the broker or the client. Rule 2: the tables are role-aware data, so the
state-machine property test can enumerate every (state, input) pair.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Final

from .codec import PacketReader, encode
from .enums import PacketType, ProtocolVersion, Role
from .errors import (
    LocalProtocolError,
    ProtocolViolation,
    ReceiveMaximumExceeded,
    RemoteProtocolError,
    TopicAliasInvalid,
)
from .packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
)
from .properties import NO_PROPERTIES, Properties
from .reason_codes import ReasonCode, reason_code_allowed, v3_connack_code

__all__ = ["ConnectionState", "MQTTConnection", "OutgoingState"]

# Receive Maximum when none is given: 65,535 [MQTT-3.1.2-?] (MQTT 5.0 §3.1.2.11.3).
DEFAULT_RECEIVE_MAXIMUM: Final = 65_535


class ConnectionState(Enum):
    # Members are singletons: identity hashing is exact and much cheaper than Enum's
    # name-based __hash__ on the per-packet table lookups.
    __hash__ = object.__hash__

    IDLE = "IDLE"  # client: nothing sent yet
    AWAIT_CONNECT = "AWAIT_CONNECT"  # server: nothing received yet
    CONNECTING = "CONNECTING"  # CONNECT sent (client) / received (server), no CONNACK yet
    CONNECTED = "CONNECTED"
    CLOSED = "CLOSED"


class OutgoingState(Enum):
    """The machine of one packet id we sent a QoS 1/2 PUBLISH with."""

    __hash__ = object.__hash__

    AWAIT_PUBACK = 1
    AWAIT_PUBREC = 2
    AWAIT_PUBCOMP = 3


_T = PacketType
_S = ConnectionState
CLIENT_TO_SERVER: Final = frozenset(
    {
        _T.CONNECT,
        _T.PUBLISH,
        _T.PUBACK,
        _T.PUBREC,
        _T.PUBREL,
        _T.PUBCOMP,
        _T.SUBSCRIBE,
        _T.UNSUBSCRIBE,
        _T.PINGREQ,
        _T.DISCONNECT,
        _T.AUTH,
    }
)
SERVER_TO_CLIENT: Final = frozenset(
    {
        _T.CONNACK,
        _T.PUBLISH,
        _T.PUBACK,
        _T.PUBREC,
        _T.PUBREL,
        _T.PUBCOMP,
        _T.SUBACK,
        _T.UNSUBACK,
        _T.PINGRESP,
        _T.DISCONNECT,
        _T.AUTH,
    }
)
_AFTER_CONNECT_C2S = CLIENT_TO_SERVER - {_T.CONNECT}
_AFTER_CONNACK_S2C = SERVER_TO_CLIENT - {_T.CONNACK}

# What each role may RECEIVE in each state. Anything else is a Protocol Error.
# A client may send packets right after CONNECT without waiting for CONNACK (MQTT 3.1.1
# §3.1.4), so a server in CONNECTING accepts them; a second CONNECT is a Protocol Error
# [MQTT-3.1.0-2]; the first packet must be CONNECT [MQTT-3.1.0-1]; the first packet from
# the server must be CONNACK (or AUTH) [MQTT-3.2.0-1].
CAN_RECEIVE: Final[dict[tuple[Role, ConnectionState], frozenset[PacketType]]] = {
    (Role.SERVER, _S.AWAIT_CONNECT): frozenset({_T.CONNECT}),
    (Role.SERVER, _S.CONNECTING): _AFTER_CONNECT_C2S,
    (Role.SERVER, _S.CONNECTED): _AFTER_CONNECT_C2S,
    (Role.SERVER, _S.CLOSED): frozenset(),
    (Role.CLIENT, _S.IDLE): frozenset(),
    (Role.CLIENT, _S.CONNECTING): frozenset({_T.CONNACK, _T.AUTH, _T.DISCONNECT}),
    (Role.CLIENT, _S.CONNECTED): _AFTER_CONNACK_S2C,
    (Role.CLIENT, _S.CLOSED): frozenset(),
}
# What each role may SEND in each state.
CAN_SEND: Final[dict[tuple[Role, ConnectionState], frozenset[PacketType]]] = {
    (Role.SERVER, _S.AWAIT_CONNECT): frozenset(),
    (Role.SERVER, _S.CONNECTING): frozenset({_T.CONNACK, _T.AUTH, _T.DISCONNECT}),
    (Role.SERVER, _S.CONNECTED): _AFTER_CONNACK_S2C,
    (Role.SERVER, _S.CLOSED): frozenset(),
    (Role.CLIENT, _S.IDLE): frozenset({_T.CONNECT}),
    (Role.CLIENT, _S.CONNECTING): _AFTER_CONNECT_C2S,
    (Role.CLIENT, _S.CONNECTED): _AFTER_CONNECT_C2S,
    (Role.CLIENT, _S.CLOSED): frozenset(),
}
# Event-triggered transitions: (role, state, packet type) → new state, for packets sent or
# received alike. CONNACK with a failing reason code goes to CLOSED instead of CONNECTED.
TRANSITIONS: Final[dict[tuple[Role, ConnectionState, PacketType], ConnectionState]] = {
    (Role.SERVER, _S.AWAIT_CONNECT, _T.CONNECT): _S.CONNECTING,
    (Role.SERVER, _S.CONNECTING, _T.CONNACK): _S.CONNECTED,
    (Role.CLIENT, _S.IDLE, _T.CONNECT): _S.CONNECTING,
    (Role.CLIENT, _S.CONNECTING, _T.CONNACK): _S.CONNECTED,
    **{
        (role, state, _T.DISCONNECT): _S.CLOSED
        for role in Role
        for state in (_S.CONNECTING, _S.CONNECTED)
    },
}


_NO_REQUESTS: Final[dict[int, PacketType]] = {}  # read-only stand-in, never written


class MQTTConnection:
    """The protocol state of one MQTT connection, for either role. Sans-IO.

    Args:
        role: ``Role.CLIENT`` or ``Role.SERVER``.
        max_packet_size: the largest packet we accept (enforced before buffering).
        receive_maximum: how many incoming QoS 1/2 PUBLISHes may be unacknowledged at once.
        topic_alias_maximum: the highest topic alias the peer may use towards us.

    Attributes:
        version: the negotiated protocol level (from CONNECT), None before it.
        peer_receive_maximum, peer_topic_alias_maximum, peer_max_packet_size: the peer's
            limits, learnt from CONNECT (server role) or CONNACK (client role).
    """

    __slots__ = (
        "_held",
        "_in_aliases",
        "_in_qos1",
        "_in_qos2",
        "_last_packet_id",
        "_out_aliases",
        "_outgoing",
        "_pending",
        "_reader",
        "_requests",
        "keepalive",
        "last_received",
        "last_sent",
        "max_packet_size",
        "peer_max_packet_size",
        "peer_receive_maximum",
        "peer_topic_alias_maximum",
        "reason_strings",
        "receive_maximum",
        "role",
        "state",
        "topic_alias_maximum",
        "version",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_packet_size: int | None = None,
        receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
        topic_alias_maximum: int = 0,
        version: int | None = None,
        reason_strings: bool = False,
    ) -> None:
        self.role = role
        # Put a Reason String (the error's message) on the v5 CONNACK/DISCONNECT sent for a
        # protocol error; allowed whatever Request Problem Information says [MQTT-3.1.2-29].
        self.reason_strings = reason_strings
        self.state = _S.AWAIT_CONNECT if role is Role.SERVER else _S.IDLE
        self.version: int | None = version
        self.max_packet_size = max_packet_size
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self.peer_receive_maximum = DEFAULT_RECEIVE_MAXIMUM
        self.peer_topic_alias_maximum = 0
        self.peer_max_packet_size: int | None = None
        self.keepalive = 0
        self.last_received = 0.0
        self.last_sent = 0.0
        self._reader = PacketReader(version if role is Role.CLIENT else None, max_packet_size)
        self._pending: list[bytes] = []
        # Automatic replies to packets pipelined before our CONNACK wait for it, because
        # the CONNACK must be the first packet the server sends [MQTT-3.2.0-1].
        self._held: list[bytes] | None = None
        self._outgoing: dict[int, OutgoingState] = {}
        # Tables most connections never write start as None and are created on first use
        # (an empty dict is 64 bytes; memory per idle connection is a benchmark target).
        self._requests: dict[int, PacketType] | None = None  # SUBSCRIBE/UNSUBSCRIBE in flight
        self._in_qos1: dict[int, None] = {}  # a dict: 64 bytes empty, a set 216
        self._in_qos2: dict[int, bool] = {}  # packet id → PUBREC sent
        self._in_aliases: dict[int, str] | None = None
        self._out_aliases: dict[str, int] | None = None
        self._last_packet_id = 0

    # --- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Packet]:
        """Feed received bytes; return the complete, legal packets they finish.

        Args:
            data: bytes from the transport, any length.
            now: the caller's clock, recorded as ``last_received`` for keepalive.

        Raises:
            RemoteProtocolError: the peer broke the protocol. The reply (if any) is queued
                in ``data_to_send()`` and ``state`` is CLOSED. Any other exception is a bug.
        """
        if self.state is _S.CLOSED:
            return []
        self.last_received = now
        reader = self._reader
        reader.feed(data)
        out: list[Packet] = []
        try:
            while True:
                # A batch ends with any CONNECT, CONNACK or DISCONNECT it holds, so the state
                # change is made before what follows them is read.
                batch = reader.read_batch()
                if not batch:
                    return out
                for packet in batch:
                    if type(packet) is Publish and self.state is _S.CONNECTED:
                        # The common case inline: QoS 0 without properties.
                        if packet.qos or packet.properties is not NO_PROPERTIES:
                            publish = self._on_publish(packet)
                            if publish is not None:
                                out.append(publish)
                        else:
                            out.append(packet)
                        continue
                    handled = self._on_packet(packet)
                    if handled is not None:
                        out.append(handled)
                    # DISCONNECT or a failing CONNACK ends the conversation: whatever the
                    # same chunk carries after it is ignored, as in a later call. (mypy
                    # still holds the narrowing from the check at the top; _on_packet
                    # changed the state.)
                    if self.state is _S.CLOSED:  # type: ignore[comparison-overlap]
                        return out
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def _fail(self, exc: RemoteProtocolError) -> None:
        exc.reply = self._error_reply(exc.reason_code, str(exc) if self.reason_strings else None)
        if exc.reply is not None:
            self._pending.append(encode(exc.reply, self._reply_version()))
        self.state = _S.CLOSED

    def _reply_version(self) -> int:
        return self.version or self._reader.version or 4

    def _error_reply(self, code: int, reason: str | None = None) -> Packet | None:
        """What the specification says to send before closing for reason *code*."""
        version = self.version or self._reader.version
        props = NO_PROPERTIES if reason is None else Properties(reason_string=reason[:256])
        if self.role is Role.SERVER and self.state in (_S.AWAIT_CONNECT, _S.CONNECTING):
            if code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION and version not in (3, 4, 5):
                # Unknown level: answer in the 3.1.1 format, CONNACK 0x01 [MQTT-3.1.2-2].
                self.version = 4
                return ConnAck(reason_code=code)
            if version == 5:
                if not reason_code_allowed(code, PacketType.CONNACK):
                    code = ReasonCode.PROTOCOL_ERROR
                return ConnAck(reason_code=code, properties=props)
            if v3_connack_code(code) is not None and code:
                return ConnAck(reason_code=code)
            return None
        if version == 5 and self.state is not _S.IDLE:
            if not reason_code_allowed(code, PacketType.DISCONNECT):
                code = ReasonCode.PROTOCOL_ERROR
            return Disconnect(reason_code=code, properties=props)
        return None  # MQTT 3: close without a word

    def _on_packet(self, packet: Packet) -> Packet | None:
        ptype = packet.type
        role = self.role
        state = self.state
        if ptype not in CAN_RECEIVE[(role, state)]:
            if ptype is _T.CONNECT:
                raise ProtocolViolation("a second CONNECT", rule="[MQTT-3.1.0-2]")
            if role is Role.SERVER and state is _S.AWAIT_CONNECT:
                raise ProtocolViolation("the first packet must be CONNECT", rule="[MQTT-3.1.0-1]")
            if role is Role.CLIENT and state is _S.CONNECTING:
                raise ProtocolViolation(
                    "the first packet from the server must be CONNACK", rule="[MQTT-3.2.0-1]"
                )
            raise ProtocolViolation(f"{ptype.name} is not allowed from the {_peer(role)} here")
        handler = _RECEIVE_HANDLERS.get(type(packet))
        result = handler(self, packet) if handler is not None else packet
        new_state = TRANSITIONS.get((role, state, ptype))
        if new_state is not None:
            if ptype is _T.CONNACK and packet.reason_code >= 0x80:  # type: ignore[attr-defined]
                new_state = _S.CLOSED
            self.state = new_state
        return result

    def _on_connect(self, packet: Connect) -> Packet:
        self.version = int(packet.protocol_version)
        self.keepalive = packet.keepalive
        props = packet.properties
        if props.receive_maximum is not None:
            self.peer_receive_maximum = props.receive_maximum
        if props.topic_alias_maximum is not None:
            self.peer_topic_alias_maximum = props.topic_alias_maximum
        self.peer_max_packet_size = props.maximum_packet_size
        return packet

    def _on_connack(self, packet: ConnAck) -> Packet:
        props = packet.properties
        if props.receive_maximum is not None:
            self.peer_receive_maximum = props.receive_maximum
        if props.topic_alias_maximum is not None:
            self.peer_topic_alias_maximum = props.topic_alias_maximum
        self.peer_max_packet_size = props.maximum_packet_size
        if props.server_keep_alive is not None:
            self.keepalive = props.server_keep_alive  # [MQTT-3.2.2-21]
        return packet

    def _on_publish(self, packet: Publish) -> Publish | None:
        props = packet.properties
        if props is not NO_PROPERTIES and props.topic_alias is not None:
            packet = self._resolve_alias(packet, props.topic_alias)
        qos = packet.qos
        if not qos:
            return packet
        pid = packet.packet_id
        if qos == 1:
            if pid not in self._in_qos1:
                self._check_receive_maximum()
                self._in_qos1[pid] = None
            return packet
        in_qos2 = self._in_qos2
        if pid in in_qos2:
            # A re-sent QoS 2 PUBLISH we already hold: deliver it only once (MQTT 5.0
            # §4.3.3, method B); repeat our PUBREC if it was already sent.
            if in_qos2[pid]:
                self._queue(encode(PubRec(packet_id=pid), self._reply_version()))
            return None
        self._check_receive_maximum()
        in_qos2[pid] = False
        return packet

    def _check_receive_maximum(self) -> None:
        if len(self._in_qos1) + len(self._in_qos2) >= self.receive_maximum:
            raise ReceiveMaximumExceeded(
                f"more than {self.receive_maximum} unacknowledged QoS 1/2 PUBLISH",
                rule="[MQTT-3.3.4-9]",
            )

    def _resolve_alias(self, packet: Publish, alias: int) -> Publish:
        if alias > self.topic_alias_maximum:
            raise TopicAliasInvalid(
                f"topic alias {alias} above the maximum {self.topic_alias_maximum}",
                rule="[MQTT-3.3.2-9]" if self.role is Role.SERVER else "[MQTT-3.3.2-10]",
            )
        if packet.topic:
            if self._in_aliases is None:
                self._in_aliases = {}
            self._in_aliases[alias] = packet.topic
            return packet
        topic = None if self._in_aliases is None else self._in_aliases.get(alias)
        if topic is None:
            raise ProtocolViolation(f"unknown topic alias {alias}", rule="[MQTT-3.3.2-8]")
        return Publish._trusted(
            topic,
            packet.payload,
            packet.qos,
            packet.retain,
            packet.dup,
            packet.packet_id,
            packet.properties,
        )

    def _on_puback(self, packet: PubAck) -> Packet:
        if self._outgoing.get(packet.packet_id) is OutgoingState.AWAIT_PUBACK:
            del self._outgoing[packet.packet_id]
        return packet

    def _on_pubrec(self, packet: PubRec) -> Packet:
        pid = packet.packet_id
        state = self._outgoing.get(pid)
        if state is OutgoingState.AWAIT_PUBREC:
            if packet.reason_code >= 0x80:
                del self._outgoing[pid]  # the exchange ends here (MQTT 5.0 §4.3.3)
            else:
                self._outgoing[pid] = OutgoingState.AWAIT_PUBCOMP
                self._queue(encode(PubRel(packet_id=pid), self._reply_version()))
        elif state is OutgoingState.AWAIT_PUBCOMP:
            self._queue(encode(PubRel(packet_id=pid), self._reply_version()))
        elif packet.reason_code < 0x80:
            code = ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if self.version == 5 else 0
            self._queue(encode(PubRel(packet_id=pid, reason_code=code), self._reply_version()))
        return packet

    def _on_pubrel(self, packet: PubRel) -> Packet:
        pid = packet.packet_id
        known = self._in_qos2.pop(pid, None) is not None
        code = 0 if known or self.version != 5 else ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
        # [MQTT-4.3.3-11]: answer PUBREL with PUBCOMP, even for an id we no longer hold.
        self._queue(encode(PubComp(packet_id=pid, reason_code=code), self._reply_version()))
        return packet

    def _on_pubcomp(self, packet: PubComp) -> Packet:
        if self._outgoing.get(packet.packet_id) is OutgoingState.AWAIT_PUBCOMP:
            del self._outgoing[packet.packet_id]
        return packet

    def _on_request_ack(self, packet: SubAck | UnsubAck) -> Packet:
        if self._requests is not None:
            self._requests.pop(packet.packet_id, None)
        return packet

    def _on_pingreq(self, packet: Packet) -> Packet:
        self._queue(b"\xd0\x00")  # PINGRESP [MQTT-3.12.4-1]
        return packet

    def _queue(self, data: bytes) -> None:
        if self.role is Role.SERVER and self.state is _S.CONNECTING:
            if self._held is None:
                self._held = []
            self._held.append(data)
        else:
            self._pending.append(data)

    # --- sending ---------------------------------------------------------------------

    def send(self, packet: Packet, now: float = 0.0) -> bytes:
        """Check that we may send *packet* now, advance the state, return its bytes.

        Raises:
            LocalProtocolError: sending it now would break the protocol; nothing changed.
        """
        ptype = packet.type
        role, state = self.role, self.state
        if ptype not in CAN_SEND[(role, state)]:
            raise LocalProtocolError(f"cannot send {ptype.name} in state {state.name}")
        version = self.version
        if isinstance(packet, Connect):
            # Adopted by _sent_connect only once the packet is known to be sendable.
            version = int(packet.protocol_version)
        assert version is not None
        if ptype is _T.DISCONNECT and role is Role.SERVER and version != 5:
            raise LocalProtocolError("an MQTT 3 server closes without DISCONNECT")
        data = encode(packet, version)
        limit = self.peer_max_packet_size
        if limit is not None and len(data) > limit:
            raise LocalProtocolError(
                f"{ptype.name} of {len(data)} bytes exceeds the peer's maximum of {limit}",
                rule="[MQTT-3.1.2-24]",
            )
        before = _SEND_HOOKS.get(type(packet))
        if before is not None:
            before(self, packet)
        new_state = TRANSITIONS.get((role, state, ptype))
        if new_state is not None:
            if ptype is _T.CONNACK and packet.reason_code >= 0x80:  # type: ignore[attr-defined]
                new_state = _S.CLOSED
            self.state = new_state
        self.last_sent = now
        return data

    def _sent_connect(self, packet: Connect) -> None:
        version = self.version = int(packet.protocol_version)
        self._reader.version = version
        self.keepalive = packet.keepalive
        props = packet.properties
        if props.receive_maximum is not None:
            self.receive_maximum = props.receive_maximum
        if props.topic_alias_maximum is not None:
            self.topic_alias_maximum = props.topic_alias_maximum
        if props.maximum_packet_size is not None:
            self._reader.max_packet_size = props.maximum_packet_size

    def _sent_connack(self, packet: ConnAck) -> None:
        if self._held is not None:
            if packet.reason_code < 0x80:
                self._pending.extend(self._held)
            self._held = None
        props = packet.properties
        if props.receive_maximum is not None:
            self.receive_maximum = props.receive_maximum
        if props.topic_alias_maximum is not None:
            self.topic_alias_maximum = props.topic_alias_maximum
        if props.maximum_packet_size is not None:
            self._reader.max_packet_size = props.maximum_packet_size
        if props.server_keep_alive is not None:
            self.keepalive = props.server_keep_alive

    def _sent_publish(self, packet: Publish) -> None:
        if packet.qos:
            pid = packet.packet_id
            current = self._outgoing.get(pid)
            requests = self._requests
            if (current is not None and not packet.dup) or (requests and pid in requests):
                raise LocalProtocolError(f"packet id {pid} is in use", rule="[MQTT-2.2.1-3]")
            if current is None:
                self.track_outgoing(pid, packet.qos)

    def _sent_ack(self, packet: PubAck | PubRec | PubComp) -> None:
        pid = packet.packet_id
        if isinstance(packet, PubAck):
            self._in_qos1.pop(pid, None)
        elif isinstance(packet, PubRec) and pid in self._in_qos2:
            if packet.reason_code >= 0x80:
                del self._in_qos2[pid]  # the exchange ends with a failing PUBREC
            else:
                self._in_qos2[pid] = True

    def ack_publish(self, packet_id: int, qos: int, reason_code: int = 0) -> bytes:
        """The PUBACK (QoS 1) or PUBREC (QoS 2) for a received PUBLISH, as bytes.

        Equivalent to ``send(PubAck(...))`` / ``send(PubRec(...))`` without building a
        packet object: the broker acknowledges every inbound QoS 1/2 message this way.

        Raises:
            LocalProtocolError: not connected, or a reason code this version cannot carry.
        """
        if self.state is not _S.CONNECTED:
            raise LocalProtocolError(f"cannot acknowledge in state {self.state.name}")
        if reason_code:
            ptype = _T.PUBACK if qos == 1 else _T.PUBREC
            if self.version != 5 or not reason_code_allowed(reason_code, ptype):
                raise LocalProtocolError(f"reason code 0x{reason_code:02x} not allowed here")
        if qos == 1:
            self._in_qos1.pop(packet_id, None)
            first = 0x40
        elif qos == 2:
            if packet_id in self._in_qos2:
                if reason_code >= 0x80:
                    del self._in_qos2[packet_id]  # a failing PUBREC ends the exchange
                else:
                    self._in_qos2[packet_id] = True
            first = 0x50
        else:
            raise LocalProtocolError("QoS 0 messages are not acknowledged")
        if reason_code:
            return bytes((first, 3, packet_id >> 8, packet_id & 0xFF, reason_code))
        return bytes((first, 2, packet_id >> 8, packet_id & 0xFF))

    def _sent_request(self, packet: Subscribe | Unsubscribe) -> None:
        if self._requests is None:
            self._requests = {}
        if packet.packet_id in self._requests or packet.packet_id in self._outgoing:
            raise LocalProtocolError(f"packet id {packet.packet_id} is in use")
        self._requests[packet.packet_id] = packet.type

    def data_to_send(self) -> bytes:
        """Bytes of automatic replies queued since the last call (maybe ``b""``)."""
        if not self._pending:
            return b""
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    # --- packet ids, flow control, aliases, keepalive --------------------------------

    def next_packet_id(self) -> int:
        """Allocate a packet id not in use by an outgoing exchange or request.

        Raises:
            LocalProtocolError: all 65,535 ids are in use.
        """
        outgoing, requests = self._outgoing, self._requests or _NO_REQUESTS
        pid = self._last_packet_id
        for _ in range(65_535):
            pid = pid + 1 if pid < 65_535 else 1
            if pid not in outgoing and pid not in requests:
                self._last_packet_id = pid
                return pid
        raise LocalProtocolError("every packet id is in use")

    @property
    def send_quota(self) -> int:
        """How many more QoS 1/2 PUBLISHes the peer's Receive Maximum allows now."""
        return self.peer_receive_maximum - len(self._outgoing)

    def track_outgoing(self, packet_id: int, qos: int) -> None:
        """Start the QoS machine for a PUBLISH we send ourselves (fan-out path, restore).

        Raises:
            LocalProtocolError: the peer's Receive Maximum is reached [MQTT-3.3.4-7].
        """
        if len(self._outgoing) >= self.peer_receive_maximum:
            raise LocalProtocolError("the peer's Receive Maximum is reached", rule="[MQTT-3.3.4-7]")
        self._outgoing[packet_id] = (
            OutgoingState.AWAIT_PUBACK if qos == 1 else OutgoingState.AWAIT_PUBREC
        )

    def restore_outgoing(self, packet_id: int, state: OutgoingState) -> None:
        """Re-create an exchange carried over from an earlier connection of the session."""
        self._outgoing[packet_id] = state

    def restore_incoming_qos2(self, packet_id: int) -> None:
        """Re-create an incoming QoS 2 exchange awaiting PUBREL (exactly once on resume)."""
        self._in_qos2[packet_id] = True

    def forget_incoming_qos2(self, packet_id: int) -> None:
        """Drop an incoming QoS 2 exchange whose PUBREL never came (the owner's timeout)."""
        self._in_qos2.pop(packet_id, None)

    def outgoing(self) -> dict[int, OutgoingState]:
        """A copy of the outgoing QoS exchanges in flight."""
        return dict(self._outgoing)

    def incoming_qos2(self) -> list[int]:
        """Packet ids of incoming QoS 2 exchanges not yet released by PUBREL."""
        return list(self._in_qos2)

    def outgoing_alias(self, topic: str) -> tuple[int, bool] | None:
        """Alias to use for *topic* towards the peer, and whether it is newly assigned.

        New aliases are handed out while the peer's Topic Alias Maximum allows; after that
        known topics keep theirs and others go without (None).
        """
        aliases = self._out_aliases
        if aliases is None:
            aliases = self._out_aliases = {}
        alias = aliases.get(topic)
        if alias is not None:
            return alias, False
        if len(aliases) >= self.peer_topic_alias_maximum:
            return None
        alias = len(aliases) + 1
        aliases[topic] = alias
        return alias, True

    @property
    def keepalive_deadline(self) -> float | None:
        """When the peer is late: 1.5 × keepalive after the last receipt [MQTT-3.1.2-22]."""
        if not self.keepalive:
            return None
        return self.last_received + self.keepalive * 1.5

    @property
    def negotiated_version(self) -> ProtocolVersion | None:
        return None if self.version is None else ProtocolVersion(self.version)


def _peer(role: Role) -> str:
    return "client" if role is Role.SERVER else "server"


_RECEIVE_HANDLERS: dict[type[Packet], Callable[[MQTTConnection, Any], Packet | None]] = {
    Connect: MQTTConnection._on_connect,
    ConnAck: MQTTConnection._on_connack,
    Publish: MQTTConnection._on_publish,
    PubAck: MQTTConnection._on_puback,
    PubRec: MQTTConnection._on_pubrec,
    PubRel: MQTTConnection._on_pubrel,
    PubComp: MQTTConnection._on_pubcomp,
    SubAck: MQTTConnection._on_request_ack,
    UnsubAck: MQTTConnection._on_request_ack,
    PingReq: MQTTConnection._on_pingreq,
}
_SEND_HOOKS: dict[type[Packet], Callable[[MQTTConnection, Any], None]] = {
    Connect: MQTTConnection._sent_connect,
    ConnAck: MQTTConnection._sent_connack,
    Publish: MQTTConnection._sent_publish,
    PubAck: MQTTConnection._sent_ack,
    PubRec: MQTTConnection._sent_ack,
    PubComp: MQTTConnection._sent_ack,
    Subscribe: MQTTConnection._sent_request,
    Unsubscribe: MQTTConnection._sent_request,
}
