"""Golden vectors and spec rules.

The expected bytes come from ``tests/mqttbytes.py``, written from the specifications without
importing tidemq, so the encoder and decoder are checked against an independent reading of
the spec rather than against themselves. The second half feeds raw bytes that break one
normative statement each and checks the exact error class and reason code; the third checks
that packets built by users are validated; the last covers ``topics.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import mqttbytes as mb
from tidemq.protocol import (
    MAX_VARINT,
    NEED_DATA,
    PROTOCOL_MAX_PACKET_SIZE,
    Auth,
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    MalformedPacket,
    Packet,
    PacketReader,
    PacketTooLarge,
    PingReq,
    PingResp,
    Properties,
    ProtocolVersion,
    ProtocolViolation,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
    RemoteProtocolError,
    RetainHandling,
    SharedFilter,
    SubAck,
    Subscribe,
    Subscription,
    TopicNameInvalid,
    UnsubAck,
    Unsubscribe,
    UnsupportedProtocolVersion,
    Will,
    _wire,
    decode,
    encode,
    is_wildcard_filter,
    parse_shared,
    topic_filter_error,
    topic_matches,
    topic_name_error,
)

from .strategies import mqtt_text, topic_filters, topic_names

V3, V4, V5 = 3, 4, 5
ALL_VERSIONS = [V3, V4, V5]
V3_VERSIONS = [V3, V4]

# Property identifiers, transcribed from MQTT 5.0 §2.2.2.2 Table 2-4 (not from tidemq).
_PID: dict[str, int] = {
    "payload_format_indicator": 0x01,
    "message_expiry_interval": 0x02,
    "content_type": 0x03,
    "response_topic": 0x08,
    "correlation_data": 0x09,
    "subscription_identifiers": 0x0B,
    "session_expiry_interval": 0x11,
    "assigned_client_identifier": 0x12,
    "server_keep_alive": 0x13,
    "authentication_method": 0x15,
    "authentication_data": 0x16,
    "request_problem_information": 0x17,
    "will_delay_interval": 0x18,
    "request_response_information": 0x19,
    "response_information": 0x1A,
    "server_reference": 0x1C,
    "reason_string": 0x1F,
    "receive_maximum": 0x21,
    "topic_alias_maximum": 0x22,
    "topic_alias": 0x23,
    "maximum_qos": 0x24,
    "retain_available": 0x25,
    "user_properties": 0x26,
    "maximum_packet_size": 0x27,
    "wildcard_subscription_available": 0x28,
    "subscription_identifier_available": 0x29,
    "shared_subscription_available": 0x2A,
}
_REPEATABLE = {"user_properties", "subscription_identifiers"}


def _both(**values: object) -> tuple[Properties, bytes]:
    """The same properties as a ``Properties`` and as ``mqttbytes.proplist`` bytes (in
    identifier order, the order our encoder writes them)."""
    items: list[tuple[int, object]] = []
    for name in sorted(values, key=_PID.__getitem__):
        value = values[name]
        if name in _REPEATABLE:
            assert isinstance(value, tuple)
            items.extend((_PID[name], item) for item in value)
        else:
            items.append((_PID[name], value))
    return Properties(**values), mb.proplist(*items)  # type: ignore[arg-type]


def _hex(value: object) -> str | None:
    """Readable test ids for raw packets."""
    return value.hex() if isinstance(value, bytes) else None


def _golden(packet: Packet, wire: bytes, version: int) -> None:
    """Our encoder writes exactly *wire* and our decoder reads it back as *packet*."""
    assert encode(packet, version).hex(" ") == wire.hex(" ")
    assert decode(wire, version) == packet
    reader = PacketReader(version)
    reader.feed(wire + wire)
    assert reader.read_all() == [packet, packet]


# =========================================================================================
# Golden vectors, per packet type and version
# =========================================================================================

# --- CONNECT ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_connect_minimal(version: int) -> None:
    wire = mb.gen_connect("client-1", proto_ver=version)
    packet = Connect(protocol_version=ProtocolVersion(version), client_id="client-1")
    _golden(packet, wire, version)
    reader = PacketReader(None)
    reader.feed(wire)
    assert reader.next_packet() == packet
    assert reader.version == version


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_connect_with_will_and_credentials(version: int) -> None:
    wire = mb.gen_connect(
        "c",
        clean_session=False,
        keepalive=0,
        username="user",
        password=b"\x00pass\xff",
        will_topic="last/will",
        will_payload=b"bye",
        will_qos=2,
        will_retain=True,
        proto_ver=version,
    )
    packet = Connect(
        protocol_version=ProtocolVersion(version),
        client_id="c",
        clean_start=False,
        keepalive=0,
        username="user",
        password=b"\x00pass\xff",
        will=Will(topic="last/will", payload=b"bye", qos=2, retain=True),
    )
    _golden(packet, wire, version)


def test_connect_spec_variable_header_example() -> None:
    """MQTT 3.1.1 §3.1.2.10, Figure 3.6: name "MQTT", level 4, flags 0xCE, keepalive 10."""
    packet = Connect(
        client_id="c",
        keepalive=10,
        username="u",
        password=b"p",
        will=Will(topic="w", payload=b"x", qos=1),
    )
    wire = encode(packet, V4)
    assert wire[2:12] == mb.SPEC_CONNECT_VARIABLE_HEADER_EXAMPLE
    mb_wire = mb.gen_connect(
        "c",
        keepalive=10,
        username="u",
        password=b"p",
        will_topic="w",
        will_payload=b"x",
        will_qos=1,
    )
    _golden(packet, mb_wire, V4)


def test_connect_v5_every_property() -> None:
    props, raw = _both(
        session_expiry_interval=3600,
        authentication_method="SCRAM-SHA-1",
        authentication_data=b"\x01\x02",
        request_problem_information=0,
        request_response_information=1,
        receive_maximum=20,
        topic_alias_maximum=10,
        user_properties=(("a", "1"), ("a", "2"), ("é", "✓")),
        maximum_packet_size=1 << 20,
    )
    will_props, will_raw = _both(
        payload_format_indicator=1,
        message_expiry_interval=60,
        content_type="text/plain",
        response_topic="reply/here",
        correlation_data=b"\xca\xfe",
        will_delay_interval=5,
        user_properties=(("k", "v"),),
    )
    wire = mb.gen_connect(
        "dev",
        username="u",
        will_topic="w/t",
        will_payload=b"gone",
        will_qos=1,
        will_properties=will_raw,
        properties=raw,
        proto_ver=V5,
    )
    packet = Connect(
        protocol_version=ProtocolVersion(5),
        client_id="dev",
        username="u",
        will=Will(topic="w/t", payload=b"gone", qos=1, properties=will_props),
        properties=props,
    )
    _golden(packet, wire, V5)


def test_connect_v5_password_without_username() -> None:
    """MQTT 5 allows a password without a user name (§3.1.2.9); 3.1.1 did not."""
    wire = mb.gen_connect("c", password=b"token", proto_ver=V5)
    packet = Connect(protocol_version=ProtocolVersion(5), client_id="c", password=b"token")
    _golden(packet, wire, V5)


# --- CONNACK ------------------------------------------------------------------------------

# MQTT 3.1.1 §3.2.2.3 Table 3.1 return code → the MQTT 5 reason code with the same meaning.
_V3_RC_TO_V5 = {0: 0x00, 1: 0x84, 2: 0x85, 3: 0x88, 4: 0x86, 5: 0x87}


@pytest.mark.parametrize("version", V3_VERSIONS)
@pytest.mark.parametrize(("rc", "code"), sorted(_V3_RC_TO_V5.items()))
def test_connack_v3_return_codes(version: int, rc: int, code: int) -> None:
    _golden(ConnAck(reason_code=code), mb.gen_connack(rc=rc, proto_ver=version), version)


def test_connack_session_present_v311() -> None:
    _golden(ConnAck(session_present=True), mb.gen_connack(session_present=True), V4)


def test_connack_v31_has_no_session_present() -> None:
    """MQTT 3.1's CONNACK first byte is reserved: we never write it and ignore it on read."""
    assert decode(b"\x20\x02\x01\x00", V3) == ConnAck()
    with pytest.raises(LocalProtocolError):
        encode(ConnAck(session_present=True), V3)


