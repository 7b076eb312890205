"""Packets ↔ bytes, for MQTT 3.1, 3.1.1 and 5.0. No connection state lives here.

* ``encode(packet, version) -> bytes`` validates that *version* can carry the packet and
  serialises it.
* ``decode(data, version) -> Packet`` decodes exactly one complete packet (tests, tools).
* ``PacketReader`` is the incremental framer used on connections: ``feed`` chunks of any
  size, ``next_packet()`` returns a packet or ``NEED_DATA``. The maximum packet size is
  enforced as soon as the fixed header is known, before the body is buffered, and a body
  that trickles in is gathered in a list and joined once, so a large packet costs O(n).
* ``encode_publish_parts`` / ``splice_packet_id`` serve fan-out: a PUBLISH is encoded once
  per wire variant and only the two packet-id bytes differ between receivers.

Decoders read fields in place from the receive buffer (``bytes``) using offsets; only the
values themselves (topic, payload, ...) are sliced out.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import fields
from enum import Enum
from typing import Any, Final

from ._wire import (
    Buffer,
    binary,
    read_binary,
    read_u8,
    read_u16,
    read_utf8,
    u16,
    utf8,
    varint,
)
from .enums import PacketType, ProtocolVersion, RetainHandling
from .errors import (
    LocalProtocolError,
    MalformedPacket,
    PacketTooLarge,
    ProtocolViolation,
    RemoteProtocolError,
    TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from .packets import (
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from .properties import NO_PROPERTIES, WILL, Properties, decode_properties, encode_properties
from .reason_codes import ConnAckReturnCodeV3, v3_connack_code

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "NEED_DATA",
    "NeedData",
    "PacketReader",
    "decode",
    "encode",
    "encode_publish_parts",
    "splice_packet_id",
]

# The protocol's own ceiling: 1 byte of header + 4 of remaining length + 268,435,455 bytes.
# Brokers configure far less (Mosquitto and EMQX default to 1 MiB for the broker).
PROTOCOL_MAX_PACKET_SIZE: Final = 268_435_460
DEFAULT_MAX_PACKET_SIZE: Final = PROTOCOL_MAX_PACKET_SIZE

V5: Final = 5
_PROTO_NAMES = {3: b"MQIsdp", 4: b"MQTT", 5: b"MQTT"}


class NeedData(Enum):
    """``PacketReader.next_packet`` returns ``NEED_DATA`` until a whole packet is buffered."""

    NEED_DATA = "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA


# --- encoding -----------------------------------------------------------------------------


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return bytes((first,)) + varint(n) + body


def _props(props: Properties, version: int, what: str) -> bytes:
    if version == V5:
        return encode_properties(props)
    if props is not NO_PROPERTIES and props != NO_PROPERTIES:
        raise LocalProtocolError(f"{what} properties need MQTT 5")
    return b""


def _v5_only_code(code: int, version: int, what: str) -> None:
    if code and version != V5:
        raise LocalProtocolError(f"{what} reason code 0x{code:02x} needs MQTT 5")


def _encode_connect(p: Connect, version: int) -> bytes:
    level = int(p.protocol_version)
    flags = 0x02 if p.clean_start else 0
    will = p.will
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.password is not None:
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    parts = [
        utf8(_PROTO_NAMES[level].decode()),
        bytes((level, flags)),
        u16(p.keepalive),
        _props(p.properties, level, "CONNECT"),
        utf8(p.client_id),
    ]
    if will is not None:
        if level == V5:
            parts.append(encode_properties(will.properties))
        elif will.properties is not NO_PROPERTIES and will.properties != NO_PROPERTIES:
            raise LocalProtocolError("will properties need MQTT 5")
        parts.append(utf8(will.topic))
        parts.append(binary(will.payload))
    if p.username is not None:
        parts.append(utf8(p.username))
    if p.password is not None:
        parts.append(binary(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: ConnAck, version: int) -> bytes:
    if version == V5:
        body = bytes((1 if p.session_present else 0, p.reason_code)) + encode_properties(
            p.properties
        )
        return _frame(0x20, body)
    code = v3_connack_code(p.reason_code)
    if code is None:
        raise LocalProtocolError(
            f"CONNACK reason 0x{p.reason_code:02x} has no MQTT 3 equivalent; close instead"
        )
    _props(p.properties, version, "CONNACK")
    if version == 3 and p.session_present:
        raise LocalProtocolError("MQTT 3.1 CONNACK has no session present flag")
    return bytes((0x20, 2, 1 if p.session_present else 0, code))


def _encode_ack(first: int, p: PubAck | PubRec | PubRel | PubComp, version: int) -> bytes:
    pid = p.packet_id
    if version == V5:
        if p.properties is not NO_PROPERTIES and p.properties != NO_PROPERTIES:
            body = u16(pid) + bytes((p.reason_code,)) + encode_properties(p.properties)
            return _frame(first, body)
        if p.reason_code:
            return bytes((first, 3, pid >> 8, pid & 0xFF, p.reason_code))
        # Short form: reason code 0 and no properties may be omitted (MQTT 5.0 §3.4.2.1).
        return bytes((first, 2, pid >> 8, pid & 0xFF))
    _v5_only_code(p.reason_code, version, type(p).__name__)
    _props(p.properties, version, type(p).__name__)
    return bytes((first, 2, pid >> 8, pid & 0xFF))


def _encode_publish(p: Publish, version: int) -> bytes:
    if p.qos and not p.packet_id:
        raise LocalProtocolError("QoS > 0 PUBLISH needs a packet id", rule="[MQTT-2.2.1-3]")
    if not p.topic and (version != V5 or p.properties.topic_alias is None):
        raise LocalProtocolError("empty topic needs a topic alias", rule="[MQTT-4.7.3-1]")
    props = encode_properties(p.properties) if version == V5 else _props(p.properties, 4, "")
    head, tail = encode_publish_parts(
        p.topic.encode("utf-8"), p.payload, p.qos, p.retain, p.dup, props
    )
    if p.qos:
        return head + u16(p.packet_id) + tail
    return head + tail


# Fixed header with a one-byte remaining length, then the topic length: the common head.
_SHORT_PUBLISH_HEAD: Final = struct.Struct(">BBH").pack


def encode_publish_parts(
    topic: bytes,
    payload: bytes,
    qos: int,
    retain: bool,
    dup: bool,
    properties: bytes,
) -> tuple[bytes, bytes]:
    """Encode a PUBLISH as ``(head, tail)`` around the packet id.

    For QoS 0 the packet is ``head + tail``; for QoS 1/2 it is
    ``head + packet_id.to_bytes(2, "big") + tail`` (see ``splice_packet_id``). *properties*
    is the encoded property block (with its length) for MQTT 5 and ``b""`` for MQTT 3.
    The bytes can be shared by every receiver of the same wire variant.
    """
    first = 0x30 | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
    tlen = len(topic)
    remaining = 2 + tlen + (2 if qos else 0) + len(properties) + len(payload)
    if remaining < 128:
        head = _SHORT_PUBLISH_HEAD(first, remaining, tlen) + topic
    else:
        head = bytes((first,)) + varint(remaining) + bytes((tlen >> 8, tlen & 0xFF)) + topic
    if properties:
        return head, properties + payload
    return head, payload


def splice_packet_id(head: bytes, tail: bytes, packet_id: int) -> bytes:
    """The bytes of a shared QoS 1/2 PUBLISH for one receiver's packet id."""
    return head + packet_id.to_bytes(2, "big") + tail


