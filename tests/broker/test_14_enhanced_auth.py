"""MQTT 5 enhanced authentication (§4.12) through the ENHANCED_AUTH hook point.

A toy challenge/response method "TOY": the client sends its name, the broker answers
AUTH 0x18 with a challenge, the client must send the challenge reversed.
"""

from __future__ import annotations

import asyncio

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tidemq.broker import AuthStep, EnhancedAuthEvent, EnhancedAuthResult, HookPoint
from tidemq.testing import RunningBroker

METHOD = "TOY"
CHALLENGE = b"n0nce"


async def toy(event: EnhancedAuthEvent) -> EnhancedAuthResult:
    await asyncio.sleep(0)  # async callbacks are allowed at connect time
    if event.method != METHOD:
        return EnhancedAuthResult(step=AuthStep.UNSUPPORTED)
    if event.step == 0:
        if event.data not in (b"alice", b"mallory"):
            return EnhancedAuthResult(step=AuthStep.FAILURE, reason_code=0x86)
        return EnhancedAuthResult(step=AuthStep.CONTINUE, data=CHALLENGE)
    if event.data == CHALLENGE[::-1]:
        return EnhancedAuthResult(step=AuthStep.SUCCESS, data=b"welcome")
    return EnhancedAuthResult(step=AuthStep.FAILURE)


@pytest.fixture
def toy_broker(broker: RunningBroker) -> RunningBroker:
    broker.broker.hooks.register(HookPoint.ENHANCED_AUTH, toy)
    return broker


def _auth_props(data: bytes | None) -> bytes:
    items: list[tuple[int, object]] = [(mb.AUTHENTICATION_METHOD, METHOD)]
    if data is not None:
        items.append((mb.AUTHENTICATION_DATA, data))
    return mb.proplist(*items)


async def test_challenge_response_then_publish(toy_broker: RunningBroker) -> None:
    raw = await RawClient.connect(toy_broker.port)
    await raw.send(mb.gen_connect("ea-1", proto_ver=5, properties=_auth_props(b"alice")))
    # A SUBSCRIBE pipelined before authentication completes waits for it.
    await raw.send(mb.gen_subscribe_one(1, "ea/t", 0, proto_ver=5))
    await raw.expect(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE)))
    await raw.send(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE[::-1])))
    await raw.expect(mb.gen_connack(rc=0, proto_ver=5, properties=_connack_tail(b"welcome")))
    await raw.expect(mb.gen_suback(1, [0], proto_ver=5))
    # Re-authentication on the live connection (AUTH 0x19) runs the same exchange.
    await raw.send(mb.gen_auth(reason_code=0x19, properties=_auth_props(b"alice")))
    await raw.expect(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE)))
    await raw.send(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE[::-1])))
    await raw.expect(mb.gen_auth(reason_code=0x00, properties=_auth_props(b"welcome")))
    await raw.close()


def _connack_tail(data: bytes) -> bytes:
    """The CONNACK properties the broker sends by default plus the auth ones, in id order."""
    return mb.proplist(
        (mb.AUTHENTICATION_METHOD, METHOD),
        (mb.AUTHENTICATION_DATA, data),
        (mb.RECEIVE_MAXIMUM, 32),
        (mb.TOPIC_ALIAS_MAXIMUM, 65535),
        (mb.MAXIMUM_PACKET_SIZE, 1048576),
    )


async def test_wrong_response_refused(toy_broker: RunningBroker) -> None:
    raw = await RawClient.connect(toy_broker.port)
    await raw.send(mb.gen_connect("ea-2", proto_ver=5, properties=_auth_props(b"mallory")))
    await raw.expect(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE)))
    await raw.send(mb.gen_auth(reason_code=0x18, properties=_auth_props(b"guess")))
    await raw.expect(mb.gen_connack(rc=0x87, proto_ver=5))
    assert await raw.expect_closed() == b""
    await raw.close()


async def test_unknown_user_gets_callback_reason_code(toy_broker: RunningBroker) -> None:
    raw = await RawClient.connect(toy_broker.port)
    await raw.send(mb.gen_connect("ea-3", proto_ver=5, properties=_auth_props(b"eve")))
    await raw.expect(mb.gen_connack(rc=0x86, proto_ver=5))
    await raw.close()


async def test_unsupported_method_is_0x8c(toy_broker: RunningBroker) -> None:
    raw = await RawClient.connect(toy_broker.port)
    props = mb.proplist((mb.AUTHENTICATION_METHOD, "SCRAM-SHA-1"))
    await raw.send(mb.gen_connect("ea-4", proto_ver=5, properties=props))
    await raw.expect(mb.gen_connack(rc=0x8C, proto_ver=5))
    await raw.close()


async def test_method_change_mid_exchange_is_protocol_error(toy_broker: RunningBroker) -> None:
    raw = await RawClient.connect(toy_broker.port)
    await raw.send(mb.gen_connect("ea-5", proto_ver=5, properties=_auth_props(b"alice")))
    await raw.expect(mb.gen_auth(reason_code=0x18, properties=_auth_props(CHALLENGE)))
    other = mb.proplist((mb.AUTHENTICATION_METHOD, "OTHER"))
    await raw.send(mb.gen_auth(reason_code=0x18, properties=other))
    # Still before CONNACK: the refusal is a CONNACK with Protocol Error.
    await raw.expect(mb.gen_connack(rc=0x82, proto_ver=5))
    await raw.close()
