"""MQTT 5.0 properties (§2.2.2): one table, one typed value object, encode and decode.

``PROPERTY_TABLE`` is the single source of truth: for every property identifier it gives the
field name on ``Properties``, the wire type, the packets it may appear in (``WILL`` stands for
the Will Properties of CONNECT) and whether it may repeat. Encoding and decoding are driven
by the table, and so are the checks that reject a duplicated property or one that is not
allowed on a packet [MQTT-2.2.2-2].

Empty property sets are common on the hot path; ``NO_PROPERTIES`` is the one shared instance.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Final, NamedTuple

from ._wire import (
    MAX_VARINT,
    Buffer,
    binary,
    check_utf8,
    read_binary,
    read_u8,
    read_u16,
    read_u32,
    read_utf8,
    read_varint,
    u16,
    u32,
    utf8,
    varint,
)
from .enums import PacketType
from .errors import LocalProtocolError, MalformedPacket, ProtocolViolation

__all__ = [
    "NO_PROPERTIES",
    "PROPERTY_TABLE",
    "WILL",
    "Properties",
    "PropertyId",
    "PropertyInfo",
    "WireType",
    "decode_properties",
    "encode_properties",
    "validate_properties",
]


class PropertyId(IntEnum):
    PAYLOAD_FORMAT_INDICATOR = 0x01
    MESSAGE_EXPIRY_INTERVAL = 0x02
    CONTENT_TYPE = 0x03
    RESPONSE_TOPIC = 0x08
    CORRELATION_DATA = 0x09
    SUBSCRIPTION_IDENTIFIER = 0x0B
    SESSION_EXPIRY_INTERVAL = 0x11
    ASSIGNED_CLIENT_IDENTIFIER = 0x12
    SERVER_KEEP_ALIVE = 0x13
    AUTHENTICATION_METHOD = 0x15
    AUTHENTICATION_DATA = 0x16
    REQUEST_PROBLEM_INFORMATION = 0x17
    WILL_DELAY_INTERVAL = 0x18
    REQUEST_RESPONSE_INFORMATION = 0x19
    RESPONSE_INFORMATION = 0x1A
    SERVER_REFERENCE = 0x1C
    REASON_STRING = 0x1F
    RECEIVE_MAXIMUM = 0x21
    TOPIC_ALIAS_MAXIMUM = 0x22
    TOPIC_ALIAS = 0x23
    MAXIMUM_QOS = 0x24
    RETAIN_AVAILABLE = 0x25
    USER_PROPERTY = 0x26
    MAXIMUM_PACKET_SIZE = 0x27
    WILDCARD_SUBSCRIPTION_AVAILABLE = 0x28
    SUBSCRIPTION_IDENTIFIER_AVAILABLE = 0x29
    SHARED_SUBSCRIPTION_AVAILABLE = 0x2A


class WireType(Enum):
    BYTE = "byte"
    TWO_BYTE = "two-byte integer"
    FOUR_BYTE = "four-byte integer"
    VARINT = "variable byte integer"
    UTF8 = "UTF-8 string"
    BINARY = "binary data"
    UTF8_PAIR = "UTF-8 string pair"


WILL: Final = "will"
"""Pseudo packet name for the Will Properties inside CONNECT."""

Context = PacketType | str


class PropertyInfo(NamedTuple):
    id: PropertyId
    name: str
    wire: WireType
    packets: frozenset[Context]
    repeatable: bool
    # Inclusive value range for integers; a value outside is a Protocol Error.
    minimum: int = 0
    maximum: int | None = None


_P = PacketType
_MSG: frozenset[Context] = frozenset({_P.PUBLISH, WILL})
_ACKS: frozenset[Context] = frozenset(
    {
        _P.CONNACK,
        _P.PUBACK,
        _P.PUBREC,
        _P.PUBREL,
        _P.PUBCOMP,
        _P.SUBACK,
        _P.UNSUBACK,
        _P.DISCONNECT,
        _P.AUTH,
    }
)
_ALL: frozenset[Context] = frozenset(
    {
        _P.CONNECT,
        _P.CONNACK,
        _P.PUBLISH,
        WILL,
        _P.PUBACK,
        _P.PUBREC,
        _P.PUBREL,
        _P.PUBCOMP,
        _P.SUBSCRIBE,
        _P.SUBACK,
        _P.UNSUBSCRIBE,
        _P.UNSUBACK,
        _P.DISCONNECT,
        _P.AUTH,
    }
)
_I = PropertyId
_W = WireType


def _fs(*items: Context) -> frozenset[Context]:
    return frozenset(items)


# MQTT 5.0 §2.2.2.2, Table 2-4.
_ROWS: tuple[PropertyInfo, ...] = (
    PropertyInfo(_I(0x01), "payload_format_indicator", _W.BYTE, _MSG, False, 0, 1),
    PropertyInfo(_I(0x02), "message_expiry_interval", _W.FOUR_BYTE, _MSG, False),
    PropertyInfo(_I(0x03), "content_type", _W.UTF8, _MSG, False),
    PropertyInfo(_I(0x08), "response_topic", _W.UTF8, _MSG, False),
    PropertyInfo(_I(0x09), "correlation_data", _W.BINARY, _MSG, False),
    PropertyInfo(
        _I(0x0B),
        "subscription_identifiers",
        _W.VARINT,
        _fs(_P.PUBLISH, _P.SUBSCRIBE),
        True,  # repeatable in PUBLISH only; SUBSCRIBE allows one [MQTT-3.8.2.1.2]
        1,
        MAX_VARINT,
    ),
    PropertyInfo(
        _I(0x11),
        "session_expiry_interval",
        _W.FOUR_BYTE,
        _fs(_P.CONNECT, _P.CONNACK, _P.DISCONNECT),
        False,
    ),
    PropertyInfo(_I(0x12), "assigned_client_identifier", _W.UTF8, _fs(_P.CONNACK), False),
    PropertyInfo(_I(0x13), "server_keep_alive", _W.TWO_BYTE, _fs(_P.CONNACK), False),
    PropertyInfo(
        _I(0x15),
        "authentication_method",
        _W.UTF8,
        _fs(_P.CONNECT, _P.CONNACK, _P.AUTH),
        False,
    ),
    PropertyInfo(
        _I(0x16),
        "authentication_data",
        _W.BINARY,
        _fs(_P.CONNECT, _P.CONNACK, _P.AUTH),
        False,
    ),
    PropertyInfo(_I(0x17), "request_problem_information", _W.BYTE, _fs(_P.CONNECT), False, 0, 1),
    PropertyInfo(_I(0x18), "will_delay_interval", _W.FOUR_BYTE, _fs(WILL), False),
    PropertyInfo(_I(0x19), "request_response_information", _W.BYTE, _fs(_P.CONNECT), False, 0, 1),
    PropertyInfo(_I(0x1A), "response_information", _W.UTF8, _fs(_P.CONNACK), False),
    PropertyInfo(_I(0x1C), "server_reference", _W.UTF8, _fs(_P.CONNACK, _P.DISCONNECT), False),
    PropertyInfo(_I(0x1F), "reason_string", _W.UTF8, _ACKS, False),
    PropertyInfo(_I(0x21), "receive_maximum", _W.TWO_BYTE, _fs(_P.CONNECT, _P.CONNACK), False, 1),
    PropertyInfo(_I(0x22), "topic_alias_maximum", _W.TWO_BYTE, _fs(_P.CONNECT, _P.CONNACK), False),
    PropertyInfo(_I(0x23), "topic_alias", _W.TWO_BYTE, _fs(_P.PUBLISH), False, 1),
    PropertyInfo(_I(0x24), "maximum_qos", _W.BYTE, _fs(_P.CONNACK), False, 0, 1),
    PropertyInfo(_I(0x25), "retain_available", _W.BYTE, _fs(_P.CONNACK), False, 0, 1),
    PropertyInfo(_I(0x26), "user_properties", _W.UTF8_PAIR, _ALL, True),
    PropertyInfo(
        _I(0x27),
        "maximum_packet_size",
        _W.FOUR_BYTE,
        _fs(_P.CONNECT, _P.CONNACK),
        False,
        1,
    ),
    PropertyInfo(
        _I(0x28), "wildcard_subscription_available", _W.BYTE, _fs(_P.CONNACK), False, 0, 1
    ),
    PropertyInfo(
        _I(0x29),
        "subscription_identifier_available",
        _W.BYTE,
        _fs(_P.CONNACK),
        False,
        0,
        1,
    ),
    PropertyInfo(_I(0x2A), "shared_subscription_available", _W.BYTE, _fs(_P.CONNACK), False, 0, 1),
)

PROPERTY_TABLE: MappingProxyType[int, PropertyInfo] = MappingProxyType(
    {row.id: row for row in _ROWS}
)


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class Properties:
    """The MQTT 5 properties of one packet. ``None`` (or an empty tuple) means absent.

    Repeatable properties are tuples in wire order: ``user_properties`` as (name, value)
    pairs, whose order is significant [MQTT-3.3.2-18], and ``subscription_identifiers``.
    """

    payload_format_indicator: int | None = None
    message_expiry_interval: int | None = None
    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_identifiers: tuple[int, ...] = ()
    session_expiry_interval: int | None = None
    assigned_client_identifier: str | None = None
    server_keep_alive: int | None = None
    authentication_method: str | None = None
    authentication_data: bytes | None = None
    request_problem_information: int | None = None
    will_delay_interval: int | None = None
    request_response_information: int | None = None
    response_information: str | None = None
    server_reference: str | None = None
    reason_string: str | None = None
    receive_maximum: int | None = None
    topic_alias_maximum: int | None = None
    topic_alias: int | None = None
    maximum_qos: int | None = None
    retain_available: int | None = None
    user_properties: tuple[tuple[str, str], ...] = ()
    maximum_packet_size: int | None = None
    wildcard_subscription_available: int | None = None
    subscription_identifier_available: int | None = None
    shared_subscription_available: int | None = None

    def __post_init__(self) -> None:
        for info in _ROWS:
            value = getattr(self, info.name)
            if info.repeatable:
                if not isinstance(value, tuple):
                    raise LocalProtocolError(f"{info.name} must be a tuple")
                for item in value:
                    _check_user_value(info, item)
            elif value is not None:
                _check_user_value(info, value)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name, default in _FIELD_DEFAULTS
            if getattr(self, name) != default
        )
        return f"Properties({shown})"

    def __bool__(self) -> bool:
        return self is not NO_PROPERTIES and self != NO_PROPERTIES

    def present(self) -> list[PropertyId]:
        """The identifiers of the properties that are set, in table order."""
        out = []
        for info in _ROWS:
            value = getattr(self, info.name)
            if value is not None and value != ():
                out.append(info.id)
        return out


_FIELD_DEFAULTS: tuple[tuple[str, object], ...] = tuple(
    (f.name, f.default) for f in fields(Properties)
)
_new = object.__new__
_set = object.__setattr__


def _trusted_properties(values: dict[str, object]) -> Properties:
    """Build a ``Properties`` from decoded, already-checked values (no re-validation)."""
    obj: Properties = _new(Properties)
    get = values.get
    for name, default in _FIELD_DEFAULTS:
        _set(obj, name, get(name, default))
    return obj


NO_PROPERTIES: Final = Properties()


def _check_user_value(info: PropertyInfo, value: object) -> None:
    wire = info.wire
    if wire is _W.UTF8:
        if not isinstance(value, str):
            raise LocalProtocolError(f"{info.name} must be a str")
        check_utf8(value, info.name)
    elif wire is _W.BINARY:
        if not isinstance(value, bytes):
            raise LocalProtocolError(f"{info.name} must be bytes")
        if len(value) > 65_535:
            raise LocalProtocolError(f"{info.name} longer than 65535 bytes")
    elif wire is _W.UTF8_PAIR:
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], str)
            and isinstance(value[1], str)
        ):
            raise LocalProtocolError("user_properties items must be (str, str) pairs")
        check_utf8(value[0], "user property name")
        check_utf8(value[1], "user property value")
    else:
        if not isinstance(value, int) or isinstance(value, bool):
            raise LocalProtocolError(f"{info.name} must be an int")
        maximum = info.maximum if info.maximum is not None else _WIRE_MAX[wire]
        if not info.minimum <= value <= maximum:
            raise LocalProtocolError(
                f"{info.name}={value} outside {info.minimum}..{maximum}", rule="[MQTT-2.2.2-2]"
            )


_WIRE_MAX = {
    _W.BYTE: 0xFF,
    _W.TWO_BYTE: 0xFFFF,
    _W.FOUR_BYTE: 0xFFFF_FFFF,
    _W.VARINT: MAX_VARINT,
}


def validate_properties(props: Properties, context: Context) -> None:
    """Raise ``LocalProtocolError`` if *props* holds a property not allowed in *context*."""
    if props is NO_PROPERTIES:
        return
    for info in _ROWS:
        value = getattr(props, info.name)
        if value is None or value == ():
            continue
        if context not in info.packets:
            raise LocalProtocolError(
                f"property {info.name} is not allowed in {_context_name(context)}",
                rule="[MQTT-2.2.2-2]",
            )
        if context is PacketType.SUBSCRIBE and info.repeatable and len(value) > 1:
            raise LocalProtocolError(
                "SUBSCRIBE carries at most one Subscription Identifier",
                rule="[MQTT-3.8.2.1.2]",
            )


def _context_name(context: Context) -> str:
    return context.name if isinstance(context, PacketType) else "Will Properties"


# --- encode -------------------------------------------------------------------------------

_EMPTY_ENCODED: Final = b"\x00"


def _encode_value(wire: WireType, pid: int, value: object) -> bytes:
    head = bytes((pid,))
    if wire is _W.BYTE:
        return head + bytes((value,))  # type: ignore[arg-type]
    if wire is _W.TWO_BYTE:
        return head + u16(value)  # type: ignore[arg-type]
    if wire is _W.FOUR_BYTE:
        return head + u32(value)  # type: ignore[arg-type]
    if wire is _W.VARINT:
        return head + varint(value)  # type: ignore[arg-type]
    if wire is _W.UTF8:
        return head + utf8(value)  # type: ignore[arg-type]
    if wire is _W.BINARY:
        return head + binary(value)  # type: ignore[arg-type]
    assert isinstance(value, tuple)
    key: str = value[0]
    val: str = value[1]
    return head + utf8(key) + utf8(val)


def encode_properties(props: Properties) -> bytes:
    """Encode *props* with its Property Length prefix (``b"\\x00"`` when empty)."""
    if props is NO_PROPERTIES:
        return _EMPTY_ENCODED
    parts: list[bytes] = []
    for info in _ROWS:
        value = getattr(props, info.name)
        if value is None:
            continue
        if info.repeatable:
            parts.extend(_encode_value(info.wire, info.id, item) for item in value)
        else:
            parts.append(_encode_value(info.wire, info.id, value))
    body = b"".join(parts)
    return varint(len(body)) + body


# --- decode -------------------------------------------------------------------------------

_READERS = {
    _W.BYTE: read_u8,
    _W.TWO_BYTE: read_u16,
    _W.FOUR_BYTE: read_u32,
    _W.VARINT: read_varint,
    _W.UTF8: read_utf8,
    _W.BINARY: read_binary,
}
# Per identifier: (field name, reader or None for a string pair, repeatable, min, max, packets)
_DECODE: dict[int, tuple[str, object, bool, int, int, frozenset[Context]]] = {
    row.id: (
        row.name,
        _READERS.get(row.wire),
        row.repeatable,
        row.minimum,
        row.maximum if row.maximum is not None else _WIRE_MAX.get(row.wire, 0),
        row.packets,
    )
    for row in _ROWS
}


def decode_properties(buf: Buffer, pos: int, end: int, context: Context) -> tuple[Properties, int]:
    """Decode a property block starting at its length prefix; returns (props, new_pos).

    Raises:
        MalformedPacket: lengths that run past the packet, unknown identifiers.
        ProtocolViolation: a property not allowed in *context*, a non-repeatable property
            repeated, or a value outside its range [MQTT-2.2.2-2].
    """
    if pos >= end:
        raise MalformedPacket("packet ends before its property length")
    length = buf[pos]
    if length == 0:
        return NO_PROPERTIES, pos + 1
    if length & 0x80:
        length, pos = read_varint(buf, pos, end)
    else:
        pos += 1
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length runs past the end of the packet")
    values: dict[str, object] = {}
    while pos < stop:
        pid, pos = read_varint(buf, pos, stop)
        spec = _DECODE.get(pid)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{pid:02x}")
        name, reader, repeatable, minimum, maximum, packets = spec
        if context not in packets:
            # An identifier not valid for the packet type is a Malformed Packet (§2.2.2.2).
            raise MalformedPacket(
                f"property {name} is not allowed in {_context_name(context)}",
                rule="[MQTT-2.2.2-2]",
            )
        value: object
        if reader is None:
            key, pos = read_utf8(buf, pos, stop)
            val, pos = read_utf8(buf, pos, stop)
            value = (key, val)
        else:
            value, pos = reader(buf, pos, stop)  # type: ignore[operator]
            if isinstance(value, int) and not minimum <= value <= maximum:
                raise ProtocolViolation(
                    f"property {name} has the illegal value {value}", rule="[MQTT-2.2.2-2]"
                )
        if repeatable:
            prior = values.get(name)
            if prior is None:
                values[name] = (value,)
            elif context is PacketType.SUBSCRIBE:
                raise ProtocolViolation(
                    "SUBSCRIBE carries at most one Subscription Identifier",
                    rule="[MQTT-3.8.2.1.2]",
                )
            else:
                values[name] = (*prior, value)  # type: ignore[misc]
        elif name in values:
            raise ProtocolViolation(f"property {name} appears twice", rule="[MQTT-2.2.2-2]")
        else:
            values[name] = value
    return _trusted_properties(values), stop
