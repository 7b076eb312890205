"""Malformed and illegal input: each closes only its own connection, for the right reason.

MQTT 5 clients get a DISCONNECT with the reason code (0x81 Malformed Packet, 0x82 Protocol
Error, 0x90 Topic Name invalid) and then the close; MQTT 3.1.1 clients get the close with
no bytes at all. The broker logs exactly one line per closed connection, publishes the
will (closing for a protocol error is not a normal disconnection) and goes on serving a
bystander connection.

The last test is the one the issue asks for: many connections spewing random bytes next
to a QoS 1 stream of 500 messages, which must lose nothing.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable

import pytest

from tests import mqttbytes as mb
from tests.broker.test_10_mqtt5 import Clients, parse_publish, v5_disconnect
from tests.helpers.paho import V5, V311
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker

LOGGER = "tidemq.broker.client"


@pytest.fixture
async def clients(broker: RunningBroker) -> AsyncIterator[Clients]:
    c = Clients(broker.port)
    try:
        yield c
    finally:
        await c.close()


@pytest.fixture
def client_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=LOGGER)
    return caplog


def client_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def bystander(clients: Clients) -> RawClient:
    """A v5 connection watching wills and its own topic."""
    raw, _ = await clients.v5("bystander")
    await raw.send(mb.gen_subscribe(1, [("will/#", 0), ("alive/#", 0)], proto_ver=5))
    await raw.expect(mb.gen_suback(1, [0, 0], proto_ver=5))
    return raw


async def still_serving(raw: RawClient) -> None:
    await raw.send(mb.gen_publish("alive/check", payload=b"still here", proto_ver=5))
    got = parse_publish(await raw.read_packet())
    assert (got.topic, got.payload) == ("alive/check", b"still here")


# --- the table of bad packets ------------------------------------------------------------

Builder = Callable[[int], bytes]


def _topic_publish(topic: bytes) -> Builder:
    return lambda v: mb.gen_publish(topic, payload=b"p", proto_ver=v)


CASES: dict[str, tuple[Builder, int]] = {
    # SUBSCRIBE's fixed-header flags must be 0010 [MQTT-3.8.1-1].
    "reserved flags": (
        lambda v: b"\x80" + mb.gen_subscribe_one(1, "x/y", 0, proto_ver=v)[1:],
        0x81,
    ),
    "reserved flags on PINGREQ": (lambda v: b"\xc1\x00", 0x81),
    "QoS 3": (lambda v: mb.gen_publish("x/y", qos=3, mid=1, payload=b"p", proto_ver=v), 0x81),
    "DUP on QoS 0": (lambda v: mb.gen_publish("x/y", dup=True, payload=b"p", proto_ver=v), 0x81),
    "wildcard in topic name": (_topic_publish(b"x/+/y"), 0x90),
    "invalid UTF-8 topic": (_topic_publish(b"x/\xff\xfe"), 0x81),
    "U+0000 in topic": (_topic_publish(b"x/\x00/y"), 0x81),
    "encoded surrogate in topic": (_topic_publish(b"x/\xed\xa0\x80"), 0x81),
    "PUBLISH packet id 0": (
        lambda v: mb.gen_publish("x/y", qos=1, mid=0, payload=b"p", proto_ver=v),
        0x82,
    ),
    "SUBSCRIBE packet id 0": (lambda v: mb.gen_subscribe_one(0, "x/y", 0, proto_ver=v), 0x82),
    "remaining length of 5 bytes": (lambda v: b"\x30\xff\xff\xff\xff\x01", 0x81),
    "second CONNECT": (lambda v: mb.gen_connect("again", proto_ver=v), 0x82),
    "packet type 0": (lambda v: b"\x00\x00", 0x81),
}


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("case", list(CASES))
async def test_bad_packet_closes_only_that_connection(
    clients: Clients, client_log: pytest.LogCaptureFixture, case: str, version: int
) -> None:
    build, code = CASES[case]
    watcher = await bystander(clients)
    bad = await _bad(clients, version, "bad")
    client_log.clear()
    await bad.send(build(version))
    closing = await bad.expect_closed()
    assert closing == (v5_disconnect(code) if version == 5 else b"")
    lines = client_lines(client_log)
    assert len(lines) == 1, lines
    assert f"[0x{code:02x}]" in lines[0]
    will = parse_publish(await watcher.read_packet())
    assert (will.topic, will.payload) == ("will/bad", b"gone")
    await still_serving(watcher)


async def _bad(clients: Clients, version: int, name: str) -> RawClient:
    raw = await clients.raw()
    await raw.send(
        mb.gen_connect(name, proto_ver=version, will_topic=f"will/{name}", will_payload=b"gone")
    )
    data = await raw.read_packet()
    assert (data[0], data[3]) == (0x20, 0)  # CONNACK, success
    return raw


# --- MQTT 5 property errors --------------------------------------------------------------


def _v5_publish_with(props_bytes: bytes) -> bytes:
    body = mb.utf8("x/y") + mb.varint(len(props_bytes)) + props_bytes + b"payload"
    return mb.packet(mb.PUBLISH, body)


async def _v5_case(
    clients: Clients, caplog: pytest.LogCaptureFixture, packet: bytes, code: int
) -> None:
    watcher = await bystander(clients)
    bad = await _bad(clients, 5, "bad")
    caplog.clear()
    await bad.send(packet)
    assert await bad.expect_closed() == v5_disconnect(code)
    lines = client_lines(caplog)
    assert len(lines) == 1, lines
    assert f"[0x{code:02x}]" in lines[0]
    assert parse_publish(await watcher.read_packet()).topic == "will/bad"
    await still_serving(watcher)


async def test_duplicate_property(clients: Clients, client_log: pytest.LogCaptureFixture) -> None:
    # "It is a Protocol Error to include the Content Type more than once" (MQTT 5.0 §3.3.2.3.9).
    twice = mb.proplist((mb.CONTENT_TYPE, "a"), (mb.CONTENT_TYPE, "b"))
    await _v5_case(clients, client_log, _v5_publish_with(twice), 0x82)


async def test_property_not_allowed(clients: Clients, client_log: pytest.LogCaptureFixture) -> None:
    # Session Expiry Interval belongs to CONNECT, CONNACK and DISCONNECT, not PUBLISH: an
    # identifier not valid for the packet type is a Malformed Packet (MQTT 5.0 §2.2.2.2).
    wrong = mb.proplist((mb.SESSION_EXPIRY_INTERVAL, 10))
    await _v5_case(clients, client_log, _v5_publish_with(wrong), 0x81)


async def test_unknown_property_is_malformed(
    clients: Clients, client_log: pytest.LogCaptureFixture
) -> None:
    await _v5_case(clients, client_log, _v5_publish_with(b"\x7f\x00"), 0x81)


# --- an invalid topic filter -------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5])
async def test_invalid_topic_filter(
    clients: Clients, client_log: pytest.LogCaptureFixture, version: int
) -> None:
    # Not a connection error in MQTT 3.1.1 and 5 (SUBACK 0x80 / 0x8F); MQTT 3.1's SUBACK
    # has no failure code at all, so there the connection is closed instead, cleanly.
    watcher = await bystander(clients)
    bad = await _bad(clients, version, "bad")
    client_log.clear()
    v = 5 if version == 5 else 4
    await bad.send(mb.gen_subscribe(1, [("ok/t", 1), ("a/#/b", 1)], proto_ver=version))
    if version == 3:
        assert await bad.expect_closed() == b""
        assert len(client_lines(client_log)) == 1
        assert parse_publish(await watcher.read_packet()).topic == "will/bad"
    else:
        await bad.expect(mb.gen_suback(1, [1, 0x8F if version == 5 else 0x80], proto_ver=v))
        await bad.send(mb.gen_pingreq())
        await bad.expect(mb.gen_pingresp())
        assert client_lines(client_log) == []
    await still_serving(watcher)
    errors = [r for r in client_log.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


# --- truncated packet, then the close ----------------------------------------------------


@pytest.mark.parametrize("version", [4, 5])
async def test_truncated_packet_then_close(
    clients: Clients, client_log: pytest.LogCaptureFixture, version: int
) -> None:
    watcher = await bystander(clients)
    bad = await _bad(clients, version, "bad")
    whole = mb.gen_publish("alive/partial", qos=1, mid=1, payload=b"z" * 100, proto_ver=version)
    await bad.send(whole[: len(whole) // 2])
    bad.writer.write_eof()
    assert await bad.expect_closed() == b""
    # The half packet is never published; the lost connection fires the will.
    will = parse_publish(await watcher.read_packet())
    assert (will.topic, will.payload) == ("will/bad", b"gone")
    await still_serving(watcher)
    assert not any("[0x" in line for line in client_lines(client_log))


async def test_first_packet_not_connect(
    clients: Clients, client_log: pytest.LogCaptureFixture
) -> None:
    watcher = await bystander(clients)
    client_log.clear()
    raw = await clients.raw()
    await raw.send(mb.gen_pingreq())
    assert await raw.expect_closed() == b""
    lines = client_lines(client_log)
    assert len(lines) == 1, lines
    assert "[0x82]" in lines[0]
    await still_serving(watcher)


# --- THE test: garbage beside a QoS 1 stream ---------------------------------------------

SEED = 0x7D3C
GARBAGE_SECONDS = 2.0
GARBAGE_WORKERS = 6
STREAM = 500


def _garbage(rng: random.Random, name: str) -> bytes:
    """One connection's worth of bad bytes, in one of several shapes."""
    version = rng.choice((3, 4, 5))
    connect = mb.gen_connect(name, proto_ver=version, keepalive=rng.randrange(0, 100))
    shape = rng.randrange(6)
    if shape == 0:  # random bytes instead of CONNECT
        return rng.randbytes(rng.randint(1, 600))
    if shape == 1:  # random bytes after a good CONNECT
        return connect + rng.randbytes(rng.randint(1, 600))
    if shape == 2:  # good packets with a few bytes flipped
        v = 5 if version == 5 else 4
        packets = [
            mb.gen_publish(
                "garbage/t", qos=rng.randrange(3), mid=rng.randint(1, 9), payload=b"g", proto_ver=v
            ),
            mb.gen_subscribe_one(rng.randint(1, 9), "garbage/#", rng.randrange(3), proto_ver=v),
            mb.gen_unsubscribe(rng.randint(1, 9), ["garbage/#"], proto_ver=v),
            mb.gen_puback(rng.randint(1, 9), proto_ver=v),
            mb.gen_pubrel(rng.randint(1, 9), proto_ver=v),
            mb.gen_pingreq(),
        ]
        body = bytearray(b"".join(rng.choice(packets) for _ in range(rng.randint(1, 12))))
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        return connect + bytes(body)
    if shape == 3:  # a CONNECT with a flipped byte
        mangled = bytearray(connect)
        mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        return bytes(mangled) + rng.randbytes(rng.randint(0, 50))
    if shape == 4:  # framed packets of random type, flags and content
        frames = b"".join(
            mb.packet(rng.randrange(256), rng.randbytes(rng.randint(0, 30)))
            for _ in range(rng.randint(1, 20))
        )
        return connect + frames
    # a huge announced length that never arrives
    return connect + bytes((rng.randrange(256),)) + mb.varint(rng.randint(10_000, 2_000_000))


