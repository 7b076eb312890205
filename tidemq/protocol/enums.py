"""Small enumerations shared by every part of the protocol package."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["PacketType", "ProtocolVersion", "QoS", "RetainHandling", "Role"]


class PacketType(IntEnum):
    """Control packet types, the high nibble of the fixed header (MQTT 5.0 §2.1.2)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15  # MQTT 5.0 only


class ProtocolVersion(IntEnum):
    """The protocol level byte of CONNECT."""

    V31 = 3  # MQTT 3.1, protocol name "MQIsdp"
    V311 = 4  # MQTT 3.1.1, protocol name "MQTT"
    V5 = 5  # MQTT 5.0, protocol name "MQTT"


class QoS(IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class RetainHandling(IntEnum):
    """Subscription option bits 4-5 (MQTT 5.0 §3.8.3.1)."""

    SEND_ON_SUBSCRIBE = 0
    SEND_IF_NEW_SUBSCRIPTION = 1
    DO_NOT_SEND = 2


class Role(IntEnum):
    """Which end of the conversation a connection object plays."""

    CLIENT = 1
    SERVER = 2