@pytest.mark.parametrize(
    ("code", "rc"),
    [(0x89, 3), (0x8A, 5), (0x8C, 4), (0x9C, 3), (0x9D, 3), (0x9F, 3)],
)
def test_connack_v5_codes_written_as_v3_equivalents(code: int, rc: int) -> None:
    for version in V3_VERSIONS:
        assert encode(ConnAck(reason_code=code), version) == mb.gen_connack(rc=rc)


@pytest.mark.parametrize("code", [0x80, 0x81, 0x82, 0x83, 0x95, 0x97, 0x99, 0x9A, 0x9B])
def test_connack_v5_codes_without_v3_equivalent_cannot_be_sent(code: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode(ConnAck(reason_code=code), V4)
    assert encode(ConnAck(reason_code=code), V5) == mb.gen_connack(rc=code, proto_ver=V5)


def test_connack_v5_every_property() -> None:
    props, raw = _both(
        session_expiry_interval=0xFFFF_FFFF,
        assigned_client_identifier="auto-123",
        server_keep_alive=30,
        authentication_method="m",
        authentication_data=b"d",
        response_information="resp/",
        server_reference="other:1883",
        reason_string="welcome",
        receive_maximum=65535,
        topic_alias_maximum=0,
        maximum_qos=1,
        retain_available=0,
        user_properties=(("x", "y"),),
        maximum_packet_size=0xFFFF_FFFF,
        wildcard_subscription_available=1,
        subscription_identifier_available=0,
        shared_subscription_available=1,
    )
    wire = mb.gen_connack(session_present=True, properties=raw, proto_ver=V5)
    _golden(ConnAck(session_present=True, properties=props), wire, V5)
    _golden(ConnAck(reason_code=0x9C), mb.gen_connack(rc=0x9C, proto_ver=V5), V5)


# --- PUBLISH ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_publish_spec_variable_header_example(version: int) -> None:
    """MQTT 3.1.1 §3.3.2.3, Figure 3.11: topic "a/b", packet identifier 10."""
    topic, mid, header = mb.SPEC_PUBLISH_VARIABLE_HEADER_EXAMPLE
    wire = mb.gen_publish(topic, qos=1, mid=mid, payload=b"hi", proto_ver=version)
    assert wire[2:9] == header
    _golden(Publish(topic=topic, qos=1, packet_id=mid, payload=b"hi"), wire, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(
    ("qos", "retain", "dup"),
    [(0, False, False), (0, True, False), (1, True, True), (2, False, True)],
)
def test_publish_flags(version: int, qos: int, retain: bool, dup: bool) -> None:
    mid = 0xBEEF if qos else 0
    wire = mb.gen_publish(
        "t/ü", qos=qos, retain=retain, dup=dup, mid=mid, payload=b"\x00\xff", proto_ver=version
    )
    packet = Publish(
        topic="t/ü", qos=qos, retain=retain, dup=dup, packet_id=mid, payload=b"\x00\xff"
    )
    _golden(packet, wire, version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_publish_multibyte_remaining_length_and_empty_payload(version: int) -> None:
    big = mb.gen_publish("x" * 300, qos=2, mid=1, proto_ver=version)
    _golden(Publish(topic="x" * 300, qos=2, packet_id=1), big, version)
    assert big[1] & 0x80
    empty = mb.gen_publish("e", proto_ver=version)
    _golden(Publish(topic="e"), empty, version)


def test_publish_v5_every_property() -> None:
    props, raw = _both(
        payload_format_indicator=1,
        message_expiry_interval=10,
        content_type="application/json",
        response_topic="r/1",
        correlation_data=b"\x00\x01",
        subscription_identifiers=(1, 268_435_455, 200),
        topic_alias=7,
        user_properties=(("z", ""), ("", "a")),
    )
    wire = mb.gen_publish("a/b", qos=1, mid=3, payload=b"{}", properties=raw, proto_ver=V5)
    _golden(Publish(topic="a/b", qos=1, packet_id=3, payload=b"{}", properties=props), wire, V5)


def test_publish_v5_empty_topic_with_topic_alias() -> None:
    props, raw = _both(topic_alias=1)
    wire = mb.gen_publish("", payload=b"p", properties=raw, proto_ver=V5)
    _golden(Publish(topic="", payload=b"p", properties=props), wire, V5)


def test_publish_topic_keeps_byte_order_mark() -> None:
    """0xEF 0xBB 0xBF is U+FEFF and MUST NOT be skipped or stripped [MQTT-1.5.4-3]."""
    wire = mb.gen_publish(b"\xef\xbb\xbfa")
    _golden(Publish(topic="\ufeffa"), wire, V4)


# --- PUBACK, PUBREC, PUBREL, PUBCOMP ------------------------------------------------------

_ACKS: list[tuple[type[PubAck | PubRec | PubRel | PubComp], Callable[..., bytes], int]] = [
    (PubAck, mb.gen_puback, 0x10),
    (PubRec, mb.gen_pubrec, 0x80),
    (PubRel, mb.gen_pubrel, 0x92),
    (PubComp, mb.gen_pubcomp, 0x92),
]
_ACK_IDS = [cls.__name__ for cls, _, _ in _ACKS]


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize(("cls", "gen", "code"), _ACKS, ids=_ACK_IDS)
def test_ack_plain(version: int, cls: type[PubAck], gen: Callable[..., bytes], code: int) -> None:
    _golden(cls(packet_id=1), gen(1, proto_ver=version), version)
    _golden(cls(packet_id=0xFFFF), gen(0xFFFF, proto_ver=version), version)


@pytest.mark.parametrize(("cls", "gen", "code"), _ACKS, ids=_ACK_IDS)
def test_ack_v5_forms(cls: type[PubAck], gen: Callable[..., bytes], code: int) -> None:
    # Reason code only: remaining length 3 (MQTT 5.0 §3.4.2.1).
    _golden(cls(packet_id=9, reason_code=code), gen(9, reason_code=code, proto_ver=V5), V5)
    props, raw = _both(reason_string="why", user_properties=(("k", "v"),))
    wire = gen(9, reason_code=code, properties=raw, proto_ver=V5)
    _golden(cls(packet_id=9, reason_code=code, properties=props), wire, V5)
    wire0 = gen(9, properties=raw, proto_ver=V5)
    _golden(cls(packet_id=9, properties=props), wire0, V5)
    # The long form of a plain ack (code 0, property length 0) decodes as the short form.
    first = gen(9, proto_ver=V5)[0]
    assert decode(mb.packet(first, mb.u16(9) + b"\x00" + mb.props()), V5) == cls(packet_id=9)
    assert decode(mb.packet(first, mb.u16(9) + b"\x00"), V5) == cls(packet_id=9)


# --- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_subscribe_spec_payload_example(version: int) -> None:
    """MQTT 3.1.1 §3.8.3.1, Figure 3.23: "a/b" QoS 1, "c/d" QoS 2, packet id 10."""
    subs, payload = mb.SPEC_SUBSCRIBE_PAYLOAD_EXAMPLE
    wire = mb.gen_subscribe(10, subs, proto_ver=version)
    assert wire.endswith(payload)
    packet = Subscribe(
        packet_id=10,
        subscriptions=tuple(Subscription(topic_filter=f, qos=q) for f, q in subs),
    )
    _golden(packet, wire, version)


def test_subscribe_v5_options_and_properties() -> None:
    props, raw = _both(subscription_identifiers=(42,), user_properties=(("u", "p"),))
    wire = mb.gen_subscribe(
        0x1234,
        [
            ("a/+", mb.sub_options(2, no_local=True, retain_as_published=True, retain_handling=2)),
            ("$share/g/#", mb.sub_options(1, retain_handling=1)),
            ("#", mb.sub_options(0)),
        ],
        properties=raw,
        proto_ver=V5,
    )
    packet = Subscribe(
        packet_id=0x1234,
        subscriptions=(
            Subscription(
                topic_filter="a/+",
                qos=2,
                no_local=True,
                retain_as_published=True,
                retain_handling=RetainHandling.DO_NOT_SEND,
            ),
            Subscription(
                topic_filter="$share/g/#",
                qos=1,
                retain_handling=RetainHandling.SEND_IF_NEW_SUBSCRIPTION,
            ),
            Subscription(topic_filter="#"),
        ),
        properties=props,
    )
    _golden(packet, wire, V5)


def test_suback_spec_payload_example() -> None:
    """MQTT 3.1.1 §3.9.3.1, Figure 3.27: granted QoS 0, granted QoS 2, failure."""
    codes, payload = mb.SPEC_SUBACK_PAYLOAD_EXAMPLE
    wire = mb.gen_suback(10, codes)
    assert wire.endswith(payload)
    _golden(SubAck(packet_id=10, reason_codes=tuple(codes)), wire, V4)


def test_suback_v31_and_v5() -> None:
    _golden(
        SubAck(packet_id=1, reason_codes=(0, 1, 2)), mb.gen_suback(1, [0, 1, 2], proto_ver=3), 3
    )
    props, raw = _both(reason_string="partial")
    codes = (0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2)
    wire = mb.gen_suback(2, codes, properties=raw, proto_ver=V5)
    _golden(SubAck(packet_id=2, reason_codes=codes, properties=props), wire, V5)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_unsubscribe_spec_payload_example(version: int) -> None:
    """MQTT 3.1.1 §3.10.3.1, Figure 3.30: topic filters "a/b" and "c/d"."""
    topics, payload = mb.SPEC_UNSUBSCRIBE_PAYLOAD_EXAMPLE
    wire = mb.gen_unsubscribe(10, topics, proto_ver=version)
    assert wire.endswith(payload)
    _golden(Unsubscribe(packet_id=10, topic_filters=tuple(topics)), wire, version)


def test_unsubscribe_v5_properties() -> None:
    props, raw = _both(user_properties=(("a", "b"),))
    wire = mb.gen_unsubscribe(5, ["x/#", "$share/g/y"], properties=raw, proto_ver=V5)
    _golden(
        Unsubscribe(packet_id=5, topic_filters=("x/#", "$share/g/y"), properties=props), wire, V5
    )


@pytest.mark.parametrize("version", V3_VERSIONS)
def test_unsuback_v3_fixed_header_example(version: int) -> None:
    wire = mb.gen_unsuback(10, proto_ver=version)
    assert wire[:2] == mb.SPEC_FIXED_HEADER_EXAMPLES["UNSUBACK"]
    _golden(UnsubAck(packet_id=10), wire, version)


def test_unsuback_v5() -> None:
    props, raw = _both(reason_string="r")
    codes = (0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91)
    wire = mb.gen_unsuback(7, codes, properties=raw, proto_ver=V5)
    _golden(UnsubAck(packet_id=7, reason_codes=codes, properties=props), wire, V5)


# --- PINGREQ / PINGRESP / DISCONNECT / AUTH -----------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_fixed_header_only_packets(version: int) -> None:
    """MQTT 3.1.1 Figures 3.33, 3.34, 3.35: PINGREQ, PINGRESP, DISCONNECT."""
    headers = mb.SPEC_FIXED_HEADER_EXAMPLES
    _golden(PingReq(), headers["PINGREQ"], version)
    _golden(PingResp(), headers["PINGRESP"], version)
    _golden(Disconnect(), headers["DISCONNECT"], version)
    assert mb.gen_pingreq() == headers["PINGREQ"]
    assert mb.gen_disconnect(proto_ver=version) == headers["DISCONNECT"]


def test_disconnect_v5_forms() -> None:
    _golden(Disconnect(reason_code=0x04), mb.gen_disconnect(reason_code=0x04, proto_ver=V5), V5)
    props, raw = _both(
        session_expiry_interval=0,
        reason_string="bye",
        user_properties=(("a", "b"),),
        server_reference="elsewhere",
    )
    wire = mb.gen_disconnect(reason_code=0x9C, properties=raw, proto_ver=V5)
    _golden(Disconnect(reason_code=0x9C, properties=props), wire, V5)
    # "If the Remaining Length is less than 2, a value of 0 is used" for the properties.
    assert decode(b"\xe0\x02\x8e\x00", V5) == Disconnect(reason_code=0x8E)


def test_auth_v5() -> None:
    _golden(Auth(), mb.gen_auth(), V5)
    props, raw = _both(
        authentication_method="SCRAM",
        authentication_data=b"\x00\x01",
        reason_string="more",
        user_properties=(("k", "v"),),
    )
    _golden(
        Auth(reason_code=0x18, properties=props), mb.gen_auth(reason_code=0x18, properties=raw), V5
    )
    _golden(Auth(reason_code=0x19), mb.gen_auth(reason_code=0x19), V5)


# --- spec primitives ----------------------------------------------------------------------


@pytest.mark.parametrize(("value", "encoded"), mb.SPEC_REMAINING_LENGTH_EXAMPLES)
def test_remaining_length_spec_examples(value: int, encoded: bytes) -> None:
    """MQTT 3.1.1 §2.2.3 Table 2.4 / MQTT 5.0 §1.5.5 Table 1-1."""
    assert _wire.varint(value) == encoded
    assert _wire.read_varint(encoded, 0, len(encoded)) == (value, len(encoded))
    assert _wire.read_varint(encoded + b"\xff", 0, len(encoded) + 1) == (value, len(encoded))


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(v, e) for v, e in mb.SPEC_REMAINING_LENGTH_EXAMPLES if 3 <= v <= 2_097_152],
)
def test_remaining_length_spec_examples_in_a_publish(value: int, encoded: bytes) -> None:
    """A PUBLISH whose remaining length is exactly the example value, framed by us and by
    mqttbytes alike: topic "a" (3 bytes) and a payload filling the rest."""
    payload = bytes(range(256)) * ((value - 3) // 256) + bytes(range((value - 3) % 256))
    wire = mb.gen_publish("a", payload=payload)
    assert wire[1 : 1 + len(encoded)] == encoded
    assert len(wire) == 1 + len(encoded) + value
    _golden(Publish(topic="a", payload=payload), wire, V4)


def test_remaining_length_extremes() -> None:
    # 0: a packet with no body at all.
    assert decode(b"\xc0" + mb.varint(0), V4) == PingReq()
    # 268,435,455: the largest packet the protocol can frame is accepted by default...
    assert _wire.MAX_VARINT == MAX_VARINT == 268_435_455
    assert PROTOCOL_MAX_PACKET_SIZE == 1 + 4 + MAX_VARINT
    header = b"\x30" + mb.varint(MAX_VARINT)
    reader = PacketReader(V4)
    reader.feed(header)
    assert reader.next_packet() is NEED_DATA
    # ...and refused from its header alone one byte under that limit.
    reader = PacketReader(V4, max_packet_size=PROTOCOL_MAX_PACKET_SIZE - 1)
    reader.feed(header)
    with pytest.raises(PacketTooLarge):
        reader.next_packet()
    for bad in (-1, MAX_VARINT + 1):
        with pytest.raises(LocalProtocolError):
            _wire.varint(bad)


def test_utf8_spec_example() -> None:
    """MQTT 3.1.1 §1.5.3 Figure 1.2: "A" followed by U+2A6D4."""
    text, encoded = mb.SPEC_UTF8_EXAMPLE
    assert _wire.utf8(text) == encoded
    assert _wire.read_utf8(encoded, 0, len(encoded)) == (text, len(encoded))
    _golden(Publish(topic=text), mb.gen_publish(text), V4)


# =========================================================================================
# Spec rules: raw bytes that break one rule, the exact error and reason code
# =========================================================================================


def _rejects(
    data: bytes, version: int | None, cls: type[RemoteProtocolError], code: int
) -> RemoteProtocolError:
    """decode() and PacketReader both raise exactly *cls* with reason code *code*."""
    with pytest.raises(RemoteProtocolError) as info:
        decode(data, version)  # type: ignore[arg-type]
    exc = info.value
    assert type(exc) is cls, f"{type(exc).__name__}: {exc}"
    assert exc.reason_code == code
    reader = PacketReader(version)
    reader.feed(data)
    with pytest.raises(cls):
        reader.next_packet()
    return exc


MALFORMED = (MalformedPacket, ReasonCode.MALFORMED_PACKET)
PROTOCOL_ERROR = (ProtocolViolation, ReasonCode.PROTOCOL_ERROR)


def _valid_frames(version: int) -> dict[int, bytes]:
    """One valid packet per type, keyed by the required first byte."""
    frames = [
        mb.gen_connect("c", proto_ver=version),
        mb.gen_connack(proto_ver=version),
        mb.gen_puback(1, proto_ver=version),
        mb.gen_pubrec(1, proto_ver=version),
        mb.gen_pubrel(1, proto_ver=version),
        mb.gen_pubcomp(1, proto_ver=version),
        mb.gen_subscribe_one(1, "a", 0, proto_ver=version),
        mb.gen_suback(1, [0], proto_ver=version),
        mb.gen_unsubscribe(1, ["a"], proto_ver=version),
        mb.gen_unsuback(1, [0] if version == V5 else None, proto_ver=version),
        mb.gen_pingreq(),
        mb.gen_pingresp(),
        mb.gen_disconnect(proto_ver=version),
    ]
    if version == V5:
        frames.append(mb.gen_auth())
    return {frame[0]: frame for frame in frames}


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_reserved_header_flags_are_malformed(version: int) -> None:
    """[MQTT-2.1.3-1]: the reserved flag bits of every type but PUBLISH must be exactly as
    specified (0010 for PUBREL, SUBSCRIBE, UNSUBSCRIBE; 0000 otherwise)."""
    frames = _valid_frames(version)
    assert {first & 0x0F for first in frames} == {0, 2}
    for first, frame in frames.items():
        assert decode(frame, version).type == first >> 4  # the untouched frame is valid
        for flags in range(16):
            if flags == first & 0x0F:
                continue
            bad = bytes(((first & 0xF0) | flags,)) + frame[1:]
            _rejects(bad, version, *MALFORMED)
            if first >> 4 == 1:
                _rejects(bad, None, *MALFORMED)


@pytest.mark.parametrize("version", [*ALL_VERSIONS, None])
def test_packet_type_zero_is_malformed_and_auth_needs_v5(version: int | None) -> None:
    """Type 0 is reserved; AUTH (15) is reserved before MQTT 5 [MQTT-2.1.3-1]."""
    if version is None:
        _rejects(b"\x00\x00", None, *PROTOCOL_ERROR)  # first packet must be CONNECT
        return
    _rejects(b"\x00\x00", version, *MALFORMED)
    if version < V5:
        _rejects(b"\xf0\x00", version, *MALFORMED)


def test_first_packet_must_be_connect() -> None:
    """[MQTT-3.1.0-1]: a server's reader accepts only CONNECT until it knows the level."""
    for frame in _valid_frames(V5).values():
        if frame[0] >> 4 != 1:
            _rejects(frame, None, *PROTOCOL_ERROR)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("first", [0x36, 0x37, 0x3E, 0x3F])
def test_publish_qos_3_is_malformed(version: int, first: int) -> None:
    """[MQTT-3.3.1-4]: a PUBLISH MUST NOT have both QoS bits set."""
    body = mb.gen_publish("a", qos=1, mid=1, proto_ver=version)[2:]
    _rejects(mb.packet(first, body), version, *MALFORMED)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_publish_dup_on_qos_0_is_malformed(version: int) -> None:
    """[MQTT-3.3.1-2]: the DUP flag MUST be 0 for all QoS 0 messages."""
    _rejects(mb.gen_publish("a", dup=True, proto_ver=version), version, *MALFORMED)
    _rejects(mb.gen_publish("a", dup=True, retain=True, proto_ver=version), version, *MALFORMED)


def _string_sites(version: int, bad: bytes) -> list[bytes]:
    """Packets carrying *bad* as a UTF-8 string in each kind of string field."""
    sites = [
        mb.gen_publish(b"a/" + bad, proto_ver=version),
        mb.gen_publish(bad, qos=1, mid=1, proto_ver=version),
        mb.gen_connect(b"id" + bad, proto_ver=version),
        mb.gen_connect("c", username=bad, password=b"p", proto_ver=version),
        mb.gen_connect("c", will_topic=b"w" + bad, proto_ver=version),
        mb.gen_subscribe(1, [(b"a/" + bad, 0)], proto_ver=version),
        mb.gen_unsubscribe(1, ["ok", b"a" + bad], proto_ver=version),
    ]
    if version == V5:
        sites += [
            mb.gen_puback(1, reason_code=0x10, properties=mb.proplist((0x1F, bad)), proto_ver=5),
            mb.gen_disconnect(properties=mb.proplist((0x26, ("k", bad))), proto_ver=5),
            mb.gen_disconnect(properties=mb.proplist((0x26, (bad, "v"))), proto_ver=5),
            mb.gen_connect("c", properties=mb.proplist((0x15, bad)), proto_ver=5),
            mb.gen_publish("t", properties=mb.proplist((0x08, bad)), proto_ver=5),
            mb.gen_connect(
                "c", will_topic="w", will_properties=mb.proplist((0x03, bad)), proto_ver=5
            ),
        ]
    return sites


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_utf8_string_with_u0000_is_malformed(version: int) -> None:
    """[MQTT-1.5.4-2]: a UTF-8 Encoded String MUST NOT include U+0000."""
    for site in _string_sites(version, b"x\x00y"):
        _rejects(site, version, *MALFORMED)
    _rejects(mb.gen_connect("c\x00", proto_ver=version), None, *MALFORMED)


_ILL_FORMED = [
    b"\xff",  # never valid in UTF-8
    b"\x80",  # lone continuation byte
    b"\xc0\x80",  # overlong U+0000
    b"\xe0\x80\xaf",  # overlong "/"
    b"\xe2\x82",  # truncated sequence
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\xed\xa0\x80",  # encoded surrogate U+D800
    b"\xed\xbf\xbf",  # encoded surrogate U+DFFF
    b"\xed\xa0\xbd\xed\xb8\x80",  # CESU-8 surrogate pair
]


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("bad", _ILL_FORMED, ids=lambda b: b.hex())
def test_ill_formed_utf8_and_surrogates_are_malformed(version: int, bad: bytes) -> None:
    """[MQTT-1.5.4-1]: ill-formed UTF-8 and encodings of U+D800..U+DFFF are malformed."""
    for site in _string_sites(version, bad):
        _rejects(site, version, *MALFORMED)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("topic", ["+", "#", "a/+", "a/#", "a/+/b", "sport+", "#/x"])
def test_wildcard_in_publish_topic_is_topic_name_invalid(version: int, topic: str) -> None:
    """[MQTT-3.3.2-2]: the Topic Name in a PUBLISH MUST NOT contain wildcard characters."""
    for qos in (0, 1):
        wire = mb.gen_publish(topic, qos=qos, mid=qos, proto_ver=version)
        exc = _rejects(wire, version, TopicNameInvalid, ReasonCode.TOPIC_NAME_INVALID)
        assert exc.reason_code == 0x90


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_packet_identifier_zero_is_a_protocol_error(version: int) -> None:
    """[MQTT-2.2.1-3] (3.1.1: [MQTT-2.3.1-1]): SUBSCRIBE, UNSUBSCRIBE and QoS > 0 PUBLISH
    carry a non-zero Packet Identifier."""
    for qos in (1, 2):
        _rejects(mb.gen_publish("a", qos=qos, mid=0, proto_ver=version), version, *PROTOCOL_ERROR)
    _rejects(mb.gen_subscribe_one(0, "a", 0, proto_ver=version), version, *PROTOCOL_ERROR)
    _rejects(mb.gen_unsubscribe(0, ["a"], proto_ver=version), version, *PROTOCOL_ERROR)
    for gen in (mb.gen_puback, mb.gen_pubrec, mb.gen_pubrel, mb.gen_pubcomp):
        _rejects(gen(0, proto_ver=version), version, *PROTOCOL_ERROR)


@pytest.mark.parametrize(
    "wire",
    ids=_hex,
    argvalues=[
        mb.gen_publish("t", properties=mb.proplist((0x02, 1), (0x02, 2)), proto_ver=5),
        mb.gen_publish("t", properties=mb.proplist((0x23, 1), (0x23, 1)), proto_ver=5),
        mb.gen_connect("c", properties=mb.proplist((0x11, 1), (0x11, 1)), proto_ver=5),
        mb.gen_connect("c", properties=mb.proplist((0x21, 5), (0x22, 1), (0x21, 5)), proto_ver=5),
        mb.gen_connect(
            "c", will_topic="w", will_properties=mb.proplist((0x18, 1), (0x18, 2)), proto_ver=5
        ),
        mb.gen_connack(properties=mb.proplist((0x24, 0), (0x24, 1)), proto_ver=5),
        mb.gen_puback(1, properties=mb.proplist((0x1F, "a"), (0x1F, "b")), proto_ver=5),
        mb.gen_auth(reason_code=0x18, properties=mb.proplist((0x15, "m"), (0x15, "m"))),
        mb.gen_subscribe_one(1, "a", 0, properties=mb.proplist((0x0B, 1), (0x0B, 2)), proto_ver=5),
    ],
)
def test_duplicated_property_is_a_protocol_error(wire: bytes) -> None:
    """MQTT 5.0 §2.2.2.2 / §3.x: "It is a Protocol Error to include the <property> more than
    once" (named [MQTT-2.2.2-2] in our rule strings); SUBSCRIBE allows one Subscription
    Identifier [MQTT-3.8.2.1.2]."""
    _rejects(wire, V5, *PROTOCOL_ERROR)


def test_repeatable_properties_may_repeat() -> None:
    wire = mb.gen_publish(
        "t",
        properties=mb.proplist((0x0B, 1), (0x0B, 2), (0x26, ("k", "1")), (0x26, ("k", "2"))),
        proto_ver=5,
    )
    packet = decode(wire, V5)
    assert isinstance(packet, Publish)
    assert packet.properties.subscription_identifiers == (1, 2)
    assert packet.properties.user_properties == (("k", "1"), ("k", "2"))


@pytest.mark.parametrize(
    "wire",
    ids=_hex,
    argvalues=[
        mb.gen_publish("t", properties=mb.proplist((0x11, 1)), proto_ver=5),
        mb.gen_publish("t", properties=mb.proplist((0x18, 1)), proto_ver=5),
        mb.gen_connect("c", properties=mb.proplist((0x23, 1)), proto_ver=5),
        mb.gen_connect("c", properties=mb.proplist((0x18, 1)), proto_ver=5),
        mb.gen_connect("c", properties=mb.proplist((0x02, 1)), proto_ver=5),
        mb.gen_connect("c", will_topic="w", will_properties=mb.proplist((0x11, 1)), proto_ver=5),
        mb.gen_connect("c", will_topic="w", will_properties=mb.proplist((0x0B, 1)), proto_ver=5),
        mb.gen_connack(properties=mb.proplist((0x17, 1)), proto_ver=5),
        mb.gen_puback(1, properties=mb.proplist((0x03, "x")), proto_ver=5),
        mb.gen_pubrel(1, properties=mb.proplist((0x11, 1)), proto_ver=5),
        mb.gen_subscribe_one(1, "a", 0, properties=mb.proplist((0x1F, "x")), proto_ver=5),
        mb.gen_suback(1, [0], properties=mb.proplist((0x0B, 1)), proto_ver=5),
        mb.gen_unsubscribe(1, ["a"], properties=mb.proplist((0x1F, "x")), proto_ver=5),
        mb.gen_unsuback(1, [0], properties=mb.proplist((0x11, 1)), proto_ver=5),
        mb.gen_disconnect(properties=mb.proplist((0x21, 1)), proto_ver=5),
        mb.gen_auth(reason_code=0x18, properties=mb.proplist((0x11, 1))),
    ],
)
def test_property_not_allowed_on_the_packet_is_malformed(wire: bytes) -> None:
    """MQTT 5.0 §2.2.2.2 ([MQTT-2.2.2-2] in our rule strings): "A Control Packet which
    contains an Identifier which is not valid for its packet type ... is a Malformed
    Packet" (reason code 0x81)."""
    _rejects(wire, V5, *MALFORMED)


@pytest.mark.parametrize("pid", [0x00, 0x04, 0x0A, 0x2B, 0x7F])
def test_unknown_property_identifier_is_malformed(pid: int) -> None:
    wire = mb.gen_publish("t", properties=mb.varint(pid) + b"\x00", proto_ver=5)
    _rejects(wire, V5, *MALFORMED)


@pytest.mark.parametrize(
    "wire",
    ids=_hex,
    argvalues=[
        mb.gen_connect("c", properties=mb.proplist((0x21, 0)), proto_ver=5),  # Receive Max 0
        mb.gen_connect("c", properties=mb.proplist((0x27, 0)), proto_ver=5),  # Max Packet 0
        mb.gen_connect("c", properties=mb.proplist((0x17, 2)), proto_ver=5),  # Req Problem 2
        mb.gen_connect("c", properties=mb.proplist((0x19, 2)), proto_ver=5),  # Req Resp 2
        mb.gen_connack(properties=mb.proplist((0x24, 2)), proto_ver=5),  # Maximum QoS 2
        mb.gen_connack(properties=mb.proplist((0x25, 2)), proto_ver=5),  # Retain Avail 2
        mb.gen_publish("t", properties=mb.proplist((0x23, 0)), proto_ver=5),  # Topic Alias 0
        mb.gen_publish("t", properties=mb.proplist((0x0B, 0)), proto_ver=5),  # Sub Id 0
        mb.gen_publish("t", properties=mb.proplist((0x01, 2)), proto_ver=5),  # Format 2
    ],
)
def test_property_value_out_of_range_is_a_protocol_error(wire: bytes) -> None:
    """E.g. "It is a Protocol Error to include the Receive Maximum value of 0" (§3.1.2.11.3),
    "A Topic Alias of 0 is not permitted" (§3.3.2.3.4)."""
    _rejects(wire, V5, *PROTOCOL_ERROR)


def _connect_raw(flags: int, payload: bytes, *, level: int = 4, name: bytes = b"MQTT") -> bytes:
    props = mb.props() if level == 5 else b""
    body = mb.utf8(name) + mb.u8(level) + mb.u8(flags) + mb.u16(60) + props + payload
    return mb.packet(0x10, body)


def _proto_name(version: int) -> bytes:
    return b"MQIsdp" if version == 3 else b"MQTT"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_connect_reserved_flag_is_malformed(version: int) -> None:
    """[MQTT-3.1.2-3]: the Server MUST validate that the reserved flag is 0."""
    ok = _connect_raw(0x02, mb.utf8("c"), level=version, name=_proto_name(version))
    assert isinstance(decode(ok, version), Connect)
    bad = _connect_raw(0x03, mb.utf8("c"), level=version, name=_proto_name(version))
    _rejects(bad, version, *MALFORMED)
    _rejects(bad, None, *MALFORMED)


@pytest.mark.parametrize("version", ALL_VERSIONS)
@pytest.mark.parametrize("flags", [0x08, 0x10, 0x18, 0x20, 0x28])
def test_will_qos_or_retain_without_will_flag_is_malformed(version: int, flags: int) -> None:
    """[MQTT-3.1.2-11], [MQTT-3.1.2-13] (3.1.1: [MQTT-3.1.2-13], [MQTT-3.1.2-15]): with the
    Will Flag 0, Will QoS and Will Retain MUST be 0."""
    bad = _connect_raw(0x02 | flags, mb.utf8("c"), level=version, name=_proto_name(version))
    _rejects(bad, version, *MALFORMED)
    _rejects(bad, None, *MALFORMED)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_will_qos_3_is_malformed(version: int) -> None:
    """[MQTT-3.1.2-12]: Will QoS 3 is a Malformed Packet."""
    _rejects(mb.gen_connect("c", will_topic="w", will_qos=3, proto_ver=version), None, *MALFORMED)


@pytest.mark.parametrize("version", V3_VERSIONS)
def test_password_without_username_is_malformed_before_v5(version: int) -> None:
    """[MQTT-3.1.2-22] (MQTT 3.1.1): if the User Name Flag is 0, the Password Flag MUST be 0.
    MQTT 5 lifts the rule (see test_connect_v5_password_without_username)."""
    wire = mb.gen_connect("c", password=b"p", proto_ver=version)
    _rejects(wire, version, *MALFORMED)
    _rejects(wire, None, *MALFORMED)
    assert decode(mb.gen_connect("c", password=b"p", proto_ver=V5), V5) == Connect(
        protocol_version=ProtocolVersion(5),
        client_id="c",
        password=b"p",
    )


@pytest.mark.parametrize(
    ("name", "level"),
    [(b"MQTT", 0), (b"MQTT", 2), (b"MQTT", 3), (b"MQTT", 6), (b"MQTT", 255), (b"MQIsdp", 4)],
)
def test_unsupported_protocol_level(name: bytes, level: int) -> None:
    """[MQTT-3.1.2-2]: an unsupported level is answered with CONNACK 0x01 / 0x84."""
    wire = mb.gen_connect("c", proto_name=name, proto_ver=level)
    for version in (None, 3, 4, 5):
        exc = _rejects(
            wire, version, UnsupportedProtocolVersion, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
        )
        assert exc.reason_code == 0x84


def test_unknown_protocol_name_is_a_protocol_error() -> None:
    """[MQTT-3.1.2-1]: the protocol name MUST be "MQTT" ("MQIsdp" for 3.1)."""
    for name in (b"MQTX", b"mqtt", b"", b"HTTP"):
        _rejects(mb.gen_connect("c", proto_name=name, proto_ver=4), None, *PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("version", "wire"),
    ids=_hex,
    argvalues=[
        # Remaining length 0 written as 0x80 0x00.
        (4, b"\xc0\x80\x00"),
        (5, b"\xe0\x80\x00"),
        # Remaining length 5 written in two bytes.
        (4, b"\x30\x85\x00" + mb.utf8("a") + b"xy"),
        (3, b"\x30\x85\x80\x00" + mb.utf8("a") + b"xy"),
        # Property length 0 written as 0x80 0x00.
        (5, mb.packet(0x40, mb.u16(1) + b"\x00\x80\x00")),
        (5, mb.packet(0x30, mb.utf8("t") + b"\x80\x00" + b"pay")),
        # Property identifier 0x1F (Reason String) written as 0x9F 0x00.
        (5, mb.packet(0x40, mb.u16(1) + b"\x10\x05\x9f\x00" + mb.utf8("r"))),
        # Subscription Identifier 1 written as 0x81 0x00.
        (5, mb.packet(0x30, mb.utf8("t") + b"\x03\x0b\x81\x00")),
    ],
)
def test_non_minimal_variable_byte_integer_is_malformed(version: int, wire: bytes) -> None:
    """[MQTT-1.5.5-1]: the encoded value MUST use the minimum number of bytes necessary."""
    exc = _rejects(wire, version, *MALFORMED)
    assert exc.rule == "[MQTT-1.5.5-1]"


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_subscribe_without_topic_filters_is_a_protocol_error(version: int) -> None:
    """MQTT 5.0 [MQTT-3.8.3-2] / 3.1.1 [MQTT-3.8.3-3]: at least one filter/options pair."""
    _rejects(mb.gen_subscribe(1, [], proto_ver=version), version, *PROTOCOL_ERROR)
    _rejects(mb.gen_unsubscribe(1, [], proto_ver=version), version, *PROTOCOL_ERROR)


def test_subscribe_v5_retain_handling_3_is_a_protocol_error() -> None:
    """MQTT 5.0 §3.8.3.1: "It is a Protocol Error to send a Retain Handling value of 3"."""
    _rejects(mb.gen_subscribe_one(1, "a", 0, retain_handling=3, proto_ver=5), V5, *PROTOCOL_ERROR)


@pytest.mark.parametrize("topic_filter", ["$share/g/a", "$share/g/#", "$queue/a/b"])
def test_no_local_on_shared_subscription_is_a_protocol_error(topic_filter: str) -> None:
    """[MQTT-3.8.3-4]: It is a Protocol Error to set No Local on a Shared Subscription."""
    wire = mb.gen_subscribe_one(1, topic_filter, 1, no_local=True, proto_ver=5)
    _rejects(wire, V5, *PROTOCOL_ERROR)
    ok = decode(mb.gen_subscribe_one(1, "a/#", 1, no_local=True, proto_ver=5), V5)
    assert isinstance(ok, Subscribe)
    assert ok.subscriptions[0].no_local


def test_subscribe_maximum_qos_3() -> None:
    """MQTT 5.0 §3.8.3.1: Maximum QoS 3 is a Protocol Error; MQTT 3.1.1 [MQTT-3-8.3-4]
    makes a requested QoS 3 a malformed packet."""
    _rejects(mb.gen_subscribe(1, [("a", 3)], proto_ver=5), V5, *PROTOCOL_ERROR)
    for version in V3_VERSIONS:
        _rejects(mb.gen_subscribe(1, [("a", 3)], proto_ver=version), version, *MALFORMED)


def test_subscribe_reserved_option_bits_are_malformed() -> None:
    """[MQTT-3.8.3-5] (MQTT 5: bits 6-7) and [MQTT-3-8.3-4] (MQTT 3.1.1: bits 2-7)."""
    for bit in (0x40, 0x80):
        _rejects(mb.gen_subscribe(1, [("a", bit | 1)], proto_ver=5), V5, *MALFORMED)
    for bit in (0x04, 0x08, 0x10, 0x20, 0x40, 0x80):
        for version in V3_VERSIONS:
            _rejects(mb.gen_subscribe(1, [("a", bit)], proto_ver=version), version, *MALFORMED)


def test_empty_topic_name() -> None:
    """[MQTT-4.7.3-1]: a topic name is at least one character; MQTT 5 allows an empty one
    only with a Topic Alias ([MQTT-3.3.2-1]: otherwise a Protocol Error)."""
    for version in V3_VERSIONS:
        _rejects(mb.gen_publish("", proto_ver=version), version, *MALFORMED)
    _rejects(mb.gen_publish("", proto_ver=5), V5, *PROTOCOL_ERROR)


@pytest.mark.parametrize(
    ("version", "wire"),
    ids=_hex,
    argvalues=[
        (4, mb.packet(0x40, mb.u16(1) + b"\x00")),  # v3 PUBACK with a reason code
        (4, mb.packet(0xE0, b"\x00")),  # v3 DISCONNECT with a body
        (4, mb.packet(0xC0, b"\x00")),  # PINGREQ with a body
        (5, mb.packet(0xD0, b"\x00")),  # PINGRESP with a body
        (4, mb.packet(0xB0, mb.u16(1) + b"\x00")),  # v3 UNSUBACK with a payload
        (4, mb.packet(0x20, b"\x00\x00\x00")),  # CONNACK with a trailing byte
        (4, mb.packet(0x10, mb.gen_connect("c")[2:] + b"!")),  # CONNECT with trailing bytes
        (5, mb.packet(0xF0, b"\x18")),  # AUTH with a reason code but no property length
        (5, mb.packet(0xB0, mb.u16(1) + mb.props())),  # v5 UNSUBACK without reason codes
        (4, mb.packet(0x90, mb.u16(1))),  # SUBACK without return codes
        (4, mb.packet(0x40, b"\x00")),  # PUBACK shorter than its packet id
    ],
)
def test_length_and_content_mismatch_is_malformed(version: int, wire: bytes) -> None:
    _rejects(wire, version, *MALFORMED)


@pytest.mark.parametrize(
    ("version", "wire"),
    ids=_hex,
    argvalues=[
        (5, mb.gen_puback(1, reason_code=0x92, proto_ver=5)),  # PUBREL/PUBCOMP code
        (5, mb.gen_pubrel(1, reason_code=0x10, proto_ver=5)),
        (5, mb.gen_disconnect(reason_code=0x01, proto_ver=5)),
        (5, mb.gen_auth(reason_code=0x01)),
        (5, mb.gen_connack(rc=0x04, proto_ver=5)),
        (5, mb.gen_suback(1, [0x03], proto_ver=5)),
        (5, mb.gen_unsuback(1, [0x02], proto_ver=5)),
        (4, mb.gen_connack(rc=6)),
        (4, mb.gen_suback(1, [0x03])),
        (4, b"\x20\x02\x02\x00"),  # CONNACK reserved acknowledge flag
    ],
)
def test_reason_code_not_allowed_on_the_packet_is_malformed(version: int, wire: bytes) -> None:
    """MQTT 5.0 §2.4 Table 2-6 lists which packets may carry each code; MQTT 3.1.1 CONNACK
    has return codes 0-5 only (§3.2.2.3) and reserved acknowledge flags [MQTT-3.2.2-1]."""
    _rejects(wire, version, *MALFORMED)


@pytest.mark.parametrize("version", [4, 5])
def test_session_present_with_failing_connack_is_a_protocol_error(version: int) -> None:
    """[MQTT-3.2.2-6]: a CONNACK with a non-zero code MUST have Session Present 0."""
    rc = 5 if version == 4 else 0x87
    _rejects(
        mb.gen_connack(session_present=True, rc=rc, proto_ver=version), version, *PROTOCOL_ERROR
    )


# =========================================================================================
# Packets built by users are validated (LocalProtocolError, never sent)
# =========================================================================================

_INVALID_CONSTRUCTIONS: list[tuple[str, Callable[[], object]]] = [
    ("wildcard # in topic [MQTT-3.3.2-2]", lambda: Publish(topic="a/#")),
    ("wildcard + in topic [MQTT-3.3.2-2]", lambda: Publish(topic="+")),
    ("empty topic [MQTT-4.7.3-1]", lambda: Publish(topic="")),
    ("U+0000 in topic [MQTT-1.5.4-2]", lambda: Publish(topic="a\x00")),
    ("surrogate in topic [MQTT-1.5.4-1]", lambda: Publish(topic="\ud800")),
    ("DUP on QoS 0 [MQTT-3.3.1-2]", lambda: Publish(topic="a", qos=0, dup=True)),
    ("QoS 3 [MQTT-3.3.1-4]", lambda: Publish(topic="a", qos=3)),
    ("packet id on QoS 0 [MQTT-2.2.1-2]", lambda: Publish(topic="a", packet_id=5)),
    ("packet id out of range", lambda: Publish(topic="a", qos=1, packet_id=0x10000)),
    ("payload not bytes", lambda: Publish(topic="a", payload="text")),  # type: ignore[arg-type]
    ("topic too long", lambda: Publish(topic="x" * 65_536)),
    ("filter # not last [MQTT-4.7.1-1]", lambda: Subscription(topic_filter="a/#/b")),
    ("filter a# [MQTT-4.7.1-1]", lambda: Subscription(topic_filter="a#")),
    ("filter a+ [MQTT-4.7.1-2]", lambda: Subscription(topic_filter="a/b+")),
    ("empty filter [MQTT-4.7.3-1]", lambda: Subscription(topic_filter="")),
    ("shared without group [MQTT-4.8.2-2]", lambda: Subscription(topic_filter="$share//a")),
    ("shared without filter", lambda: Subscription(topic_filter="$share/g")),
    (
        "No Local on shared [MQTT-3.8.3-4]",
        lambda: Subscription(topic_filter="$share/g/a", no_local=True),
    ),
    ("subscription QoS 3", lambda: Subscription(topic_filter="a", qos=3)),
    ("retain handling 3", lambda: Subscription(topic_filter="a", retain_handling=3)),  # type: ignore[arg-type]
    ("no subscriptions [MQTT-3.8.3-2]", lambda: Subscribe(packet_id=1, subscriptions=())),
    (
        "SUBSCRIBE packet id 0",
        lambda: Subscribe(packet_id=0, subscriptions=(Subscription(topic_filter="a"),)),
    ),
    ("no filters [MQTT-3.10.3-2]", lambda: Unsubscribe(packet_id=1, topic_filters=())),
    ("UNSUBSCRIBE packet id 0", lambda: Unsubscribe(packet_id=0, topic_filters=("a",))),
    ("PUBACK packet id 0", lambda: PubAck(packet_id=0)),
    ("PUBREL code 0x10", lambda: PubRel(packet_id=1, reason_code=0x10)),
    ("SUBACK without codes", lambda: SubAck(packet_id=1, reason_codes=())),
    ("SUBACK code 0x04", lambda: SubAck(packet_id=1, reason_codes=(4,))),
    ("UNSUBACK code 0x01", lambda: UnsubAck(packet_id=1, reason_codes=(1,))),
    ("DISCONNECT code 0x18", lambda: Disconnect(reason_code=0x18)),
    ("AUTH code 0x04", lambda: Auth(reason_code=0x04)),
    ("CONNACK code 0x10", lambda: ConnAck(reason_code=0x10)),
    (
        "session present with failure [MQTT-3.2.2-6]",
        lambda: ConnAck(session_present=True, reason_code=0x80),
    ),
    ("Receive Maximum 0", lambda: Properties(receive_maximum=0)),
    ("Topic Alias 0", lambda: Properties(topic_alias=0)),
    ("Maximum Packet Size 0", lambda: Properties(maximum_packet_size=0)),
    ("Subscription Identifier 0", lambda: Properties(subscription_identifiers=(0,))),
    ("Subscription Identifier too big", lambda: Properties(subscription_identifiers=(1 << 28,))),
    ("Payload Format 2", lambda: Properties(payload_format_indicator=2)),
    ("Maximum QoS 2", lambda: Properties(maximum_qos=2)),
    ("Session Expiry > 32 bits", lambda: Properties(session_expiry_interval=1 << 32)),
    ("bool for an int", lambda: Properties(receive_maximum=True)),
    ("user property U+0000", lambda: Properties(user_properties=(("a\x00", "b"),))),
    ("user property not a pair", lambda: Properties(user_properties=(("a",),))),  # type: ignore[arg-type]
    ("user properties not a tuple", lambda: Properties(user_properties=[("a", "b")])),  # type: ignore[arg-type]
    ("binary not bytes", lambda: Properties(correlation_data="x")),  # type: ignore[arg-type]
    (
        "property not allowed on PUBLISH",
        lambda: Publish(topic="a", properties=Properties(session_expiry_interval=1)),
    ),
    (
        "property not allowed in Will",
        lambda: Will(topic="w", properties=Properties(topic_alias=1)),
    ),
    (
        "two Subscription Identifiers on SUBSCRIBE",
        lambda: Subscribe(
            packet_id=1,
            subscriptions=(Subscription(topic_filter="a"),),
            properties=Properties(subscription_identifiers=(1, 2)),
        ),
    ),
    ("will topic with wildcard", lambda: Will(topic="a/+")),
    (
        "MQTT 3 password without username [MQTT-3.1.2-22]",
        lambda: Connect(protocol_version=ProtocolVersion.V311, password=b"p"),
    ),
    (
        "MQTT 3 CONNECT with properties",
        lambda: Connect(
            protocol_version=ProtocolVersion.V311, properties=Properties(receive_maximum=1)
        ),
    ),
    ("keepalive out of range", lambda: Connect(keepalive=65_536)),
    ("unknown protocol version", lambda: Connect(protocol_version=6)),  # type: ignore[arg-type]
    ("client id with U+0000", lambda: Connect(client_id="a\x00")),
]


@pytest.mark.parametrize(
    "build", [b for _, b in _INVALID_CONSTRUCTIONS], ids=[n for n, _ in _INVALID_CONSTRUCTIONS]
)
def test_user_built_packet_is_validated(build: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()
    assert not isinstance(info.value, RemoteProtocolError)


def test_valid_user_built_packets() -> None:
    """The counterparts that are legal."""
    assert Publish(topic="", properties=Properties(topic_alias=1)).topic == ""
    assert Publish(topic="a", qos=1).packet_id == 0  # assigned later by the connection
    assert Connect(protocol_version=ProtocolVersion.V5, password=b"p").username is None
    assert Subscription(topic_filter="$share/g/a/#").topic_filter == "$share/g/a/#"
    assert Subscription(topic_filter="a/#", no_local=True).no_local
    # An empty Properties() is the same as NO_PROPERTIES, even on an MQTT 3 CONNECT.
    connect = Connect(protocol_version=ProtocolVersion(4), client_id="c", properties=Properties())
    assert encode(connect, V4) == mb.gen_connect("c")
    assert encode(Publish(topic="t", properties=Properties()), V4) == mb.gen_publish("t")


_UNENCODABLE: list[tuple[str, Packet, int]] = [
    ("QoS 1 packet id 0 [MQTT-2.2.1-3]", Publish(topic="a", qos=1, packet_id=0), 4),
    ("QoS 2 packet id 0 [MQTT-2.2.1-3]", Publish(topic="a", qos=2, packet_id=0), 5),
    ("AUTH on 3.1.1", Auth(), 4),
    ("AUTH on 3.1", Auth(), 3),
    ("PUBLISH properties on 3.1.1", Publish(topic="a", properties=Properties(topic_alias=1)), 4),
    ("empty topic on 3.1.1", Publish(topic="", properties=Properties(topic_alias=1)), 4),
    ("PUBACK reason code on 3.1.1", PubAck(packet_id=1, reason_code=0x10), 4),
    ("PUBREL reason code on 3.1", PubRel(packet_id=1, reason_code=0x92), 3),
    ("DISCONNECT reason code on 3.1.1", Disconnect(reason_code=0x04), 4),
    ("DISCONNECT properties on 3.1.1", Disconnect(properties=Properties(reason_string="x")), 4),
    ("CONNACK 0x80 on 3.1.1", ConnAck(reason_code=0x80), 4),
    ("CONNACK session present on 3.1", ConnAck(session_present=True), 3),
    ("CONNACK properties on 3.1.1", ConnAck(properties=Properties(maximum_qos=0)), 4),
    ("SUBACK 0x80 on 3.1", SubAck(packet_id=1, reason_codes=(0x80,)), 3),
    ("SUBACK 0x97 on 3.1.1", SubAck(packet_id=1, reason_codes=(0x97,)), 4),
    ("UNSUBACK codes on 3.1.1", UnsubAck(packet_id=1, reason_codes=(0,)), 4),
    ("UNSUBACK without codes on 5", UnsubAck(packet_id=1), 5),
    (
        "No Local on 3.1.1",
        Subscribe(packet_id=1, subscriptions=(Subscription(topic_filter="a", no_local=True),)),
        4,
    ),
    (
        "Will properties on 3.1.1",
        Connect(will=Will(topic="w", properties=Properties(will_delay_interval=1))),
        4,
    ),
    ("unknown version", PingReq(), 6),
]


@pytest.mark.parametrize(
    ("packet", "version"),
    [(p, v) for _, p, v in _UNENCODABLE],
    ids=[n for n, _, _ in _UNENCODABLE],
)
def test_encode_refuses_what_the_version_cannot_carry(packet: Packet, version: int) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet, version)


def test_encode_refuses_non_packets() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Subscription(topic_filter="a"), 4)  # type: ignore[arg-type]


# =========================================================================================
# topics.py
# =========================================================================================

_VALID_FILTERS = [
    "a/b",
    "a/+/c",
    "+",
    "#",
    "a/#",
    "+/+",
    "/",
    "/#",
    "//",
    "$SYS/#",
    "$SYS/+/x",
    "+/tennis/#",
    "sport/tennis/player1/#",
    "$share/g/a/#",
    "$share/group/+",
    "$share/g//",
    "$queue/a/+",
    "$sharex/a",
    "a b/ü/✓",
]
_INVALID_FILTERS = [
    "",
    "a#",
    "a/b#",
    "a/#/c",
    "#/",
    "#/#",
    "a+",
    "+a",
    "a/+b/c",
    "sport/tennis#",
    "a/\x00",
    "$share",
    "$share/",
    "$share/g",
    "$share//a",
    "$share/g/",
    "$share/g+/a",
    "$share/#/a",
    "$share/g/a/#/b",
    "$share/g/a+",
    "$queue",
    "$queue/",
    "$queue/a#",
]


@pytest.mark.parametrize("topic_filter", _VALID_FILTERS)
def test_topic_filter_error_accepts_valid_filters(topic_filter: str) -> None:
    assert topic_filter_error(topic_filter) is None
    assert Subscription(topic_filter=topic_filter).topic_filter == topic_filter


@pytest.mark.parametrize("topic_filter", _INVALID_FILTERS)
def test_topic_filter_error_rejects_invalid_filters(topic_filter: str) -> None:
    """[MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1], [MQTT-4.8.2-1], [MQTT-4.8.2-2]."""
    error = topic_filter_error(topic_filter)
    assert isinstance(error, str)
    assert error
    with pytest.raises(LocalProtocolError):
        Subscription(topic_filter=topic_filter)


@pytest.mark.parametrize(
    ("topic_filter", "expected"),
    [
        ("$share/g/a/b", SharedFilter("g", "a/b")),
        ("$share/consumer1/sport/tennis/+", SharedFilter("consumer1", "sport/tennis/+")),
        ("$share/g/#", SharedFilter("g", "#")),
        ("$share/g//", SharedFilter("g", "/")),
        ("$share/g/$share/x", SharedFilter("g", "$share/x")),
        ("$queue/a/b", SharedFilter("$queue", "a/b")),
        ("a/b", None),
        ("#", None),
        ("$SYS/x", None),
        ("$sharex/g/a", None),
        ("share/g/a", None),
    ],
)
def test_parse_shared(topic_filter: str, expected: SharedFilter | None) -> None:
    assert parse_shared(topic_filter) == expected


@pytest.mark.parametrize(
    "topic_filter",
    ["$share", "$queue", "$share/g", "$share//a", "$share/g/", "$share/g+/a", "$queue/"],
)
def test_parse_shared_rejects_bad_shared_filters(topic_filter: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_shared(topic_filter)


_MATCHES = [
    # Multi-level wildcard, including the parent level [MQTT-4.7.1-2] (MQTT 5.0 §4.7.1.2).
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/#", "sport", True),
    ("a/#", "a", True),
    ("a/#", "a/", True),
    ("a/#", "ab", False),
    ("a/#", "b/a", False),
    ("#", "a/b/c", True),
    ("#", "/", True),
    # Single-level wildcard (§4.7.1.3).
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+/+", "/", True),
    ("/+", "/", True),
    ("+", "/", False),
    ("+", "a", True),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/d", False),
    ("+/tennis/#", "/tennis/x", True),
    # Exact levels, case-sensitive, no trimming.
    ("a/b", "a/b", True),
    ("a/b", "a/b/c", False),
    ("a/b/c", "a/b", False),
    ("A", "a", False),
    ("a", "a ", False),
    ("a b", "a b", True),
    ("/a", "a", False),
    # Leading wildcards do not match topics starting with $ [MQTT-4.7.2-1].
    ("#", "$SYS/broker/clients", False),
    ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("+", "$SYS", False),
    ("#", "$", False),
    ("+/#", "$SYS/x", False),
    ("$SYS/#", "$SYS/broker/clients", True),
    ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("$SYS/#", "$SYS", True),
    ("a/#", "a/$SYS", True),
    ("a/+", "a/$x", True),
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), _MATCHES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
    assert topic_filter_error(topic_filter) is None
    assert topic_name_error(topic) is None


def _reference_match(topic_filter: str, topic: str) -> bool:
    """An independent matcher: the filter compiled to a regular expression."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels = levels[:-1]
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels]
    pattern = "/".join(parts)
    if multi:
        pattern = pattern + "(/.*)?" if parts else ".*"
    return re.fullmatch(pattern, topic, flags=re.DOTALL) is not None


@st.composite
def _filter_and_topic(draw: st.DrawFn) -> tuple[str, str]:
    topic_filter = draw(topic_filters(shared=False))
    if draw(st.booleans()):
        return topic_filter, draw(topic_names())
    # Instantiate the filter so that matches are common.
    level = st.text(st.sampled_from("ab$ "), max_size=3)
    out: list[str] = []
    for part in topic_filter.split("/"):
        if part == "+":
            out.append(draw(level))
        elif part == "#":
            out.extend(draw(st.lists(level, max_size=3)))
        else:
            out.append(part)
    topic = "/".join(out) if out else "x"
    return topic_filter, topic or "x"


@given(pair=_filter_and_topic())
@settings(max_examples=300, deadline=None)
def test_topic_matches_agrees_with_a_regex_matcher(pair: tuple[str, str]) -> None:
    topic_filter, topic = pair
    assert topic_filter_error(topic_filter) is None
    assert topic_matches(topic_filter, topic) is _reference_match(topic_filter, topic)


@given(topic=topic_names())
@settings(max_examples=100, deadline=None)
def test_a_topic_name_matches_itself_and_hash(topic: str) -> None:
    assert topic_name_error(topic) is None
    assert topic_matches(topic, topic)
    assert topic_matches("#", topic) is not topic.startswith("$")


@given(text=mqtt_text(max_size=8))
@settings(max_examples=100, deadline=None)
def test_is_wildcard_filter(text: str) -> None:
    assert is_wildcard_filter(text) is ("+" in text or "#" in text)


@pytest.mark.parametrize(
    ("topic", "valid"),
    [
        ("a", True),
        ("/", True),
        ("$SYS/x", True),
        ("", False),
        ("a/+", False),
        ("#", False),
        ("a\x00", False),
    ],
)
def test_topic_name_error(topic: str, valid: bool) -> None:
    assert (topic_name_error(topic) is None) is valid
