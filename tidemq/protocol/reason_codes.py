"""Every MQTT 5.0 reason code in one table (MQTT 5.0 §2.4), with its MQTT 3 equivalent.

Rules of this module:

* ``ReasonCode`` is the single source of truth for numeric values and names.
* ``REASON_CODE_PACKETS`` says which packet types may carry each code; the codec and the
  connection check outgoing and incoming codes against it.
* ``V3_CONNACK_EQUIVALENT`` maps a v5 CONNACK reason code onto the MQTT 3.1/3.1.1 return code
  a v3 client understands (MQTT 3.1.1 §3.2.2.3); ``v3_suback_code`` does the same for SUBACK,
  where 3.1.1 only knows granted QoS 0-2 and ``0x80`` failure.

Several v5 codes share a value (0x00 is Success, Normal disconnection and Granted QoS 0), so
the enum has aliases; ``REASON_CODE_NAMES`` keeps the spec's name per (value, packet).
"""

from __future__ import annotations

from enum import IntEnum
from types import MappingProxyType

from .enums import PacketType

__all__ = [
    "REASON_CODE_NAMES",
    "REASON_CODE_PACKETS",
    "V3_CONNACK_EQUIVALENT",
    "ConnAckReturnCodeV3",
    "ReasonCode",
    "is_error",
    "reason_code_allowed",
    "v3_connack_code",
    "v3_suback_code",
]


class ReasonCode(IntEnum):
    SUCCESS = 0x00
    NORMAL_DISCONNECTION = 0x00
    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    DISCONNECT_WITH_WILL_MESSAGE = 0x04
    NO_MATCHING_SUBSCRIBERS = 0x10
    NO_SUBSCRIPTION_EXISTED = 0x11
    CONTINUE_AUTHENTICATION = 0x18
    RE_AUTHENTICATE = 0x19
    UNSPECIFIED_ERROR = 0x80
    MALFORMED_PACKET = 0x81
    PROTOCOL_ERROR = 0x82
    IMPLEMENTATION_SPECIFIC_ERROR = 0x83
    UNSUPPORTED_PROTOCOL_VERSION = 0x84
    CLIENT_IDENTIFIER_NOT_VALID = 0x85
    BAD_USER_NAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87
    SERVER_UNAVAILABLE = 0x88
    SERVER_BUSY = 0x89
    BANNED = 0x8A
    SERVER_SHUTTING_DOWN = 0x8B
    BAD_AUTHENTICATION_METHOD = 0x8C
    KEEP_ALIVE_TIMEOUT = 0x8D
    SESSION_TAKEN_OVER = 0x8E
    TOPIC_FILTER_INVALID = 0x8F
    TOPIC_NAME_INVALID = 0x90
    PACKET_IDENTIFIER_IN_USE = 0x91
    PACKET_IDENTIFIER_NOT_FOUND = 0x92
    RECEIVE_MAXIMUM_EXCEEDED = 0x93
    TOPIC_ALIAS_INVALID = 0x94
    PACKET_TOO_LARGE = 0x95
    MESSAGE_RATE_TOO_HIGH = 0x96
    QUOTA_EXCEEDED = 0x97
    ADMINISTRATIVE_ACTION = 0x98
    PAYLOAD_FORMAT_INVALID = 0x99
    RETAIN_NOT_SUPPORTED = 0x9A
    QOS_NOT_SUPPORTED = 0x9B
    USE_ANOTHER_SERVER = 0x9C
    SERVER_MOVED = 0x9D
    SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
    CONNECTION_RATE_EXCEEDED = 0x9F
    MAXIMUM_CONNECT_TIME = 0xA0
    SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED = 0xA1
    WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2


