"""The storage contract: every test runs against every backend (memory, sqlite, redis,
postgres, mysql), the server ones against real servers (see conftest.py).

What a backend must do is what ``tidemq.storage.api`` says: records round-trip exactly,
a batch is applied atomically and in order, ``delete_session`` cascades, ``purge_expired``
removes what has expired plus unreferenced messages, and (except memory) the data is
there again after a close and reopen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from tidemq.protocol import Properties, RetainHandling
from tidemq.storage.api import (
    EMPTY_PROPERTIES,
    IncomingQos2Record,
    InflightRecord,
    MessageRecord,
    QueuedRecord,
    RetainedRecord,
    SessionRecord,
    Storage,
    StorageError,
    SubscriptionRecord,
    WillRecord,
    WriteBatch,
    properties_to_bytes,
)

from .conftest import Target

NOW = 1_750_000_000.0
PROPS = properties_to_bytes(
    Properties(
        payload_format_indicator=1,
        content_type="application/json",
        response_topic="reply/to",
        correlation_data=b"\x00\x01corr",
        user_properties=(("k", "v"), ("k", "v2"), ("ключ", "значение")),
    )
)
WILL_PROPS = properties_to_bytes(Properties(will_delay_interval=30, content_type="text/plain"))
ALL_BYTES = bytes(range(256))
LONG = "x" * 5000  # longer than a PostgreSQL or InnoDB index entry may be


def message(message_id: int, **kw: object) -> MessageRecord:
    values: dict[str, object] = {
        "topic": f"t/{message_id}",
        "payload": b"payload %d" % message_id,
        "qos": 1,
        "retain": False,
        "created_at": NOW,
    }
    values.update(kw)
    return MessageRecord(message_id=message_id, **values)  # type: ignore[arg-type]


def session(client_id: str, **kw: object) -> SessionRecord:
    values: dict[str, object] = {"expiry_interval": 3600, "protocol_version": 5}
    values.update(kw)
    return SessionRecord(client_id=client_id, **values)  # type: ignore[arg-type]


async def apply(storage: Storage, *fill: object) -> None:
    """Apply one batch built by the callables in *fill* (each gets the batch)."""
    batch = WriteBatch()
    for f in fill:
        f(batch)  # type: ignore[operator]
    await storage.apply(batch)


@dataclass
class Snapshot:
    sessions: list[SessionRecord]
    subscriptions: list[SubscriptionRecord]
    queue: list[QueuedRecord]
    inflight: list[InflightRecord]
    incoming: list[IncomingQos2Record]
    retained: list[RetainedRecord]
    messages: dict[int, MessageRecord]


async def snapshot(storage: Storage, message_ids: range = range(1, 50)) -> Snapshot:
    return Snapshot(
        await storage.load_sessions(),
        await storage.load_subscriptions(),
        await storage.load_queue(),
        await storage.load_inflight(),
        await storage.load_incoming_qos2(),
        await storage.load_retained(),
        await storage.get_messages(message_ids),
    )


def fill_everything(b: WriteBatch) -> None:
    """One of every record type, for two clients."""
    b.put_session(
        session(
            "alice",
            username="alice@example",
            disconnected_at=NOW - 5,
            expires_at=NOW + 3595,
            will=WillRecord(
                topic="wills/alice",
                payload=ALL_BYTES,
                qos=2,
                retain=True,
                properties=WILL_PROPS,
                delay=30,
            ),
        )
    )
    b.put_session(session("bob", expiry_interval=0xFFFF_FFFF, protocol_version=4))
    b.put_subscription(
        SubscriptionRecord(
            client_id="alice",
            topic_filter="a/+/c",
            qos=2,
            no_local=True,
            retain_as_published=True,
            retain_handling=RetainHandling.DO_NOT_SEND,
            subscription_id=268_435_455,
        )
    )
    b.put_subscription(
        SubscriptionRecord(client_id="alice", topic_filter="$share/g1/s/#", qos=1, share_group="g1")
    )
    b.put_subscription(SubscriptionRecord(client_id="bob", topic_filter="#", qos=0))
    b.put_message(message(1, payload=ALL_BYTES, properties=PROPS, sender="carol", qos=2))
    b.put_message(message(2, retain=True, expires_at=NOW + 60, payload=b""))
    b.enqueue(QueuedRecord(client_id="alice", seq=1, message_id=1, qos=2, sub_ids=(1, 268_435_455)))
    b.enqueue(QueuedRecord(client_id="alice", seq=2, message_id=2, qos=1, retain=True))
    b.put_inflight(
        InflightRecord(client_id="bob", packet_id=65535, message_id=1, qos=1, sub_ids=(7,), seq=3)
    )
    b.put_incoming_qos2(IncomingQos2Record(client_id="alice", packet_id=1, received_at=NOW))
    b.set_retained(
        RetainedRecord(
            topic="r/1", payload=ALL_BYTES, qos=1, created_at=NOW, properties=PROPS, sender="bob"
        )
    )


# --- lifecycle -----------------------------------------------------------------------------


async def test_calls_before_open_or_after_close_raise(target: Target) -> None:
    storage = target.new()
    with pytest.raises(StorageError):
        await storage.load_sessions()
    await storage.open()
    await storage.open()  # idempotent
    assert await storage.load_sessions() == []
    await storage.close()
    await storage.close()  # idempotent
    with pytest.raises(StorageError):
        await apply(storage, lambda b: b.put_session(session("x")))


async def test_an_empty_store_loads_empty(storage: Storage) -> None:
    assert await snapshot(storage) == Snapshot([], [], [], [], [], [], {})
    assert await storage.max_message_id() == 0
    assert await storage.get_message(1) is None
    assert await storage.get_messages([]) == {}
    await storage.apply(WriteBatch())  # an empty batch is fine
    assert await storage.purge_expired(NOW) == 0


# --- round trips ---------------------------------------------------------------------------


async def test_sessions_round_trip(storage: Storage) -> None:
    alice = session(
        "alice",
        username="ä",
        disconnected_at=NOW,
        expires_at=NOW + 1.5,
        will=WillRecord(topic="w", payload=ALL_BYTES, qos=1, retain=False, properties=WILL_PROPS),
    )
    plain = session("bob", expiry_interval=0xFFFF_FFFF, protocol_version=3)
    long = session(LONG, username=LONG)
    upper = session("Zed")
    await apply(storage, lambda b: b.put_session(alice), lambda b: b.put_session(plain))
    await apply(storage, lambda b: b.put_session(long), lambda b: b.put_session(upper))
    # By client id in code-point order ("Zed" < "alice"), whatever the database's collation.
    assert await storage.load_sessions() == [upper, alice, plain, long]
    # A put replaces the whole record: the will and the disconnect time are gone.
    back = session("alice", username="ä")
    await apply(storage, lambda b: b.put_session(back), lambda b: b.delete_session(LONG))
    assert await storage.load_sessions() == [upper, back, plain]
    await apply(storage, lambda b: b.delete_session("nobody"))  # a missing key is no error


async def test_subscriptions_round_trip(storage: Storage) -> None:
    await apply(storage, fill_everything)
    subs = await storage.load_subscriptions()
    assert [(s.client_id, s.topic_filter) for s in subs] == [
        ("alice", "$share/g1/s/#"),
        ("alice", "a/+/c"),
        ("bob", "#"),
    ]
    full = subs[1]
    assert full == SubscriptionRecord(
        client_id="alice",
        topic_filter="a/+/c",
        qos=2,
        no_local=True,
        retain_as_published=True,
        retain_handling=RetainHandling.DO_NOT_SEND,
        subscription_id=268_435_455,
    )
    assert subs[0].share_group == "g1"
    assert subs[0].subscription_id is None
    assert await storage.load_subscriptions("bob") == [subs[2]]
    assert await storage.load_subscriptions("nobody") == []
    changed = SubscriptionRecord(client_id="alice", topic_filter="a/+/c", qos=0)
    long = SubscriptionRecord(client_id=LONG, topic_filter=LONG + "/#", qos=1)
    await apply(
        storage,
        lambda b: b.put_subscription(changed),
        lambda b: b.delete_subscription("alice", "$share/g1/s/#"),
        lambda b: b.put_subscription(long),
    )
    assert await storage.load_subscriptions("alice") == [changed]
    assert await storage.load_subscriptions(LONG) == [long]


async def test_messages_round_trip(storage: Storage) -> None:
    big = message(2**62, topic=LONG, payload=ALL_BYTES * 4096, expires_at=NOW + 0.25)
    full = message(7, payload=ALL_BYTES, properties=PROPS, sender="ünïcode", qos=2, retain=True)
    empty = message(8, payload=b"", properties=EMPTY_PROPERTIES)
    await apply(
        storage,
        lambda b: b.put_message(big),
        lambda b: b.put_message(full),
        lambda b: b.put_message(empty),
    )
    assert await storage.get_messages([7, 8, 2**62, 99]) == {7: full, 8: empty, 2**62: big}
    assert await storage.get_message(7) == full
    assert await storage.max_message_id() == 2**62
    await apply(storage, lambda b: b.delete_message(2**62), lambda b: b.delete_message(12345))
    assert await storage.get_message(2**62) is None
    assert await storage.max_message_id() == 8
    many = range(1000, 1700)  # more ids than one SQLite statement may bind
    await apply(storage, *(lambda b, i=i: b.put_message(message(i)) for i in many))
    assert sorted(await storage.get_messages(list(many))) == list(many)


async def test_queue_round_trip_in_seq_order(storage: Storage) -> None:
    entries = [
        QueuedRecord(client_id="c", seq=seq, message_id=seq % 3, qos=seq % 3, sub_ids=ids)
        for seq, ids in [(10, ()), (2, (1,)), (7, (3, 2, 1)), (2**40, (268_435_455,))]
    ]
    other = QueuedRecord(client_id="b", seq=1, message_id=1, qos=1, retain=True)
    await apply(storage, *(lambda b, e=e: b.enqueue(e) for e in [*entries, other]))
    ordered = sorted(entries, key=lambda e: e.seq)
    assert await storage.load_queue("c") == ordered
    assert await storage.load_queue() == [other, *ordered]
    await apply(storage, lambda b: b.dequeue("c", 7), lambda b: b.dequeue("c", 999))
    assert [e.seq for e in await storage.load_queue("c")] == [2, 10, 2**40]


async def test_inflight_round_trip(storage: Storage) -> None:
    first = InflightRecord(client_id="c", packet_id=9, message_id=1, qos=2, seq=1)
    second = InflightRecord(
        client_id="c", packet_id=1, message_id=2, qos=1, retain=True, sub_ids=(4, 5), seq=2
    )
    await apply(storage, lambda b: b.put_inflight(second), lambda b: b.put_inflight(first))
    assert await storage.load_inflight("c") == [first, second]  # by send order, not packet id
    released = InflightRecord(client_id="c", packet_id=9, message_id=1, qos=2, released=True, seq=1)
    await apply(storage, lambda b: b.put_inflight(released))
    assert await storage.load_inflight() == [released, second]
    await apply(storage, lambda b: b.delete_inflight("c", 1))
    assert await storage.load_inflight("c") == [released]


async def test_incoming_qos2_round_trip(storage: Storage) -> None:
    records = [
        IncomingQos2Record(client_id=cid, packet_id=pid, received_at=NOW + pid / 8)
        for cid, pid in [("b", 65535), ("a", 2), ("a", 1)]
    ]
    await apply(storage, *(lambda b, r=r: b.put_incoming_qos2(r) for r in records))
    assert await storage.load_incoming_qos2() == sorted(
        records, key=lambda r: (r.client_id, r.packet_id)
    )
    await apply(storage, lambda b: b.delete_incoming_qos2("a", 2))
    assert await storage.load_incoming_qos2("a") == [records[2]]


async def test_retained_round_trip(storage: Storage) -> None:
    first = RetainedRecord(topic="a/b", payload=b"1", qos=0, created_at=NOW)
    full = RetainedRecord(
        topic=LONG,
        payload=ALL_BYTES,
        qos=2,
        created_at=NOW,
        properties=PROPS,
        sender="s",
        expires_at=NOW + 10,
    )
    await apply(storage, lambda b: b.set_retained(first), lambda b: b.set_retained(full))
    assert await storage.load_retained() == [first, full]  # by topic, "a/b" < "xxx…"
    replaced = RetainedRecord(topic="a/b", payload=b"2", qos=1, created_at=NOW + 1)
    await apply(storage, lambda b: b.set_retained(replaced), lambda b: b.delete_retained(LONG))
    assert await storage.load_retained() == [replaced]


# --- batches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NotAnOperation:
    """Stands for an operation the backend cannot apply, midway through a batch."""

    client_id: str = "x"


async def test_a_batch_is_atomic(storage: Storage) -> None:
    await apply(storage, fill_everything)
    before = await snapshot(storage)
    batch = WriteBatch()
    batch.put_session(session("new"))
    batch.delete_session("alice")
    batch.put_message(message(40))
    batch.enqueue(QueuedRecord(client_id="new", seq=1, message_id=40, qos=1))
    batch.set_retained(RetainedRecord(topic="r/2", payload=b"x", qos=0, created_at=NOW))
    batch.ops.append(NotAnOperation())  # type: ignore[arg-type]
    batch.delete_retained("r/1")
    with pytest.raises(StorageError):
        await storage.apply(batch)
    assert await snapshot(storage) == before
    # The storage is still usable after the failed batch.
    await apply(storage, lambda b: b.put_session(session("after")))
    assert "after" in [s.client_id for s in await storage.load_sessions()]


async def test_a_batch_applies_in_order(storage: Storage) -> None:
    batch = WriteBatch()
    batch.put_session(session("gone"))
    batch.delete_session("gone")
    batch.delete_session("kept")
    batch.put_session(session("kept"))
    batch.enqueue(QueuedRecord(client_id="kept", seq=1, message_id=1, qos=1))
    batch.dequeue("kept", 1)
    batch.enqueue(QueuedRecord(client_id="kept", seq=1, message_id=2, qos=2))
    batch.set_retained(RetainedRecord(topic="t", payload=b"1", qos=0, created_at=NOW))
    batch.set_retained(RetainedRecord(topic="t", payload=b"2", qos=0, created_at=NOW))
    assert len(batch) == 9
    await storage.apply(batch)
    assert [s.client_id for s in await storage.load_sessions()] == ["kept"]
    assert [(q.message_id, q.qos) for q in await storage.load_queue("kept")] == [(2, 2)]
    assert [r.payload for r in await storage.load_retained()] == [b"2"]


async def test_delete_session_cascades(storage: Storage) -> None:
    await apply(storage, fill_everything)
    extra = InflightRecord(client_id="alice", packet_id=3, message_id=2, qos=1)
    await apply(storage, lambda b: b.put_inflight(extra))
    await apply(storage, lambda b: b.delete_session("alice"))
    after = await snapshot(storage)
    assert [s.client_id for s in after.sessions] == ["bob"]
    assert {s.client_id for s in after.subscriptions} == {"bob"}
    assert after.queue == []
    assert [(e.client_id, e.packet_id) for e in after.inflight] == [("bob", 65535)]
    assert after.incoming == []
    # Messages and retained messages are not the session's: they stay (until purged).
    assert sorted(after.messages) == [1, 2]
    assert [r.topic for r in after.retained] == ["r/1"]


async def test_purge_expired(storage: Storage) -> None:
    await apply(storage, fill_everything)
    await apply(
        storage,
        lambda b: b.put_session(session("late", expires_at=NOW + 100)),
        lambda b: b.put_session(session("soon", expires_at=NOW + 10)),
        lambda b: b.put_subscription(SubscriptionRecord(client_id="soon", topic_filter="x", qos=1)),
        lambda b: b.put_message(message(3)),
        lambda b: b.put_message(message(4, expires_at=NOW + 10)),
        lambda b: b.put_message(message(5, expires_at=NOW + 10)),
        lambda b: b.put_message(message(6)),  # referenced by nothing
        lambda b: b.enqueue(QueuedRecord(client_id="soon", seq=1, message_id=3, qos=1)),
        lambda b: b.enqueue(QueuedRecord(client_id="late", seq=1, message_id=4, qos=1)),
        lambda b: b.enqueue(QueuedRecord(client_id="late", seq=2, message_id=3, qos=1)),
        lambda b: b.put_inflight(
            InflightRecord(client_id="late", packet_id=1, message_id=5, qos=1)
        ),
        lambda b: b.set_retained(
            RetainedRecord(topic="r/old", payload=b"x", qos=0, created_at=NOW, expires_at=NOW + 10)
        ),
        lambda b: b.set_retained(
            RetainedRecord(topic="r/new", payload=b"x", qos=0, created_at=NOW, expires_at=NOW + 99)
        ),
    )
    # Before anything expires, only the unreferenced message 6 goes.
    assert await storage.purge_expired(NOW) == 1
    assert await storage.get_message(6) is None
    # At NOW + 10: session "soon" (and its subscription and queue), retained "r/old", and
    # message 4 (expired, so its queue entry goes) expire. Message 5 has expired too but is
    # in flight, so it stays; message 3 is still queued for "late".
    assert await storage.purge_expired(NOW + 10) == 3
    after = await snapshot(storage)
    assert [s.client_id for s in after.sessions] == ["alice", "bob", "late"]
    assert "soon" not in {s.client_id for s in after.subscriptions}
    assert [(q.client_id, q.message_id) for q in after.queue] == [
        ("alice", 1),
        ("alice", 2),
        ("late", 3),
    ]
    assert sorted(after.messages) == [1, 2, 3, 5]
    assert sorted(r.topic for r in after.retained) == ["r/1", "r/new"]
    # Nothing more to do at the same time.
    assert await storage.purge_expired(NOW + 10) == 0
    # Alice's session expires at NOW + 3595, message 2 at NOW + 60; "late" at NOW + 100.
    # Message 1 stays: bob has it in flight. Message 3 goes with late's queue, 5 with its
    # in-flight entry.
    assert await storage.purge_expired(NOW + 100_000) == 6  # alice, late, r/new, 2, 3, 5
    after = await snapshot(storage)
    assert [s.client_id for s in after.sessions] == ["bob"]
    assert sorted(after.messages) == [1]
    assert after.queue == []
    assert after.incoming == []
    assert [r.topic for r in after.retained] == ["r/1"]


# --- restart -------------------------------------------------------------------------------


async def test_data_survives_a_restart(target: Target) -> None:
    if not target.persistent:
        pytest.skip("the memory backend keeps nothing across a restart, by design")
    first = await target.open()
    await apply(first, fill_everything)
    before = await snapshot(first)
    assert before.sessions
    assert before.messages
    await first.close()
    second = await target.open()
    assert await snapshot(second) == before
    assert await second.max_message_id() == 2
    # And the reopened store takes writes (schema present, no migration rerun).
    await apply(second, lambda b: b.put_session(session("zed")))
    await second.close()
    third = await target.open()
    assert [s.client_id for s in await third.load_sessions()] == ["alice", "bob", "zed"]


async def test_time_values_are_exact(storage: Storage) -> None:
    """Wall-clock floats survive to the microsecond and beyond (doubles everywhere)."""
    now = time.time()
    record = session("t", disconnected_at=now, expires_at=now + 1e-6)
    await apply(storage, lambda b: b.put_session(record))
    assert await storage.load_sessions() == [record]