def _encode_subscribe(p: Subscribe, version: int) -> bytes:
    parts = [u16(p.packet_id), _props(p.properties, version, "SUBSCRIBE")]
    for sub in p.subscriptions:
        options = sub.qos
        if version == V5:
            options |= (
                (4 if sub.no_local else 0)
                | (8 if sub.retain_as_published else 0)
                | (int(sub.retain_handling) << 4)
            )
        elif sub.no_local or sub.retain_as_published or sub.retain_handling:
            raise LocalProtocolError("subscription options beyond QoS need MQTT 5")
        parts.append(utf8(sub.topic_filter))
        parts.append(bytes((options,)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, version: int) -> bytes:
    codes = p.reason_codes
    if version != V5:
        for code in codes:
            if code > 2 and not (code == 0x80 and version == 4):
                raise LocalProtocolError(
                    f"SUBACK code 0x{code:02x} needs MQTT 5; use v3_suback_code()"
                )
    return _frame(0x90, u16(p.packet_id) + _props(p.properties, version, "SUBACK") + bytes(codes))


def _encode_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    parts = [u16(p.packet_id), _props(p.properties, version, "UNSUBSCRIBE")]
    parts.extend(utf8(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, version: int) -> bytes:
    if version == V5:
        if not p.reason_codes:
            raise LocalProtocolError("MQTT 5 UNSUBACK needs a reason code per topic filter")
        body = u16(p.packet_id) + encode_properties(p.properties) + bytes(p.reason_codes)
        return _frame(0xB0, body)
    if p.reason_codes:
        raise LocalProtocolError("MQTT 3 UNSUBACK carries no reason codes")
    _props(p.properties, version, "UNSUBACK")
    return bytes((0xB0, 2)) + u16(p.packet_id)


def _encode_disconnect(p: Disconnect, version: int) -> bytes:
    if version == V5:
        if p.properties is not NO_PROPERTIES and p.properties != NO_PROPERTIES:
            return _frame(0xE0, bytes((p.reason_code,)) + encode_properties(p.properties))
        if p.reason_code:
            return bytes((0xE0, 1, p.reason_code))
        return b"\xe0\x00"
    _v5_only_code(p.reason_code, version, "DISCONNECT")
    _props(p.properties, version, "DISCONNECT")
    return b"\xe0\x00"


def _encode_auth(p: Auth, version: int) -> bytes:
    if version != V5:
        raise LocalProtocolError("AUTH needs MQTT 5")
    if p.reason_code == 0 and (p.properties is NO_PROPERTIES or p.properties == NO_PROPERTIES):
        return b"\xf0\x00"
    return _frame(0xF0, bytes((p.reason_code,)) + encode_properties(p.properties))


_ENCODERS: dict[type[Packet], Callable[[object, int], bytes]] = {
    Connect: _encode_connect,  # type: ignore[dict-item]
    ConnAck: _encode_connack,  # type: ignore[dict-item]
    Publish: _encode_publish,  # type: ignore[dict-item]
    PubAck: lambda p, v: _encode_ack(0x40, p, v),  # type: ignore[arg-type]
    PubRec: lambda p, v: _encode_ack(0x50, p, v),  # type: ignore[arg-type]
    PubRel: lambda p, v: _encode_ack(0x62, p, v),  # type: ignore[arg-type]
    PubComp: lambda p, v: _encode_ack(0x70, p, v),  # type: ignore[arg-type]
    Subscribe: _encode_subscribe,  # type: ignore[dict-item]
    SubAck: _encode_suback,  # type: ignore[dict-item]
    Unsubscribe: _encode_unsubscribe,  # type: ignore[dict-item]
    UnsubAck: _encode_unsuback,  # type: ignore[dict-item]
    PingReq: lambda p, v: b"\xc0\x00",
    PingResp: lambda p, v: b"\xd0\x00",
    Disconnect: _encode_disconnect,  # type: ignore[dict-item]
    Auth: _encode_auth,  # type: ignore[dict-item]
}


def encode(packet: Packet, version: int) -> bytes:
    """Serialise *packet* for protocol level *version* (3, 4 or 5).

    Raises:
        LocalProtocolError: the packet cannot be expressed in *version* (properties or
            reason codes on MQTT 3, AUTH on MQTT 3, QoS > 0 without a packet id, ...).
    """
    if version not in (3, 4, 5):
        raise LocalProtocolError(f"unknown protocol version {version!r}")
    try:
        encoder = _ENCODERS[type(packet)]
    except KeyError:
        raise LocalProtocolError(f"not a packet: {packet!r}") from None
    return encoder(packet, version)


# --- decoding -----------------------------------------------------------------------------

_new = object.__new__
_set = object.__setattr__


def _decode_connect(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Connect:
    name, pos = read_utf8(buf, pos, end)
    level, pos = read_u8(buf, pos, end)
    if (name, level) not in (("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)):
        if name in ("MQTT", "MQIsdp"):
            # [MQTT-3.1.2-2]: answer CONNACK 0x01 (v3) / 0x84 (v5), then close.
            raise UnsupportedProtocolVersion(
                f"unsupported protocol level {level}", rule="[MQTT-3.1.2-2]"
            )
        raise ProtocolViolation(f"unknown protocol name {name!r}", rule="[MQTT-3.1.2-1]")
    cflags, pos = read_u8(buf, pos, end)
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set", rule="[MQTT-3.1.2-3]")
    keepalive, pos = read_u16(buf, pos, end)
    props = NO_PROPERTIES
    if level == V5:
        props, pos = decode_properties(buf, pos, end, PacketType.CONNECT)
    client_id, pos = read_utf8(buf, pos, end)
    will = None
    will_qos = (cflags >> 3) & 3
    if cflags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3", rule="[MQTT-3.1.2-14]")
        will_props = NO_PROPERTIES
        if level == V5:
            will_props, pos = decode_properties(buf, pos, end, WILL)
        will_topic, pos = read_utf8(buf, pos, end)
        if not will_topic or "+" in will_topic or "#" in will_topic:
            raise MalformedPacket("will topic is not a valid topic name", rule="[MQTT-3.1.3-11]")
        will_payload, pos = read_binary(buf, pos, end)
        will = _new(Will)
        _set(will, "topic", will_topic)
        _set(will, "payload", will_payload)
        _set(will, "qos", will_qos)
        _set(will, "retain", bool(cflags & 0x20))
        _set(will, "properties", will_props)
    elif will_qos or cflags & 0x20:
        raise MalformedPacket(
            "will QoS/retain set without the will flag", rule="[MQTT-3.1.2-11] [MQTT-3.1.2-13]"
        )
    username = password = None
    if cflags & 0x80:
        username, pos = read_utf8(buf, pos, end)
    elif cflags & 0x40 and level != V5:
        raise MalformedPacket("password flag without user name flag", rule="[MQTT-3.1.2-22]")
    if cflags & 0x40:
        password, pos = read_binary(buf, pos, end)
    if pos != end:
        raise MalformedPacket("bytes left over after the CONNECT payload")
    p = _new(Connect)
    _set(p, "protocol_version", ProtocolVersion(level))
    _set(p, "client_id", client_id)
    _set(p, "clean_start", bool(cflags & 0x02))
    _set(p, "keepalive", keepalive)
    _set(p, "username", username)
    _set(p, "password", password)
    _set(p, "will", will)
    _set(p, "properties", props)
    return p


_V3_CONNACK_TO_V5 = {
    int(ConnAckReturnCodeV3.ACCEPTED): 0x00,
    int(ConnAckReturnCodeV3.UNACCEPTABLE_PROTOCOL_VERSION): 0x84,
    int(ConnAckReturnCodeV3.IDENTIFIER_REJECTED): 0x85,
    int(ConnAckReturnCodeV3.SERVER_UNAVAILABLE): 0x88,
    int(ConnAckReturnCodeV3.BAD_USERNAME_OR_PASSWORD): 0x86,
    int(ConnAckReturnCodeV3.NOT_AUTHORIZED): 0x87,
}


def _decode_connack(flags: int, buf: Buffer, pos: int, end: int, version: int) -> ConnAck:
    ack_flags, pos = read_u8(buf, pos, end)
    code, pos = read_u8(buf, pos, end)
    props = NO_PROPERTIES
    if version == V5:
        if ack_flags & 0xFE:
            raise MalformedPacket("CONNACK reserved flags are set", rule="[MQTT-3.2.2-1]")
        _check_code(code, PacketType.CONNACK)
        props, pos = decode_properties(buf, pos, end, PacketType.CONNACK)
    else:
        if version == 4 and ack_flags & 0xFE:
            raise MalformedPacket("CONNACK reserved flags are set", rule="[MQTT-3.2.2-1]")
        if version == 3:
            ack_flags = 0  # MQTT 3.1 has no session present flag; the byte is reserved
        mapped = _V3_CONNACK_TO_V5.get(code)
        if mapped is None:
            raise MalformedPacket(f"unknown CONNACK return code {code}")
        code = mapped
    if ack_flags and code:
        raise ProtocolViolation("session present with a failing CONNACK", rule="[MQTT-3.2.2-6]")
    _expect_end(pos, end)
    p = _new(ConnAck)
    _set(p, "session_present", bool(ack_flags))
    _set(p, "reason_code", code)
    _set(p, "properties", props)
    return p


# Same slot layout as the frozen ``Publish`` but assignable: the decoder fills one and
# switches its ``__class__`` to ``Publish``. That costs a third of setting seven fields
# through ``object.__setattr__`` (measured in bench/codec.py: 540 → 170 ns per packet).
# Made with type() so that it is a Python class (the layout of Publish's) in the mypyc build
# too, where a class statement here would become a native class.
_PublishTwin: Any = type(
    "_PublishTwin", (Packet,), {"__slots__": tuple(f.name for f in fields(Publish))}
)


_BOOL = (False, True)

# Topic names already decoded and checked: most traffic repeats a small set of topics, and
# a hit skips the UTF-8 decode and the three checks, and hands the trie the same str object
# (hash already computed). Bounded: cleared when full, so hostile topic churn costs one
# dict insert per packet and never memory. Only valid topics are cached.
TOPIC_CACHE_SIZE: Final = 4096
_TOPIC_CACHE: dict[bytes, str] = {}


def _decode_publish(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Publish:
    qos = (flags >> 1) & 3
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3", rule="[MQTT-3.3.1-4]")
    if flags & 8 and not qos:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH", rule="[MQTT-3.3.1-2]")
    if pos + 2 > end:
        raise MalformedPacket("packet ends inside the topic length")
    tend = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if tend > end:
        raise MalformedPacket("topic runs past the end of the packet")
    raw_topic = buf[pos + 2 : tend]
    topic = _TOPIC_CACHE.get(raw_topic)  # type: ignore[arg-type]
    if topic is None:
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("topic is not well-formed UTF-8", rule="[MQTT-1.5.4-1]") from None
        if "+" in topic or "#" in topic:
            raise TopicNameInvalid("wildcard in a topic name", rule="[MQTT-3.3.2-2]")
        if "\x00" in topic:
            raise MalformedPacket("topic contains U+0000", rule="[MQTT-1.5.4-2]")
        if len(_TOPIC_CACHE) >= TOPIC_CACHE_SIZE:
            _TOPIC_CACHE.clear()
        _TOPIC_CACHE[bytes(raw_topic)] = topic
    pos = tend
    packet_id = 0
    if qos:
        if pos + 2 > end:
            raise MalformedPacket("packet ends inside the packet id")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolViolation("QoS > 0 PUBLISH with packet id 0", rule="[MQTT-2.2.1-3]")
        pos += 2
    props = NO_PROPERTIES
    if version == V5:
        if pos < end and buf[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(buf, pos, end, PacketType.PUBLISH)
        if not topic and props.topic_alias is None:
            raise ProtocolViolation("empty topic without a topic alias", rule="[MQTT-3.3.2-1]")
    elif not topic:
        raise MalformedPacket("empty topic name", rule="[MQTT-4.7.3-1]")
    b = _new(_PublishTwin)
    b.topic = topic
    b.payload = buf[pos:end] if type(buf) is bytes else bytes(buf[pos:end])
    b.qos = qos
    b.retain = _BOOL[flags & 1]
    b.dup = _BOOL[(flags >> 3) & 1]
    b.packet_id = packet_id
    b.properties = props
    b.__class__ = Publish
    return b  # type: ignore[no-any-return]


def _check_code(code: int, ptype: PacketType) -> None:
    from .reason_codes import reason_code_allowed

    if not reason_code_allowed(code, ptype):
        raise MalformedPacket(f"reason code 0x{code:02x} is not valid in {ptype.name}")


def _expect_end(pos: int, end: int) -> None:
    if pos != end:
        raise MalformedPacket("bytes left over at the end of the packet")


def _make_ack_decoder(
    cls: type[PubAck | PubRec | PubRel | PubComp],
) -> Callable[[int, Buffer, int, int, int], Packet]:
    ptype = cls.type

    def decode_ack(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Packet:
        if pos + 2 > end:
            raise MalformedPacket(f"{ptype.name} too short")
        packet_id = (buf[pos] << 8) | buf[pos + 1]
        if not packet_id:
            raise ProtocolViolation(f"{ptype.name} with packet id 0", rule="[MQTT-2.2.1-3]")
        pos += 2
        code = 0
        props = NO_PROPERTIES
        if version == V5 and pos < end:
            code = buf[pos]
            pos += 1
            _check_code(code, ptype)
            if pos < end:
                props, pos = decode_properties(buf, pos, end, ptype)
        _expect_end(pos, end)
        p = _new(cls)
        _set(p, "packet_id", packet_id)
        _set(p, "reason_code", code)
        _set(p, "properties", props)
        return p

    return decode_ack


def _decode_subscribe(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Subscribe:
    packet_id, pos = read_u16(buf, pos, end)
    if not packet_id:
        raise ProtocolViolation("SUBSCRIBE with packet id 0", rule="[MQTT-2.2.1-3]")
    props = NO_PROPERTIES
    if version == V5:
        props, pos = decode_properties(buf, pos, end, PacketType.SUBSCRIBE)
    subs = []
    while pos < end:
        topic_filter, pos = read_utf8(buf, pos, end)
        options, pos = read_u8(buf, pos, end)
        qos = options & 3
        if qos == 3:
            if version == V5:  # "a Protocol Error" in MQTT 5.0 §3.8.3.1
                raise ProtocolViolation("subscription with Maximum QoS 3")
            raise MalformedPacket("subscription with QoS 3", rule="[MQTT-3-8.3-4]")
        if version == V5:
            if options & 0xC0:
                raise MalformedPacket("subscription reserved bits set", rule="[MQTT-3.8.3-5]")
            handling = (options >> 4) & 3
            if handling == 3:
                raise ProtocolViolation("retain handling 3", rule="[MQTT-3.8.3-5]")
            no_local = bool(options & 4)
            if no_local and topic_filter.startswith(("$share/", "$queue/")):
                raise ProtocolViolation("No Local on a shared subscription", rule="[MQTT-3.8.3-4]")
            rap = bool(options & 8)
        else:
            if options & 0xFC:
                raise MalformedPacket("subscription reserved bits set", rule="[MQTT-3-8.3-4]")
            handling, no_local, rap = 0, False, False
        sub = _new(Subscription)
        _set(sub, "topic_filter", topic_filter)
        _set(sub, "qos", qos)
        _set(sub, "no_local", no_local)
        _set(sub, "retain_as_published", rap)
        _set(sub, "retain_handling", RetainHandling(handling))
        subs.append(sub)
    if not subs:
        raise ProtocolViolation("SUBSCRIBE without topic filters", rule="[MQTT-3.8.3-3]")
    p = _new(Subscribe)
    _set(p, "packet_id", packet_id)
    _set(p, "subscriptions", tuple(subs))
    _set(p, "properties", props)
    return p


def _decode_suback(flags: int, buf: Buffer, pos: int, end: int, version: int) -> SubAck:
    packet_id, pos = read_u16(buf, pos, end)
    props = NO_PROPERTIES
    if version == V5:
        props, pos = decode_properties(buf, pos, end, PacketType.SUBACK)
    codes = tuple(buf[pos:end])
    if not codes:
        raise MalformedPacket("SUBACK without reason codes")
    for code in codes:
        if version == V5:
            _check_code(code, PacketType.SUBACK)
        elif code > 2 and code != 0x80:
            raise MalformedPacket(f"SUBACK return code 0x{code:02x}", rule="[MQTT-3.9.3-2]")
    p = _new(SubAck)
    _set(p, "packet_id", packet_id)
    _set(p, "reason_codes", codes)
    _set(p, "properties", props)
    return p


def _decode_unsubscribe(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Unsubscribe:
    packet_id, pos = read_u16(buf, pos, end)
    if not packet_id:
        raise ProtocolViolation("UNSUBSCRIBE with packet id 0", rule="[MQTT-2.2.1-3]")
    props = NO_PROPERTIES
    if version == V5:
        props, pos = decode_properties(buf, pos, end, PacketType.UNSUBSCRIBE)
    filters = []
    while pos < end:
        topic_filter, pos = read_utf8(buf, pos, end)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE without topic filters", rule="[MQTT-3.10.3-2]")
    p = _new(Unsubscribe)
    _set(p, "packet_id", packet_id)
    _set(p, "topic_filters", tuple(filters))
    _set(p, "properties", props)
    return p


def _decode_unsuback(flags: int, buf: Buffer, pos: int, end: int, version: int) -> UnsubAck:
    packet_id, pos = read_u16(buf, pos, end)
    props = NO_PROPERTIES
    codes: tuple[int, ...] = ()
    if version == V5:
        props, pos = decode_properties(buf, pos, end, PacketType.UNSUBACK)
        codes = tuple(buf[pos:end])
        if not codes:
            raise MalformedPacket("UNSUBACK without reason codes")
        for code in codes:
            _check_code(code, PacketType.UNSUBACK)
        pos = end
    _expect_end(pos, end)
    p = _new(UnsubAck)
    _set(p, "packet_id", packet_id)
    _set(p, "reason_codes", codes)
    _set(p, "properties", props)
    return p


_PINGREQ: Final = PingReq()
_PINGRESP: Final = PingResp()


def _decode_pingreq(flags: int, buf: Buffer, pos: int, end: int, version: int) -> PingReq:
    _expect_end(pos, end)
    return _PINGREQ


def _decode_pingresp(flags: int, buf: Buffer, pos: int, end: int, version: int) -> PingResp:
    _expect_end(pos, end)
    return _PINGRESP


def _decode_disconnect(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Disconnect:
    code = 0
    props = NO_PROPERTIES
    if version == V5 and pos < end:
        code = buf[pos]
        pos += 1
        _check_code(code, PacketType.DISCONNECT)
        if pos < end:
            props, pos = decode_properties(buf, pos, end, PacketType.DISCONNECT)
    _expect_end(pos, end)
    p = _new(Disconnect)
    _set(p, "reason_code", code)
    _set(p, "properties", props)
    return p


def _decode_auth(flags: int, buf: Buffer, pos: int, end: int, version: int) -> Auth:
    if version != V5:
        raise MalformedPacket("AUTH before MQTT 5", rule="[MQTT-2.1.3-1]")
    code = 0
    props = NO_PROPERTIES
    if pos < end:
        code = buf[pos]
        pos += 1
        _check_code(code, PacketType.AUTH)
        props, pos = decode_properties(buf, pos, end, PacketType.AUTH)
    _expect_end(pos, end)
    p = _new(Auth)
    _set(p, "reason_code", code)
    _set(p, "properties", props)
    return p


DecodeFn = Callable[[int, Buffer, int, int, int], Packet]

# Index = packet type (high nibble). Entry 0 is the forbidden type 0.
_DECODERS: tuple[DecodeFn | None, ...] = (
    None,
    _decode_connect,
    _decode_connack,
    _decode_publish,
    _make_ack_decoder(PubAck),
    _make_ack_decoder(PubRec),
    _make_ack_decoder(PubRel),
    _make_ack_decoder(PubComp),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect,
    _decode_auth,
)
# Required fixed-header flags per type [MQTT-2.1.3-1] (v3.1.1: [MQTT-2.2.2-1]); -1 = PUBLISH.
_REQUIRED_FLAGS: tuple[int, ...] = (0, 0, 0, -1, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)


def _decode_body(first: int, buf: Buffer, pos: int, end: int, version: int) -> Packet:
    ptype = first >> 4
    flags = first & 0x0F
    required = _REQUIRED_FLAGS[ptype]
    if required >= 0 and flags != required:
        raise MalformedPacket(
            f"reserved flags 0x{flags:x} on packet type {ptype}", rule="[MQTT-2.1.3-1]"
        )
    decoder = _DECODERS[ptype]
    if decoder is None:
        raise MalformedPacket("packet type 0 is reserved", rule="[MQTT-2.1.3-1]")
    return decoder(flags, buf, pos, end, version)


def decode(data: bytes | bytearray | memoryview, version: int | None) -> Packet:
    """Decode exactly one complete packet from *data*; *version* ``None`` for a server
    before CONNECT (the CONNECT carries its own level).

    Raises:
        MalformedPacket: the bytes are not exactly one well-formed packet.
        RemoteProtocolError: the packet breaks a protocol rule.
    """
    buf = bytes(data)
    reader = PacketReader(version)
    reader.feed(buf)
    packet = reader.next_packet()
    if packet is NEED_DATA:
        raise MalformedPacket("incomplete packet")
    if reader.buffered:
        raise MalformedPacket("bytes after the end of the packet")
    return packet


def _peek_level(buf: Buffer, start: int, end: int) -> int | None:
    """The protocol level of a CONNECT body, if its name and level are well formed."""
    if end - start >= 7 and buf[start : start + 6] == b"\x00\x04MQTT" and buf[start + 6] in (4, 5):
        return buf[start + 6]
    if end - start >= 9 and buf[start : start + 8] == b"\x00\x06MQIsdp" and buf[start + 8] == 3:
        return 3
    return None


# Packets after which a batch ends: what follows them is read only once they are handled.
_BATCH_ENDS: Final = frozenset({Connect, ConnAck, Disconnect})


class PacketReader:
    """Incremental framer and decoder for one byte stream.

    Args:
        version: the protocol level of the stream; ``None`` on a server before CONNECT
            (the CONNECT carries its own level, and ``version`` is then set from it).
        max_packet_size: the largest total packet size accepted, checked as soon as the
            fixed header is complete and before the body is buffered.
    """

    __slots__ = (
        "_buf",
        "_chunks",
        "_chunks_len",
        "_error",
        "_need",
        "_pos",
        "max_packet_size",
        "version",
    )

    def __init__(self, version: int | None = None, max_packet_size: int | None = None) -> None:
        self.version = version
        self.max_packet_size = max_packet_size or PROTOCOL_MAX_PACKET_SIZE
        self._buf = b""
        self._pos = 0
        # A body that arrives in pieces is gathered here and joined once it is complete.
        self._chunks: list[bytes] | None = None
        self._chunks_len = 0
        self._need = 0
        # An error met by ``read_batch`` after it had decoded packets: raised by the next
        # call, so that the packets before it are handled first, in order.
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as packets."""
        return len(self._buf) - self._pos + self._chunks_len

    def feed(self, data: bytes) -> None:
        """Append received bytes. ``data`` may be any length, including partial packets."""
        if type(data) is not bytes:
            data = bytes(data)
        chunks = self._chunks
        if chunks is not None:
            chunks.append(data)
            self._chunks_len += len(data)
            if self._chunks_len < self._need:
                return
            self._buf = b"".join(chunks)
            self._pos = 0
            self._chunks = None
            self._chunks_len = 0
            return
        pos = self._pos
        if pos < len(self._buf):
            self._buf = self._buf[pos:] + data
        else:
            self._buf = data
        self._pos = 0

    def next_packet(self) -> Packet | NeedData:
        """Return the next complete packet, or ``NEED_DATA``.

        Raises:
            PacketTooLarge: the fixed header announces a packet over ``max_packet_size``.
            MalformedPacket, RemoteProtocolError: the packet is invalid.
        """
        if self._chunks is not None:
            return NEED_DATA
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 2:
            return NEED_DATA
        first = buf[pos]
        byte = buf[pos + 1]
        if byte < 128:
            remaining = byte
            start = pos + 2
        else:
            remaining = byte & 0x7F
            shift = 7
            i = pos + 2
            while True:
                if i >= len(buf):
                    if i - pos >= 5:
                        break
                    return NEED_DATA
                byte = buf[i]
                i += 1
                remaining |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    if not byte:
                        raise MalformedPacket(
                            "remaining length not minimally encoded", rule="[MQTT-1.5.5-1]"
                        )
                    break
                shift += 7
                if i - pos >= 5:
                    raise MalformedPacket(
                        "remaining length longer than four bytes", rule="[MQTT-1.5.5-1]"
                    )
            start = i
        end = start + remaining
        if end - pos > self.max_packet_size:
            raise PacketTooLarge(
                f"packet of {end - pos} bytes exceeds the maximum of {self.max_packet_size}"
            )
        if end > len(buf):
            need = end - pos
            if need - avail > 65536:
                # Gather the rest of a large body without re-copying on every chunk.
                self._buf = b""
                self._pos = 0
                self._chunks = [buf[pos:]]
                self._chunks_len = avail
                self._need = need
            return NEED_DATA
        self._pos = end
        version = self.version
        if version is None:
            if first >> 4 != 1:
                raise ProtocolViolation("the first packet must be CONNECT", rule="[MQTT-3.1.0-1]")
            try:
                packet = _decode_connect(first & 0x0F, buf, start, end, 5)
            except RemoteProtocolError:
                # Record the level if it was readable, so the reply to a malformed CONNECT
                # can be a CONNACK of the client's own version (v5: reason 0x81).
                self.version = _peek_level(buf, start, end)
                raise
            assert isinstance(packet, Connect)
            if first & 0x0F:
                raise MalformedPacket("CONNECT reserved flags", rule="[MQTT-2.1.3-1]")
            self.version = int(packet.protocol_version)
            return packet
        if first >> 4 == 3:  # PUBLISH: skip the generic dispatch
            return _decode_publish(first & 0x0F, buf, start, end, version)
        return _decode_body(first, buf, start, end, version)

    def read_batch(self) -> list[Packet]:
        """Decode the complete packets buffered, up to and including the next CONNECT,
        CONNACK or DISCONNECT.

        Returns an empty list when no whole packet is buffered. A batch ends after a packet
        that changes the conversation (CONNECT, CONNACK, DISCONNECT), so the caller acts on
        it before anything the stream carries after it. Common PUBLISH packets (a topic seen
        before, no properties) are decoded inline here, without a call per packet; this is
        the receive path of every connection.

        Raises:
            The errors of ``next_packet``. An error met after some packets of the batch were
            decoded is kept and raised by the next call, after the caller handled them.
        """
        error = self._error
        if error is not None:
            self._error = None
            raise error
        out: list[Packet] = []
        version = self.version
        if version is None or self._chunks is not None:
            packet = self.next_packet()
            if packet is not NEED_DATA:
                out.append(packet)
            return out
        append = out.append
        cached = _TOPIC_CACHE.get
        new = _new
        twin = _PublishTwin
        publish_cls = Publish
        no_props = NO_PROPERTIES
        bools = _BOOL
        limit = self.max_packet_size
        v5 = version == V5
        buf = self._buf
        pos = self._pos
        size = len(buf)
        try:
            while True:
                # Inline: PUBLISH with a remaining length of one or two bytes, all buffered.
                while size - pos >= 2:
                    first = buf[pos]
                    if first >> 4 != 3:
                        break
                    remaining = buf[pos + 1]
                    start = pos + 2
                    if remaining >= 128:
                        if start >= size or buf[start] >= 128 or not buf[start]:
                            break  # 3+ length bytes, not buffered yet, or not minimal
                        remaining = (remaining & 0x7F) | (buf[start] << 7)
                        start += 1
                    end = start + remaining
                    if end > size or end - pos > limit:
                        break
                    flags = first & 0x0F
                    qos = (flags >> 1) & 3
                    tend = start + 2 + ((buf[start] << 8) | buf[start + 1]) if remaining >= 2 else 0
                    topic = cached(buf[start + 2 : tend]) if start < tend <= end else None
                    if not topic or qos == 3 or (flags & 8 and not qos):
                        # Uncached topic, or a packet to refuse: the full decoder.
                        append(_decode_publish(flags, buf, start, end, version))
                        pos = end
                        continue
                    packet_id = 0
                    if qos:
                        if tend + 2 > end:
                            break
                        packet_id = (buf[tend] << 8) | buf[tend + 1]
                        if not packet_id:
                            break
                        tend += 2
                    if v5:
                        if tend >= end or buf[tend]:
                            append(_decode_publish(flags, buf, start, end, version))
                            pos = end
                            continue
                        tend += 1
                    b = new(twin)
                    b.topic = topic
                    b.payload = buf[tend:end]
                    b.qos = qos
                    b.retain = bools[flags & 1]
                    b.dup = bools[(flags >> 3) & 1]
                    b.packet_id = packet_id
                    b.properties = no_props
                    b.__class__ = publish_cls
                    append(b)
                    pos = end
                # Anything else (another packet type, a long or partial packet, a bad
                # packet id): one packet the general way, then on with the batch.
                self._pos = pos
                packet = self.next_packet()
                if packet is NEED_DATA:
                    return out
                append(packet)
                if type(packet) in _BATCH_ENDS:
                    return out
                pos = self._pos
                buf = self._buf
                size = len(buf)
        except RemoteProtocolError as exc:
            # The stream is unusable from here: the connection closes after this error.
            if not out:
                raise
            self._error = exc
            return out

    def read_all(self) -> list[Packet]:
        """Return every complete packet buffered (possibly none)."""
        out: list[Packet] = []
        while True:
            batch = self.read_batch()
            if not batch:
                return out
            out.extend(batch)
