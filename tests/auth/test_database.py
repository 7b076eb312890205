"""Redis, PostgreSQL and MariaDB authentication and ACL sources, against the real servers
(each test on its own key prefix or database, removed afterwards): EMQX-style hashes and
defaults, bound parameters (an SQL injection attempt is only a value), rules fetched at
CONNECT, a server going away and coming back, and paho 3.1.1 / 5.0 clients through the
auth plugin."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.auth.hookup import Clients
from tests.helpers.paho import V5, V311
from tests.storage.conftest import mysql_database, need_service, postgres_database, unique_name
from tidemq.auth.api import AclRequest, Action, ClientIdentity, Credentials, Verdict
from tidemq.auth.database import (
    HashCheck,
    MySQLConnector,
    PostgresConnector,
    RedisAuthenticator,
    RedisAuthorizer,
    RedisConnector,
    SqlAuthenticator,
    SqlAuthorizer,
    bind_sql,
)
from tidemq.auth.passwords import hash_password
from tidemq.auth.plugin import AuthPlugin
from tidemq.testing import RunningBroker

AUTH_QUERY = (
    "SELECT password_hash, salt, is_superuser FROM mqtt_user WHERE username = ${username} LIMIT 1"
)
ACL_QUERY = "SELECT action, permission, topic FROM mqtt_acl WHERE username = ${username}"
INJECTION = "nobody' OR '1'='1"


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def creds(username: str | None, password: bytes | None, client_id: str = "c1") -> Credentials:
    client = ClientIdentity(client_id=client_id, username=username, peer_host="127.0.0.1")
    return Credentials(client=client, password=password)


def request(client: ClientIdentity, action: Action, topic: str, qos: int = 0) -> AclRequest:
    return AclRequest(client=client, action=action, topic=topic, qos=qos)


# --- pure parts -----------------------------------------------------------------------------


def test_bind_sql_makes_bound_parameters() -> None:
    sql, names = bind_sql("SELECT a FROM t WHERE u = ${username} AND c = ${clientid}", "postgres")
    assert (sql, names) == ("SELECT a FROM t WHERE u = $1 AND c = $2", ("username", "clientid"))
    sql, names = bind_sql("SELECT a FROM t WHERE u = ${username} AND x LIKE 'a%'", "mysql")
    assert (sql, names) == ("SELECT a FROM t WHERE u = %s AND x LIKE 'a%%'", ("username",))


@pytest.mark.parametrize(
    ("algorithm", "position", "stored"),
    [
        ("plain", "disable", "pw"),
        ("plain", "suffix", "pwNaCl"),
        ("md5", "suffix", hashlib.md5(b"pwNaCl").hexdigest()),
        ("sha", "prefix", hashlib.sha1(b"NaClpw").hexdigest()),
        ("sha256", "suffix", hashlib.sha256(b"pwNaCl").hexdigest().upper()),
        ("sha256", "disable", hashlib.sha256(b"pw").hexdigest()),
        ("sha512", "prefix", hashlib.sha512(b"NaClpw").hexdigest()),
        ("pbkdf2", "suffix", hashlib.pbkdf2_hmac("sha256", b"pw", b"NaCl", 4096).hex()),
    ],
)
async def test_hash_check_emqx_algorithms(algorithm: str, position: str, stored: str) -> None:
    check = HashCheck(algorithm, position)
    assert await check.verify(b"pw", stored, "NaCl")
    assert not await check.verify(b"pW", stored, "NaCl")
    if position != "disable":
        assert not await check.verify(b"pw", stored, "other")


async def test_hash_check_pbkdf2_options_bcrypt_and_phc() -> None:
    stored = hashlib.pbkdf2_hmac("sha512", b"pw", b"s", 10, 20).hex()
    assert await HashCheck("pbkdf2", pbkdf2_mac_fun="sha512", pbkdf2_iterations=10,
                           pbkdf2_dk_length=20).verify(b"pw", stored, "s")  # fmt: skip
    assert await HashCheck("bcrypt").verify(b"pw", hash_password("pw", "bcrypt"), None)
    assert await HashCheck("phc").verify(b"pw", hash_password("pw"), None)
    assert not await HashCheck("phc").verify(b"pw", "pw", None)  # plain text is no PHC hash
    with pytest.raises(ValueError, match="password_hash_algorithm"):
        HashCheck("rot13")


def test_bad_redis_commands_are_refused() -> None:
    connector = RedisConnector("redis://127.0.0.1:1/0", 1.0)
    with pytest.raises(ValueError, match="HMGET"):
        RedisAuthenticator(connector, "GET mqtt_user:${username}", HashCheck())
    with pytest.raises(ValueError, match="no password_hash"):
        RedisAuthenticator(connector, "HMGET k salt is_superuser", HashCheck())
    with pytest.raises(ValueError, match="HGETALL"):
        RedisAuthorizer(connector, "SMEMBERS mqtt_acl:${username}")


# --- a TCP relay that can take a server away and give it back ---------------------------


class Relay:
    """Forwards 127.0.0.1:port to a real server; ``down()`` stops listening and cuts every
    open connection, ``up()`` listens again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}

    def url(self, url: str) -> str:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}{netloc[1]}127.0.0.1:{self.port}"))


