"""Built-in ACL rules (``acl.sources = ["builtin"]``): EMQX's order (username rules, client-id
rules, rules for all; first match decides), the rule engine's placeholders and conditions,
the list cache that bounds how long a ``tidemq ctl acl`` change takes, storage outages, and
paho 5.0 / 3.1.1 clients against a broker on SQLite whose rules ``tidemq ctl acl`` writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.auth.hookup import Clients
from tests.auth.support import capture_puback
from tests.helpers.paho import V5, V311
from tidemq.app import Broker, open_storage_from_config
from tidemq.auth.api import AclRequest, Action, ClientIdentity, Verdict
from tidemq.auth.builtin import BuiltinAuthorizer
from tidemq.auth.plugin import AUTHORIZERS, AuthPlugin
from tidemq.cli import main
from tidemq.config import Config
from tidemq.storage.api import AclRuleRecord, StorageUnavailable
from tidemq.storage.memory import MemoryStorage

ALICE = ClientIdentity(client_id="dev1", username="alice", peer_host="127.0.0.1")
ANON = ClientIdentity(client_id="dev2", username=None, peer_host="127.0.0.1")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0
        self.down = False

    async def list_acl_rules(self, who_kind: Any = None, who: str = "") -> list[AclRuleRecord]:
        self.reads += 1
        if self.down:
            raise StorageUnavailable("test: server down")
        return await super().list_acl_rules(who_kind, who)


async def add(
    storage: MemoryStorage,
    who_kind: str,
    who: str,
    permission: str,
    action: str,
    topic: str,
    **kw: Any,
) -> AclRuleRecord:
    record = AclRuleRecord(
        who_kind=who_kind,  # type: ignore[arg-type]
        who=who,
        permission=permission,  # type: ignore[arg-type]
        action=action,  # type: ignore[arg-type]
        topic=topic,
        created_at=1.0,
        **kw,
    )
    return await storage.add_acl_rule(record)


def ask(
    client: ClientIdentity, action: Action, topic: str, qos: int = 0, retain: bool = False
) -> AclRequest:
    return AclRequest(client=client, action=action, topic=topic, qos=qos, retain=retain)


@pytest.fixture
async def storage() -> AsyncIterator[CountingStorage]:
    storage = CountingStorage()
    await storage.open()
    yield storage
    await storage.close()


async def test_username_then_clientid_then_all_first_match_wins(storage: CountingStorage) -> None:
    # Added in the opposite order of how they are tried: the lists decide the order.
    await add(storage, "all", "", "allow", "all", "#")
    await add(storage, "clientid", "dev1", "allow", "publish", "t/#")
    await add(storage, "clientid", "dev1", "deny", "publish", "c/#")
    await add(storage, "username", "alice", "deny", "publish", "t/a")
    await add(storage, "username", "alice", "allow", "publish", "t/a")  # after the deny
    authz = BuiltinAuthorizer(storage)
    pub = Action.PUBLISH
    assert await authz.check_async(ask(ALICE, pub, "t/a")) is Verdict.DENY  # username first
    assert await authz.check_async(ask(ALICE, pub, "t/b")) is Verdict.ALLOW  # client id
    assert await authz.check_async(ask(ALICE, pub, "c/x")) is Verdict.DENY  # before "all"
    assert await authz.check_async(ask(ALICE, pub, "z")) is Verdict.ALLOW  # "all"
    # Another client: only the "all" rules are its.
    other = ClientIdentity(client_id="dev9", username="bob", peer_host=None)
    assert await authz.check_async(ask(other, pub, "c/x")) is Verdict.ALLOW
    # No username: no username rules, the client-id ones still apply.
    nameless = ClientIdentity(client_id="dev1", username=None, peer_host=None)
    assert await authz.check_async(ask(nameless, pub, "t/a")) is Verdict.ALLOW
    assert await authz.check_async(ask(nameless, pub, "c/x")) is Verdict.DENY
    # The same name as a username and as a client id are different lists.
    alice_as_id = ClientIdentity(client_id="alice", username=None, peer_host=None)
    assert await authz.check_async(ask(alice_as_id, pub, "t/a")) is Verdict.ALLOW


async def test_placeholders_eq_and_conditions(storage: CountingStorage) -> None:
    await add(storage, "all", "", "deny", "subscribe", "eq #")
    await add(storage, "all", "", "allow", "all", "devices/${clientid}/#")
    await add(storage, "all", "", "allow", "subscribe", "users/${username}/+")
    await add(storage, "username", "alice", "allow", "subscribe", "sensors/#", qos=(0, 1))
    await add(storage, "clientid", "dev1", "deny", "publish", "devices/dev1/r", retain=True)
    authz = BuiltinAuthorizer(storage)
    sub, pub = Action.SUBSCRIBE, Action.PUBLISH

    async def verdict(client: ClientIdentity, *args: Any) -> Verdict:
        return await authz.check_async(ask(client, *args))

    assert await verdict(ALICE, sub, "#") is Verdict.DENY  # eq: the filter itself
    assert await verdict(ALICE, sub, "devices/dev1/#", 2) is Verdict.ALLOW
    assert await verdict(ALICE, sub, "devices/dev2/#") is Verdict.IGNORE  # another's id
    assert await verdict(ALICE, sub, "users/alice/inbox") is Verdict.ALLOW
    assert await verdict(ANON, sub, "users//inbox") is Verdict.IGNORE  # no username: no match
    assert await verdict(ALICE, sub, "sensors/#", 1) is Verdict.ALLOW
    assert await verdict(ALICE, sub, "sensors/#", 2) is Verdict.IGNORE  # QoS condition
    assert await verdict(ALICE, sub, "sensors") is Verdict.ALLOW  # covered by sensors/#
    assert await verdict(ALICE, pub, "devices/dev1/r", 1, True) is Verdict.DENY
    assert await verdict(ALICE, pub, "devices/dev1/r", 1, False) is Verdict.ALLOW
    # Nothing matches: this source does not decide.
    assert await verdict(ANON, pub, "elsewhere") is Verdict.IGNORE
    # A client id holding a wildcard cannot widen a placeholder rule.
    sneaky = ClientIdentity(client_id="#", username=None, peer_host=None)
    assert await verdict(sneaky, sub, "devices/x/#") is Verdict.IGNORE


async def test_the_cache_bounds_reads_and_expires(storage: CountingStorage) -> None:
    clock = Clock()
    rule = await add(storage, "username", "alice", "deny", "publish", "a/#")
    authz = BuiltinAuthorizer(storage, cache_ttl=5.0, clock=clock)
    await authz.prepare(ALICE)  # at CONNECT: username, client id and "all" lists
    assert storage.reads == 3
    assert authz.check(ask(ALICE, Action.PUBLISH, "a/b")) is Verdict.DENY
    for _ in range(3):
        assert await authz.check_async(ask(ALICE, Action.PUBLISH, "a/b")) is Verdict.DENY
    assert storage.reads == 3
    # The "all" list is shared: another client reads only its own two.
    await authz.prepare(ANON)
    assert storage.reads == 4  # ANON has no username: its client id only
    # tidemq ctl, from another process: the rule is deleted.
    await storage.delete_acl_rule(rule.rule_id)
    clock.now += 4.9
    assert await authz.check_async(ask(ALICE, Action.PUBLISH, "a/b")) is Verdict.DENY
    clock.now += 0.1  # cache_ttl seconds after the read: the change is seen
    assert await authz.check_async(ask(ALICE, Action.PUBLISH, "a/b")) is Verdict.IGNORE
    # No cache at all: every answer reads storage.
    uncached = BuiltinAuthorizer(storage, cache_ttl=0)
    before = storage.reads
    await uncached.check_async(ask(ALICE, Action.PUBLISH, "a/b"))
    await uncached.check_async(ask(ALICE, Action.PUBLISH, "a/b"))
    assert storage.reads == before + 6
    assert uncached.check(ask(ALICE, Action.PUBLISH, "a/b")) is Verdict.IGNORE  # never cached


async def test_cache_size_evicts_the_least_recent(storage: CountingStorage) -> None:
    authz = BuiltinAuthorizer(storage, cache_size=3)
    await authz.prepare(ALICE)  # 3 lists
    await authz.prepare(ANON)  # dev2 evicts the oldest (alice)
    before = storage.reads
    await authz.prepare(ALICE)
    assert storage.reads == before + 2  # alice again, and dev1 that alice evicted


async def test_concurrent_reads_of_one_list_are_shared(storage: CountingStorage) -> None:
    await add(storage, "all", "", "allow", "all", "#")
    authz = BuiltinAuthorizer(storage)
    clients = [ClientIdentity(client_id=f"c{i}", username=None, peer_host=None) for i in range(5)]
    await asyncio.gather(*(authz.prepare(c) for c in clients))
    assert storage.reads == 5 + 1  # one per client id, one for "all"


async def test_storage_down_keeps_the_last_rules_or_ignores(storage: CountingStorage) -> None:
    clock = Clock()
    await add(storage, "all", "", "deny", "publish", "x")
    authz = BuiltinAuthorizer(storage, cache_ttl=1.0, clock=clock)
    await authz.prepare(ALICE)
    storage.down = True
    clock.now += 10
    assert await authz.check_async(ask(ALICE, Action.PUBLISH, "x")) is Verdict.DENY  # stale
    # A client whose lists were never read: no answer from this source.
    await authz.prepare(ANON)  # logged, not raised
    assert await authz.check_async(ask(ANON, Action.PUBLISH, "x")) is Verdict.IGNORE
    storage.down = False
    assert await authz.check_async(ask(ANON, Action.PUBLISH, "x")) is Verdict.DENY


async def test_a_bad_stored_rule_is_skipped(storage: CountingStorage) -> None:
    await add(storage, "all", "", "deny", "publish", "a/#/b")  # not written by tidemq ctl
    await add(storage, "all", "", "deny", "subscribe", "r", retain=True)
    await add(storage, "all", "", "deny", "publish", "a/#")
    authz = BuiltinAuthorizer(storage)
    assert await authz.check_async(ask(ALICE, Action.PUBLISH, "a/x")) is Verdict.DENY


def test_the_source_is_registered_and_needs_persistent_storage() -> None:
    config = Config().with_values(
        {"acl.sources": ["builtin"], "acl.builtin.cache_ttl": 2.5, "acl.builtin.cache_max_size": 7}
    )
    plugin = AuthPlugin.from_config(config, MemoryStorage())
    (authz,) = plugin.authorizers
    assert isinstance(authz, BuiltinAuthorizer)
    assert (authz.cache_ttl, authz.cache_size, authz.asynchronous) == (2.5, 7, True)
    assert AUTHORIZERS["builtin"] is not None
    with pytest.raises(ValueError, match="persistent storage backend"):
        AuthPlugin.from_config(config, None)


# --- end to end: a broker on SQLite, rules written by `tidemq ctl acl` -------------------------

TTL = 0.2  # acl.cache_ttl and acl.builtin.cache_ttl of the broker


def ctl(data: Path, *args: str) -> int:
    """``tidemq ctl`` in a worker thread (it runs its own event loop), as from a shell."""
    return main(["ctl", *args, "--data-dir", str(data)])


@pytest.fixture
async def sqlite_broker(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    data = tmp_path / "data"
    config = Config().with_values(
        {
            "mqtt.sys_interval": 0,
            "node.data_dir": str(data),
            "storage.backend": "sqlite",
            "auth.chain": ["builtin"],
            "acl.sources": ["builtin"],
            "acl.no_match": "deny",
            "acl.cache_ttl": TTL,
            "acl.builtin.cache_ttl": TTL,
        }
    )
    storage = await open_storage_from_config(config)
    assert storage is not None
    broker = Broker(config, listen=["tcp://127.0.0.1:0"], storage=storage)
    try:
        await broker.start()
        yield broker.port, data
    finally:
        await broker.stop()
        await storage.close()


@pytest.mark.timeout(60)
async def test_paho_clients_against_rules_from_ctl(
    sqlite_broker: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, data = sqlite_broker
    commands = [
        ("users", "add", "alice", "--password", "pw"),
        ("acl", "add", "--all", "deny", "subscribe", "eq #"),
        ("acl", "add", "--username", "alice", "allow", "subscribe", "sensors/#", "--qos", "0,1"),
        ("acl", "add", "--clientid", "dev1", "deny", "publish", "devices/dev1/locked"),
        (
            "acl",
            "add",
            "--clientid",
            "dev1",
            "deny",
            "publish",
            "devices/dev1/r",
            "--retain",
            "true",
        ),
        ("acl", "add", "--all", "allow", "all", "devices/${clientid}/#"),
    ]
    for command in commands:
        assert await asyncio.to_thread(ctl, data, *command) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "added rule 2 username alice allow subscribe sensors/# qos=0,1" in out
    assert await asyncio.to_thread(ctl, data, "acl", "list", "--username", "alice") == 0
    assert capsys.readouterr().out == "2\tusername alice\tallow\tsubscribe\tsensors/#\tqos=0,1\n"

    clients = Clients(port)
    try:
        v5 = await clients.connect("dev1", V5, username="alice", password="pw")
        assert await v5.subscribe("#", 0) == [0x87]  # the "all" deny, literally
        assert await v5.subscribe("sensors/#", 1) == [1]  # alice's rule
        assert await v5.subscribe("sensors/#", 2) == [0x87]  # not for QoS 2: no match, deny
        assert await v5.subscribe("devices/dev1/#", 1) == [1]  # ${clientid}
        assert await v5.subscribe("devices/dev2/#", 0) == [0x87]
        acks = capture_puback(v5)
        await v5.publish("devices/dev1/locked", b"no", qos=1)  # client id rule before "all"
        assert await asyncio.to_thread(acks.get, True, 5) == 0x87
        await v5.publish("devices/dev1/r", b"no", qos=1, retain=True)
        assert await asyncio.to_thread(acks.get, True, 5) == 0x87
        await v5.publish("devices/dev1/r", b"yes", qos=1)  # not retained: the "all" rule
        assert await asyncio.to_thread(acks.get, True, 5) == 0
        received = await v5.next_message()
        assert (received.topic, received.payload) == ("devices/dev1/r", b"yes")
        await v5.no_message(0.2)  # the denied ones were dropped

        v3 = await clients.connect("dev2", V311)  # anonymous: no username rules
        assert await v3.subscribe("sensors/#", 0) == [0x80]
        assert await v3.subscribe("devices/dev2/+", 1) == [1]
        assert await v3.subscribe("#", 0) == [0x80]

        # Deleting alice's rule reaches the connected client within the two TTLs.
        assert await asyncio.to_thread(ctl, data, "acl", "delete", "2") == 0
        assert capsys.readouterr().out == "deleted rule 2\n"
        deadline = time.monotonic() + 20 * TTL + 5
        while True:
            granted = await v5.subscribe("sensors/#", 0)
            if granted == [0x87] or time.monotonic() > deadline:
                break
            await asyncio.sleep(TTL / 2)
        assert granted == [0x87]
        assert await asyncio.to_thread(ctl, data, "acl", "delete", "2") == 1  # gone
    finally:
        await clients.close()


def test_ctl_acl_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert ctl(data, "acl", "list") == 0
    assert capsys.readouterr().out == ""
    bad = [
        ("--all", "allow", "subscribe", "a/#/b"),  # not a filter
        ("--all", "allow", "subscribe", "a", "--retain", "true"),  # retain is for publish
        ("--all", "allow", "publish", "a", "--qos", "3"),
        ("--all", "allow", "publish", "a", "--qos", "x"),
    ]
    for args in bad:
        assert ctl(data, "acl", "add", *args) == 2
        assert capsys.readouterr().err.startswith("tidemq ctl: ")
    with pytest.raises(SystemExit):  # argparse: one of --username, --clientid, --all
        ctl(data, "acl", "add", "allow", "publish", "a")
    capsys.readouterr()
    assert ctl(data, "acl", "add", "--clientid", "c1", "allow", "publish", "a", "--qos", "1,0") == 0
    assert ctl(data, "acl", "list", "--all") == 0
    assert ctl(data, "acl", "list", "--clientid", "c1") == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "added rule 1 clientid c1 allow publish a qos=0,1",
        "1\tclientid c1\tallow\tpublish\ta\tqos=0,1",
    ]
    assert ctl(data, "acl", "delete", "1", "7") == 1  # 1 deleted, 7 missing
    captured = capsys.readouterr()
    assert captured.out == "deleted rule 1\n"
    assert "no ACL rule 7" in captured.err
    assert ctl(data, "acl", "list") == 0
    assert capsys.readouterr().out == ""
