"""Built-in users from storage: lookup, password check, superuser flag, the TTL cache that
bounds how long a ``tidemq ctl`` change takes to reach the broker, storage outages, and
paho 3.1.1 / 5.0 clients connecting with right and wrong passwords."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.auth.hookup import Clients
from tests.helpers.paho import V5, V311
from tidemq.auth.api import ClientIdentity, Credentials, Verdict
from tidemq.auth.builtin import BuiltinAuthenticator
from tidemq.auth.passwords import hash_password
from tidemq.auth.plugin import AuthPlugin
from tidemq.storage.api import StorageUnavailable, UserRecord
from tidemq.storage.memory import MemoryStorage
from tidemq.testing import RunningBroker

ALICE_HASH = hash_password("wonderland")
ROOT_HASH = hash_password("toor", "pbkdf2")
BOB_HASH = hash_password("builder", "bcrypt")


def creds(username: str | None, password: bytes | None, client_id: str = "c1") -> Credentials:
    client = ClientIdentity(client_id=client_id, username=username, peer_host="127.0.0.1")
    return Credentials(client=client, password=password)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.down = False

    async def get_user(self, username: str) -> UserRecord | None:
        self.gets += 1
        if self.down:
            raise StorageUnavailable("test: server down")
        return await super().get_user(username)


@pytest.fixture
async def storage() -> AsyncIterator[CountingStorage]:
    storage = CountingStorage()
    await storage.open()
    await storage.put_user(UserRecord(username="alice", password_hash=ALICE_HASH, created_at=1))
    await storage.put_user(
        UserRecord(username="root", password_hash=ROOT_HASH, superuser=True, created_at=1)
    )
    await storage.put_user(UserRecord(username="bob", password_hash=BOB_HASH, created_at=1))
    yield storage
    await storage.close()


async def test_right_and_wrong_passwords(storage: CountingStorage) -> None:
    auth = BuiltinAuthenticator(storage)
    ok = await auth.authenticate(creds("alice", b"wonderland"))
    assert ok.verdict is Verdict.ALLOW
    assert ok.superuser is False
    root = await auth.authenticate(creds("root", b"toor"))
    assert (root.verdict, root.superuser) == (Verdict.ALLOW, True)
    assert (await auth.authenticate(creds("bob", b"builder"))).verdict is Verdict.ALLOW
    assert (await auth.authenticate(creds("alice", b"Wonderland"))).verdict is Verdict.DENY
    assert (await auth.authenticate(creds("alice", b""))).verdict is Verdict.DENY
    assert (await auth.authenticate(creds("alice", None))).verdict is Verdict.DENY
    # Not a built-in user, or no username at all: another source's business.
    assert (await auth.authenticate(creds("carol", b"x"))).verdict is Verdict.IGNORE
    assert (await auth.authenticate(creds(None, None))).verdict is Verdict.IGNORE


async def test_users_by_client_id(storage: CountingStorage) -> None:
    auth = BuiltinAuthenticator(storage, user_id_type="clientid")
    ok = await auth.authenticate(creds("whoever", b"wonderland", client_id="alice"))
    assert ok.verdict is Verdict.ALLOW
    assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.IGNORE


async def test_the_cache_bounds_lookups_and_expires(storage: CountingStorage) -> None:
    clock = Clock()
    auth = BuiltinAuthenticator(storage, cache_ttl=5.0, clock=clock)
    for _ in range(3):
        assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.ALLOW
        assert (await auth.authenticate(creds("carol", b"x"))).verdict is Verdict.IGNORE
    assert storage.gets == 2  # one per user, the absent one included
    # tidemq ctl, from another process: a new password and a new user.
    new_hash = hash_password("looking-glass")
    await storage.put_user(UserRecord(username="alice", password_hash=new_hash, created_at=2))
    await storage.put_user(UserRecord(username="carol", password_hash=ALICE_HASH, created_at=2))
    clock.now += 4.9
    assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.ALLOW
    clock.now += 0.1  # cache_ttl seconds after the lookup: the change is seen
    assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.DENY
    assert (await auth.authenticate(creds("alice", b"looking-glass"))).verdict is Verdict.ALLOW
    assert (await auth.authenticate(creds("carol", b"wonderland"))).verdict is Verdict.ALLOW
    await storage.delete_user("carol")
    auth.invalidate("carol")  # a change made in this process takes effect at once
    assert (await auth.authenticate(creds("carol", b"wonderland"))).verdict is Verdict.IGNORE


async def test_cache_size_and_no_cache(storage: CountingStorage) -> None:
    auth = BuiltinAuthenticator(storage, cache_size=2)
    for name in ("alice", "bob", "root", "alice"):
        await auth.lookup(name)
    assert storage.gets == 4  # alice was evicted by root
    uncached = BuiltinAuthenticator(storage, cache_ttl=0)
    await uncached.lookup("alice")
    await uncached.lookup("alice")
    assert storage.gets == 6


async def test_storage_down_answers_ignore_and_recovers(storage: CountingStorage) -> None:
    auth = BuiltinAuthenticator(storage, cache_ttl=0)
    storage.down = True
    assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.IGNORE
    storage.down = False
    assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.ALLOW


# --- through a real broker ------------------------------------------------------------------


@pytest.fixture
async def clients(broker: RunningBroker, storage: CountingStorage) -> AsyncIterator[Clients]:
    plugin = AuthPlugin(authenticators=[BuiltinAuthenticator(storage)])
    await plugin.open()
    unregister = plugin.install(broker.broker.hooks)
    clients = Clients(broker.port)
    yield clients
    await clients.close()
    unregister()
    await plugin.close()


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_paho_clients_with_built_in_users(clients: Clients, protocol: int) -> None:
    ok = await clients.connect("p1", protocol, username="alice", password="wonderland")
    assert await ok.subscribe("a/b", 1) == [1]
    await clients.stop(ok)
    # A wrong password: CONNACK 5 / 0x87 Not authorized, as Mosquitto 2 answers (paho shows
    # a 3.1.1 return code 5 as 0x87).
    assert await clients.refused("p2", protocol, username="alice", password="nope") == 0x87
    # Not a built-in user: the all-IGNORE chain denies clients with a username.
    assert await clients.refused("p3", protocol, username="carol", password="x") == 0x87
    # No username: allow_anonymous (true here) lets it in.
    await clients.stop(await clients.connect("p4", protocol))
