"""Flapping detection (EMQX semantics): a client id whose connections end ``max_count``
times within ``window_time`` is banned by client id for ``ban_time``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.auth.hookup import Clients
from tests.helpers.paho import V5, V311
from tidemq.auth.bans import BanList, FlappingDetector
from tidemq.auth.plugin import AuthPlugin
from tidemq.broker.hooks import HookPoint
from tidemq.storage.memory import MemoryStorage
from tidemq.testing import RunningBroker

WALL = 1_750_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def storage() -> AsyncIterator[MemoryStorage]:
    storage = MemoryStorage()
    await storage.open()
    yield storage
    await storage.close()


async def test_max_count_within_the_window_bans_for_ban_time(storage: MemoryStorage) -> None:
    bans = BanList(storage, refresh_interval=0, clock=Clock(WALL))
    mono = Clock(10.0)
    detector = FlappingDetector(bans, max_count=3, window_time=60, ban_time=300, clock=mono)
    assert detector.record("flappy") is False
    mono.now += 30
    assert detector.record("flappy") is False
    assert detector.record("calm") is False
    mono.now += 29.9
    assert detector.record("flappy") is True  # the third within 60 s
    await detector.drain()
    [ban] = await storage.list_bans()
    assert (ban.kind, ban.value, ban.by) == ("clientid", "flappy", "flapping")
    assert (ban.created_at, ban.until) == (WALL, WALL + 300)
    assert "flapping" in ban.reason
    assert bans.bans == [ban]
    assert detector.record("calm") is False  # other clients are counted apart


async def test_disconnects_spread_wider_than_the_window_are_not_flapping(
    storage: MemoryStorage,
) -> None:
    bans = BanList(storage, refresh_interval=0, clock=Clock(WALL))
    mono = Clock(0.0)
    detector = FlappingDetector(bans, max_count=3, window_time=10, ban_time=60, clock=mono)
    for _ in range(10):
        assert detector.record("steady") is False
        mono.now += 5.01  # three disconnects always span more than 10 s
    await detector.drain()
    assert await storage.list_bans() == []


async def test_quiet_clients_are_forgotten(storage: MemoryStorage) -> None:
    bans = BanList(storage, refresh_interval=0)
    mono = Clock(0.0)
    detector = FlappingDetector(bans, max_count=5, window_time=10, clock=mono)
    for i in range(100):
        detector.record(f"c{i}")
    assert len(detector._events) == 100
    mono.now = 25.0
    detector.record("new")
    assert list(detector._events) == ["new"]


# --- through a real broker ------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "code"), [(V5, 0x8A), (V311, 0x87)])
async def test_a_flapping_client_is_refused(
    broker: RunningBroker, storage: MemoryStorage, protocol: int, code: int
) -> None:
    bans = BanList(storage, refresh_interval=0)
    detector = FlappingDetector(bans, max_count=3, window_time=60, ban_time=300)
    plugin = AuthPlugin(ban_checkers=[bans], helpers=[detector])  # as ban_sources() gives
    await plugin.open()
    hooks = broker.broker.hooks
    ended: asyncio.Queue[str] = asyncio.Queue()
    unregister = [
        plugin.install(hooks),  # the detector's CLIENT_DISCONNECTED hook comes with it
        # Registered after the detector, so it runs after it (same priority, in order).
        hooks.register(HookPoint.CLIENT_DISCONNECTED, lambda e: ended.put_nowait("x")),
    ]
    clients = Clients(broker.port)
    try:
        for _ in range(3):
            client = await clients.connect("flappy", protocol)
            await client.disconnect()
            await asyncio.wait_for(ended.get(), 5)  # the broker saw the disconnect
        await detector.drain()  # the ban is stored once the third disconnect is seen...
        bans_now = await storage.list_bans()
        assert [(b.value, b.by) for b in bans_now] == [("flappy", "flapping")]
        assert await clients.refused("flappy", protocol) == code  # ...and enforced
        await clients.stop(await clients.connect("steady", protocol))  # others connect
    finally:
        await clients.close()
        for undo in unregister:
            undo()
        await plugin.close()