# --- the three servers, each with users and rules ---------------------------------------


@dataclass
class Backend:
    """One server's sources for a test, with users alice (sha256, salted), root (a
    superuser with a PHC hash) and rules for alice."""

    name: str
    url: str
    authenticator: Callable[[str], Any]  # url → an Authenticator
    authorizer: Callable[[str], Any]  # url → an Authorizer


async def _redis_backend() -> AsyncIterator[Backend]:
    import redis.asyncio as aioredis

    url = need_service("REDIS")
    prefix = f"{unique_name()}:"
    client = aioredis.Redis.from_url(url)
    await client.hset(
        f"{prefix}mqtt_user:alice",
        mapping={"password_hash": sha256_hex("wonderlandNaCl"), "salt": "NaCl"},
    )
    await client.hset(
        f"{prefix}mqtt_user:root",
        mapping={"password_hash": hash_password("toor"), "is_superuser": "1"},
    )
    await client.hset(
        f"{prefix}mqtt_acl:alice",
        mapping={
            "sensors/${username}/#": "publish",
            "cmd/${clientid}": "subscribe",
            "shared/+": "all",
            "bad/#[": "publish",  # not a valid filter: skipped, logged
            "secret/#": json.dumps({"action": "all", "permission": "deny"}),
            "q/#": json.dumps({"action": "publish", "qos": [0, 1]}),
        },
    )

    def authn(u: str) -> Any:
        cmd = f"HMGET {prefix}mqtt_user:${{username}} password_hash salt is_superuser"
        return RedisAuthenticator(RedisConnector(u, 2.0), cmd, HashCheck("sha256", "suffix"))

    def authz(u: str) -> Any:
        return RedisAuthorizer(RedisConnector(u, 2.0), f"HGETALL {prefix}mqtt_acl:${{username}}")

    try:
        yield Backend("redis", url, authn, authz)
    finally:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


_ROWS_ACL = [
    ("publish", "allow", "sensors/${username}/#"),
    ("subscribe", "allow", "cmd/${clientid}"),
    ("all", "allow", "shared/+"),
    ("all", "deny", "secret/#"),
    ("all", "allow", "eq literal/#"),
]


async def _sql_setup(execute: Callable[..., Any], dialect: str) -> None:
    bool_type = "BOOLEAN"
    await execute(
        "CREATE TABLE mqtt_user (id INTEGER PRIMARY KEY, username VARCHAR(100) NOT NULL, "
        f"password_hash VARCHAR(200) NOT NULL, salt VARCHAR(40), is_superuser {bool_type})"
    )
    await execute(
        "CREATE TABLE mqtt_acl (id INTEGER PRIMARY KEY, username VARCHAR(100) NOT NULL, "
        "action VARCHAR(20) NOT NULL, permission VARCHAR(10) NOT NULL, "
        "topic VARCHAR(200) NOT NULL)"
    )
    mark = "$%d" if dialect == "postgres" else "%%s"
    m = [mark % i if dialect == "postgres" else "%s" for i in range(1, 6)]
    insert_user = (
        f"INSERT INTO mqtt_user (id, username, password_hash, salt, is_superuser) "
        f"VALUES ({', '.join(m)})"
    )
    # Alice first: a query built by string interpolation would find her for INJECTION.
    await execute(insert_user, 1, "alice", sha256_hex("wonderlandNaCl"), "NaCl", False)
    await execute(insert_user, 2, "root", hash_password("toor"), None, True)
    insert_acl = (
        f"INSERT INTO mqtt_acl (id, username, action, permission, topic) VALUES ({', '.join(m)})"
    )
    for i, (action, permission, topic) in enumerate(_ROWS_ACL, 1):
        await execute(insert_acl, i, "alice", action, permission, topic)


