"""Self-checks of the test-only packet builder against hand-computed bytes."""

from __future__ import annotations

import pytest

from tests import mqttbytes as mb


@pytest.mark.parametrize(("value", "encoded"), mb.SPEC_REMAINING_LENGTH_EXAMPLES)
def test_varint_spec_examples(value: int, encoded: bytes) -> None:
    assert mb.varint(value) == encoded


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_varint_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        mb.varint(value)


def test_utf8_spec_example() -> None:
    text, encoded = mb.SPEC_UTF8_EXAMPLE
    assert mb.utf8(text) == encoded
    # bytes pass through unchanged, so invalid UTF-8 can be produced on purpose
    assert mb.utf8(b"\xff\xfe") == b"\x00\x02\xff\xfe"


def test_integers_and_binary() -> None:
    assert mb.u16(10) == b"\x00\x0a"
    assert mb.u32(0x01020304) == b"\x01\x02\x03\x04"
    assert mb.binary(b"\x00\x01") == b"\x00\x02\x00\x01"


def test_connect_311_minimal() -> None:
    assert mb.gen_connect("a") == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a"


def test_connect_spec_variable_header() -> None:
    pkt = mb.gen_connect(
        "c",
        keepalive=10,
        username="u",
        password=b"p",
        will_topic="w",
        will_payload=b"x",
        will_qos=1,
    )
    # fixed header is 2 bytes here; the variable header is the next 10 bytes
    assert pkt[2:12] == mb.SPEC_CONNECT_VARIABLE_HEADER_EXAMPLE
    payload = b"\x00\x01c" + b"\x00\x01w" + b"\x00\x01x" + b"\x00\x01u" + b"\x00\x01p"
    assert pkt[12:] == payload
    assert pkt[:2] == bytes([0x10, 10 + len(payload)])


def test_connect_mqtt31_and_v5() -> None:
    v3 = mb.gen_connect("a", clean_session=False, keepalive=0, proto_ver=3)
    assert v3 == b"\x10\x0f\x00\x06MQIsdp\x03\x00\x00\x00\x00\x01a"
    v5 = mb.gen_connect("a", properties=mb.proplist((mb.SESSION_EXPIRY_INTERVAL, 30)), proto_ver=5)
    assert v5 == b"\x10\x13\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x1e\x00\x01a"


def test_connect_v5_will_properties_precede_will_topic() -> None:
    pkt = mb.gen_connect(
        "a",
        will_topic="t",
        will_payload=b"m",
        will_properties=mb.proplist((mb.WILL_DELAY_INTERVAL, 5)),
        proto_ver=5,
    )
    assert pkt.endswith(b"\x00\x01a" + b"\x05\x18\x00\x00\x00\x05" + b"\x00\x01t\x00\x01m")
    assert pkt[9] == 0x06  # clean start + will flag


def test_connack() -> None:
    assert mb.gen_connack() == b"\x20\x02\x00\x00"
    assert mb.gen_connack(session_present=True, rc=5) == b"\x20\x02\x01\x05"
    assert mb.gen_connack(rc=0x87, proto_ver=5) == b"\x20\x03\x00\x87\x00"


def test_publish_spec_variable_header() -> None:
    topic, mid, header = mb.SPEC_PUBLISH_VARIABLE_HEADER_EXAMPLE
    pkt = mb.gen_publish(topic, qos=1, mid=mid, payload=b"hi")
    assert pkt == b"\x32\x09" + header + b"hi"


def test_publish_flags_and_v5_properties() -> None:
    assert mb.gen_publish("t", payload=b"x", retain=True) == b"\x31\x04\x00\x01tx"
    assert mb.gen_publish(b"\xff", qos=2, dup=True, mid=1)[:1] == b"\x3c"
    pkt = mb.gen_publish("t", payload="x", properties=mb.proplist((mb.TOPIC_ALIAS, 1)), proto_ver=5)
    assert pkt == b"\x30\x08\x00\x01t\x03\x23\x00\x01x"


def test_puback_family_v311() -> None:
    assert mb.gen_puback(1) == b"\x40\x02\x00\x01"
    assert mb.gen_pubrec(2) == b"\x50\x02\x00\x02"
    assert mb.gen_pubrel(3) == b"\x62\x02\x00\x03"
    assert mb.gen_pubcomp(4) == b"\x70\x02\x00\x04"


def test_puback_v5_short_forms() -> None:
    assert mb.gen_puback(1, proto_ver=5) == b"\x40\x02\x00\x01"
    assert mb.gen_puback(1, reason_code=0x10, proto_ver=5) == b"\x40\x03\x00\x01\x10"
    with_props = mb.gen_pubrel(
        7, reason_code=0x92, properties=mb.proplist((mb.REASON_STRING, "x")), proto_ver=5
    )
    assert with_props == b"\x62\x08\x00\x07\x92\x04\x1f\x00\x01x"


