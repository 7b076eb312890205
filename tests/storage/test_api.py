"""The pieces of tidemq.storage.api that are not a backend: the write batch, group commit,
message ids, the property codec, and the backend factory."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tidemq.config import Config
from tidemq.protocol import NO_PROPERTIES, Properties
from tidemq.storage import DEFAULT_URLS, create_storage, open_storage
from tidemq.storage.api import (
    BACKENDS,
    DURABILITY_MODES,
    EMPTY_PROPERTIES,
    DeleteSession,
    GroupCommit,
    MessageIds,
    PutSession,
    SessionRecord,
    StorageError,
    WriteBatch,
    properties_from_bytes,
    properties_to_bytes,
)
from tidemq.storage.memory import MemoryStorage


def session(cid: str) -> SessionRecord:
    return SessionRecord(client_id=cid, expiry_interval=60, protocol_version=5)


def test_records_are_frozen_and_slotted() -> None:
    record = session("c")
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.client_id = "d"  # type: ignore[misc]
    assert not hasattr(record, "__dict__")


def test_batch_runs_group_consecutive_operations_of_one_type() -> None:
    batch = WriteBatch()
    batch.put_session(session("a"))
    batch.put_session(session("b"))
    batch.delete_session("a")
    batch.put_session(session("c"))
    runs = list(batch.runs())
    assert [[type(op) for op in run] for run in runs] == [
        [PutSession, PutSession],
        [DeleteSession],
        [PutSession],
    ]
    assert len(batch) == 4
    assert list(WriteBatch().runs()) == []


def test_properties_round_trip() -> None:
    props = Properties(content_type="a/b", user_properties=(("k", "v"),), message_expiry_interval=9)
    assert properties_from_bytes(properties_to_bytes(props)) == props
    assert properties_to_bytes(NO_PROPERTIES) == EMPTY_PROPERTIES
    assert properties_from_bytes(EMPTY_PROPERTIES) is NO_PROPERTIES
    assert properties_from_bytes(b"") is NO_PROPERTIES
    will = Properties(will_delay_interval=5)
    assert properties_from_bytes(properties_to_bytes(will), will=True) == will
    with pytest.raises(StorageError, match="corrupt"):
        properties_from_bytes(b"\x05\xff\xff")
    with pytest.raises(StorageError, match="corrupt"):
        properties_from_bytes(properties_to_bytes(props) + b"x")


def test_message_ids_increase_past_the_floor() -> None:
    ids = MessageIds()
    first = ids.next()
    assert first > 1_600_000_000_000_000  # wall clock in microseconds
    many = [ids.next() for _ in range(10_000)]
    assert many == sorted(set(many))
    assert many[0] > first
    far = MessageIds(floor=2**62)  # a clock that went back, or ids from elsewhere
    assert far.next() == 2**62 + 1


class CountingStorage(MemoryStorage):
    """Memory storage that records each batch and can be slowed down or made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fail = False

    async def apply(self, batch: WriteBatch) -> None:
        self.batches.append([getattr(op, "record", op).client_id for op in batch.ops])  # type: ignore[union-attr]
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise StorageError("disk on fire")
        await super().apply(batch)


async def test_group_commit_batches_one_loop_pass() -> None:
    storage = CountingStorage()
    await storage.open()
    group = GroupCommit(storage)
    waiters = []
    for cid in "abc":
        group.batch.put_session(session(cid))
        waiters.append(group.commit())
    assert waiters[0] is waiters[1] is waiters[2]
    await asyncio.gather(*waiters)
    assert storage.batches == [["a", "b", "c"]]
    assert [s.client_id for s in await storage.load_sessions()] == ["a", "b", "c"]


async def test_group_commit_collects_while_a_batch_commits() -> None:
    storage = CountingStorage()
    await storage.open()
    storage.gate = asyncio.Event()
    group = GroupCommit(storage)
    group.batch.put_session(session("a"))
    first = group.commit()
    await storage.started.wait()  # the first batch starts and blocks in apply
    assert storage.batches == [["a"]]
    assert group.busy
    for cid in "bcd":
        group.batch.put_session(session(cid))
        second = group.commit()
    assert not first.done()
    storage.gate.set()
    await first
    await second
    assert storage.batches == [["a"], ["b", "c", "d"]]
    await group.drain()
    assert not group.busy


