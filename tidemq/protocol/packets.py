"""The packet model: one frozen, slotted dataclass per control packet, for every version.

One model serves MQTT 3.1, 3.1.1 and 5.0; the version only changes how a packet is encoded
and which fields may be used (``properties`` and most reason codes are v5 only, and the
encoder refuses what a version cannot carry). Reason codes are always v5 values; the codec
maps CONNACK and SUBACK codes to and from their MQTT 3 equivalents.

Packets built by users are validated in ``__post_init__`` (``LocalProtocolError``). The
decoder builds packets through ``_trusted`` constructors that skip that work: it has just
checked the bytes (h11's ``_parsed=True``). Never mutate a packet; use
``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._wire import MAX_UTF8_BYTES, check_utf8
from .enums import PacketType, ProtocolVersion, RetainHandling
from .errors import LocalProtocolError
from .properties import NO_PROPERTIES, WILL, Properties, validate_properties
from .reason_codes import reason_code_allowed
from .topics import topic_filter_error

__all__ = [
    "Auth",
    "ConnAck",
    "Connect",
    "Disconnect",
    "Packet",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "Subscription",
    "UnsubAck",
    "Unsubscribe",
    "Will",
]

MAX_PACKET_ID = 0xFFFF


def _check_packet_id(packet_id: int, *, allow_zero: bool = False) -> None:
    if not isinstance(packet_id, int) or not 0 <= packet_id <= MAX_PACKET_ID:
        raise LocalProtocolError(f"packet id {packet_id!r} out of range")
    if packet_id == 0 and not allow_zero:
        raise LocalProtocolError("packet id 0 is not allowed", rule="[MQTT-2.2.1-3]")


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise LocalProtocolError(f"QoS {qos!r} is not 0, 1 or 2", rule="[MQTT-3.3.1-4]")


def _check_reason(code: int, ptype: PacketType) -> None:
    if not reason_code_allowed(code, ptype):
        raise LocalProtocolError(f"reason code 0x{code:02x} is not allowed in {ptype.name}")


def _check_topic_name(topic: str, *, allow_empty: bool) -> None:
    if not isinstance(topic, str):
        raise LocalProtocolError("topic must be a str")
    if not topic and not allow_empty:
        raise LocalProtocolError("topic name is empty", rule="[MQTT-4.7.3-1]")
    if "+" in topic or "#" in topic:
        raise LocalProtocolError("topic name contains a wildcard", rule="[MQTT-3.3.2-2]")
    check_utf8(topic, "topic name")


class Packet:
    """Base of every packet. Don't subclass the concrete packets: the codec dispatches on
    the exact type."""

    __slots__ = ()
    type: ClassVar[PacketType]


@dataclass(frozen=True, slots=True, kw_only=True)
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_topic_name(self.topic, allow_empty=False)
        _check_qos(self.qos)
        if not isinstance(self.payload, bytes) or len(self.payload) > MAX_UTF8_BYTES:
            raise LocalProtocolError("will payload must be bytes of at most 65535")
        validate_properties(self.properties, WILL)


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect(Packet):
    type: ClassVar[PacketType] = PacketType.CONNECT
    protocol_version: ProtocolVersion = ProtocolVersion.V311
    client_id: str = ""
    clean_start: bool = True
    keepalive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        if self.protocol_version not in (3, 4, 5):
            raise LocalProtocolError(f"unknown protocol version {self.protocol_version!r}")
        check_utf8(self.client_id, "client id")
        if not 0 <= self.keepalive <= 0xFFFF:
            raise LocalProtocolError("keepalive out of range 0..65535")
        if self.username is not None:
            check_utf8(self.username, "username")
        if self.password is not None and (
            not isinstance(self.password, bytes) or len(self.password) > MAX_UTF8_BYTES
        ):
            raise LocalProtocolError("password must be bytes of at most 65535")
        if (
            self.password is not None
            and self.username is None
            and self.protocol_version < ProtocolVersion.V5
        ):
            raise LocalProtocolError(
                "MQTT 3 needs a username with a password", rule="[MQTT-3.1.2-22]"
            )
        if self.protocol_version < ProtocolVersion.V5 and self.properties:
            raise LocalProtocolError("properties need MQTT 5")
        validate_properties(self.properties, PacketType.CONNECT)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnAck(Packet):
    type: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, PacketType.CONNACK)
        if self.session_present and self.reason_code:
            raise LocalProtocolError(
                "session present must be 0 with a failing CONNACK", rule="[MQTT-3.2.2-6]"
            )
        validate_properties(self.properties, PacketType.CONNACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class Publish(Packet):
    """An application message on the wire. ``packet_id`` is 0 for QoS 0; for QoS 1/2 a 0
    means "not assigned yet": allocate one with ``MQTTConnection.next_packet_id()`` and
    ``dataclasses.replace`` it in before sending (the encoder refuses 0)."""

    type: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        # An empty topic is legal only with a Topic Alias (MQTT 5.0 §3.3.2.3.4).
        _check_topic_name(self.topic, allow_empty=self.properties.topic_alias is not None)
        _check_qos(self.qos)
        if not isinstance(self.payload, bytes):
            raise LocalProtocolError("payload must be bytes")
        if self.qos == 0:
            if self.dup:
                raise LocalProtocolError("DUP must be 0 for QoS 0", rule="[MQTT-3.3.1-2]")
            if self.packet_id:
                raise LocalProtocolError("QoS 0 PUBLISH has no packet id", rule="[MQTT-2.2.1-2]")
        else:
            _check_packet_id(self.packet_id, allow_zero=True)
        validate_properties(self.properties, PacketType.PUBLISH)

    @staticmethod
    def _trusted(
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        packet_id: int,
        properties: Properties,
    ) -> Publish:
        """A ``Publish`` of values already checked (topic alias resolution, packet id
        reassignment), without ``__post_init__``. The decoder has a faster trick of its own
        (``codec._PublishTwin``)."""
        p: Publish = object.__new__(Publish)
        object.__setattr__(p, "topic", topic)
        object.__setattr__(p, "payload", payload)
        object.__setattr__(p, "qos", qos)
        object.__setattr__(p, "retain", retain)
        object.__setattr__(p, "dup", dup)
        object.__setattr__(p, "packet_id", packet_id)
        object.__setattr__(p, "properties", properties)
        return p


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ack(Packet):
    packet_id: int
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        _check_reason(self.reason_code, self.type)
        validate_properties(self.properties, self.type)


@dataclass(frozen=True, slots=True, kw_only=True)
class PubAck(_Ack):
    type: ClassVar[PacketType] = PacketType.PUBACK


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRec(_Ack):
    type: ClassVar[PacketType] = PacketType.PUBREC


@dataclass(frozen=True, slots=True, kw_only=True)
class PubRel(_Ack):
    type: ClassVar[PacketType] = PacketType.PUBREL


@dataclass(frozen=True, slots=True, kw_only=True)
class PubComp(_Ack):
    type: ClassVar[PacketType] = PacketType.PUBCOMP


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (MQTT 5.0 §3.8.3.1)."""

    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: RetainHandling = RetainHandling.SEND_ON_SUBSCRIBE

    def __post_init__(self) -> None:
        check_utf8(self.topic_filter, "topic filter")
        error = topic_filter_error(self.topic_filter)
        if error:
            raise LocalProtocolError(error)
        _check_qos(self.qos)
        if self.retain_handling not in (0, 1, 2):
            raise LocalProtocolError(f"retain handling {self.retain_handling!r} is not 0, 1 or 2")
        if self.no_local and self.topic_filter.startswith(("$share/", "$queue/")):
            raise LocalProtocolError("No Local on a shared subscription", rule="[MQTT-3.8.3-4]")


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscribe(Packet):
    type: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.subscriptions:
            raise LocalProtocolError(
                "SUBSCRIBE needs at least one topic filter", rule="[MQTT-3.8.3-2]"
            )
        if not isinstance(self.subscriptions, tuple):
            raise LocalProtocolError("subscriptions must be a tuple")
        validate_properties(self.properties, PacketType.SUBSCRIBE)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubAck(Packet):
    type: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: tuple[int, ...]
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.reason_codes:
            raise LocalProtocolError("SUBACK needs a reason code per topic filter")
        for code in self.reason_codes:
            _check_reason(code, PacketType.SUBACK)
        validate_properties(self.properties, PacketType.SUBACK)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsubscribe(Packet):
    type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        if not self.topic_filters:
            raise LocalProtocolError(
                "UNSUBSCRIBE needs at least one topic filter", rule="[MQTT-3.10.3-2]"
            )
        for topic_filter in self.topic_filters:
            check_utf8(topic_filter, "topic filter")
        validate_properties(self.properties, PacketType.UNSUBSCRIBE)


