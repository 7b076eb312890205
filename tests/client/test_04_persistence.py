"""Session persistence: the stores, and a killed process whose successor resumes its
unacknowledged messages (same packet ids, DUP set) and subscriptions."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.mqttbytes import gen_puback, gen_pubcomp, gen_pubrec, gen_suback
from tidemq.client import (
    Client,
    ConnectionClosedError,
    FileStore,
    MemoryStore,
    MessageRecord,
    Properties,
    SessionState,
    StorageError,
    SubscriptionRecord,
)

from .conftest import TideMQServer
from .fakebroker import FakeBroker
from .test_02_acks_and_flow import publish_fields
from .test_03_reconnect import FAST

WAIT = 10.0


@pytest.fixture
async def fake() -> AsyncIterator[FakeBroker]:
    broker = FakeBroker()
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


def sample_state() -> SessionState:
    return SessionState(
        client_id="dev-1",
        subscriptions=[SubscriptionRecord(topic_filter="a/#", qos=1, subscription_identifier=3)],
        inflight=[
            MessageRecord(
                topic="t",
                payload=b"\x00\xff",
                qos=2,
                packet_id=7,
                released=True,
                properties=Properties(
                    correlation_data=b"\x01", user_properties=(("k", "v"),), content_type="c"
                ),
            )
        ],
        last_connected=1.5,
    )


@pytest.mark.parametrize("kind", ["memory", "file"])
async def test_store_round_trip(tmp_path: Path, kind: str) -> None:
    store = MemoryStore() if kind == "memory" else FileStore(tmp_path / "sessions")
    assert await store.load("x/y") is None
    state = sample_state()
    await store.save("x/y", state)
    assert await store.load("x/y") == state
    await store.delete("x/y")
    assert await store.load("x/y") is None
    await store.delete("x/y")  # idempotent


async def test_file_store_writes_atomically(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.save("s", sample_state())
    first = store.path("s").stat().st_ino
    await store.save("s", SessionState(client_id="dev-1"))
    assert store.path("s").stat().st_ino != first  # replaced, never rewritten in place
    assert os.listdir(tmp_path) == ["s.json"]  # no temp file left
    data = json.loads(store.path("s").read_text())
    assert data["format"] == 1
    assert data["client_id"] == "dev-1"
    store.path("s").write_text("{not json")
    with pytest.raises(StorageError):
        await store.load("s")


async def test_memory_store_resumes_in_a_new_client(tidemq: TideMQServer) -> None:
    store = MemoryStore()
    async with Client(tidemq.url, client_id="m1", store=store, reconnect=FAST) as client:
        await client.subscribe("ms/#", qos=1)
        await tidemq.stop()
        task = asyncio.create_task(client.publish("ms/x", "kept", qos=1))
        await asyncio.sleep(0)
        await client.save_session()
    with pytest.raises(ConnectionClosedError):  # closed before the broker came back
        await task
    state = await store.load("m1")
    assert state is not None
    assert [m.payload for m in state.inflight] == [b"kept"]
    assert state.last_connected is not None
    assert state.last_disconnected is not None
    await tidemq.start()
    async with Client(tidemq.url, client_id="m1", store=store) as again:
        async with again.messages() as stream:
            await again.wait_connected(WAIT)
            # The restored subscription was renewed on the fresh broker, then the
            # message was re-sent, so it comes back to us.
            msg = await stream.get(WAIT)
        assert (msg.topic, msg.payload) == ("ms/x", b"kept")
        assert list(again.subscriptions) == ["ms/#"]
    state = await store.load("m1")
    assert state is not None
    assert state.inflight == []


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from tidemq.client import Client, FileStore

    async def main():
        client = Client(sys.argv[1], client_id="crashy", clean_start=False,
                        store=FileStore(sys.argv[2]))
        await client.connect()
        tasks = [asyncio.create_task(client.publish(f"t/{i}", f"m{i}", qos=1 + i // 2))
                 for i in range(4)]
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await client.save_session()
        sys.stdout.write("saved\\n")
        sys.stdout.flush()
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_killed_process_is_resumed_by_the_next(fake: FakeBroker, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        fake.url,
        str(tmp_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        peer, _ = await fake.accept(timeout=WAIT)
        sent = {}
        for _ in range(4):
            first, pid, topic = publish_fields(await peer.read_packet(WAIT))
            sent[topic] = (pid, (first >> 1) & 3)
        assert sorted(sent) == [b"t/0", b"t/1", b"t/2", b"t/3"]
        # t/2 gets as far as PUBREC (so only PUBREL remains); the rest get nothing.
        await peer.send(gen_pubrec(sent[b"t/2"][0], proto_ver=5))
        await peer.expect(bytes((0x62, 2)) + sent[b"t/2"][0].to_bytes(2, "big"))
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), WAIT) == b"saved\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    await peer.close()

    state = await FileStore(tmp_path).load("crashy")
    assert state is not None
    assert len(state.inflight) == 4

    fake.connack = {"session_present": True}
    async with Client(
        fake.url, client_id="crashy", clean_start=False, store=FileStore(tmp_path)
    ) as client:
        peer, _ = await fake.accept()
        resent = {}
        for _ in range(4):
            data = await peer.read_packet(WAIT)
            if data[0] == 0x62:
                resent[b"pubrel"] = int.from_bytes(data[2:4], "big")
                continue
            first, pid, topic = publish_fields(data)
            assert first & 0x08, "re-sent with DUP"
            resent[topic] = pid
        assert resent == {
            b"t/0": sent[b"t/0"][0],
            b"t/1": sent[b"t/1"][0],
            b"t/3": sent[b"t/3"][0],
            b"pubrel": sent[b"t/2"][0],
        }
        await peer.send(gen_puback(sent[b"t/0"][0], proto_ver=5))
        await peer.send(gen_puback(sent[b"t/1"][0], proto_ver=5))
        await peer.send(gen_pubcomp(sent[b"t/2"][0], proto_ver=5))
        await peer.send(gen_pubrec(sent[b"t/3"][0], proto_ver=5))
        await peer.expect(bytes((0x62, 2)) + sent[b"t/3"][0].to_bytes(2, "big"))
        await peer.send(gen_pubcomp(sent[b"t/3"][0], proto_ver=5))
        # A SUBACK after the acks: once subscribe returns, every ack was processed.
        task = asyncio.ensure_future(client.subscribe("sync"))
        request = await peer.read_packet(WAIT)
        await peer.send(gen_suback(int.from_bytes(request[2:4], "big"), [0], proto_ver=5))
        await asyncio.wait_for(task, WAIT)
        assert client.inflight_count == 0
    state = await FileStore(tmp_path).load("crashy")
    assert state is not None
    assert state.inflight == []


def redis_url() -> str | None:
    """The Redis that scripts/services started ($TIDEMQ_TEST_REDIS_URL or services.env)."""
    url = os.environ.get("TIDEMQ_TEST_REDIS_URL")
    if url:
        return url
    env_file = Path(os.environ.get("TIDEMQ_SERVICES_DIR", "/var/tmp/tidemq-services"))
    try:
        lines = (env_file / "services.env").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        key, _, value = line.partition("=")
        if key == "TIDEMQ_TEST_REDIS_URL" and value:
            return value
    return None


async def test_redis_store(tidemq: TideMQServer) -> None:
    from tidemq.client import RedisStore

    url = redis_url()
    if url is None:
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis: scripts/services start provides one")
        pytest.skip("no Redis (run scripts/services start)")
    store = RedisStore(url, prefix=f"tidemq-test:{os.getpid()}:{id(tidemq)}:", ttl=60)
    try:
        await store.save("s", sample_state())
        assert await store.load("s") == sample_state()
        async with Client(tidemq.url, client_id="r1", store=store) as client:
            await client.subscribe("rd/#", qos=1)
        state = await store.load("r1")
        assert state is not None
        assert [s.topic_filter for s in state.subscriptions] == ["rd/#"]
        await store.delete("s")
        await store.delete("r1")
        assert await store.load("s") is None
    finally:
        await store.close()