def test_subscribe_spec_payload() -> None:
    subs, payload = mb.SPEC_SUBSCRIBE_PAYLOAD_EXAMPLE
    assert mb.gen_subscribe(10, subs) == b"\x82\x0e\x00\x0a" + payload


def test_subscribe_one_v5_options() -> None:
    pkt = mb.gen_subscribe_one(
        1, "a", 2, no_local=True, retain_as_published=True, retain_handling=2, proto_ver=5
    )
    assert pkt == b"\x82\x07\x00\x01\x00\x00\x01a\x2e"
    assert mb.sub_options(1, retain_handling=1) == 0x11


def test_suback_spec_payload() -> None:
    codes, payload = mb.SPEC_SUBACK_PAYLOAD_EXAMPLE
    assert mb.gen_suback(10, codes) == b"\x90\x05\x00\x0a" + payload
    assert mb.gen_suback(10, [1], proto_ver=5) == b"\x90\x04\x00\x0a\x00\x01"


def test_unsubscribe_and_unsuback() -> None:
    topics, payload = mb.SPEC_UNSUBSCRIBE_PAYLOAD_EXAMPLE
    assert mb.gen_unsubscribe(10, topics) == b"\xa2\x0c\x00\x0a" + payload
    assert mb.gen_unsuback(10) == mb.SPEC_FIXED_HEADER_EXAMPLES["UNSUBACK"] + b"\x00\x0a"
    assert mb.gen_unsuback(10, [0x11], proto_ver=5) == b"\xb0\x04\x00\x0a\x00\x11"
    with pytest.raises(ValueError, match="proto_ver=5"):
        mb.gen_unsuback(10, [0], proto_ver=4)


def test_ping_and_disconnect() -> None:
    assert mb.gen_pingreq() == b"\xc0\x00" == mb.SPEC_FIXED_HEADER_EXAMPLES["PINGREQ"]
    assert mb.gen_pingresp() == b"\xd0\x00" == mb.SPEC_FIXED_HEADER_EXAMPLES["PINGRESP"]
    assert mb.gen_disconnect() == b"\xe0\x00" == mb.SPEC_FIXED_HEADER_EXAMPLES["DISCONNECT"]
    assert mb.gen_disconnect(proto_ver=5) == b"\xe0\x00"
    assert mb.gen_disconnect(reason_code=0x04, proto_ver=5) == b"\xe0\x01\x04"
    pkt = mb.gen_disconnect(
        reason_code=0x8E, properties=mb.proplist((mb.SESSION_EXPIRY_INTERVAL, 0)), proto_ver=5
    )
    assert pkt == b"\xe0\x07\x8e\x05\x11\x00\x00\x00\x00"


def test_auth() -> None:
    assert mb.gen_auth() == b"\xf0\x00"
    pkt = mb.gen_auth(
        reason_code=0x18,
        properties=mb.proplist((mb.AUTHENTICATION_METHOD, "m"), (mb.AUTHENTICATION_DATA, b"d")),
    )
    assert pkt == b"\xf0\x0a\x18\x08\x15\x00\x01m\x16\x00\x01d"


def test_props_wire_types() -> None:
    assert mb.props() == b"\x00"
    assert mb.proplist((mb.SUBSCRIPTION_IDENTIFIER, 200)) == b"\x0b\xc8\x01"
    assert mb.proplist((mb.USER_PROPERTY, ("k", "v"))) == b"\x26\x00\x01k\x00\x01v"
    assert mb.proplist((mb.CORRELATION_DATA, b"\x00")) == b"\x09\x00\x01\x00"
    assert mb.proplist((mb.RECEIVE_MAXIMUM, 10)) == b"\x21\x00\x0a"
    assert mb.props((mb.PAYLOAD_FORMAT_INDICATOR, 1)) == b"\x02\x01\x01"
    assert len(mb.PROPERTY_TYPES) == 27


def test_props_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown"):
        mb.prop(0x04, 1)
    with pytest.raises(TypeError, match="needs an int"):
        mb.prop(mb.RECEIVE_MAXIMUM, "10")
    with pytest.raises(TypeError, match="needs bytes"):
        mb.prop(mb.CORRELATION_DATA, "x")


def test_packet_uses_multibyte_remaining_length() -> None:
    pkt = mb.packet(0x30, b"\x00" * 200)
    assert pkt[:3] == b"\x30\xc8\x01"
    assert len(pkt) == 203
