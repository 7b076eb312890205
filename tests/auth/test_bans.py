"""Bans: matching by client id, username and address (CIDR), expiry, refresh from storage
(``tidemq ctl`` in another process), and refusals seen by paho 3.1.1 and 5.0 clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import mqttbytes as mb
from tests.auth.hookup import Clients
from tests.helpers.paho import V5, V311
from tests.helpers.raw import RawClient
from tidemq.auth.api import ClientIdentity, Verdict
from tidemq.auth.bans import BANNED, BanList, normalize_ban_value
from tidemq.auth.plugin import AuthPlugin
from tidemq.storage import create_storage
from tidemq.storage.api import BanRecord, StorageUnavailable
from tidemq.storage.memory import MemoryStorage
from tidemq.storage.sqlite import SQLiteStorage
from tidemq.testing import RunningBroker

NOW = 1_750_000_000.0


def who(client_id: str = "c1", username: str | None = None, host: str | None = "192.0.2.7"):
    return ClientIdentity(client_id=client_id, username=username, peer_host=host)


def ban(kind: str, value: str, until: float | None = None, **kw: object) -> BanRecord:
    return BanRecord(
        kind=kind,  # type: ignore[arg-type]
        value=normalize_ban_value(kind, value),
        created_at=NOW,
        until=until,
        **kw,  # type: ignore[arg-type]
    )


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def memory() -> AsyncIterator[MemoryStorage]:
    storage = MemoryStorage()
    await storage.open()
    yield storage
    await storage.close()


def test_normalize_ban_value() -> None:
    assert normalize_ban_value("address", "10.1.2.3") == "10.1.2.3/32"
    assert normalize_ban_value("address", "10.1.2.3/8") == "10.0.0.0/8"
    assert normalize_ban_value("address", "2001:DB8::1") == "2001:db8::1/128"
    assert normalize_ban_value("clientid", " spaced ") == " spaced "
    with pytest.raises(ValueError, match="not an IP address"):
        normalize_ban_value("address", "example.com")
    with pytest.raises(ValueError, match="unknown ban kind"):
        normalize_ban_value("peerhost", "1.2.3.4")
    with pytest.raises(ValueError, match="needs a value"):
        normalize_ban_value("username", "")


async def test_matching_by_kind_and_address(memory: MemoryStorage) -> None:
    for record in (
        ban("clientid", "bad-id"),
        ban("username", "mallory"),
        ban("address", "198.51.100.9"),
        ban("address", "203.0.113.0/24"),
        ban("address", "2001:db8:1::/48"),
    ):
        await memory.put_ban(record)
    bans = BanList(memory, refresh_interval=0, clock=Clock())
    await bans.open()
    assert len(bans) == 5
    assert bans.match(who("bad-id")) is not None
    assert bans.match(who("BAD-ID")) is None  # client ids are case-sensitive
    assert bans.match(who(username="mallory")) is not None
    assert bans.match(who(username="mallory2")) is None
    assert bans.match(who(host="198.51.100.9")) is not None
    assert bans.match(who(host="198.51.100.10")) is None
    assert bans.match(who(host="203.0.113.200")) is not None
    assert bans.match(who(host="::ffff:203.0.113.1")) is not None  # dual-stack listener
    assert bans.match(who(host="2001:db8:1:ffff::5")) is not None
    assert bans.match(who(host="2001:db8:2::5")) is None
    assert bans.match(who(host=None)) is None
    assert bans.match(who(host="/run/tidemq.sock")) is None  # not an IP: no address ban
    assert bans.match(who("ok", "alice", "192.0.2.1")) is None
    outcome = await bans.check(who("bad-id"))
    assert outcome is not None
    assert outcome.verdict is Verdict.DENY
    assert outcome.reason_code == BANNED == 0x8A
    assert await bans.check(who("fine")) is None
    await bans.close()


async def test_expiry_is_honoured(memory: MemoryStorage) -> None:
    clock = Clock()
    await memory.put_ban(ban("clientid", "temp", until=NOW + 60))
    await memory.put_ban(ban("clientid", "perm"))
    bans = BanList(memory, refresh_interval=0, clock=clock)
    await bans.open()
    assert bans.match(who("temp")) is not None
    clock.now = NOW + 60
    assert bans.match(who("temp")) is None  # expired: ignored at once
    assert bans.match(who("perm")) is not None
    assert await bans.refresh()
    assert [b.value for b in bans.bans] == ["perm"]  # not loaded again
    assert len(await memory.list_bans()) == 2  # left to the broker's purge_expired
    assert await memory.purge_expired(clock.now) == 1


async def test_add_and_remove_take_effect_at_once(memory: MemoryStorage) -> None:
    bans = BanList(memory, refresh_interval=0, clock=Clock())
    await bans.open()
    await bans.add(ban("address", "10.0.0.0/8", reason="test"))
    assert bans.match(who(host="10.9.9.9")) is not None
    assert await memory.list_bans() == [ban("address", "10.0.0.0/8", reason="test")]
    assert await bans.remove("address", "10.0.0.0/8") is True
    assert bans.match(who(host="10.9.9.9")) is None
    assert await memory.list_bans() == []
    assert await bans.remove("address", "10.0.0.0/8") is False


class FlakyStorage(MemoryStorage):
    """Memory storage whose list_bans can be made to fail, and which signals each call."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.calls = 0
        self.called = asyncio.Event()

    async def list_bans(self) -> list[BanRecord]:
        self.calls += 1
        self.called.set()
        if self.down:
            raise StorageUnavailable("test: server down")
        return await super().list_bans()


