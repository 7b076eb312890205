"""Crash safety of ``tidemq serve`` as a user runs it: the process is killed with SIGKILL in
the middle of a publishing stream and started again on the same storage; every message it
acknowledged reaches the persistent subscriber, QoS 2 brings no duplicate, and a retained
message set before the kill is still there. For SQLite (the default), PostgreSQL, Redis
and MariaDB, each on private data made for the test.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from tests import mqttbytes as mb
from tests.helpers.raw import RawClient
from tests.storage.conftest import (
    mysql_database,
    need_service,
    postgres_database,
    unique_name,
)

pytestmark = pytest.mark.timeout(120)

LISTENING = re.compile(rb"listening on tcp://127\.0\.0\.1:(\d+)")
MESSAGES = 2000
KILL_AFTER = 900  # acknowledged messages before the SIGKILL


class Serve:
    """``tidemq serve`` subprocesses over one data directory and storage."""

    def __init__(self, data_dir: Path, storage_args: list[str]) -> None:
        self.data_dir = data_dir
        self.storage_args = storage_args
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.log: list[bytes] = []

    async def start(self) -> int:
        proc = self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tidemq",
            "serve",
            "--listen",
            "tcp://127.0.0.1:0",
            "--data-dir",
            str(self.data_dir),
            *self.storage_args,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            self.log.append(line)
            if not line:
                raise AssertionError("tidemq serve exited: " + b"".join(self.log).decode())
            found = LISTENING.search(line)
            if found:
                break
        self._drain = asyncio.create_task(self._read_rest(proc))
        return int(found.group(1))

    async def _read_rest(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            self.log.append(line)

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)
        if self._drain is not None:
            await self._drain
        self.proc = None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 15)
        if self._drain is not None:
            await self._drain
        self.proc = None


@asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[list[str]]:
    yield []  # the default: tidemq.db under the data directory


@asynccontextmanager
async def _postgres(tmp_path: Path) -> AsyncIterator[list[str]]:
    async with postgres_database(need_service("POSTGRES")) as url:
        yield ["--storage.backend", "postgres", "--storage.url", url]


@asynccontextmanager
async def _redis(tmp_path: Path) -> AsyncIterator[list[str]]:
    import redis.asyncio as aioredis

    url = need_service("REDIS")
    prefix = f"{unique_name()}:"
    yield ["--storage.backend", "redis", "--storage.url", f"{url}?prefix={prefix}"]
    client = aioredis.Redis.from_url(url)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@asynccontextmanager
async def _mysql(tmp_path: Path) -> AsyncIterator[list[str]]:
    async with mysql_database(need_service("MYSQL")) as url:
        yield ["--storage.backend", "mysql", "--storage.url", url]


BACKENDS: dict[str, Callable[[Path], object]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
    "redis": _redis,
    "mysql": _mysql,
}


@pytest.fixture(params=list(BACKENDS))
async def serve(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Serve]:
    async with BACKENDS[request.param](tmp_path) as args:  # type: ignore[attr-defined]
        server = Serve(tmp_path / "data", args)
        try:
            yield server
        finally:
            await server.stop()


async def connect(port: int, client_id: str, *, clean: bool) -> tuple[RawClient, bool]:
    client = await RawClient.connect(port)
    await client.send(mb.gen_connect(client_id, clean_session=clean))
    ack = await client.read_packet()
    assert ack[0] == 0x20, ack
    assert ack[3] == 0, ack
    return client, bool(ack[2])


async def subscribe_persistent(port: int, client_id: str, qos: int) -> None:
    sub, _ = await connect(port, client_id, clean=False)
    await sub.send(mb.gen_subscribe_one(1, "crash/#", qos))
    await sub.expect(mb.gen_suback(1, [qos]))
    await sub.send(mb.gen_disconnect())
    await sub.close()


def payload_of(packet: bytes) -> tuple[bytes, int, int]:
    """(payload, qos, packet id) of a PUBLISH from the broker (MQTT 3.1.1)."""
    assert packet[0] >> 4 == 3, packet
    qos = (packet[0] >> 1) & 3
    pos = 1
    while packet[pos] & 0x80:
        pos += 1
    pos += 1
    topic_len = int.from_bytes(packet[pos : pos + 2], "big")
    pos += 2 + topic_len
    pid = 0
    if qos:
        pid = int.from_bytes(packet[pos : pos + 2], "big")
        pos += 2
    return packet[pos:], qos, pid


async def drain_subscriber(port: int, client_id: str, expected: set[bytes]) -> list[bytes]:
    """Reconnect the persistent subscriber and collect payloads until every one of
    *expected* came, then whatever else follows at once (acknowledging as a client does;
    the broker may interleave PUBLISH and PUBREL)."""
    sub, present = await connect(port, client_id, clean=False)
    assert present, "the persistent session came back"
    got: list[bytes] = []
    missing = set(expected)
    while True:
        try:
            packet = await sub.read_packet(timeout=15 if missing else 0.5)
        except TimeoutError:
            assert not missing, f"{len(missing)} acknowledged messages never came"
            break
        kind = packet[0] >> 4
        if kind == 6:  # PUBREL
            await sub.send(mb.gen_pubcomp(int.from_bytes(packet[2:4], "big")))
            continue
        payload, qos, pid = payload_of(packet)
        got.append(payload)
        missing.discard(payload)
        if qos == 1:
            await sub.send(mb.gen_puback(pid))
        elif qos == 2:
            await sub.send(mb.gen_pubrec(pid))
    await sub.close()
    return got


async def test_sigkill_loses_no_acknowledged_qos1_message(serve: Serve) -> None:
    port = await serve.start()
    await subscribe_persistent(port, "crash-sub", 1)
    pub, _ = await connect(port, "crash-retain", clean=True)
    await pub.send(mb.gen_publish("crash/state", qos=1, mid=1, retain=True, payload=b"kept"))
    await pub.expect(mb.gen_puback(1))
    await pub.close()
    pub, _ = await connect(port, "crash-pub", clean=True)
    acked: set[bytes] = set()
    for i in range(1, MESSAGES + 1):
        payload = b"m%05d" % i
        await pub.send(mb.gen_publish("crash/t", qos=1, mid=(i % 65535) or 1, payload=payload))
        if i == KILL_AFTER:
            # Mid-stream: this PUBLISH is on the wire; the broker dies before or after
            # acknowledging it, and only acknowledged ones are promised.
            await serve.kill()
            break
        await pub.expect(mb.gen_puback((i % 65535) or 1))
        acked.add(payload)
    await pub.close()
    assert len(acked) == KILL_AFTER - 1

    port = await serve.start()
    got = await drain_subscriber(port, "crash-sub", acked | {b"kept"})
    assert acked <= set(got)
    sub, _ = await connect(port, "crash-check", clean=True)
    await sub.send(mb.gen_subscribe_one(1, "crash/state", 0))
    await sub.expect(mb.gen_suback(1, [0]))
    assert await sub.read_packet() == mb.gen_publish(
        "crash/state", qos=0, retain=True, payload=b"kept"
    )
    await sub.close()


async def test_sigkill_brings_no_qos2_duplicate(serve: Serve) -> None:
    port = await serve.start()
    await subscribe_persistent(port, "crash2-sub", 2)
    pub, _ = await connect(port, "crash2-pub", clean=False)
    total = MESSAGES // 4
    kill_at = total // 2
    # (packet id, stage): 1 = PUBLISH sent, 2 = PUBREC received and PUBREL sent.
    pending: tuple[int, int] | None = None
    for i in range(1, kill_at + 1):
        await pub.send(mb.gen_publish("crash/q2", qos=2, mid=i, payload=b"q%05d" % i))
        pending = (i, 1)
        if i == kill_at:
            break
        await pub.expect(mb.gen_pubrec(i))
        await pub.send(mb.gen_pubrel(i))
        pending = (i, 2)
        await pub.expect(mb.gen_pubcomp(i))
        pending = None
    await serve.kill()
    await pub.close()

    port = await serve.start()
    pub, present = await connect(port, "crash2-pub", clean=False)
    assert present
    assert pending is not None
    pid, _stage = pending
    # The exchange cut by the kill is finished as MQTT prescribes: the PUBLISH again
    # with DUP (we never saw its PUBREC), then PUBREL.
    await pub.send(mb.gen_publish("crash/q2", qos=2, mid=pid, payload=b"q%05d" % pid, dup=True))
    await pub.expect(mb.gen_pubrec(pid))
    await pub.send(mb.gen_pubrel(pid))
    await pub.expect(mb.gen_pubcomp(pid))
    for i in range(kill_at + 1, total + 1):
        await pub.send(mb.gen_publish("crash/q2", qos=2, mid=i, payload=b"q%05d" % i))
        await pub.expect(mb.gen_pubrec(i))
        await pub.send(mb.gen_pubrel(i))
        await pub.expect(mb.gen_pubcomp(i))
    await pub.close()
    expected = {b"q%05d" % i for i in range(1, total + 1)}
    got = await drain_subscriber(port, "crash2-sub", expected)
    assert sorted(got) == sorted(expected), "every message exactly once"
