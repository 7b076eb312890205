"""MQTT 5 Reason Strings, sent only when ``reason_strings`` is on (off by default, as in
Mosquitto and EMQX), and on acks only if the client allows problem information."""

from __future__ import annotations

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tidemq.broker import Decision, HookPoint
from tidemq.testing import RunningBroker


async def _v5(port: int, client_id: str, properties: bytes = b"") -> RawClient:
    raw = await RawClient.connect(port)
    await raw.send(mb.gen_connect(client_id, proto_ver=5, properties=properties))
    packet = await raw.read_packet()
    assert packet[0] == 0x20  # CONNACK
    assert packet[2:4] == b"\x00\x00"  # no session present, success
    return raw


def _reason(text: str) -> bytes:
    return mb.proplist((mb.REASON_STRING, text))


@pytest.mark.broker_settings(reason_strings=True)
async def test_failing_puback_carries_reason_string(broker: RunningBroker) -> None:
    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, lambda e: Decision.DENY)
    raw = await _v5(broker.port, "rs-1")
    await raw.send(mb.gen_publish("t", qos=1, mid=3, payload=b"x", proto_ver=5))
    await raw.expect(
        mb.gen_puback(
            3, reason_code=0x87, properties=_reason("publish not authorized"), proto_ver=5
        )
    )
    await raw.close()


@pytest.mark.broker_settings(reason_strings=True)
async def test_no_reason_string_on_acks_without_problem_information(
    broker: RunningBroker,
) -> None:
    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, lambda e: Decision.DENY)
    no_problem_info = mb.proplist((mb.REQUEST_PROBLEM_INFORMATION, 0))
    raw = await _v5(broker.port, "rs-2", no_problem_info)
    await raw.send(mb.gen_publish("t", qos=1, mid=4, payload=b"x", proto_ver=5))
    # [MQTT-3.1.2-29]: no Reason String on anything but PUBLISH, CONNACK and DISCONNECT.
    await raw.expect(mb.gen_puback(4, reason_code=0x87, proto_ver=5))
    await raw.close()


@pytest.mark.broker_settings(reason_strings=True)
async def test_protocol_error_disconnect_carries_reason_string(broker: RunningBroker) -> None:
    raw = await _v5(broker.port, "rs-3")
    await raw.send(mb.gen_publish("a/#", qos=0, payload=b"x", proto_ver=5))
    packet = await raw.read_packet()
    assert packet[0] == 0xE0
    assert packet[2] == 0x90  # Topic Name invalid
    assert b"wildcard in a topic name" in packet
    await raw.close()


@pytest.mark.broker_settings(reason_strings=True, allow_anonymous=False)
async def test_refused_connack_carries_reason_string(broker: RunningBroker) -> None:
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("rs-4", proto_ver=5))
    expected = mb.gen_connack(
        rc=0x87, properties=_reason("anonymous clients are not allowed"), proto_ver=5
    )
    await raw.expect(expected)
    await raw.close()


async def test_off_by_default(broker: RunningBroker) -> None:
    broker.broker.hooks.register(HookPoint.AUTHORIZE_PUBLISH, lambda e: Decision.DENY)
    raw = await _v5(broker.port, "rs-5")
    await raw.send(mb.gen_publish("t", qos=1, mid=5, payload=b"x", proto_ver=5))
    await raw.expect(mb.gen_puback(5, reason_code=0x87, proto_ver=5))
    await raw.close()
