"""The broker on durable storage: what a persistent session, the retained store and the
in-flight state hold survives a restart, on every backend; acknowledgements wait for the
commit; a backend that fails holds durable work and recovers.

A "restart" stops the broker and starts a new one on a new ``Storage`` object over the
same data (same SQLite file, Redis prefix, database). The memory backend keeps its data
only while the same object lives, so there the same object is reused.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tests.storage.conftest import LOCATIONS, Location
from tidemq.app import Broker
from tidemq.storage.api import Storage, StorageUnavailable, WriteBatch
from tidemq.storage.memory import MemoryStorage
from tidemq.testing import broker_settings

pytestmark = pytest.mark.timeout(60)


class Site:
    """One backend's data location, and the broker currently running on it."""

    def __init__(self, backend: str, make: Callable[[], Storage]) -> None:
        self.backend = backend
        self.make = make
        self.storages: list[Storage] = []
        self.broker: Broker | None = None
        self._shared: Storage | None = None

    async def _storage(self) -> Storage:
        if self.backend == "memory":
            if self._shared is None:
                self._shared = self.make()
                await self._shared.open()
                self.storages.append(self._shared)
            return self._shared
        storage = self.make()
        await storage.open()
        self.storages.append(storage)
        return storage

    async def start(self, **settings: object) -> Broker:
        broker = Broker(
            listen=["tcp://127.0.0.1:0"],
            settings=broker_settings(**settings),
            storage=await self._storage(),
        )
        await broker.start()
        self.broker = broker
        return broker

    async def stop(self) -> None:
        if self.broker is not None:
            await self.broker.stop()
            storage = self.broker.storage
            self.broker = None
            if storage is not None and storage is not self._shared:
                await storage.close()

    async def restart(self, **settings: object) -> Broker:
        await self.stop()
        return await self.start(**settings)

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres", "mysql"])
async def site(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Site]:
    location: Location = LOCATIONS[request.param](tmp_path)
    s = Site(request.param, await anext(location))
    try:
        yield s
    finally:
        await s.stop()
        for storage in s.storages:
            await storage.close()
        async for _ in location:
            pass


async def connect(
    port: int, client_id: str, *, clean: bool = True, **kwargs: object
) -> tuple[RawClient, bytes]:
    client = await RawClient.connect(port)
    await client.send(mb.gen_connect(client_id, clean_session=clean, **kwargs))  # type: ignore[arg-type]
    ack = await client.read_packet()
    assert ack[0] == 0x20, ack
    assert ack[3] == 0, ack
    return client, ack


async def test_offline_queue_and_subscriptions_survive_a_restart(site: Site) -> None:
    await site.start()
    sub, _ = await connect(site.port, "p-sub", clean=False)
    await sub.send(mb.gen_subscribe_one(1, "p/#", 1))
    await sub.expect(mb.gen_suback(1, [1]))
    await sub.send(mb.gen_disconnect())
    await sub.close()
    pub, _ = await connect(site.port, "p-pub")
    for i in range(1, 11):
        await pub.send(mb.gen_publish("p/t", qos=1, mid=i, payload=b"m%d" % i))
        await pub.expect(mb.gen_puback(i))
    await pub.close()

    await site.restart()
    sub, ack = await connect(site.port, "p-sub", clean=False)
    assert ack[2] == 1, "session present after the restart"
    for i in range(1, 11):
        packet = await sub.read_packet()
        assert packet == mb.gen_publish("p/t", qos=1, mid=i, payload=b"m%d" % i), i
        await sub.send(mb.gen_puback(i))
    # The subscription itself came back too: a new message reaches the session.
    pub, _ = await connect(site.port, "p-pub2")
    await pub.send(mb.gen_publish("p/new", qos=1, mid=1, payload=b"new"))
    await pub.expect(mb.gen_puback(1))
    assert await sub.read_packet() == mb.gen_publish("p/new", qos=1, mid=11, payload=b"new")
    await sub.send(mb.gen_puback(11))
    await pub.close()
    await sub.close()