@dataclass(frozen=True, slots=True, kw_only=True)
class UnsubAck(Packet):
    """``reason_codes`` is empty for MQTT 3, whose UNSUBACK has no payload."""

    type: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_packet_id(self.packet_id)
        for code in self.reason_codes:
            _check_reason(code, PacketType.UNSUBACK)
        validate_properties(self.properties, PacketType.UNSUBACK)


@dataclass(frozen=True, slots=True)
class PingReq(Packet):
    type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp(Packet):
    type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect(Packet):
    type: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, PacketType.DISCONNECT)
        validate_properties(self.properties, PacketType.DISCONNECT)


@dataclass(frozen=True, slots=True, kw_only=True)
class Auth(Packet):
    """MQTT 5.0 enhanced authentication exchange (§3.15)."""

    type: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: Properties = NO_PROPERTIES

    def __post_init__(self) -> None:
        _check_reason(self.reason_code, PacketType.AUTH)
        validate_properties(self.properties, PacketType.AUTH)


PACKET_CLASSES: dict[PacketType, type[Packet]] = {
    cls.type: cls
    for cls in (
        Connect,
        ConnAck,
        Publish,
        PubAck,
        PubRec,
        PubRel,
        PubComp,
        Subscribe,
        SubAck,
        Unsubscribe,
        UnsubAck,
        PingReq,
        PingResp,
        Disconnect,
        Auth,
    )
}
