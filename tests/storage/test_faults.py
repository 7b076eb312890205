"""A server backend that goes away: calls raise ``StorageUnavailable`` (never anything
else, never a hang), nothing half-applied remains, and the backend recovers by itself
once the server is back.

Redis: a private ``redis-server`` on a free port, really stopped and started again (with
an append-only file, so its data survives). PostgreSQL and MariaDB: the shared test
servers behind a TCP proxy that the test stops (every connection reset, new ones
refused) and starts again on the same port, which is what the broker sees when its
database server restarts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import pytest

from tidemq.storage.api import SessionRecord, Storage, StorageError, StorageUnavailable, WriteBatch
from tidemq.storage.mysql import from_url as mysql_from_url
from tidemq.storage.postgres import PostgresStorage
from tidemq.storage.redis import RedisStorage

from .conftest import mysql_database, need_service, postgres_database

# How long a recovered server may take before the storage works again.
RECOVERY_DEADLINE = 15.0


class Server(Protocol):
    """Something a test can stop and start again at the same address."""

    async def stop(self) -> None: ...
    async def start(self) -> None: ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A private redis-server process on a free loopback port, data in *directory*."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                if time.monotonic() > deadline or self.proc.returncode is not None:
                    raise RuntimeError("redis-server did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 10)


class Proxy:
    """A TCP proxy on a fixed loopback port in front of *upstream* (host, port)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for transport in list(self.transports):
            transport.abort()  # a reset, as when the server process dies
        self.transports.clear()
        if server is not None:
            await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        client_side, server_side = writer.transport, up_writer.transport
        assert isinstance(client_side, asyncio.Transport)
        assert isinstance(server_side, asyncio.Transport)
        self.transports.update((client_side, server_side))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for transport in (client_side, server_side):
            self.transports.discard(transport)
            transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()


def via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")
    auth = netloc[0] + netloc[1]
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{port}"))


def upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 0


async def redis_setup(
    stack: AsyncExitStack, tmp_path: Path
) -> tuple[Server, Callable[[], Storage]]:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed (scripts/services installs it)")
        pytest.skip("redis-server is not installed (scripts/services installs it)")
    server = RedisServer(tmp_path)
    await server.start()
    stack.push_async_callback(server.stop)
    return server, lambda: RedisStorage(server.url, prefix="fault:")


async def postgres_setup(
    stack: AsyncExitStack, tmp_path: Path
) -> tuple[Server, Callable[[], Storage]]:
    url = await stack.enter_async_context(postgres_database(need_service("POSTGRES")))
    proxy = Proxy(upstream(url))
    await proxy.start()
    stack.push_async_callback(proxy.stop)
    return proxy, lambda: PostgresStorage(via(url, proxy.port))


async def mysql_setup(
    stack: AsyncExitStack, tmp_path: Path
) -> tuple[Server, Callable[[], Storage]]:
    url = await stack.enter_async_context(mysql_database(need_service("MYSQL")))
    proxy = Proxy(upstream(url))
    await proxy.start()
    stack.push_async_callback(proxy.stop)
    return proxy, lambda: mysql_from_url(via(url, proxy.port), "", "sync")


SETUPS = {"redis": redis_setup, "postgres": postgres_setup, "mysql": mysql_setup}


@pytest.fixture(params=sorted(SETUPS))
async def server_and_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Server, Callable[[], Storage]]]:
    async with AsyncExitStack() as stack:
        yield await SETUPS[request.param](stack, tmp_path)


def put(*client_ids: str) -> WriteBatch:
    batch = WriteBatch()
    for cid in client_ids:
        batch.put_session(SessionRecord(client_id=cid, expiry_interval=60, protocol_version=5))
    return batch


async def until_it_works(call: Callable[[], Awaitable[None]]) -> int:
    """Retry *call* while it raises StorageUnavailable; returns the failures seen."""
    failures = 0
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while True:
        try:
            await call()
        except StorageUnavailable:
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        else:
            return failures


async def test_server_stopped_and_restarted(
    server_and_storage: tuple[Server, Callable[[], Storage]],
) -> None:
    server, make = server_and_storage
    storage = make()
    await storage.open()
    try:
        await storage.apply(put("before"))

        await server.stop()
        for call in (
            lambda: storage.apply(put("during")),
            storage.load_sessions,
            lambda: storage.load_queue("before"),
            lambda: storage.purge_expired(time.time()),
            storage.max_message_id,
        ):
            with pytest.raises(StorageUnavailable) as info:
                await asyncio.wait_for(call(), 20)
            assert info.value.temporary
            assert isinstance(info.value, StorageError)

        await server.start()
        await until_it_works(lambda: storage.apply(put("after")))
        names = [s.client_id for s in await storage.load_sessions()]
        assert names == ["after", "before"]  # nothing of the failed batch, nothing lost
    finally:
        await storage.close()


async def test_open_while_the_server_is_down(
    server_and_storage: tuple[Server, Callable[[], Storage]],
) -> None:
    server, make = server_and_storage
    await server.stop()
    storage = make()
    with pytest.raises(StorageUnavailable):
        await asyncio.wait_for(storage.open(), 20)
    await server.start()
    await until_it_works(storage.open)
    try:
        await storage.apply(put("x"))
        assert [s.client_id for s in await storage.load_sessions()] == ["x"]
    finally:
        await storage.close()