async def _postgres_backend() -> AsyncIterator[Backend]:
    import asyncpg

    async with postgres_database(need_service("POSTGRES")) as url:
        conn = await asyncpg.connect(url)
        try:
            await _sql_setup(conn.execute, "postgres")
        finally:
            await conn.close()

        def authn(u: str) -> Any:
            return SqlAuthenticator(PostgresConnector(u, 2.0), AUTH_QUERY, HashCheck())

        def authz(u: str) -> Any:
            return SqlAuthorizer(PostgresConnector(u, 2.0), ACL_QUERY)

        yield Backend("postgres", url, authn, authz)


async def _mysql_backend() -> AsyncIterator[Backend]:
    import aiomysql

    async with mysql_database(need_service("MYSQL")) as url:
        parts = urlsplit(url)
        conn = await aiomysql.connect(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            password=parts.password or "",
            db=parts.path.lstrip("/"),
            autocommit=True,
        )
        try:
            async with conn.cursor() as cur:

                async def execute(sql: str, *args: Any) -> None:
                    await cur.execute(sql, args or None)

                await _sql_setup(execute, "mysql")
        finally:
            conn.close()

        def authn(u: str) -> Any:
            # A literal % in the query must survive aiomysql's format-style markers.
            query = AUTH_QUERY.replace("LIMIT 1", "AND password_hash LIKE '%' LIMIT 1")
            return SqlAuthenticator(MySQLConnector(u, 2.0), query, HashCheck())

        def authz(u: str) -> Any:
            return SqlAuthorizer(MySQLConnector(u, 2.0), ACL_QUERY)

        yield Backend("mysql", url, authn, authz)


_BACKENDS = {"redis": _redis_backend, "postgres": _postgres_backend, "mysql": _mysql_backend}


@pytest.fixture(params=list(_BACKENDS))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    generator = _BACKENDS[request.param]()
    yield await anext(generator)
    async for _ in generator:
        pass


@asynccontextmanager
async def opened(source: Any) -> AsyncIterator[Any]:
    await source.open()
    try:
        yield source
    finally:
        await source.close()


async def test_authentication(backend: Backend) -> None:
    async with opened(backend.authenticator(backend.url)) as auth:
        ok = await auth.authenticate(creds("alice", b"wonderland"))
        assert (ok.verdict, ok.superuser) == (Verdict.ALLOW, False)
        root = await auth.authenticate(creds("root", b"toor"))
        assert (root.verdict, root.superuser) == (Verdict.ALLOW, True)
        assert (await auth.authenticate(creds("alice", b"wrong"))).verdict is Verdict.DENY
        assert (await auth.authenticate(creds("alice", None))).verdict is Verdict.DENY
        assert (await auth.authenticate(creds("carol", b"x"))).verdict is Verdict.IGNORE
        assert (await auth.authenticate(creds(None, None))).verdict is Verdict.IGNORE
        # The username is a value, never SQL (nor extra Redis arguments).
        attack = await auth.authenticate(creds(INJECTION, b"wonderland"))
        assert attack.verdict is Verdict.IGNORE
        attack = await auth.authenticate(creds("alice password_hash", b"wonderland"))
        assert attack.verdict is Verdict.IGNORE


