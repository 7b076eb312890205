"""Server-backend specifics beyond the contract: collation-independent order, refusing
data that is not ours or is newer, concurrent first starts, key-prefix isolation."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from tidemq.storage.api import SessionRecord, Storage, StorageError, WriteBatch
from tidemq.storage.mysql import from_url as mysql_from_url
from tidemq.storage.postgres import PostgresStorage
from tidemq.storage.redis import RedisStorage

from .conftest import mysql_database, need_service, postgres_database, unique_name


def put(*client_ids: str) -> WriteBatch:
    batch = WriteBatch()
    for cid in client_ids:
        batch.put_session(SessionRecord(client_id=cid, expiry_interval=60, protocol_version=5))
    return batch


async def test_postgres_orders_by_code_point_under_a_linguistic_collation() -> None:
    url = need_service("POSTGRES")
    # en-US sorts "alice" < "bob" < "Zed"; the contract says code points: "Zed" first.
    icu = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"
    async with postgres_database(url, icu) as db, PostgresStorage(db) as storage:
        await storage.apply(put("bob", "Zed", "alice"))
        assert [s.client_id for s in await storage.load_sessions()] == ["Zed", "alice", "bob"]


async def test_postgres_first_starts_race_safely() -> None:
    async with postgres_database(need_service("POSTGRES")) as db:
        stores = [PostgresStorage(db) for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        for s in stores:
            await s.close()


async def test_mysql_first_starts_race_safely() -> None:
    async with mysql_database(need_service("MYSQL")) as db:
        stores = [mysql_from_url(db, "", "sync") for _ in range(4)]
        await asyncio.gather(*(s.open() for s in stores))
        for s in stores:
            await s.close()


async def _sql_exec(backend: str, url: str, *statements: str) -> None:
    if backend == "postgres":
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            for statement in statements:
                await conn.execute(statement)
        finally:
            await conn.close()
    else:
        import aiomysql

        from tidemq.storage.mysql import MySQLStorage

        probe = mysql_from_url(url, "", "sync")
        assert isinstance(probe, MySQLStorage)
        conn = await aiomysql.connect(**probe._params, autocommit=True)
        try:
            async with conn.cursor() as cur:
                for statement in statements:
                    await cur.execute(statement)
        finally:
            await conn.ensure_closed()


def _sql_storage(backend: str, url: str) -> Storage:
    return PostgresStorage(url) if backend == "postgres" else mysql_from_url(url, "", "sync")


def _sql_database(backend: str) -> AbstractAsyncContextManager[str]:
    if backend == "postgres":
        return postgres_database(need_service("POSTGRES"))
    return mysql_database(need_service("MYSQL"))


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
async def test_tables_without_a_schema_version_are_refused(backend: str) -> None:
    async with _sql_database(backend) as db:
        await _sql_exec(backend, db, "CREATE TABLE tidemq_sessions (x INT)")
        with pytest.raises(StorageError, match="no tidemq_schema"):
            await _sql_storage(backend, db).open()


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
async def test_a_newer_schema_is_refused(backend: str) -> None:
    async with _sql_database(backend) as db:
        async with _sql_storage(backend, db) as storage:
            await storage.apply(put("kept"))
        await _sql_exec(backend, db, "INSERT INTO tidemq_schema VALUES (999, 0)")
        with pytest.raises(StorageError, match="newer than this TideMQ supports"):
            await _sql_storage(backend, db).open()


async def test_redis_prefixes_isolate_instances_and_newer_schemas_are_refused() -> None:
    url = need_service("REDIS")
    one, two = f"{unique_name()}:", f"{unique_name()}:"
    async with RedisStorage(url, prefix=one) as a, RedisStorage(url, prefix=two) as b:
        await a.apply(put("only-in-one"))
        assert await b.load_sessions() == []
        assert [s.client_id for s in await a.load_sessions()] == ["only-in-one"]
        await a._call(lambda c: c.hset(one + "meta", "schema", 999))
        with pytest.raises(StorageError, match="newer than this TideMQ supports"):
            await RedisStorage(url, prefix=one).open()

        async def cleanup(client: Any) -> None:
            for prefix in (one, two):
                await client.delete(*[k async for k in client.scan_iter(match=prefix + "*")])

        await a._call(cleanup)
