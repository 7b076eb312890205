"""Hand-written builders of raw MQTT packet bytes, for tests only.

This module is deliberately independent of ``tidemq``: it imports nothing from
the package under test (stdlib only), so that a bug in our codec cannot be
mirrored here.  It is written directly from the MQTT 3.1.1 and MQTT 5.0
specifications, in the spirit of the ``gen_*`` helpers that broker test suites
commonly use.

Protocol versions
-----------------
Every generator that differs between versions takes ``proto_ver``:

* ``3`` -- MQTT 3.1 (protocol name ``"MQIsdp"``, level 3),
* ``4`` -- MQTT 3.1.1 (protocol name ``"MQTT"``, level 4; the default),
* ``5`` -- MQTT 5.0 (protocol name ``"MQTT"``, level 5).

Anything ``>= 5`` is framed as MQTT 5 (properties are written); anything
``< 5`` is framed as 3.1/3.1.1.  For CONNECT the value is also written
verbatim as the protocol level byte, so ``gen_connect("c", proto_ver=6)``
produces a v5-shaped CONNECT that announces an unsupported level.

Properties convention
---------------------
There are two property helpers:

* ``proplist(*items)`` encodes properties *without* the Property Length
  prefix.  This is what every generator's ``properties=`` (and
  ``will_properties=``) argument expects: the generator adds the Variable Byte
  Integer length itself.  Raw, hand-crafted bytes (e.g. an unknown property
  id, a truncated value) can be passed the same way.
* ``props(*items)`` returns ``varint(len) + proplist(*items)``, i.e. a complete
  property block, for tests that assemble a packet body by hand with
  ``packet()``.

Never pass the output of ``props()`` to a generator's ``properties=``: the
length would be written twice.

Each item is ``(property_id, value)``; the wire type is looked up in
``PROPERTY_TYPES`` (every MQTT 5 property id).  Values are ``int`` for
byte / two-byte / four-byte / variable-byte-integer properties, ``str`` or
``bytes`` for UTF-8 strings (``bytes`` are written as they are, so tests can
send invalid UTF-8), ``bytes`` for binary data, and a ``(name, value)`` pair of
``str``/``bytes`` for the User Property (0x26).

Short forms (MQTT 5)
--------------------
* PUBACK/PUBREC/PUBREL/PUBCOMP: reason code 0 and no properties -> only the
  packet identifier (remaining length 2); a non-zero reason code and no
  properties -> identifier + reason code (remaining length 3, spec 3.4.2.2.1);
  otherwise identifier + reason code + property length + properties.
* DISCONNECT: reason code 0 and no properties -> empty body; reason code only
  -> one byte; otherwise reason code + property length + properties.
* AUTH: reason code 0 and no properties -> empty body; otherwise reason code +
  property length + properties (the spec only sanctions omitting both).

Malformed packets
-----------------
The generators do not validate semantics (a QoS of 3, a password without a
user name, an empty SUBSCRIBE, ... are all produced as asked).  For anything
that cannot be expressed through the arguments, assemble the body from the
primitives and frame it with ``packet(first_byte, body)``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "PROPERTY_TYPES",
    "SPEC_CONNECT_VARIABLE_HEADER_EXAMPLE",
    "SPEC_FIXED_HEADER_EXAMPLES",
    "SPEC_PUBLISH_VARIABLE_HEADER_EXAMPLE",
    "SPEC_REMAINING_LENGTH_EXAMPLES",
    "SPEC_SUBACK_PAYLOAD_EXAMPLE",
    "SPEC_SUBSCRIBE_PAYLOAD_EXAMPLE",
    "SPEC_UNSUBSCRIBE_PAYLOAD_EXAMPLE",
    "SPEC_UTF8_EXAMPLE",
    "binary",
    "gen_auth",
    "gen_connack",
    "gen_connect",
    "gen_disconnect",
    "gen_pingreq",
    "gen_pingresp",
    "gen_puback",
    "gen_pubcomp",
    "gen_publish",
    "gen_pubrec",
    "gen_pubrel",
    "gen_suback",
    "gen_subscribe",
    "gen_subscribe_one",
    "gen_unsuback",
    "gen_unsubscribe",
    "packet",
    "prop",
    "proplist",
    "props",
    "sub_options",
    "u8",
    "u16",
    "u32",
    "utf8",
    "varint",
]

# ---------------------------------------------------------------------------
# Limits
# ---------------------------------------------------------------------------

VARINT_MAX: Final = 268_435_455  # 0xFF 0xFF 0xFF 0x7F, the 4-byte maximum
STRING_MAX: Final = 65_535  # two-byte length prefix

# ---------------------------------------------------------------------------
# Primitives
# ---------------------------------------------------------------------------


def varint(n: int) -> bytes:
    """Variable Byte Integer (remaining length encoding), 1 to 4 bytes."""
    if not 0 <= n <= VARINT_MAX:
        raise ValueError(f"varint out of range: {n}")
    out = bytearray()
    while True:
        digit = n % 128
        n //= 128
        if n > 0:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def u8(n: int) -> bytes:
    """One byte."""
    return struct.pack(">B", n)


def u16(n: int) -> bytes:
    """Two Byte Integer, big-endian."""
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    """Four Byte Integer, big-endian."""
    return struct.pack(">I", n)


def utf8(s: str | bytes) -> bytes:
    """UTF-8 Encoded String: two-byte length then the bytes.

    A ``str`` is encoded as UTF-8; ``bytes`` are written unchanged, so tests can
    produce invalid UTF-8, U+0000, or encoded surrogates on purpose.
    """
    data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    if len(data) > STRING_MAX:
        raise ValueError(f"string too long for a two-byte length: {len(data)}")
    return u16(len(data)) + data


def binary(b: bytes) -> bytes:
    """Binary Data: two-byte length then the bytes."""
    data = bytes(b)
    if len(data) > STRING_MAX:
        raise ValueError(f"binary data too long for a two-byte length: {len(data)}")
    return u16(len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    """Fixed header (first byte + remaining length) followed by ``body``."""
    return u8(first_byte) + varint(len(body)) + body


# ---------------------------------------------------------------------------
# MQTT 5 properties
# ---------------------------------------------------------------------------

BYTE: Final = "byte"
TWO_BYTE_INT: Final = "u16"
FOUR_BYTE_INT: Final = "u32"
VARINT: Final = "varint"
UTF8_STRING: Final = "utf8"
BINARY_DATA: Final = "binary"
UTF8_PAIR: Final = "utf8pair"

#: Every MQTT 5.0 property identifier (spec 2.2.2.2, Table 2-4) -> wire type.
PROPERTY_TYPES: Final[dict[int, str]] = {
    0x01: BYTE,  # Payload Format Indicator
    0x02: FOUR_BYTE_INT,  # Message Expiry Interval
    0x03: UTF8_STRING,  # Content Type
    0x08: UTF8_STRING,  # Response Topic
    0x09: BINARY_DATA,  # Correlation Data
    0x0B: VARINT,  # Subscription Identifier
    0x11: FOUR_BYTE_INT,  # Session Expiry Interval
    0x12: UTF8_STRING,  # Assigned Client Identifier
    0x13: TWO_BYTE_INT,  # Server Keep Alive
    0x15: UTF8_STRING,  # Authentication Method
    0x16: BINARY_DATA,  # Authentication Data
    0x17: BYTE,  # Request Problem Information
    0x18: FOUR_BYTE_INT,  # Will Delay Interval
    0x19: BYTE,  # Request Response Information
    0x1A: UTF8_STRING,  # Response Information
    0x1C: UTF8_STRING,  # Server Reference
    0x1F: UTF8_STRING,  # Reason String
    0x21: TWO_BYTE_INT,  # Receive Maximum
    0x22: TWO_BYTE_INT,  # Topic Alias Maximum
    0x23: TWO_BYTE_INT,  # Topic Alias
    0x24: BYTE,  # Maximum QoS
    0x25: BYTE,  # Retain Available
    0x26: UTF8_PAIR,  # User Property
    0x27: FOUR_BYTE_INT,  # Maximum Packet Size
    0x28: BYTE,  # Wildcard Subscription Available
    0x29: BYTE,  # Subscription Identifier Available
    0x2A: BYTE,  # Shared Subscription Available
}

# Readable names for the property identifiers.
PAYLOAD_FORMAT_INDICATOR: Final = 0x01
MESSAGE_EXPIRY_INTERVAL: Final = 0x02
CONTENT_TYPE: Final = 0x03
RESPONSE_TOPIC: Final = 0x08
CORRELATION_DATA: Final = 0x09
SUBSCRIPTION_IDENTIFIER: Final = 0x0B
SESSION_EXPIRY_INTERVAL: Final = 0x11
ASSIGNED_CLIENT_IDENTIFIER: Final = 0x12
SERVER_KEEP_ALIVE: Final = 0x13
AUTHENTICATION_METHOD: Final = 0x15
AUTHENTICATION_DATA: Final = 0x16
REQUEST_PROBLEM_INFORMATION: Final = 0x17
WILL_DELAY_INTERVAL: Final = 0x18
REQUEST_RESPONSE_INFORMATION: Final = 0x19
RESPONSE_INFORMATION: Final = 0x1A
SERVER_REFERENCE: Final = 0x1C
REASON_STRING: Final = 0x1F
RECEIVE_MAXIMUM: Final = 0x21
TOPIC_ALIAS_MAXIMUM: Final = 0x22
TOPIC_ALIAS: Final = 0x23
MAXIMUM_QOS: Final = 0x24
RETAIN_AVAILABLE: Final = 0x25
USER_PROPERTY: Final = 0x26
MAXIMUM_PACKET_SIZE: Final = 0x27
WILDCARD_SUBSCRIPTION_AVAILABLE: Final = 0x28
SUBSCRIPTION_IDENTIFIER_AVAILABLE: Final = 0x29
SHARED_SUBSCRIPTION_AVAILABLE: Final = 0x2A


def _as_int(pid: int, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"property 0x{pid:02X} needs an int, got {type(value).__name__}")
    return value


def _as_str_or_bytes(pid: int, value: object) -> str | bytes:
    if not isinstance(value, str | bytes):
        raise TypeError(f"property 0x{pid:02X} needs str or bytes, got {type(value).__name__}")
    return value


def prop(pid: int, value: object) -> bytes:
    """One property: identifier (as a Variable Byte Integer) then its value."""
    try:
        kind = PROPERTY_TYPES[pid]
    except KeyError:
        raise ValueError(f"unknown MQTT 5 property id 0x{pid:02X}") from None
    if kind == BYTE:
        encoded = u8(_as_int(pid, value))
    elif kind == TWO_BYTE_INT:
        encoded = u16(_as_int(pid, value))
    elif kind == FOUR_BYTE_INT:
        encoded = u32(_as_int(pid, value))
    elif kind == VARINT:
        encoded = varint(_as_int(pid, value))
    elif kind == UTF8_STRING:
        encoded = utf8(_as_str_or_bytes(pid, value))
    elif kind == BINARY_DATA:
        if not isinstance(value, bytes):
            raise TypeError(f"property 0x{pid:02X} needs bytes, got {type(value).__name__}")
        encoded = binary(value)
    else:  # UTF8_PAIR
        if not (isinstance(value, tuple) and len(value) == 2):
            raise TypeError(f"property 0x{pid:02X} needs a (name, value) tuple")
        name, val = value
        encoded = utf8(_as_str_or_bytes(pid, name)) + utf8(_as_str_or_bytes(pid, val))
    return varint(pid) + encoded


def proplist(*items: tuple[int, object]) -> bytes:
    """Encoded properties WITHOUT the Property Length prefix.

    This is the form every generator's ``properties=`` argument takes.
    """
    return b"".join(prop(pid, value) for pid, value in items)


def props(*items: tuple[int, object]) -> bytes:
    """A full property block: Property Length (varint) + encoded properties."""
    body = proplist(*items)
    return varint(len(body)) + body


def _prop_block(properties: bytes) -> bytes:
    return varint(len(properties)) + properties


# ---------------------------------------------------------------------------
# Packet generators
# ---------------------------------------------------------------------------

CONNECT: Final = 0x10
CONNACK: Final = 0x20
PUBLISH: Final = 0x30
PUBACK: Final = 0x40
PUBREC: Final = 0x50
PUBREL: Final = 0x62  # reserved flags 0010
PUBCOMP: Final = 0x70
SUBSCRIBE: Final = 0x82  # reserved flags 0010
SUBACK: Final = 0x90
UNSUBSCRIBE: Final = 0xA2  # reserved flags 0010
UNSUBACK: Final = 0xB0
PINGREQ: Final = 0xC0
PINGRESP: Final = 0xD0
DISCONNECT: Final = 0xE0
AUTH: Final = 0xF0


def _is_v5(proto_ver: int) -> bool:
    return proto_ver >= 5


def gen_connect(
    client_id: str | bytes,
    *,
    clean_session: bool = True,
    keepalive: int = 60,
    username: str | bytes | None = None,
    password: str | bytes | None = None,
    will_topic: str | bytes | None = None,
    will_payload: bytes = b"",
    will_qos: int = 0,
    will_retain: bool = False,
    will_properties: bytes = b"",
    properties: bytes = b"",
    proto_ver: int = 4,
    proto_name: str | bytes | None = None,
) -> bytes:
    """CONNECT (spec 3.1).

    The Will Flag is set when ``will_topic`` is not None.  ``proto_name``
    defaults to ``"MQIsdp"`` for ``proto_ver=3`` and ``"MQTT"`` otherwise;
    ``proto_ver`` is written as the protocol level byte.  ``clean_session``
    is the Clean Start flag in MQTT 5.
    """
    if proto_name is None:
        proto_name = "MQIsdp" if proto_ver == 3 else "MQTT"
    flags = 0
    if clean_session:
        flags |= 0x02
    if will_topic is not None:
        flags |= 0x04 | (will_qos << 3)
        if will_retain:
            flags |= 0x20
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80

    body = utf8(proto_name) + u8(proto_ver) + u8(flags) + u16(keepalive)
    if _is_v5(proto_ver):
        body += _prop_block(properties)

    body += utf8(client_id)
    if will_topic is not None:
        if _is_v5(proto_ver):
            body += _prop_block(will_properties)
        body += utf8(will_topic) + binary(will_payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password.encode("utf-8") if isinstance(password, str) else password)
    return packet(CONNECT, body)


def gen_connack(
    *,
    session_present: bool = False,
    rc: int = 0,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """CONNACK (spec 3.2): acknowledge flags, return/reason code, v5 properties."""
    body = u8(0x01 if session_present else 0x00) + u8(rc)
    if _is_v5(proto_ver):
        body += _prop_block(properties)
    return packet(CONNACK, body)


def gen_publish(
    topic: str | bytes,
    *,
    qos: int = 0,
    payload: bytes | str = b"",
    retain: bool = False,
    dup: bool = False,
    mid: int = 0,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """PUBLISH (spec 3.3).  The packet identifier is written only when qos > 0.

    ``topic`` may be ``bytes`` to send invalid UTF-8; a ``str`` payload is
    encoded as UTF-8.
    """
    first = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos > 0:
        body += u16(mid)
    if _is_v5(proto_ver):
        body += _prop_block(properties)
    body += payload.encode("utf-8") if isinstance(payload, str) else payload
    return packet(first, body)


def _gen_pub_ack(
    first_byte: int, mid: int, reason_code: int, properties: bytes, proto_ver: int
) -> bytes:
    body = u16(mid)
    if not _is_v5(proto_ver):
        if reason_code != 0 or properties:
            raise ValueError("reason code / properties need proto_ver=5")
        return packet(first_byte, body)
    if properties:
        body += u8(reason_code) + _prop_block(properties)
    elif reason_code != 0:
        body += u8(reason_code)
    return packet(first_byte, body)


def gen_puback(
    mid: int, *, reason_code: int = 0, properties: bytes = b"", proto_ver: int = 4
) -> bytes:
    """PUBACK (spec 3.4), with the MQTT 5 short forms."""
    return _gen_pub_ack(PUBACK, mid, reason_code, properties, proto_ver)


def gen_pubrec(
    mid: int, *, reason_code: int = 0, properties: bytes = b"", proto_ver: int = 4
) -> bytes:
    """PUBREC (spec 3.5), with the MQTT 5 short forms."""
    return _gen_pub_ack(PUBREC, mid, reason_code, properties, proto_ver)


def gen_pubrel(
    mid: int, *, reason_code: int = 0, properties: bytes = b"", proto_ver: int = 4
) -> bytes:
    """PUBREL (spec 3.6), first byte 0x62, with the MQTT 5 short forms."""
    return _gen_pub_ack(PUBREL, mid, reason_code, properties, proto_ver)


def gen_pubcomp(
    mid: int, *, reason_code: int = 0, properties: bytes = b"", proto_ver: int = 4
) -> bytes:
    """PUBCOMP (spec 3.7), with the MQTT 5 short forms."""
    return _gen_pub_ack(PUBCOMP, mid, reason_code, properties, proto_ver)


def sub_options(
    qos: int,
    *,
    no_local: bool = False,
    retain_as_published: bool = False,
    retain_handling: int = 0,
) -> int:
    """SUBSCRIBE options byte: qos | no_local<<2 | rap<<3 | retain_handling<<4."""
    return qos | (int(no_local) << 2) | (int(retain_as_published) << 3) | (retain_handling << 4)


def gen_subscribe(
    mid: int,
    subscriptions: Sequence[tuple[str | bytes, int]],
    *,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """SUBSCRIBE (spec 3.8), first byte 0x82.

    ``subscriptions`` is a list of ``(topic_filter, options_byte)``; the
    options byte is written verbatim (for v3/v4 it is the requested QoS).
    """
    body = u16(mid)
    if _is_v5(proto_ver):
        body += _prop_block(properties)
    for topic_filter, options in subscriptions:
        body += utf8(topic_filter) + u8(options)
    return packet(SUBSCRIBE, body)


def gen_subscribe_one(
    mid: int,
    topic: str | bytes,
    qos: int,
    *,
    no_local: bool = False,
    retain_as_published: bool = False,
    retain_handling: int = 0,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """SUBSCRIBE with a single topic filter; options built with ``sub_options``."""
    options = sub_options(
        qos,
        no_local=no_local,
        retain_as_published=retain_as_published,
        retain_handling=retain_handling,
    )
    return gen_subscribe(mid, [(topic, options)], properties=properties, proto_ver=proto_ver)


def gen_suback(
    mid: int, codes: Iterable[int], *, properties: bytes = b"", proto_ver: int = 4
) -> bytes:
    """SUBACK (spec 3.9): packet id, v5 properties, one return/reason code each."""
    body = u16(mid)
    if _is_v5(proto_ver):
        body += _prop_block(properties)
    body += bytes(codes)
    return packet(SUBACK, body)


def gen_unsubscribe(
    mid: int,
    topics: Sequence[str | bytes],
    *,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """UNSUBSCRIBE (spec 3.10), first byte 0xA2."""
    body = u16(mid)
    if _is_v5(proto_ver):
        body += _prop_block(properties)
    for topic_filter in topics:
        body += utf8(topic_filter)
    return packet(UNSUBSCRIBE, body)


def gen_unsuback(
    mid: int,
    codes: Iterable[int] | None = None,
    *,
    properties: bytes = b"",
    proto_ver: int = 4,
) -> bytes:
    """UNSUBACK (spec 3.11).  Before MQTT 5 it has no payload (remaining length 2)."""
    body = u16(mid)
    if not _is_v5(proto_ver):
        code_bytes = bytes(codes) if codes is not None else b""
        if code_bytes or properties:
            raise ValueError("UNSUBACK reason codes / properties need proto_ver=5")
        return packet(UNSUBACK, body)
    body += _prop_block(properties)
    if codes is not None:
        body += bytes(codes)
    return packet(UNSUBACK, body)


def gen_pingreq() -> bytes:
    """PINGREQ (spec 3.12)."""
    return packet(PINGREQ, b"")


def gen_pingresp() -> bytes:
    """PINGRESP (spec 3.13)."""
    return packet(PINGRESP, b"")


def gen_disconnect(*, reason_code: int = 0, properties: bytes = b"", proto_ver: int = 4) -> bytes:
    """DISCONNECT (spec 3.14), with the MQTT 5 short forms."""
    if not _is_v5(proto_ver):
        if reason_code != 0 or properties:
            raise ValueError("DISCONNECT reason code / properties need proto_ver=5")
        return packet(DISCONNECT, b"")
    if properties:
        body = u8(reason_code) + _prop_block(properties)
    elif reason_code != 0:
        body = u8(reason_code)
    else:
        body = b""
    return packet(DISCONNECT, body)


def gen_auth(*, reason_code: int = 0, properties: bytes = b"") -> bytes:
    """AUTH (MQTT 5 only, spec 3.15).

    Empty body for reason code 0 without properties; otherwise reason code,
    property length and properties.
    """
    if reason_code == 0 and not properties:
        return packet(AUTH, b"")
    return packet(AUTH, u8(reason_code) + _prop_block(properties))


# ---------------------------------------------------------------------------
# Byte examples that appear literally in the MQTT 3.1.1 specification
# ---------------------------------------------------------------------------

#: Section 2.2.3: the non-normative comment (64 -> 0x40, 321 -> 193 2) and
#: Table 2.4 "Size of Remaining Length field" (the bounds of each width).
SPEC_REMAINING_LENGTH_EXAMPLES: Final[list[tuple[int, bytes]]] = [
    (0, b"\x00"),
    (64, b"\x40"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (321, b"\xc1\x02"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]

#: Section 1.5.3, Figure 1.2: "A" followed by U+2A6D4 as a UTF-8 Encoded String.
SPEC_UTF8_EXAMPLE: Final[tuple[str, bytes]] = (
    "A\U0002a6d4",
    b"\x00\x05\x41\xf0\xaa\x9b\x94",
)

#: Section 3.1.2, Figure 3.6 "Variable header non normative example": protocol
#: name "MQTT", level 4, connect flags 0xCE (user name, password, will QoS 1,
#: will flag, clean session), keep alive 10.
SPEC_CONNECT_VARIABLE_HEADER_EXAMPLE: Final[bytes] = b"\x00\x04MQTT\x04\xce\x00\x0a"

#: Section 3.3.2.3, Figure 3.11: topic name "a/b", packet identifier 10.
SPEC_PUBLISH_VARIABLE_HEADER_EXAMPLE: Final[tuple[str, int, bytes]] = (
    "a/b",
    10,
    b"\x00\x03a/b\x00\x0a",
)

#: Section 3.8.3.1, Figure 3.23: "a/b" QoS 1, "c/d" QoS 2.  (Figure 3.21 shows
#: the SUBSCRIBE variable header for packet identifier 10: 0x00 0x0A.)
SPEC_SUBSCRIBE_PAYLOAD_EXAMPLE: Final[tuple[list[tuple[str, int]], bytes]] = (
    [("a/b", 1), ("c/d", 2)],
    b"\x00\x03a/b\x01\x00\x03c/d\x02",
)

#: Section 3.9.3.1, Figure 3.27: success QoS 0, success QoS 2, failure.
SPEC_SUBACK_PAYLOAD_EXAMPLE: Final[tuple[list[int], bytes]] = (
    [0x00, 0x02, 0x80],
    b"\x00\x02\x80",
)

#: Section 3.10.3.1, Figure 3.30: topic filters "a/b" and "c/d".
SPEC_UNSUBSCRIBE_PAYLOAD_EXAMPLE: Final[tuple[list[str], bytes]] = (
    ["a/b", "c/d"],
    b"\x00\x03a/b\x00\x03c/d",
)

#: Complete fixed headers given bit by bit in Figures 3.31, 3.33, 3.34, 3.35
#: (UNSUBACK's remaining length is always 2; the others have no body).
SPEC_FIXED_HEADER_EXAMPLES: Final[dict[str, bytes]] = {
    "UNSUBACK": b"\xb0\x02",
    "PINGREQ": b"\xc0\x00",
    "PINGRESP": b"\xd0\x00",
    "DISCONNECT": b"\xe0\x00",
}