async def test_authorization(backend: Backend) -> None:
    alice = ClientIdentity(client_id="dev1", username="alice", peer_host="127.0.0.1")
    bob = ClientIdentity(client_id="dev2", username="bob", peer_host="127.0.0.1")
    async with opened(backend.authorizer(backend.url)) as acl:
        await acl.prepare(alice)
        await acl.prepare(bob)
        pub, sub = Action.PUBLISH, Action.SUBSCRIBE
        assert acl.check(request(alice, pub, "sensors/alice/t")) is Verdict.ALLOW
        assert acl.check(request(alice, pub, "sensors/bob/t")) is Verdict.IGNORE
        assert acl.check(request(alice, sub, "sensors/alice/t")) is Verdict.IGNORE
        assert acl.check(request(alice, sub, "cmd/dev1")) is Verdict.ALLOW
        assert acl.check(request(alice, sub, "cmd/dev2")) is Verdict.IGNORE
        assert acl.check(request(alice, pub, "shared/x")) is Verdict.ALLOW
        assert acl.check(request(alice, sub, "shared/x")) is Verdict.ALLOW
        if backend.name == "redis":
            assert acl.check(request(alice, pub, "secret/x")) is Verdict.DENY
            assert acl.check(request(alice, pub, "q/1", qos=1)) is Verdict.ALLOW
            assert acl.check(request(alice, pub, "q/1", qos=2)) is Verdict.IGNORE
        else:
            assert acl.check(request(alice, sub, "secret/#")) is Verdict.DENY
            assert acl.check(request(alice, sub, "literal/#")) is Verdict.ALLOW
            assert acl.check(request(alice, sub, "literal/x")) is Verdict.IGNORE
        assert acl.check(request(bob, pub, "shared/x")) is Verdict.IGNORE  # no rules
        acl.forget(alice)
        assert acl.check(request(alice, pub, "shared/x")) is Verdict.IGNORE


async def test_a_server_going_away_and_coming_back(backend: Backend) -> None:
    target = urlsplit(backend.url)
    relay = Relay(target.hostname or "127.0.0.1", target.port or 0)
    await relay.up()
    url = relay.url(backend.url)
    alice = ClientIdentity(client_id="dev1", username="alice", peer_host="127.0.0.1")
    try:
        async with (
            opened(backend.authenticator(url)) as auth,
            opened(backend.authorizer(url)) as acl,
        ):
            assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.ALLOW
            await relay.down()
            assert (
                await auth.authenticate(creds("alice", b"wonderland"))
            ).verdict is Verdict.IGNORE
            await acl.prepare(alice)  # no rules, logged, no exception
            assert acl.check(request(alice, Action.PUBLISH, "shared/x")) is Verdict.IGNORE
            await relay.up()
            assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.ALLOW
            await acl.prepare(alice)
            assert acl.check(request(alice, Action.PUBLISH, "shared/x")) is Verdict.ALLOW
    finally:
        await relay.down()


async def test_a_server_down_at_start_does_not_stop_the_broker(backend: Backend) -> None:
    relay = Relay("127.0.0.1", 1)  # forwards to nothing
    await relay.up()
    await relay.down()  # and the port is closed now
    url = relay.url(backend.url)
    async with opened(backend.authenticator(url)) as auth:
        assert (await auth.authenticate(creds("alice", b"wonderland"))).verdict is Verdict.IGNORE


# --- through a real broker ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_paho_clients_through_the_plugin(
    broker: RunningBroker, backend: Backend, protocol: int
) -> None:
    plugin = AuthPlugin(
        authenticators=[backend.authenticator(backend.url)],
        authorizers=[backend.authorizer(backend.url)],
        allow_anonymous=False,
        no_match="deny",
    )
    await plugin.open()
    unregister = plugin.install(broker.broker.hooks)
    clients = Clients(broker.port)
    try:
        alice = await clients.connect("dev1", protocol, username="alice", password="wonderland")
        denied = 0x87 if protocol == V5 else 0x80
        assert await alice.subscribe("cmd/dev1", 1) == [1]
        assert await alice.subscribe("cmd/dev2", 1) == [denied]  # no rule: no_match deny
        assert await alice.subscribe("secret/#", 0) == [denied]  # a deny rule
        await clients.stop(alice)
        assert await clients.refused("dev1", protocol, username="alice", password="no") == 0x87
        root = await clients.connect("dev3", protocol, username="root", password="toor")
        assert await root.subscribe("anything/#", 0) == [0]  # a superuser bypasses the ACL
        await clients.stop(root)
    finally:
        await clients.close()
        unregister()
        await plugin.close()