async def test_unacknowledged_deliveries_come_back_with_dup(site: Site) -> None:
    await site.start()
    sub, _ = await connect(site.port, "i-sub", clean=False)
    await sub.send(mb.gen_subscribe_one(1, "i/#", 2))
    await sub.expect(mb.gen_suback(1, [2]))
    pub, _ = await connect(site.port, "i-pub")
    await pub.send(mb.gen_publish("i/1", qos=1, mid=1, payload=b"one"))
    await pub.expect(mb.gen_puback(1))
    await pub.send(mb.gen_publish("i/2", qos=2, mid=2, payload=b"two"))
    await pub.expect(mb.gen_pubrec(2))
    await pub.send(mb.gen_pubrel(2))
    await pub.expect(mb.gen_pubcomp(2))
    # Received, never acknowledged.
    assert await sub.read_packet() == mb.gen_publish("i/1", qos=1, mid=1, payload=b"one")
    assert await sub.read_packet() == mb.gen_publish("i/2", qos=2, mid=2, payload=b"two")
    await sub.close()
    await pub.close()

    await site.restart()
    sub, ack = await connect(site.port, "i-sub", clean=False)
    assert ack[2] == 1
    assert await sub.read_packet() == mb.gen_publish("i/1", qos=1, mid=1, payload=b"one", dup=True)
    assert await sub.read_packet() == mb.gen_publish("i/2", qos=2, mid=2, payload=b"two", dup=True)
    await sub.send(mb.gen_puback(1))
    await sub.send(mb.gen_pubrec(2))
    await sub.expect(mb.gen_pubrel(2))
    # PUBREC received, PUBCOMP not yet: after another restart only the PUBREL is resent.
    await sub.close()
    await site.restart()
    sub, _ = await connect(site.port, "i-sub", clean=False)
    await sub.expect(mb.gen_pubrel(2))
    await sub.send(mb.gen_pubcomp(2))
    await sub.send(mb.gen_pingreq())
    await sub.expect(mb.gen_pingresp())  # nothing else was pending
    await sub.close()


async def test_incoming_qos2_is_exactly_once_across_a_restart(site: Site) -> None:
    await site.start()
    watcher, _ = await connect(site.port, "x-watch", clean=False)
    await watcher.send(mb.gen_subscribe_one(1, "x/#", 0))
    await watcher.expect(mb.gen_suback(1, [0]))
    pub, _ = await connect(site.port, "x-pub", clean=False)
    await pub.send(mb.gen_publish("x/t", qos=2, mid=7, payload=b"once"))
    await pub.expect(mb.gen_pubrec(7))
    assert await watcher.read_packet() == mb.gen_publish("x/t", qos=0, payload=b"once")
    await pub.close()
    await watcher.close()

    await site.restart()
    watcher, _ = await connect(site.port, "x-watch", clean=False)
    pub, ack = await connect(site.port, "x-pub", clean=False)
    assert ack[2] == 1
    # The publisher did not see the PUBCOMP: it resends the PUBLISH with DUP.
    await pub.send(mb.gen_publish("x/t", qos=2, mid=7, payload=b"once", dup=True))
    await pub.expect(mb.gen_pubrec(7))
    await pub.send(mb.gen_pubrel(7))
    await pub.expect(mb.gen_pubcomp(7))
    await watcher.send(mb.gen_pingreq())
    await watcher.expect(mb.gen_pingresp())  # not delivered a second time
    await pub.close()
    await watcher.close()


async def test_retained_messages_survive_a_restart(site: Site) -> None:
    await site.start()
    pub, _ = await connect(site.port, "r-pub")
    await pub.send(mb.gen_publish("r/keep", qos=1, mid=1, retain=True, payload=b"kept"))
    await pub.expect(mb.gen_puback(1))
    await pub.send(mb.gen_publish("r/gone", qos=1, mid=2, retain=True, payload=b"x"))
    await pub.expect(mb.gen_puback(2))
    await pub.send(mb.gen_publish("r/gone", qos=1, mid=3, retain=True, payload=b""))
    await pub.expect(mb.gen_puback(3))
    await pub.close()

    await site.restart()
    sub, _ = await connect(site.port, "r-sub")
    await sub.send(mb.gen_subscribe_one(1, "r/#", 1))
    await sub.expect(mb.gen_suback(1, [1]))
    assert await sub.read_packet() == mb.gen_publish(
        "r/keep", qos=1, mid=1, retain=True, payload=b"kept"
    )
    await sub.send(mb.gen_puback(1))
    await sub.send(mb.gen_pingreq())
    await sub.expect(mb.gen_pingresp())  # the cleared topic stayed cleared
    await sub.close()


async def test_clean_session_forgets_the_stored_session(site: Site) -> None:
    await site.start()
    sub, _ = await connect(site.port, "c-sub", clean=False)
    await sub.send(mb.gen_subscribe_one(1, "c/#", 1))
    await sub.expect(mb.gen_suback(1, [1]))
    await sub.close()
    sub, _ = await connect(site.port, "c-sub", clean=True)
    await sub.send(mb.gen_disconnect())
    await sub.close()
    await site.restart()
    sub, ack = await connect(site.port, "c-sub", clean=False)
    assert ack[2] == 0, "no session after the clean one ended"
    await sub.close()


