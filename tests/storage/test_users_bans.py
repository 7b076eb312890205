"""The storage contract for built-in users and bans (schema version 2), on every backend,
plus the migration of a version-1 store and SQLite's shared (``tidemq ctl``) mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidemq.storage import create_storage
from tidemq.storage.api import BanRecord, Storage, StorageError, UserRecord, WriteBatch
from tidemq.storage.sqlite import SQLiteStorage

from .conftest import Target
from .test_contract import LONG, NOW, apply, fill_everything, session, snapshot

HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"


def user(name: str, **kw: Any) -> UserRecord:
    values: dict[str, Any] = {"password_hash": HASH, "created_at": NOW}
    values.update(kw)
    return UserRecord(username=name, **values)


def ban(kind: str, value: str, **kw: Any) -> BanRecord:
    values: dict[str, Any] = {"created_at": NOW, "by": "ctl"}
    values.update(kw)
    return BanRecord(kind=kind, value=value, **values)  # type: ignore[arg-type]


async def test_users_round_trip(storage: Storage) -> None:
    assert await storage.list_users() == []
    assert await storage.get_user("alice") is None
    alice = user("alice", superuser=True, updated_at=NOW + 1.25)
    upper = user("Zed", password_hash="$pbkdf2-sha512$i=1000$c2FsdA$aGFzaA")
    odd = user("ä ' ; DROP TABLE tidemq_users; --")
    long = user(LONG)
    for record in (alice, upper, odd, long):
        await storage.put_user(record)
    assert await storage.get_user("alice") == alice
    assert await storage.get_user(LONG) == long
    assert await storage.get_user(odd.username) == odd
    assert await storage.get_user("ALICE") is None  # usernames are case-sensitive
    # By username in code-point order, whatever the database's collation.
    assert await storage.list_users() == [upper, alice, long, odd]
    # A put replaces the whole record.
    changed = user("alice", password_hash="$2b$12$" + "x" * 53)
    await storage.put_user(changed)
    assert await storage.get_user("alice") == changed
    assert await storage.delete_user("alice") is True
    assert await storage.delete_user("alice") is False
    assert await storage.get_user("alice") is None
    assert [u.username for u in await storage.list_users()] == ["Zed", LONG, odd.username]


async def test_bans_round_trip(storage: Storage) -> None:
    assert await storage.list_bans() == []
    by_id = ban("clientid", "flappy", reason="flapping", until=NOW + 300, by="flapping")
    by_name = ban("username", "mallory", reason="abuse")
    net = ban("address", "10.0.0.0/8")
    host6 = ban("address", "2001:db8::1/128", until=NOW + 1e-6)
    long = ban("clientid", LONG)
    same_value = ban("username", "flappy")  # another kind, same value: another ban
    for record in (by_id, by_name, net, host6, long, same_value):
        await storage.put_ban(record)
    assert await storage.list_bans() == [net, host6, by_id, long, same_value, by_name]
    # A put replaces the ban of the same kind and value (a new expiry, a new reason).
    renewed = ban("clientid", "flappy", reason="again", until=NOW + 600, by="flapping")
    await storage.put_ban(renewed)
    bans = await storage.list_bans()
    assert renewed in bans
    assert by_id not in bans
    assert len(bans) == 6
    assert await storage.delete_ban("clientid", "flappy") is True
    assert await storage.delete_ban("clientid", "flappy") is False
    assert await storage.delete_ban("address", "10.0.0.1/32") is False
    assert await storage.list_bans() == [net, host6, long, same_value, by_name]


async def test_purge_expired_lifts_bans(storage: Storage) -> None:
    await storage.put_ban(ban("clientid", "soon", until=NOW + 10))
    await storage.put_ban(ban("clientid", "later", until=NOW + 100))
    await storage.put_ban(ban("username", "forever"))
    await storage.put_user(user("alice"))
    assert await storage.purge_expired(NOW) == 0
    assert len(await storage.list_bans()) == 3
    assert await storage.purge_expired(NOW + 10) == 1
    assert [b.value for b in await storage.list_bans()] == ["later", "forever"]
    # A renewed ban moves its expiry: the old one must not purge it.
    await storage.put_ban(ban("clientid", "later", until=NOW + 1000))
    assert await storage.purge_expired(NOW + 500) == 0
    # A ban made permanent drops its expiry.
    await storage.put_ban(ban("clientid", "later"))
    assert await storage.purge_expired(NOW + 100_000) == 0
    assert [b.value for b in await storage.list_bans()] == ["later", "forever"]
    assert await storage.get_user("alice") is not None  # users never expire


async def test_users_and_bans_are_apart_from_sessions(storage: Storage) -> None:
    await storage.put_user(user("alice"))
    await storage.put_ban(ban("clientid", "alice"))
    await apply(storage, fill_everything)
    await apply(storage, lambda b: b.delete_session("alice"))
    assert await storage.get_user("alice") == user("alice")
    assert await storage.list_bans() == [ban("clientid", "alice")]
    await storage.apply(WriteBatch())


async def test_users_and_bans_survive_a_restart(target: Target) -> None:
    if not target.persistent:
        pytest.skip("the memory backend keeps nothing across a restart, by design")
    first = await target.open()
    await first.put_user(user("alice", superuser=True))
    await first.put_ban(ban("address", "192.168.0.0/16", until=NOW + 5))
    await first.close()
    second = await target.open()
    assert await second.list_users() == [user("alice", superuser=True)]
    assert await second.list_bans() == [ban("address", "192.168.0.0/16", until=NOW + 5)]


async def test_calls_before_open_raise(target: Target) -> None:
    storage = target.new()
    with pytest.raises(StorageError):
        await storage.list_users()
    with pytest.raises(StorageError):
        await storage.put_ban(ban("clientid", "x"))


# --- migration from schema version 1 ------------------------------------------------------


async def _downgrade_to_v1(backend: str, storage: Any) -> None:
    """Make an opened store look like one written by a TideMQ that knew only version 1."""
    if backend == "sqlite":

        def drop() -> None:
            conn = storage._conn
            for statement in (
                "DROP TABLE tidemq_acl",  # schema 3 (tests/storage/test_acl_rules.py)
                "DROP TABLE tidemq_users",
                "DROP TABLE tidemq_bans",
                "DELETE FROM tidemq_schema WHERE version > 1",
            ):
                conn.execute(statement)

        await storage._run(drop)
    elif backend == "postgres":

        async def drop_pg(conn: Any) -> None:
            await conn.execute("DROP TABLE tidemq_users, tidemq_bans, tidemq_acl")
            await conn.execute("DELETE FROM tidemq_schema WHERE version > 1")

        await storage._call(drop_pg)
    elif backend == "mysql":

        async def drop_my(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute("DROP TABLE tidemq_users, tidemq_bans, tidemq_acl")
                await cur.execute("DELETE FROM tidemq_schema WHERE version > 1")

        await storage._call(drop_my)
    elif backend == "redis":

        async def drop_redis(client: Any) -> None:
            await client.hset(storage.prefix + "meta", "schema", 1)

        await storage._call(drop_redis)


async def test_a_version_1_store_is_migrated_and_keeps_its_data(target: Target) -> None:
    if not target.persistent:
        pytest.skip("the memory backend has no schema")
    first = await target.open()
    await apply(first, fill_everything)
    before = await snapshot(first)
    await _downgrade_to_v1(target.backend, first)
    await first.close()
    second = await target.open()
    assert await snapshot(second) == before
    await second.put_user(user("alice"))
    await second.put_ban(ban("username", "bob"))
    assert await second.list_users() == [user("alice")]
    await apply(second, lambda b: b.put_session(session("zed")))
    await second.close()
    third = await target.open()  # no migration runs twice
    assert await third.list_bans() == [ban("username", "bob")]


# --- SQLite: tidemq ctl beside a running broker -------------------------------------------


async def test_sqlite_shared_opens_beside_the_broker(tmp_path: Path) -> None:
    broker = SQLiteStorage(tmp_path)
    await broker.open()
    try:
        with pytest.raises(StorageError, match="in use by another process"):
            await SQLiteStorage(tmp_path).open()  # a second broker is still refused
        admin = create_storage("sqlite", "", str(tmp_path), "sync", shared=True)
        async with admin:
            await admin.put_user(user("alice"))
            await admin.put_ban(ban("clientid", "c1"))
            # The broker sees the admin's writes, and the admin the broker's.
            assert await broker.get_user("alice") == user("alice")
            assert await broker.list_bans() == [ban("clientid", "c1")]
            await apply(broker, lambda b: b.put_session(session("s1")))
            assert [s.client_id for s in await admin.load_sessions()] == ["s1"]
            await broker.delete_ban("clientid", "c1")
            assert await admin.list_bans() == []
    finally:
        await broker.close()
