"""The pure-Python and the mypyc build of tidemq.protocol (setup.py, TIDEMQ_MYPYC=1) behave
the same; these tests run under both (.ci/run's second phase installs the compiled build and
sets TIDEMQ_TEST_EXPECT_COMPILED=1, so a build that silently fell back to Python fails)."""

from __future__ import annotations

import dataclasses
import os

import pytest

import tidemq.protocol as mqtt
from tidemq.protocol.__main__ import compiled_modules, main

EXPECT_COMPILED = os.environ.get("TIDEMQ_TEST_EXPECT_COMPILED") == "1"


def test_compiled_flag_matches_the_loaded_modules() -> None:
    modules = compiled_modules()
    assert set(modules) >= {"_wire", "codec", "connection"}
    # The build compiles these modules together or not at all (setup.py).
    assert all(modules.values()) is mqtt.COMPILED
    assert any(modules.values()) is mqtt.COMPILED


@pytest.mark.skipif(not EXPECT_COMPILED, reason="TIDEMQ_TEST_EXPECT_COMPILED=1 not set")
def test_compiled_build_is_loaded() -> None:
    assert mqtt.COMPILED
    assert main(["--expect-compiled"]) == 0


def test_module_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tidemq.protocol: " + ("compiled" if mqtt.COMPILED else "pure Python"))
    assert "codec" in out


def test_packet_type_is_a_class_attribute_not_a_field() -> None:
    for ptype, cls in mqtt.PACKET_CLASSES.items():
        assert cls.type is ptype
        assert "type" not in {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    assert mqtt.PubAck(packet_id=1).type is mqtt.PacketType.PUBACK


@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_decoded_publish_is_a_plain_frozen_publish(version: int, qos: int) -> None:
    built = mqtt.Publish(
        topic="a/b", payload=b"xyz", qos=qos, retain=True, packet_id=7 if qos else 0
    )
    decoded = mqtt.decode(mqtt.encode(built, version), version)
    assert type(decoded) is mqtt.Publish
    assert decoded == built
    assert hash(decoded) == hash(built)
    assert repr(decoded) == repr(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.topic = "c"  # type: ignore[misc]
    assert dataclasses.replace(decoded, qos=0, packet_id=0).qos == 0


def test_trusted_publish_equals_the_validated_one() -> None:
    props = mqtt.Properties(content_type="text/plain")
    trusted = mqtt.Publish._trusted("t", b"p", 1, False, True, 9, props)
    assert type(trusted) is mqtt.Publish
    assert trusted == mqtt.Publish(
        topic="t", payload=b"p", qos=1, dup=True, packet_id=9, properties=props
    )


def test_decoded_packets_with_trusted_construction_round_trip() -> None:
    # The decoder builds these without __init__ (codec._new, properties._trusted_properties).
    will = mqtt.Will(
        topic="w", payload=b"bye", qos=1, properties=mqtt.Properties(will_delay_interval=5)
    )
    packets: list[mqtt.Packet] = [
        mqtt.Connect(
            protocol_version=mqtt.ProtocolVersion.V5,
            client_id="c",
            username="u",
            password=b"p",
            will=will,
            properties=mqtt.Properties(session_expiry_interval=10, user_properties=(("k", "v"),)),
        ),
        mqtt.Subscribe(packet_id=3, subscriptions=(mqtt.Subscription(topic_filter="a/+", qos=2),)),
        mqtt.PubAck(packet_id=4, reason_code=0x10),
        mqtt.Disconnect(reason_code=0x04),
    ]
    for packet in packets:
        decoded = mqtt.decode(mqtt.encode(packet, 5), 5)
        assert decoded == packet
        assert type(decoded) is type(packet)


def test_topic_alias_resolution_builds_a_publish() -> None:
    server = mqtt.MQTTConnection(mqtt.Role.SERVER, topic_alias_maximum=5)
    server.receive_data(
        mqtt.encode(mqtt.Connect(protocol_version=mqtt.ProtocolVersion.V5, client_id="c"), 5)
    )
    first = mqtt.Publish(topic="x/y", payload=b"1", properties=mqtt.Properties(topic_alias=2))
    second = mqtt.Publish(topic="", payload=b"2", properties=mqtt.Properties(topic_alias=2))
    got = server.receive_data(mqtt.encode(first, 5) + mqtt.encode(second, 5))
    publishes = [p for p in got if isinstance(p, mqtt.Publish)]
    assert [(p.topic, p.payload) for p in publishes] == [("x/y", b"1"), ("x/y", b"2")]
    assert type(publishes[1]) is mqtt.Publish
