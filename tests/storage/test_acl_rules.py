"""The storage contract for built-in ACL rules (schema version 3), on every backend: ids
given in order and never reused, the per-username / per-client-id / "all" lists, deletes,
a restart, the migration of a version-2 store, and SQLite's shared (``tidemq ctl``) mode."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tidemq.storage import create_storage
from tidemq.storage.api import AclRuleRecord, Storage, StorageError
from tidemq.storage.sqlite import SQLiteStorage

from .conftest import Target
from .test_contract import LONG, NOW, apply, fill_everything, snapshot
from .test_users_bans import ban, user


def rule(who_kind: str, who: str, topic: str, **kw: Any) -> AclRuleRecord:
    values: dict[str, Any] = {"permission": "allow", "action": "all", "created_at": NOW}
    values.update(kw)
    return AclRuleRecord(who_kind=who_kind, who=who, topic=topic, **values)  # type: ignore[arg-type]


def stripped(rules: list[AclRuleRecord]) -> list[tuple[str, str, str]]:
    return [(r.who_kind, r.who, r.topic) for r in rules]


async def test_acl_rules_round_trip(storage: Storage) -> None:
    assert await storage.list_acl_rules() == []
    assert await storage.list_acl_rules("username", "alice") == []
    assert await storage.list_acl_rules("all") == []
    wanted = [
        rule("username", "alice", "a/${username}/#", permission="deny", action="publish"),
        rule("all", "", "eq #", permission="deny", action="subscribe", qos=(0, 1)),
        rule("clientid", "alice", "c/#", retain=True, action="publish", qos=(2,)),
        rule("username", "alice", "a/#", retain=False, created_at=NOW + 0.5),
        rule("username", "Alice", "A/#"),  # usernames are case-sensitive
        rule("username", LONG, "long/#"),
        rule("clientid", "ä ' ; DROP TABLE tidemq_acl; --", "odd/+"),
        rule("all", "", "public/#"),
    ]
    stored = [await storage.add_acl_rule(r) for r in wanted]
    ids = [r.rule_id for r in stored]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(i > 0 for i in ids)
    # The store gives the id and keeps everything else as given.
    for given, kept in zip(wanted, stored, strict=True):
        assert kept == AclRuleRecord(**{**_fields(given), "rule_id": kept.rule_id})
    # Every rule in the order added, whoever it is for.
    assert await storage.list_acl_rules() == stored
    alice = await storage.list_acl_rules("username", "alice")
    assert alice == [stored[0], stored[3]]
    assert await storage.list_acl_rules("username", "Alice") == [stored[4]]
    assert await storage.list_acl_rules("username", LONG) == [stored[5]]
    # The same name as a client id is another list.
    assert await storage.list_acl_rules("clientid", "alice") == [stored[2]]
    assert await storage.list_acl_rules("clientid", stored[6].who) == [stored[6]]
    # "all" ignores who.
    assert await storage.list_acl_rules("all") == [stored[1], stored[7]]
    assert await storage.list_acl_rules("all", "whatever") == [stored[1], stored[7]]
    assert await storage.list_acl_rules("username", "bob") == []
    # Conditions survive the trip.
    assert stored[1].qos == (0, 1)
    assert (stored[2].retain, stored[2].qos) == (True, (2,))
    assert (stored[3].retain, stored[3].qos) == (False, ())
    assert stored[7].retain is None


def _fields(record: AclRuleRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in AclRuleRecord.__dataclass_fields__}


async def test_acl_rules_delete_and_ids_are_never_reused(storage: Storage) -> None:
    first = await storage.add_acl_rule(rule("username", "alice", "a/#"))
    second = await storage.add_acl_rule(rule("username", "alice", "b/#"))
    third = await storage.add_acl_rule(rule("all", "", "c/#"))
    assert await storage.delete_acl_rule(second.rule_id) is True
    assert await storage.delete_acl_rule(second.rule_id) is False
    assert await storage.delete_acl_rule(10**12) is False
    assert await storage.list_acl_rules("username", "alice") == [first]
    assert await storage.list_acl_rules() == [first, third]
    # Deleting the newest rule does not let its id be given again.
    assert await storage.delete_acl_rule(third.rule_id) is True
    fourth = await storage.add_acl_rule(rule("username", "alice", "b/#"))
    assert fourth.rule_id > third.rule_id
    # The same rule twice is two rules, as EMQX stores them.
    fifth = await storage.add_acl_rule(rule("username", "alice", "b/#"))
    assert fifth.rule_id > fourth.rule_id
    assert stripped(await storage.list_acl_rules("username", "alice")) == [
        ("username", "alice", "a/#"),
        ("username", "alice", "b/#"),
        ("username", "alice", "b/#"),
    ]
    assert await storage.list_acl_rules("all") == []


async def test_acl_rules_are_apart_from_sessions_users_and_purges(storage: Storage) -> None:
    kept = await storage.add_acl_rule(rule("clientid", "alice", "x/#"))
    await storage.put_user(user("alice"))
    await apply(storage, fill_everything)
    await apply(storage, lambda b: b.delete_session("alice"))
    await storage.delete_user("alice")
    await storage.put_ban(ban("clientid", "alice", until=NOW))
    assert await storage.purge_expired(NOW + 10**9) > 0
    assert await storage.list_acl_rules("clientid", "alice") == [kept]


async def test_acl_rules_survive_a_restart(target: Target) -> None:
    if not target.persistent:
        pytest.skip("the memory backend keeps nothing across a restart, by design")
    first = await target.open()
    a = await first.add_acl_rule(rule("username", "alice", "a/#", qos=(1,), retain=True))
    gone = await first.add_acl_rule(rule("all", "", "b/#"))
    await first.delete_acl_rule(gone.rule_id)
    await first.close()
    second = await target.open()
    assert await second.list_acl_rules() == [a]
    # Ids keep growing across the restart, past the deleted one.
    b = await second.add_acl_rule(rule("all", "", "b/#"))
    assert b.rule_id > gone.rule_id


async def test_acl_calls_before_open_raise(target: Target) -> None:
    storage = target.new()
    with pytest.raises(StorageError):
        await storage.list_acl_rules()
    with pytest.raises(StorageError):
        await storage.add_acl_rule(rule("all", "", "#"))
    with pytest.raises(StorageError):
        await storage.delete_acl_rule(1)


# --- migration from schema version 2 ------------------------------------------------------


async def _downgrade_to_v2(backend: str, storage: Any) -> None:
    """Make an opened store look like one written by a TideMQ that knew only version 2."""
    if backend == "sqlite":

        def drop() -> None:
            conn = storage._conn
            conn.execute("DROP TABLE tidemq_acl")
            conn.execute("DELETE FROM tidemq_schema WHERE version > 2")

        await storage._run(drop)
    elif backend == "postgres":

        async def drop_pg(conn: Any) -> None:
            await conn.execute("DROP TABLE tidemq_acl")
            await conn.execute("DELETE FROM tidemq_schema WHERE version > 2")

        await storage._call(drop_pg)
    elif backend == "mysql":

        async def drop_my(conn: Any) -> None:
            async with conn.cursor() as cur:
                await cur.execute("DROP TABLE tidemq_acl")
                await cur.execute("DELETE FROM tidemq_schema WHERE version > 2")

        await storage._call(drop_my)
    elif backend == "redis":

        async def drop_redis(client: Any) -> None:
            await client.hset(storage.prefix + "meta", "schema", 2)

        await storage._call(drop_redis)


async def test_a_version_2_store_is_migrated_and_keeps_its_data(target: Target) -> None:
    if not target.persistent:
        pytest.skip("the memory backend has no schema")
    first = await target.open()
    await apply(first, fill_everything)
    await first.put_user(user("alice"))
    await first.put_ban(ban("username", "bob"))
    before = await snapshot(first)
    await _downgrade_to_v2(target.backend, first)
    await first.close()
    second = await target.open()
    assert await snapshot(second) == before
    assert await second.list_users() == [user("alice")]
    assert await second.list_bans() == [ban("username", "bob")]
    added = await second.add_acl_rule(rule("username", "alice", "a/#"))
    await second.close()
    third = await target.open()  # no migration runs twice
    assert await third.list_acl_rules() == [added]


# --- SQLite: tidemq ctl beside a running broker -------------------------------------------


async def test_sqlite_shared_acl_rules_beside_the_broker(tmp_path: Path) -> None:
    broker = SQLiteStorage(tmp_path)
    await broker.open()
    try:
        admin = create_storage("sqlite", "", str(tmp_path), "sync", shared=True)
        async with admin:
            added = await admin.add_acl_rule(rule("all", "", "x/#", permission="deny"))
            assert await broker.list_acl_rules("all") == [added]
            assert await broker.delete_acl_rule(added.rule_id) is True
            assert await admin.list_acl_rules() == []
    finally:
        await broker.close()