async def test_group_commit_failure_reaches_every_writer() -> None:
    storage = CountingStorage()
    await storage.open()
    storage.fail = True
    group = GroupCommit(storage)
    group.batch.put_session(session("a"))
    ignored = group.commit()  # a writer that does not wait: no "never retrieved" noise
    group.batch.put_session(session("b"))
    awaited = group.commit()
    with pytest.raises(StorageError, match="disk on fire"):
        await awaited
    assert ignored.done()
    storage.fail = False
    group.batch.put_session(session("c"))
    await group.commit()  # the next batch goes through
    assert [s.client_id for s in await storage.load_sessions()] == ["c"]


async def test_group_commit_drain_waits_for_everything() -> None:
    storage = CountingStorage()
    await storage.open()
    group = GroupCommit(storage)
    await group.drain()  # nothing to wait for
    group.batch.put_session(session("a"))
    group.commit()
    await group.drain()
    assert storage.batches == [["a"]]


# --- the factory ---------------------------------------------------------------------------


def test_config_names_match_the_api() -> None:
    """config.py repeats the backend and durability names (it imports nothing of ours)."""
    from typing import get_args

    from tidemq.config import StorageBackend, StorageDurability

    assert set(get_args(StorageBackend)) == set(BACKENDS)
    assert set(get_args(StorageDurability)) == set(DURABILITY_MODES)
    assert Config().storage.backend == "sqlite"
    assert Config().storage.durability == "sync"


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_storage_knows_every_backend(backend: str, tmp_path: object) -> None:
    storage = create_storage(backend, "", str(tmp_path), "batch")
    assert storage.name == backend
    assert storage.durability == "batch"
    assert backend in DEFAULT_URLS


def test_create_storage_rejects_bad_input(tmp_path: object) -> None:
    data = str(tmp_path)
    with pytest.raises(StorageError, match="unknown storage backend"):
        create_storage("mongodb", "", data, "sync")
    with pytest.raises(StorageError, match="unknown durability"):
        create_storage("sqlite", "", data, "eventually")
    with pytest.raises(StorageError, match="takes no URL"):
        create_storage("memory", "x", data, "sync")
    with pytest.raises(StorageError, match="bad Redis URL"):
        create_storage("redis", "postgresql://h/db", data, "sync")
    with pytest.raises(StorageError, match="bad PostgreSQL URL"):
        create_storage("postgres", "redis://h", data, "sync")
    with pytest.raises(StorageError, match="no database name"):
        create_storage("mysql", "mysql://u:p@h:1/", data, "sync")


def test_server_urls_are_parsed_and_passwords_kept_out_of_reprs(tmp_path: object) -> None:
    from tidemq.storage.mysql import MySQLStorage
    from tidemq.storage.redis import RedisStorage

    redis = create_storage("redis", "redis://:pw@h:1/2?prefix=n1:&db=2", str(tmp_path), "sync")
    assert isinstance(redis, RedisStorage)
    assert redis.prefix == "n1:"
    assert "prefix" not in redis.url
    assert "pw" not in repr(redis)
    mysql = create_storage("mysql", "mariadb://u:p%40ss@db.example:3307/q", "", "sync")
    assert isinstance(mysql, MySQLStorage)
    assert mysql._params["password"] == "p@ss"
    assert mysql._params["port"] == 3307
    assert "p@ss" not in repr(mysql)
    postgres = create_storage("postgres", "postgresql://u:secret@h/db", "", "sync")
    assert "secret" not in repr(postgres)


async def test_open_storage_returns_an_open_storage(tmp_path: object) -> None:
    storage = await open_storage("sqlite", "", str(tmp_path), "sync")
    try:
        assert await storage.load_sessions() == []
    finally:
        await storage.close()
