"""Fixtures for the storage tests: every backend, against real servers on loopback.

``scripts/services start`` installs and starts Redis, PostgreSQL and MariaDB and writes
their URLs to ``/var/tmp/tidemq-services/services.env``; ``TIDEMQ_TEST_REDIS_URL``,
``TIDEMQ_TEST_POSTGRES_URL`` and ``TIDEMQ_TEST_MYSQL_URL`` override it (and
``TIDEMQ_TEST_SERVICES_ENV`` names another file). A server that is not there skips its
tests, except under ``CI=true``, where it fails them.

Isolation: every test gets its own Redis key prefix, PostgreSQL database or MariaDB
database, named after this test run (``RUN_ID``) and a counter, created and dropped here.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tidemq.storage.api import BACKENDS, Storage
from tidemq.storage.memory import MemoryStorage
from tidemq.storage.sqlite import SQLiteStorage

SERVICES_ENV = Path(
    os.environ.get("TIDEMQ_TEST_SERVICES_ENV", "/var/tmp/tidemq-services/services.env")
)
#: One per test run: names every key prefix and database the run creates.
RUN_ID = f"{os.getpid():x}{secrets.token_hex(3)}"
_counter = count(1)
_reachable: dict[str, bool] = {}


def service_url(name: str) -> str | None:
    """The URL of service *name* (REDIS, POSTGRES, MYSQL) from the environment or the
    file scripts/services writes; None when neither has it."""
    var = f"TIDEMQ_TEST_{name}_URL"
    if os.environ.get(var):
        return os.environ[var]
    try:
        lines = SERVICES_ENV.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key == var and value:
            return value
    return None


def _port_open(url: str) -> bool:
    if url not in _reachable:
        parts = urlsplit(url)
        try:
            with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 2):
                _reachable[url] = True
        except OSError:
            _reachable[url] = False
    return _reachable[url]


def need_service(name: str) -> str:
    """The URL of a running service, or skip (fail under CI) the test."""
    url = service_url(name)
    problem = None
    if url is None:
        problem = f"no {name} server: run scripts/services start (or set TIDEMQ_TEST_{name}_URL)"
    elif not _port_open(url):
        problem = f"{name} server at {url} is not reachable: run scripts/services start"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert url is not None
    return url


def unique_name() -> str:
    return f"tidemq_t_{RUN_ID}_{next(_counter)}"


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


@dataclass
class Target:
    """One backend's storage location for one test: ``new()`` builds a fresh ``Storage``
    on the same data (a restart), and every storage built is closed at teardown."""

    backend: str
    make: Callable[[], Storage]
    built: list[Storage] = field(default_factory=list)

    @property
    def persistent(self) -> bool:
        return self.backend != "memory"

    def new(self) -> Storage:
        storage = self.make()
        self.built.append(storage)
        return storage

    async def open(self) -> Storage:
        storage = self.new()
        await storage.open()
        return storage


# Each backend's location: an async generator that yields a Storage factory once, then
# cleans up (drops the database, deletes the keys) when resumed.
Location = AsyncIterator[Callable[[], Storage]]


async def _memory_location(tmp_path: Path) -> Location:
    # A "restart" of the memory backend loses everything, as it should.
    yield MemoryStorage


async def _sqlite_location(tmp_path: Path) -> Location:
    yield lambda: SQLiteStorage(tmp_path / "data")


async def _redis_location(tmp_path: Path) -> Location:
    import redis.asyncio as aioredis

    from tidemq.storage.redis import RedisStorage

    url = need_service("REDIS")
    prefix = f"{unique_name()}:"
    yield lambda: RedisStorage(url, prefix=prefix)
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def postgres_database(url: str, options: str = "") -> AsyncIterator[str]:
    """A new, empty PostgreSQL database on the server at *url* (created with *options*),
    dropped afterwards."""
    import asyncpg

    database = unique_name()
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}" {options}')
        try:
            yield with_database(url, database)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def mysql_database(url: str) -> AsyncIterator[str]:
    """A new, empty MariaDB/MySQL database on the server at *url*, dropped afterwards."""
    import aiomysql

    database = unique_name()
    parts = urlsplit(url)
    admin = await aiomysql.connect(
        host=parts.hostname,
        port=parts.port or 3306,
        user=parts.username,
        password=parts.password or "",
        autocommit=True,
    )
    try:
        async with admin.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{database}`")
        try:
            yield with_database(url, database)
        finally:
            async with admin.cursor() as cur:
                await cur.execute(f"DROP DATABASE `{database}`")
    finally:
        await admin.ensure_closed()


async def _postgres_location(tmp_path: Path) -> Location:
    from tidemq.storage.postgres import PostgresStorage

    async with postgres_database(need_service("POSTGRES")) as url:
        yield lambda: PostgresStorage(url)


async def _mysql_location(tmp_path: Path) -> Location:
    from tidemq.storage.mysql import from_url

    async with mysql_database(need_service("MYSQL")) as url:
        yield lambda: from_url(url, "", "sync")


LOCATIONS: dict[str, Callable[[Path], Location]] = {
    "memory": _memory_location,
    "sqlite": _sqlite_location,
    "redis": _redis_location,
    "postgres": _postgres_location,
    "mysql": _mysql_location,
}
assert set(LOCATIONS) == set(BACKENDS)


@pytest.fixture(params=BACKENDS)
async def target(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Target]:
    """Every backend in turn, each on fresh, private data."""
    location = LOCATIONS[request.param](tmp_path)
    t = Target(request.param, await anext(location))
    try:
        yield t
    finally:
        for built in t.built:
            await built.close()
        async for _ in location:
            pass


@pytest.fixture
async def storage(target: Target) -> Storage:
    """An opened storage of every backend in turn (closed by ``target``)."""
    return await target.open()