async def _spew(port: int, worker: int, deadline: float, counts: dict[str, int]) -> None:
    rng = random.Random(SEED * 100 + worker)
    loop = asyncio.get_running_loop()
    n = 0
    while loop.time() < deadline:
        n += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        counts["connections"] += 1
        try:
            writer.write(_garbage(rng, f"garbage-{worker}-{n}"))
            await writer.drain()
            if rng.random() < 0.5:
                # Listen a little: whatever comes back, or the broker's close.
                try:
                    while await asyncio.wait_for(reader.read(65536), 0.1):
                        pass
                    counts["closed_by_broker"] += 1
                except TimeoutError:
                    pass
        except (ConnectionError, OSError):
            counts["reset"] += 1
        finally:
            if rng.random() < 0.3:
                writer.transport.abort()
            else:
                writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def test_garbage_connections_beside_a_qos1_stream(
    broker: RunningBroker, clients: Clients, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    sub = await clients.paho("stream-sub", protocol=V5)
    assert await sub.subscribe("stream/#", 1) == [1]
    pub = await clients.paho("stream-pub", protocol=V311)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GARBAGE_SECONDS
    counts = {"connections": 0, "closed_by_broker": 0, "reset": 0}
    spewers = [
        asyncio.create_task(_spew(broker.port, w, deadline, counts)) for w in range(GARBAGE_WORKERS)
    ]

    infos = []
    for i in range(STREAM):  # spread over most of the garbage window
        infos.append(pub.client.publish("stream/n", f"{i:04d}", qos=1))
        if i % 10 == 9:
            await asyncio.sleep(GARBAGE_SECONDS * 0.7 / (STREAM / 10))
    await asyncio.gather(*spewers)

    def all_acknowledged() -> None:
        for info in infos:
            info.wait_for_publish(10)

    await asyncio.to_thread(all_acknowledged)
    assert all(info.is_published() for info in infos)

    got = [await sub.next_message(10) for _ in range(STREAM)]
    assert [m.payload for m in got] == [f"{i:04d}".encode() for i in range(STREAM)]
    assert {(m.topic, m.qos, m.dup) for m in got} == {("stream/n", 1, False)}
    await sub.no_message(0.2)
    assert sub.disconnects.empty()
    assert pub.disconnects.empty()

    # The garbage really was garbage, and really was answered.
    assert counts["connections"] >= 50, counts
    assert sum(" closing " in f" {line}" for line in client_lines(caplog)) >= 20
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]

    # Still serving: a new connection does a full round trip.
    fresh = await clients.paho("after", protocol=V5)
    assert await fresh.subscribe("after/#", 1) == [1]
    await fresh.publish("after/t", b"ok", qos=1)
    assert (await fresh.next_message()).payload == b"ok"