class ConnAckReturnCodeV3(IntEnum):
    """CONNACK return codes of MQTT 3.1 and 3.1.1 (MQTT 3.1.1 §3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


_P = PacketType
_CONNACK, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = (
    _P.CONNACK,
    _P.PUBACK,
    _P.PUBREC,
    _P.PUBREL,
    _P.PUBCOMP,
)
_SUBACK, _UNSUBACK, _DISCONNECT, _AUTH = _P.SUBACK, _P.UNSUBACK, _P.DISCONNECT, _P.AUTH
_PUB_ACKS = (_PUBACK, _PUBREC)

# (value, spec name, packets) exactly as listed in MQTT 5.0 §2.4 Table 2-6.
_TABLE: tuple[tuple[int, str, tuple[PacketType, ...]], ...] = (
    (0x00, "Success", (_CONNACK, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _UNSUBACK, _AUTH)),
    (0x00, "Normal disconnection", (_DISCONNECT,)),
    (0x00, "Granted QoS 0", (_SUBACK,)),
    (0x01, "Granted QoS 1", (_SUBACK,)),
    (0x02, "Granted QoS 2", (_SUBACK,)),
    (0x04, "Disconnect with Will Message", (_DISCONNECT,)),
    (0x10, "No matching subscribers", _PUB_ACKS),
    (0x11, "No subscription existed", (_UNSUBACK,)),
    (0x18, "Continue authentication", (_AUTH,)),
    (0x19, "Re-authenticate", (_AUTH,)),
    (0x80, "Unspecified error", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x81, "Malformed Packet", (_CONNACK, _DISCONNECT)),
    (0x82, "Protocol Error", (_CONNACK, _DISCONNECT)),
    (
        0x83,
        "Implementation specific error",
        (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT),
    ),
    (0x84, "Unsupported Protocol Version", (_CONNACK,)),
    (0x85, "Client Identifier not valid", (_CONNACK,)),
    (0x86, "Bad User Name or Password", (_CONNACK,)),
    (0x87, "Not authorized", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x88, "Server unavailable", (_CONNACK,)),
    (0x89, "Server busy", (_CONNACK, _DISCONNECT)),
    (0x8A, "Banned", (_CONNACK,)),
    (0x8B, "Server shutting down", (_DISCONNECT,)),
    (0x8C, "Bad authentication method", (_CONNACK, _DISCONNECT)),
    (0x8D, "Keep Alive timeout", (_DISCONNECT,)),
    (0x8E, "Session taken over", (_DISCONNECT,)),
    (0x8F, "Topic Filter invalid", (_SUBACK, _UNSUBACK, _DISCONNECT)),
    (0x90, "Topic Name invalid", (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    (0x91, "Packet Identifier in use", (_PUBACK, _PUBREC, _SUBACK, _UNSUBACK)),
    (0x92, "Packet Identifier not found", (_PUBREL, _PUBCOMP)),
    (0x93, "Receive Maximum exceeded", (_DISCONNECT,)),
    (0x94, "Topic Alias invalid", (_DISCONNECT,)),
    (0x95, "Packet too large", (_CONNACK, _DISCONNECT)),
    (0x96, "Message rate too high", (_DISCONNECT,)),
    (0x97, "Quota exceeded", (_CONNACK, _PUBACK, _PUBREC, _SUBACK, _DISCONNECT)),
    (0x98, "Administrative action", (_DISCONNECT,)),
    (0x99, "Payload format invalid", (_CONNACK, _PUBACK, _PUBREC, _DISCONNECT)),
    (0x9A, "Retain not supported", (_CONNACK, _DISCONNECT)),
    (0x9B, "QoS not supported", (_CONNACK, _DISCONNECT)),
    (0x9C, "Use another server", (_CONNACK, _DISCONNECT)),
    (0x9D, "Server moved", (_CONNACK, _DISCONNECT)),
    (0x9E, "Shared Subscriptions not supported", (_SUBACK, _DISCONNECT)),
    (0x9F, "Connection rate exceeded", (_CONNACK, _DISCONNECT)),
    (0xA0, "Maximum connect time", (_DISCONNECT,)),
    (0xA1, "Subscription Identifiers not supported", (_SUBACK, _DISCONNECT)),
    (0xA2, "Wildcard Subscriptions not supported", (_SUBACK, _DISCONNECT)),
)

REASON_CODE_PACKETS: MappingProxyType[int, frozenset[PacketType]] = MappingProxyType(
    {
        value: frozenset(p for v, _, pk in _TABLE if v == value for p in pk)
        for value in {row[0] for row in _TABLE}
    }
)
"""Reason code value → the packet types that may carry it."""

REASON_CODE_NAMES: MappingProxyType[tuple[int, PacketType], str] = MappingProxyType(
    {(value, packet): name for value, name, packets in _TABLE for packet in packets}
)
"""(value, packet type) → the name the specification gives that code in that packet."""

V3_CONNACK_EQUIVALENT: MappingProxyType[int, ConnAckReturnCodeV3] = MappingProxyType(
    {
        0x00: ConnAckReturnCodeV3.ACCEPTED,
        0x84: ConnAckReturnCodeV3.UNACCEPTABLE_PROTOCOL_VERSION,
        0x85: ConnAckReturnCodeV3.IDENTIFIER_REJECTED,
        0x86: ConnAckReturnCodeV3.BAD_USERNAME_OR_PASSWORD,
        0x87: ConnAckReturnCodeV3.NOT_AUTHORIZED,
        0x88: ConnAckReturnCodeV3.SERVER_UNAVAILABLE,
        0x89: ConnAckReturnCodeV3.SERVER_UNAVAILABLE,
        0x8A: ConnAckReturnCodeV3.NOT_AUTHORIZED,
        0x8C: ConnAckReturnCodeV3.BAD_USERNAME_OR_PASSWORD,
        0x9C: ConnAckReturnCodeV3.SERVER_UNAVAILABLE,
        0x9D: ConnAckReturnCodeV3.SERVER_UNAVAILABLE,
        0x9F: ConnAckReturnCodeV3.SERVER_UNAVAILABLE,
    }
)
"""v5 CONNACK reason code → MQTT 3 return code. Codes missing here have no v3 CONNACK:
the v3 server closes the connection without one (MQTT 3.1.1 §3.2.2.3 lists only 0-5)."""


def reason_code_allowed(code: int, packet: PacketType) -> bool:
    """True when *code* is a reason code the specification allows in *packet*."""
    packets = REASON_CODE_PACKETS.get(code)
    return packets is not None and packet in packets


def is_error(code: int) -> bool:
    """Reason codes of 0x80 and above indicate failure (MQTT 5.0 §2.4)."""
    return code >= 0x80


def v3_connack_code(code: int) -> int | None:
    """The MQTT 3 CONNACK return code for a v5 *code*, or None to close without CONNACK."""
    rc = V3_CONNACK_EQUIVALENT.get(code)
    return None if rc is None else int(rc)


def v3_suback_code(code: int) -> int:
    """MQTT 3.1.1 SUBACK only has granted QoS 0-2 and 0x80 Failure [MQTT-3.9.3-2]."""
    return code if code <= 2 else 0x80
