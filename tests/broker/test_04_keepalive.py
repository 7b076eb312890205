"""Keepalive (mosquitto's 01-keepalive-* tests).

The broker closes a client that sends nothing for 1.5 × its Keep Alive [MQTT-3.1.2-24],
tells a v5 client why first (DISCONNECT 0x8D), keeps a client that stays active, answers
PINGREQ with PINGRESP [MQTT-3.12.4-1] and enforces a v5 Server Keep Alive it imposed.
"""

from __future__ import annotations

import asyncio
import queue
import time

import pytest

from tests import mqttbytes as mb
from tests.helpers.paho import V5, V311, connect
from tests.helpers.raw import RawClient
from tidemq.testing import RunningBroker


async def _raw_connected(port: int, client_id: str, ver: int, keepalive: int) -> RawClient:
    raw = await RawClient.connect(port)
    await raw.send(mb.gen_connect(client_id, keepalive=keepalive, proto_ver=ver))
    ack = await raw.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0), f"CONNACK {ack!r}"
    return raw


@pytest.mark.parametrize(
    ("ver", "last_words"),
    [(4, b""), (5, bytes.fromhex("e0018d"))],  # v5: DISCONNECT Keep Alive timeout
    ids=["v311", "v5"],
)
async def test_keepalive_timeout_at_one_and_a_half(
    broker: RunningBroker, ver: int, last_words: bytes
) -> None:
    start = time.monotonic()  # no later than the broker's receipt of CONNECT
    raw = await _raw_connected(broker.port, f"ka-silent-{ver}", ver, keepalive=1)
    assert await raw.expect_closed(timeout=4.0) == last_words
    elapsed = time.monotonic() - start
    # Still open at 1.2 s (not closed at 1 × keepalive), closed by 2.5 s.
    assert 1.3 <= elapsed < 2.5, f"closed {elapsed:.2f} s after CONNECT"
    await raw.close()


async def test_keepalive_timeout_counts_from_last_packet(broker: RunningBroker) -> None:
    raw = await _raw_connected(broker.port, "ka-late", 4, keepalive=1)
    await asyncio.sleep(1.0)  # well inside 1.5 s: this PINGREQ moves the deadline
    await raw.send(mb.gen_pingreq())
    await raw.expect(mb.gen_pingresp())
    last = time.monotonic()
    assert await raw.expect_closed(timeout=4.0) == b""
    elapsed = time.monotonic() - last
    assert 1.2 <= elapsed < 2.5, f"closed {elapsed:.2f} s after the last packet"
    await raw.close()


async def _stay_active(raw: RawClient, ver: int, ping: bool) -> None:
    for i in range(6):  # 3 s at 0.5 s intervals, twice the 1.5 s limit
        await asyncio.sleep(0.5)
        if ping:
            await raw.send(mb.gen_pingreq())
            await raw.expect(mb.gen_pingresp())
        else:
            await raw.send(mb.gen_publish("ka/active", payload=f"{i}", proto_ver=ver))


async def test_active_clients_are_not_disconnected(broker: RunningBroker) -> None:
    """Four clients for 3 s at once: PINGREQ or QoS 0 PUBLISH every 0.5 s (keepalive 1)
    for both versions, plus a silent client with keepalive 0 (no timeout at all)."""
    clients = {
        (ver, ping): await _raw_connected(broker.port, f"ka-{ver}-{ping}", ver, keepalive=1)
        for ver in (4, 5)
        for ping in (True, False)
    }
    silent = await _raw_connected(broker.port, "ka-zero", 4, keepalive=0)
    await asyncio.gather(*(_stay_active(raw, ver, ping) for (ver, ping), raw in clients.items()))
    for raw in [*clients.values(), silent]:
        await raw.send(mb.gen_pingreq())
        await raw.expect(mb.gen_pingresp())  # still connected
        await raw.close()


@pytest.mark.parametrize("ver", [3, 4, 5])
async def test_pingreq_answered_with_pingresp(broker: RunningBroker, ver: int) -> None:
    raw = await _raw_connected(broker.port, f"ping-{ver}", ver, keepalive=60)
    for _ in range(3):
        await raw.send(mb.gen_pingreq())
        await raw.expect(bytes.fromhex("d000"))
    await raw.close()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_paho_keepalive_pings_keep_connection(broker: RunningBroker, protocol: int) -> None:
    """paho pings after 1 s of silence and gives up if no PINGRESP comes back in time."""
    client = await connect(broker.port, "ka-paho", protocol=protocol, keepalive=1)
    assert await client.subscribe("ka/paho", 0) == [0]
    with pytest.raises(queue.Empty):  # still connected after two keepalive periods
        await client.wait_disconnected(timeout=2.5)
    pub = await connect(broker.port, "ka-paho-pub", protocol=protocol)
    await pub.publish("ka/paho", b"still here")
    assert (await client.next_message()).payload == b"still here"
    await pub.disconnect()
    await client.disconnect()


@pytest.mark.broker_settings(max_keepalive=1)
async def test_v5_server_keepalive_is_enforced(broker: RunningBroker) -> None:
    start = time.monotonic()
    raw = await RawClient.connect(broker.port)
    await raw.send(mb.gen_connect("ka-server", keepalive=60, proto_ver=5))
    ack = await raw.read_packet()
    assert (ack[0], ack[3]) == (0x20, 0)
    assert mb.prop(0x13, 1) in ack[5:], f"no Server Keep Alive 1 in {ack!r}"
    # The client was told 1 s, so 1.5 s of silence ends it.
    assert await raw.expect_closed(timeout=4.0) == bytes.fromhex("e0018d")
    elapsed = time.monotonic() - start
    assert 1.3 <= elapsed < 2.5, f"closed {elapsed:.2f} s after CONNECT"
    await raw.close()
