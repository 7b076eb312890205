"""A client authenticated by a JWT with ``exp`` is disconnected when the token expires
(EMQX's ``disconnect_after_expire``): MQTT 5 with DISCONNECT 0x87, MQTT 3.1.1 by a close,
its will published; tokens without ``exp`` and ``disconnect_after_expire = false`` keep the
connection. Also the broker side of it: an enhanced-authentication hook's expiry, moved by
a re-authentication."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import jwt
import pytest

from tests import mqttbytes as mb
from tests.auth.support import MakeClient, StartBroker, mqtt, refused, start_broker
from tests.helpers.paho import V5
from tests.helpers.raw import RawClient
from tidemq.app import Broker
from tidemq.auth.api import ClientIdentity, Credentials
from tidemq.auth.jwt import JwtAuthenticator
from tidemq.broker import AuthStep, EnhancedAuthEvent, EnhancedAuthResult, HookPoint
from tidemq.testing import RunningBroker

__all__ = ["mqtt", "start_broker"]

pytestmark = pytest.mark.timeout(30)

# Bounded waits for the expected event: a token expires within 2 s of its connection.
EXPIRY_WAIT = 6.0


SECRET = b"0123456789abcdef" * 4


def creds(password: str) -> Credentials:
    client = ClientIdentity(client_id="dev-1", username="u", peer_host="127.0.0.1")
    return Credentials(client=client, password=password.encode())


def token(exp: int | None = None) -> str:
    return jwt.encode({} if exp is None else {"exp": exp}, SECRET, algorithm="HS256")


def soon() -> int:
    """An ``exp`` 1 to 2 seconds from now (``exp`` is whole seconds)."""
    return int(time.time()) + 2


def jwt_config(**extra: object) -> Mapping[str, object]:
    return {
        "auth.chain": "jwt",
        "auth.jwt.secret": SECRET.decode(),
        "auth.jwt.leeway": 0,
        "mqtt.allow_anonymous": False,
        **extra,
    }


@pytest.fixture
async def raws() -> AsyncIterator[list[RawClient]]:
    made: list[RawClient] = []
    yield made
    for raw in made:
        await raw.close()


async def connect_raw(
    broker: Broker,
    made: list[RawClient],
    client_id: str,
    password: str,
    proto_ver: int,
    will_topic: str | None = None,
) -> RawClient:
    raw = await RawClient.connect(broker.port)
    made.append(raw)
    await raw.send(
        mb.gen_connect(
            client_id,
            username="u",
            password=password,
            proto_ver=proto_ver,
            will_topic=will_topic,
            will_payload=b"gone",
        )
    )
    ack = await raw.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0), ack  # accepted
    return raw


async def still_connected(raw: RawClient) -> None:
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())


async def test_the_outcome_carries_the_expiry() -> None:
    exp = int(time.time()) + 60
    on = JwtAuthenticator(secret=SECRET, leeway=5)
    assert (await on.authenticate(creds(token(exp)))).expires_at == exp + 5
    assert (await on.authenticate(creds(token()))).expires_at is None  # no exp: never
    off = JwtAuthenticator(secret=SECRET, disconnect_after_expire=False)
    outcome = await off.authenticate(creds(token(exp)))
    assert outcome.expires_at is None
    assert outcome.acl is None  # accepted all the same


async def test_v5_gets_disconnect_0x87_and_the_will_goes(
    start_broker: StartBroker, mqtt: MakeClient, raws: list[RawClient]
) -> None:
    broker = await start_broker(jwt_config(**{"mqtt.reason_strings": True}))
    watcher = await mqtt(broker.port, "watcher", protocol=V5, username="w", password=token())
    assert await watcher.subscribe("will/#") == [0]
    exp = soon()
    raw = await connect_raw(broker, raws, "expiring", token(exp), 5, will_topic="will/expiring")
    await still_connected(raw)  # accepted, and not closed at once
    packet = await raw.read_packet(timeout=EXPIRY_WAIT)
    assert time.time() >= exp - 0.05  # not before the token expired
    reason = mb.proplist((mb.REASON_STRING, "authentication expired"))
    assert packet == mb.gen_disconnect(reason_code=0x87, properties=reason, proto_ver=5)
    assert await raw.expect_closed() == b""
    will = await watcher.next_message()
    assert (will.topic, will.payload) == ("will/expiring", b"gone")
    # The same token is now refused at CONNECT too.
    assert await refused(broker.port, V5, username="u", password=token(exp)) == 0x87


async def test_v311_is_closed(start_broker: StartBroker, raws: list[RawClient]) -> None:
    broker = await start_broker(jwt_config())
    exp = soon()
    raw = await connect_raw(broker, raws, "old-client", token(exp), 4)
    assert await raw.expect_closed(timeout=EXPIRY_WAIT) == b""  # no DISCONNECT in 3.1.1
    assert time.time() >= exp - 0.05


async def test_a_token_without_exp_stays(start_broker: StartBroker, raws: list[RawClient]) -> None:
    broker = await start_broker(jwt_config())
    forever = await connect_raw(broker, raws, "forever", token(), 5)
    expiring = await connect_raw(broker, raws, "expiring", token(soon()), 5)
    # Once the expiring one is gone, its deadline has passed: the other is still there.
    packet = await expiring.read_packet(timeout=EXPIRY_WAIT)
    assert packet == mb.gen_disconnect(reason_code=0x87, proto_ver=5)
    await still_connected(forever)


async def test_disconnect_after_expire_off(
    start_broker: StartBroker, raws: list[RawClient]
) -> None:
    broker = await start_broker(jwt_config(**{"auth.jwt.disconnect_after_expire": False}))
    exp = soon()
    raw = await connect_raw(broker, raws, "kept", token(exp), 5)
    # Nothing is scheduled, so there is no event to wait for: wait past exp, then prove
    # the broker considers the token expired (a new CONNECT with it is refused).
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.3)
    assert await refused(broker.port, V5, username="u", password=token(exp)) == 0x87
    await still_connected(raw)


# --- the broker side: an enhanced-authentication hook's expiry --------------------------------

METHOD = "EXPIRING"


def timed(event: EnhancedAuthEvent) -> EnhancedAuthResult:
    """Auth data is the lifetime in seconds of the credentials ("-" for none)."""
    if event.method != METHOD:
        return EnhancedAuthResult(step=AuthStep.UNSUPPORTED)
    text = (event.data or b"-").decode()
    expires_at = None if text == "-" else time.time() + float(text)
    return EnhancedAuthResult(step=AuthStep.SUCCESS, expires_at=expires_at)


def auth_props(data: bytes) -> bytes:
    return mb.proplist((mb.AUTHENTICATION_METHOD, METHOD), (mb.AUTHENTICATION_DATA, data))


async def test_reauthentication_moves_the_deadline(broker: RunningBroker) -> None:
    broker.broker.hooks.register(HookPoint.ENHANCED_AUTH, timed)
    raw = await RawClient.connect(broker.port)
    try:
        await raw.send(mb.gen_connect("reauth", proto_ver=5, properties=auth_props(b"1")))
        ack = await raw.read_packet()
        assert (ack[0], ack[3]) == (0x20, 0), ack
        # Before the 1 s deadline, re-authenticate for an hour: the deadline moves.
        await raw.send(mb.gen_auth(reason_code=0x19, properties=auth_props(b"3600")))
        reply = await raw.read_packet()
        assert (reply[0], reply[2]) == (0xF0, 0x00), reply  # AUTH 0x00 Success
        started = time.monotonic()
        # A short-lived client connected now expires after the old deadline has passed.
        probe = await RawClient.connect(broker.port)
        try:
            await probe.send(mb.gen_connect("probe", proto_ver=5, properties=auth_props(b"1.2")))
            assert (await probe.read_packet())[3] == 0
            packet = await probe.read_packet(timeout=EXPIRY_WAIT)
            assert packet == mb.gen_disconnect(reason_code=0x87, proto_ver=5)
        finally:
            await probe.close()
        assert time.monotonic() - started >= 1.0
        await still_connected(raw)
        # Re-authentication with short-lived credentials brings the end close again.
        await raw.send(mb.gen_auth(reason_code=0x19, properties=auth_props(b"0.2")))
        assert (await raw.read_packet())[0] == 0xF0
        packet = await raw.read_packet(timeout=EXPIRY_WAIT)
        assert packet == mb.gen_disconnect(reason_code=0x87, proto_ver=5)
    finally:
        await raw.close()