async def test_delayed_will_timer_survives_a_restart(site: Site) -> None:
    await site.start()
    watcher, _ = await connect(site.port, "w-watch")
    props = mb.proplist((mb.WILL_DELAY_INTERVAL, 1))
    client = await RawClient.connect(site.port)
    await client.send(
        mb.gen_connect(
            "w-client",
            proto_ver=5,
            will_topic="w/gone",
            will_payload=b"bye",
            will_properties=props,
            properties=mb.proplist((mb.SESSION_EXPIRY_INTERVAL, 3600)),
        )
    )
    assert (await client.read_packet())[0] == 0x20
    await client.close()  # abnormal close: the will is due in 1 s
    await watcher.close()
    await site.restart()
    watcher, _ = await connect(site.port, "w-watch2")
    await watcher.send(mb.gen_subscribe_one(1, "w/#", 0))
    await watcher.expect(mb.gen_suback(1, [0]))
    # The will comes from the restored timer (or at once if the second already passed).
    assert await watcher.read_packet(timeout=5) == mb.gen_publish("w/gone", payload=b"bye")
    await watcher.close()


# --- acknowledgements and commits (memory storage with a gate) -----------------------------


class GatedStorage(MemoryStorage):
    """Memory storage whose commits wait for ``gate``, or fail while ``failing`` > 0."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.failing = 0
        self.applied = 0

    async def apply(self, batch: WriteBatch) -> None:
        await self.gate.wait()
        if self.failing:
            self.failing -= 1
            raise StorageUnavailable("backend down (test)")
        await super().apply(batch)
        self.applied += 1


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Broker, GatedStorage]]:
    storage = GatedStorage()
    await storage.open()
    broker = Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings(), storage=storage)
    await broker.start()
    try:
        yield broker, storage
    finally:
        storage.gate.set()
        storage.failing = 0
        await broker.stop()
        await storage.close()


async def _persistent_subscriber(port: int) -> RawClient:
    sub, _ = await connect(port, "g-sub", clean=False)
    await sub.send(mb.gen_subscribe_one(1, "durable/#", 1))
    await sub.expect(mb.gen_suback(1, [1]))
    await sub.close()
    return sub


async def test_puback_waits_for_the_commit_and_acks_keep_their_order(
    gated: tuple[Broker, GatedStorage],
) -> None:
    broker, storage = gated
    await _persistent_subscriber(broker.port)
    storage.gate.clear()
    pub, _ = await connect(broker.port, "g-pub")
    await pub.send(mb.gen_publish("durable/a", qos=1, mid=1, payload=b"a"))
    await pub.send(mb.gen_publish("nobody/b", qos=1, mid=2, payload=b"b"))
    with pytest.raises(TimeoutError):
        await pub.read_packet(timeout=0.3)  # held: neither ack goes before the commit
    storage.gate.set()
    await pub.expect(mb.gen_puback(1))
    await pub.expect(mb.gen_puback(2))
    # With nothing durable to write, the ack is immediate even while a commit hangs.
    storage.gate.clear()
    await pub.send(mb.gen_publish("nobody/c", qos=1, mid=3, payload=b"c"))
    await pub.expect(mb.gen_puback(3))
    storage.gate.set()
    await pub.close()


async def test_backend_outage_holds_durable_acks_and_lets_qos0_flow(
    gated: tuple[Broker, GatedStorage],
) -> None:
    broker, storage = gated
    await _persistent_subscriber(broker.port)
    live, _ = await connect(broker.port, "g-live")
    await live.send(mb.gen_subscribe_one(1, "live/#", 0))
    await live.expect(mb.gen_suback(1, [0]))
    storage.failing = 3  # three failed commits, then the backend is back
    pub, _ = await connect(broker.port, "g-pub")
    await pub.send(mb.gen_publish("durable/x", qos=1, mid=1, payload=b"x"))
    await pub.send(mb.gen_publish("live/y", qos=0, payload=b"y"))
    assert await live.read_packet() == mb.gen_publish("live/y", qos=0, payload=b"y")
    await pub.expect(mb.gen_puback(1), timeout=10)  # after the retries succeed
    assert storage.failing == 0
    assert broker.persistence is not None
    assert broker.persistence.available
    stored = await storage.load_queue("g-sub")
    assert [q.qos for q in stored] == [1]
    await pub.close()
    await live.close()


async def test_durability_none_acks_without_waiting(tmp_path: Path) -> None:
    storage = GatedStorage()
    storage.durability = "none"
    await storage.open()
    broker = Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings(), storage=storage)
    await broker.start()
    try:
        await _persistent_subscriber(broker.port)
        storage.gate.clear()
        pub, _ = await connect(broker.port, "n-pub")
        await pub.send(mb.gen_publish("durable/a", qos=1, mid=1, payload=b"a"))
        await pub.expect(mb.gen_puback(1))
        storage.gate.set()
        await pub.close()
    finally:
        storage.gate.set()
        await broker.stop()
        await storage.close()


async def test_delivery_acknowledged_before_the_commit_is_never_written(
    gated: tuple[Broker, GatedStorage],
) -> None:
    """Group commit cancels within a batch: a delivery sent and acknowledged while its
    batch waits is written neither as in-flight entry nor as stored message."""
    broker, storage = gated
    sub, _ = await connect(broker.port, "c-sub", clean=False)
    await sub.send(mb.gen_subscribe_one(1, "durable/#", 1))
    await sub.expect(mb.gen_suback(1, [1]))
    storage.gate.clear()
    # A write whose commit now hangs at the gate: what follows collects in the next batch.
    await sub.send(mb.gen_subscribe_one(2, "other/#", 1))
    await sub.expect(mb.gen_suback(2, [1]))
    pub, _ = await connect(broker.port, "c-pub")
    await pub.send(mb.gen_publish("durable/a", qos=1, mid=1, payload=b"a"))
    assert await sub.read_packet() == mb.gen_publish("durable/a", qos=1, mid=1, payload=b"a")
    await sub.send(mb.gen_puback(1))
    await sub.send(mb.gen_pingreq())
    await sub.expect(mb.gen_pingresp())  # the PUBACK was handled
    # Nothing is left to make durable: the publisher's PUBACK comes while commits hang.
    await pub.expect(mb.gen_puback(1))
    # A second one stays unacknowledged: it must be written, with its message, and its
    # PUBACK waits for that commit.
    await pub.send(mb.gen_publish("durable/b", qos=1, mid=2, payload=b"b"))
    assert await sub.read_packet() == mb.gen_publish("durable/b", qos=1, mid=2, payload=b"b")
    with pytest.raises(TimeoutError):
        await pub.read_packet(timeout=0.3)
    storage.gate.set()
    await pub.expect(mb.gen_puback(2))
    assert broker.persistence is not None
    await broker.persistence.drain()
    inflight = await storage.load_inflight("c-sub")
    assert [r.packet_id for r in inflight] == [2]
    stored = await storage.get_messages([inflight[0].message_id])
    assert [m.payload for m in stored.values()] == [b"b"]
    # Ids only grow: the newest stored message is that one, so "a" was never stored
    # after it, and (cancelled in the same batch) not before it either.
    assert await storage.max_message_id() == inflight[0].message_id
    assert len(storage.messages) == 1
    await pub.close()
    await sub.close()


async def test_message_is_stored_once_with_its_surviving_delivery(
    gated: tuple[Broker, GatedStorage],
) -> None:
    """Two persistent subscribers, one acknowledges before the commit: the message is
    written once, referenced by the other's in-flight entry, and nothing of the first."""
    broker, storage = gated
    subs = []
    for name in ("c-one", "c-two"):
        sub, _ = await connect(broker.port, name, clean=False)
        await sub.send(mb.gen_subscribe_one(1, "both/#", 1))
        await sub.expect(mb.gen_suback(1, [1]))
        subs.append(sub)
    one, two = subs
    storage.gate.clear()
    await one.send(mb.gen_subscribe_one(2, "hold/#", 1))  # a commit that hangs at the gate
    await one.expect(mb.gen_suback(2, [1]))
    pub, _ = await connect(broker.port, "c-pub2")
    await pub.send(mb.gen_publish("both/x", qos=1, mid=1, payload=b"x"))
    for sub in subs:
        assert await sub.read_packet() == mb.gen_publish("both/x", qos=1, mid=1, payload=b"x")
    await one.send(mb.gen_puback(1))
    await one.send(mb.gen_pingreq())
    await one.expect(mb.gen_pingresp())
    with pytest.raises(TimeoutError):
        await pub.read_packet(timeout=0.3)  # c-two's delivery is still to be made durable
    storage.gate.set()
    await pub.expect(mb.gen_puback(1))
    assert broker.persistence is not None
    await broker.persistence.drain()
    assert await storage.load_inflight("c-one") == []
    inflight = await storage.load_inflight("c-two")
    assert [r.packet_id for r in inflight] == [1]
    stored = await storage.get_messages([inflight[0].message_id])
    assert [m.payload for m in stored.values()] == [b"x"]
    assert len(storage.messages) == 1
    for client in (pub, one, two):
        await client.close()