async def test_a_storage_failure_keeps_the_known_bans() -> None:
    storage = FlakyStorage()
    await storage.open()
    await storage.put_ban(ban("clientid", "x"))
    bans = BanList(storage, refresh_interval=0, clock=Clock())
    await bans.open()
    storage.down = True
    await storage.delete_ban("clientid", "x")
    assert await bans.refresh() is False
    assert bans.match(who("x")) is not None  # still enforced while storage is down
    storage.down = False
    assert await bans.refresh() is True
    assert bans.match(who("x")) is None


async def test_the_refresh_task_reloads_periodically() -> None:
    storage = FlakyStorage()
    await storage.open()
    bans = BanList(storage, refresh_interval=0.01)
    await bans.open()
    assert storage.calls == 1
    await storage.put_ban(ban("clientid", "later"))  # as another process would
    for _ in range(2):  # two more loads: the second surely ran after the put
        storage.called.clear()
        await asyncio.wait_for(storage.called.wait(), 5)
    await asyncio.sleep(0)  # let the refresh that signalled finish indexing
    assert bans.match(who("later")) is not None
    await bans.close()
    assert bans._task is None


async def test_bans_made_by_another_process_reach_the_broker_sqlite(tmp_path: Path) -> None:
    """The broker's SQLite storage and tidemq ctl's shared one, on the same data dir."""
    broker_storage = SQLiteStorage(tmp_path)
    await broker_storage.open()
    try:
        bans = BanList(broker_storage, refresh_interval=0)
        await bans.open()
        ctl = create_storage("sqlite", "", str(tmp_path), "sync", shared=True)
        async with ctl:
            await ctl.put_ban(ban("username", "eve"))
        assert bans.match(who(username="eve")) is None  # not before the refresh
        await bans.refresh()
        assert bans.match(who(username="eve")) is not None
    finally:
        await broker_storage.close()


# --- through a real broker ------------------------------------------------------------------


@pytest.fixture
async def banned_broker(
    broker: RunningBroker, memory: MemoryStorage
) -> AsyncIterator[tuple[BanList, Clients]]:
    bans = BanList(memory, refresh_interval=0)
    plugin = AuthPlugin(ban_checkers=[bans])
    await plugin.open()
    unregister = plugin.install(broker.broker.hooks)
    clients = Clients(broker.port)
    yield bans, clients
    await clients.close()
    unregister()
    await plugin.close()


# paho reports a 3.1.1 CONNACK return code 5 (not authorized) as reason code 0x87.
@pytest.mark.parametrize(("protocol", "code"), [(V5, 0x8A), (V311, 0x87)])
async def test_banned_clients_are_refused(
    banned_broker: tuple[BanList, Clients], protocol: int, code: int
) -> None:
    bans, clients = banned_broker
    await bans.add(ban("clientid", "banned-id"))
    await bans.add(ban("username", "banned-user"))
    assert await clients.refused("banned-id", protocol) == code
    assert await clients.refused("other", protocol, username="banned-user", password="x") == code
    ok = await clients.connect("other", protocol)
    await clients.stop(ok)
    await bans.add(ban("address", "127.0.0.0/8", reason="local"))
    assert await clients.refused("anyone", protocol) == code
    await bans.remove("address", "127.0.0.0/8")
    await clients.stop(await clients.connect("anyone", protocol))


@pytest.mark.parametrize(("proto_ver", "connack"), [(4, b"\x20\x02\x00\x05"), (5, None)])
async def test_the_refusal_on_the_wire(
    broker: RunningBroker,
    banned_broker: tuple[BanList, Clients],
    proto_ver: int,
    connack: bytes | None,
) -> None:
    bans, _ = banned_broker
    await bans.add(ban("clientid", "wire"))
    raw = await RawClient.connect(broker.port)
    try:
        await raw.send(mb.gen_connect("wire", proto_ver=proto_ver))
        packet = await raw.read_packet()
        if connack is not None:
            assert packet == connack  # 3.1.1: return code 5, Connection Refused, not authorized
        else:
            assert packet[:4] == b"\x20" + bytes([packet[1]]) + b"\x00\x8a"  # 5.0: 0x8A Banned
        assert await raw.expect_closed() == b""
    finally:
        await raw.close()


async def test_an_expired_ban_lets_the_client_in(banned_broker: tuple[BanList, Clients]) -> None:
    bans, clients = banned_broker
    clock = Clock()
    bans.clock = clock
    await bans.add(ban("clientid", "temp", until=NOW + 10))
    assert await clients.refused("temp", V5) == 0x8A
    clock.now = NOW + 10
    await clients.stop(await clients.connect("temp", V5))
