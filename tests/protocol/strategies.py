"""Hypothesis strategies for valid MQTT packets of every type, per protocol version.

``packets(version)`` draws any packet that *version* can carry (3 = MQTT 3.1, 4 = MQTT
3.1.1, 5 = MQTT 5.0); ``packet_of(ptype, version)`` draws one type. The version rules the
codec relies on are respected here rather than filtered out afterwards:

* properties and non-zero reason codes only on MQTT 5; AUTH only on MQTT 5;
* the MQTT 3.1 CONNACK has no Session Present flag, and MQTT 3 CONNACKs only use the
  reason codes whose v3 return code maps back to the same v5 code;
* MQTT 3 SUBACK codes are the granted QoS 0-2, plus 0x80 Failure on 3.1.1 (3.1 has none);
* MQTT 3 UNSUBACK has no reason codes, MQTT 5 UNSUBACK has one per filter.

Which properties may be drawn for a packet is derived from ``PROPERTY_TABLE`` (the Will
Properties use the context ``WILL``), and so are their value ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from tidemq.protocol import (
    NO_PROPERTIES,
    PROPERTY_TABLE,
    REASON_CODE_PACKETS,
    WILL,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    PingReq,
    PingResp,
    Properties,
    PropertyInfo,
    ProtocolVersion,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RetainHandling,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
    WireType,
)

__all__ = [
    "ALL_TYPES",
    "VERSIONS",
    "allowed_properties",
    "big_publish",
    "mqtt_text",
    "packet_id",
    "packet_of",
    "packets",
    "properties_for",
    "reason_codes_for",
    "topic_filters",
    "topic_names",
    "types_for",
]

VERSIONS: tuple[int, ...] = (3, 4, 5)
ALL_TYPES: tuple[PacketType, ...] = tuple(PacketType)

Context = PacketType | str

# --- primitives ---------------------------------------------------------------------------

# MQTT UTF-8: any Unicode scalar value except U+0000 [MQTT-1.5.4-2] (surrogates cannot be
# encoded at all [MQTT-1.5.4-1]).
_CHARS = st.characters(codec="utf-8", exclude_characters="\x00")
# Topic levels: no separator, no wildcards.
_LEVEL_CHARS = st.characters(codec="utf-8", exclude_characters="\x00/+#")


def mqtt_text(*, min_size: int = 0, max_size: int = 12) -> st.SearchStrategy[str]:
    """A string that is a legal MQTT UTF-8 Encoded String."""
    return st.text(_CHARS, min_size=min_size, max_size=max_size)


def packet_id() -> st.SearchStrategy[int]:
    return st.integers(min_value=1, max_value=0xFFFF)


_levels = st.text(_LEVEL_CHARS, max_size=6)


def topic_names() -> st.SearchStrategy[str]:
    """A non-empty topic name: no wildcards, possibly empty levels, possibly ``$``-prefixed."""
    return st.lists(_levels, min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def _plain_filter(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(_levels, st.just("+")), min_size=1, max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    if levels[0] in ("$share", "$queue"):
        levels[0] = "share"  # those first levels introduce a shared subscription
    text = "/".join(levels)
    return text or "#"


_SHARE_GROUP = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00/+#"),
    min_size=1,
    max_size=5,
)


@st.composite
def topic_filters(draw: st.DrawFn, *, shared: bool = True) -> str:
    """A valid topic filter (MQTT 5.0 §4.7), sometimes a ``$share/<group>/`` filter."""
    plain = draw(_plain_filter())
    if shared and draw(st.integers(0, 4)) == 0:
        return f"$share/{draw(_SHARE_GROUP)}/{plain}"
    return plain


# --- properties ---------------------------------------------------------------------------


def _value_strategy(info: PropertyInfo) -> st.SearchStrategy[Any]:
    wire = info.wire
    if wire is WireType.UTF8:
        return mqtt_text()
    if wire is WireType.BINARY:
        return st.binary(max_size=12)
    if wire is WireType.UTF8_PAIR:
        return st.tuples(mqtt_text(max_size=6), mqtt_text(max_size=6))
    maximum = {
        WireType.BYTE: 0xFF,
        WireType.TWO_BYTE: 0xFFFF,
        WireType.FOUR_BYTE: 0xFFFF_FFFF,
        WireType.VARINT: 268_435_455,
    }[wire]
    if info.maximum is not None:
        maximum = info.maximum
    return st.integers(min_value=info.minimum, max_value=maximum)


def allowed_properties(context: Context) -> list[PropertyInfo]:
    """Every row of ``PROPERTY_TABLE`` that may appear in *context*."""
    return [info for info in PROPERTY_TABLE.values() if context in info.packets]


@st.composite
def properties_for(draw: st.DrawFn, context: Context) -> Properties:
    """A ``Properties`` holding any subset of the properties allowed in *context*."""
    values: dict[str, object] = {}
    for info in allowed_properties(context):
        if info.repeatable:
            # SUBSCRIBE carries at most one Subscription Identifier [MQTT-3.8.2.1.2].
            limit = 1 if context is PacketType.SUBSCRIBE else 3
            items = draw(st.lists(_value_strategy(info), max_size=limit))
            values[info.name] = tuple(items)
        elif draw(st.booleans()):
            values[info.name] = draw(_value_strategy(info))
    return Properties(**values)  # type: ignore[arg-type]


def _props(version: int, context: Context) -> st.SearchStrategy[Properties]:
    if version < 5:
        return st.just(NO_PROPERTIES)
    return properties_for(context)


# --- reason codes -------------------------------------------------------------------------

# v5 CONNACK codes whose MQTT 3 return code maps back to the same v5 code.
_V3_CONNACK_CODES: tuple[int, ...] = (0x00, 0x84, 0x85, 0x86, 0x87, 0x88)


def reason_codes_for(ptype: PacketType, version: int) -> tuple[int, ...]:
    """The reason codes *ptype* may carry on the wire in *version*."""
    if version == 5:
        return tuple(sorted(c for c, pk in REASON_CODE_PACKETS.items() if ptype in pk))
    if ptype is PacketType.CONNACK:
        return _V3_CONNACK_CODES
    if ptype is PacketType.SUBACK:
        return (0, 1, 2, 0x80) if version == 4 else (0, 1, 2)
    return (0,)


def _code(ptype: PacketType, version: int) -> st.SearchStrategy[int]:
    return st.sampled_from(reason_codes_for(ptype, version))


# --- packets ------------------------------------------------------------------------------

_Builder = Callable[[int], st.SearchStrategy[Packet]]


@st.composite
def _will(draw: st.DrawFn, version: int) -> Will:
    return Will(
        topic=draw(topic_names()),
        payload=draw(st.binary(max_size=16)),
        qos=draw(st.integers(0, 2)),
        retain=draw(st.booleans()),
        properties=draw(_props(version, WILL)),
    )


@st.composite
def _connect(draw: st.DrawFn, version: int) -> Connect:
    username = draw(st.none() | mqtt_text())
    password = draw(st.none() | st.binary(max_size=12))
    if version < 5 and username is None:
        password = None  # [MQTT-3.1.2-22]
    props = draw(_props(version, PacketType.CONNECT))
    return Connect(
        protocol_version=ProtocolVersion(version),
        client_id=draw(mqtt_text(max_size=23)),
        clean_start=draw(st.booleans()),
        keepalive=draw(st.integers(0, 0xFFFF)),
        username=username,
        password=password,
        will=draw(st.none() | _will(version)),
        properties=props,
    )


@st.composite
def _connack(draw: st.DrawFn, version: int) -> ConnAck:
    code = draw(_code(PacketType.CONNACK, version))
    session_present = version != 3 and code == 0 and draw(st.booleans())
    return ConnAck(
        session_present=session_present,
        reason_code=code,
        properties=draw(_props(version, PacketType.CONNACK)),
    )


@st.composite
def _publish(draw: st.DrawFn, version: int, max_payload: int = 64) -> Publish:
    props = draw(_props(version, PacketType.PUBLISH))
    topic = draw(topic_names())
    if props.topic_alias is not None and draw(st.booleans()):
        topic = ""  # an empty topic name is legal with a Topic Alias (MQTT 5.0 §3.3.2.3.4)
    qos = draw(st.integers(0, 2))
    return Publish(
        topic=topic,
        payload=draw(st.binary(max_size=max_payload)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=qos > 0 and draw(st.booleans()),
        packet_id=draw(packet_id()) if qos else 0,
        properties=props,
    )


def _ack(
    cls: type[PubAck | PubRec | PubRel | PubComp],
) -> Callable[[int], st.SearchStrategy[Packet]]:
    def build(version: int) -> st.SearchStrategy[Packet]:
        return st.builds(
            cls,
            packet_id=packet_id(),
            reason_code=_code(cls.type, version),
            properties=_props(version, cls.type),
        )

    return build


@st.composite
def _subscription(draw: st.DrawFn, version: int) -> Subscription:
    topic_filter = draw(topic_filters(shared=True))
    if version < 5:
        return Subscription(topic_filter=topic_filter, qos=draw(st.integers(0, 2)))
    shared = topic_filter.startswith("$share/")
    return Subscription(
        topic_filter=topic_filter,
        qos=draw(st.integers(0, 2)),
        no_local=not shared and draw(st.booleans()),  # [MQTT-3.8.3-4]
        retain_as_published=draw(st.booleans()),
        retain_handling=draw(st.sampled_from(RetainHandling)),
    )


def _subscribe(version: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        Subscribe,
        packet_id=packet_id(),
        subscriptions=st.lists(_subscription(version), min_size=1, max_size=4).map(tuple),
        properties=_props(version, PacketType.SUBSCRIBE),
    )


def _suback(version: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        SubAck,
        packet_id=packet_id(),
        reason_codes=st.lists(_code(PacketType.SUBACK, version), min_size=1, max_size=5).map(tuple),
        properties=_props(version, PacketType.SUBACK),
    )


def _unsubscribe(version: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        Unsubscribe,
        packet_id=packet_id(),
        topic_filters=st.lists(topic_filters(), min_size=1, max_size=4).map(tuple),
        properties=_props(version, PacketType.UNSUBSCRIBE),
    )


def _unsuback(version: int) -> st.SearchStrategy[Packet]:
    if version < 5:
        return st.builds(UnsubAck, packet_id=packet_id())
    return st.builds(
        UnsubAck,
        packet_id=packet_id(),
        reason_codes=st.lists(_code(PacketType.UNSUBACK, 5), min_size=1, max_size=5).map(tuple),
        properties=properties_for(PacketType.UNSUBACK),
    )


def _disconnect(version: int) -> st.SearchStrategy[Packet]:
    return st.builds(
        Disconnect,
        reason_code=_code(PacketType.DISCONNECT, version),
        properties=_props(version, PacketType.DISCONNECT),
    )


def _auth(version: int) -> st.SearchStrategy[Packet]:
    assert version == 5, "AUTH exists only in MQTT 5"
    return st.builds(
        Auth,
        reason_code=_code(PacketType.AUTH, 5),
        properties=properties_for(PacketType.AUTH),
    )


_BUILDERS: dict[PacketType, _Builder] = {
    PacketType.CONNECT: _connect,
    PacketType.CONNACK: _connack,
    PacketType.PUBLISH: _publish,
    PacketType.PUBACK: _ack(PubAck),
    PacketType.PUBREC: _ack(PubRec),
    PacketType.PUBREL: _ack(PubRel),
    PacketType.PUBCOMP: _ack(PubComp),
    PacketType.SUBSCRIBE: _subscribe,
    PacketType.SUBACK: _suback,
    PacketType.UNSUBSCRIBE: _unsubscribe,
    PacketType.UNSUBACK: _unsuback,
    PacketType.PINGREQ: lambda version: st.just(PingReq()),
    PacketType.PINGRESP: lambda version: st.just(PingResp()),
    PacketType.DISCONNECT: _disconnect,
    PacketType.AUTH: _auth,
}


def types_for(version: int) -> tuple[PacketType, ...]:
    """The packet types that exist in *version* (AUTH is MQTT 5 only)."""
    return tuple(t for t in ALL_TYPES if version == 5 or t is not PacketType.AUTH)


def packet_of(ptype: PacketType, version: int) -> st.SearchStrategy[Packet]:
    """Valid packets of type *ptype* for *version*."""
    if ptype not in types_for(version):
        raise ValueError(f"{ptype.name} does not exist in protocol level {version}")
    return _BUILDERS[ptype](version)


def big_publish(version: int, max_payload: int) -> st.SearchStrategy[Publish]:
    """Valid PUBLISH packets with payloads up to *max_payload* bytes."""
    return _publish(version, max_payload)


def packets(version: int) -> st.SearchStrategy[Packet]:
    """Any valid packet that *version* can carry."""
    return st.one_of([packet_of(t, version) for t in types_for(version)])
