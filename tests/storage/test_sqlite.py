"""SQLite specifics: file permissions, refusing (and never touching) files that are not
ours, one broker per file, durability pragmas, and surviving SIGKILL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from tidemq.storage import create_storage
from tidemq.storage.api import SessionRecord, StorageError, WriteBatch
from tidemq.storage.sqlite import DEFAULT_FILENAME, SQLiteStorage, from_url


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


async def test_data_dir_is_created_private(tmp_path: Path) -> None:
    data = tmp_path / "a" / "data"
    old = os.umask(0o022)
    try:
        storage = SQLiteStorage(data)
        await storage.open()
    finally:
        os.umask(old)
    try:
        assert mode(data) == 0o700
        assert mode(data / DEFAULT_FILENAME) == 0o600
        batch = WriteBatch()
        batch.put_session(SessionRecord(client_id="c", expiry_interval=1, protocol_version=5))
        await storage.apply(batch)
        # SQLite gives the WAL the database file's permissions.
        assert mode(data / (DEFAULT_FILENAME + "-wal")) == 0o600
    finally:
        await storage.close()


async def test_an_existing_data_dir_is_left_as_it_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    async with SQLiteStorage(data):
        pass
    assert mode(data) == 0o755  # the operator's choice; a warning is logged


async def test_an_empty_file_becomes_a_database(tmp_path: Path) -> None:
    (tmp_path / DEFAULT_FILENAME).touch()
    async with SQLiteStorage(tmp_path) as storage:
        assert await storage.load_sessions() == []


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"retained messages, as a text file\n" * 100)


def _garbage_after_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO accounts VALUES (1, 'someone')")
    conn.commit()
    conn.close()


def _damaged(path: Path) -> None:
    _foreign(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # page 1 after the header: the schema
    path.write_bytes(bytes(data))


def _newer_schema(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE tidemq_schema (version INTEGER PRIMARY KEY, applied_at REAL)")
    conn.execute("INSERT INTO tidemq_schema VALUES (999, 0)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_not_sqlite, "is not a SQLite database"),
        (_garbage_after_header, "corrupt or not a SQLite database"),
        (_damaged, "corrupt or not a SQLite database"),
        (_foreign, "another program's SQLite database"),
        (_newer_schema, "newer than this TideMQ supports"),
    ],
)
async def test_a_file_that_is_not_ours_is_refused_and_left_untouched(
    tmp_path: Path, make: object, message: str
) -> None:
    path = tmp_path / DEFAULT_FILENAME
    make(path)  # type: ignore[operator]
    before = listing(tmp_path)
    storage = SQLiteStorage(tmp_path)
    with pytest.raises(StorageError, match=message) as info:
        await storage.open()
    assert str(path) in str(info.value)
    assert listing(tmp_path) == before  # not a byte changed, nothing added
    await storage.close()


async def test_a_directory_at_the_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / DEFAULT_FILENAME).mkdir()
    with pytest.raises(StorageError, match="not a regular file"):
        await SQLiteStorage(tmp_path).open()


async def test_one_broker_per_database(tmp_path: Path) -> None:
    first = SQLiteStorage(tmp_path)
    await first.open()
    second = SQLiteStorage(tmp_path)
    with pytest.raises(StorageError, match="in use by another process"):
        await second.open()
    await first.close()
    await second.open()  # the lock goes with the first broker
    await second.close()


@pytest.mark.parametrize(("durability", "synchronous"), [("sync", 2), ("batch", 1), ("none", 0)])
async def test_wal_and_synchronous_follow_durability(
    tmp_path: Path, durability: str, synchronous: int
) -> None:
    storage = create_storage("sqlite", "", str(tmp_path), durability)
    assert isinstance(storage, SQLiteStorage)
    async with storage:

        def pragmas() -> tuple[str, int]:
            conn = storage._conn
            assert conn is not None
            journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
            return journal, conn.execute("PRAGMA synchronous").fetchone()[0]

        assert await storage._run(pragmas) == ("wal", synchronous)


CRASHER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from tidemq.storage.api import SessionRecord, WriteBatch
    from tidemq.storage.sqlite import SQLiteStorage

    async def main():
        storage = SQLiteStorage(sys.argv[1])
        await storage.open()
        for i in range(50):
            batch = WriteBatch()
            batch.put_session(SessionRecord(client_id=f"c{i}", expiry_interval=1,
                                            protocol_version=5))
            await storage.apply(batch)
        print("applied", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    asyncio.run(main())
    """
)


async def test_committed_batches_survive_sigkill(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHER, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out == b"applied\n"
    assert proc.returncode == -9
    async with SQLiteStorage(tmp_path) as storage:
        sessions = await storage.load_sessions()
    assert sorted(s.client_id for s in sessions) == sorted(f"c{i}" for i in range(50))


def test_from_url(tmp_path: Path) -> None:
    data = str(tmp_path)
    assert from_url("", data, "sync").path == tmp_path / DEFAULT_FILENAME
    assert from_url("sub/x.db", data, "sync").path == tmp_path / "sub" / "x.db"
    assert from_url("sqlite:///abs/y.db", data, "batch").path == Path("/abs/y.db")
    assert from_url("sqlite://rel.db", data, "none").path == tmp_path / "rel.db"
    with pytest.raises(StorageError, match="bad SQLite URL"):
        from_url("sqlite:x.db", data, "sync")
