"""Authentication and ACL sources on Redis, PostgreSQL and MySQL/MariaDB, EMQX-compatible.

Authentication (``auth.chain`` sources ``redis``, ``postgres``, ``mysql``) runs a
configured command or query for each CONNECT and reads the stored password hash, an
optional salt and an optional superuser flag:

* Redis: ``HMGET mqtt_user:${username} password_hash salt is_superuser`` (fields read by
  name: ``password_hash`` or ``password``, ``salt``, ``is_superuser``), or ``HGET KEY
  FIELD`` for the hash alone.
* SQL: ``SELECT password_hash, salt, is_superuser FROM mqtt_user WHERE username =
  ${username} LIMIT 1``; columns read by name from the first row.

No hash (no key, no row) means the user is not this source's: IGNORE, and the chain goes
on. The hash is checked as ``password_hash_algorithm`` says (EMQX's names: ``plain``,
``md5``, ``sha``, ``sha256``, ``sha512`` with a ``salt_position``, ``pbkdf2``, ``bcrypt``),
or ``phc`` for the self-describing hashes ``tidemq passwd`` writes; with a digest
algorithm, a stored hash that is self-describing (``$argon2id$...``) is checked as such.

Authorization (``acl.sources`` ``redis``, ``postgres``, ``mysql``) fetches a client's rules
once, in ``prepare`` at CONNECT, and answers ``check`` from memory (the hot path):

* Redis: ``HGETALL mqtt_acl:${username}``, a hash of topic filter → action (``publish``,
  ``subscribe``, ``all``), each an allow rule (as in EMQX); a value may also be a JSON
  object ``{"action": ..., "permission": "deny", "qos": [0, 1], "retain": true}``.
* SQL: ``SELECT action, permission, topic FROM mqtt_acl WHERE username = ${username}``;
  each row is one rule (columns by name; optional ``qos`` and ``retain``), tried in order.

Rules match as the ACL file's do (``tidemq.auth.acl``): ``${username}``, ``${clientid}``
and ``${cert_common_name}`` in a returned topic are filled in, ``eq `` makes a filter
literal. A request no rule matches is IGNORE (the next source, then ``acl.no_match``).

**Placeholders are never spliced into SQL**: each ``${name}`` of a query becomes a bound
parameter (``$1`` for asyncpg, ``%s`` for aiomysql), so a username such as
``x' OR '1'='1`` is only ever a value. In a Redis command they fill the key, one
argument, so they cannot add arguments either.

**Faults**: connections are made lazily (the broker starts while a server is down) and
remade after a failure; a server that is down or slow (``timeout``) makes the source
answer IGNORE (authentication) or give the client no rules (authorization), logged, and
it recovers by itself when the server returns.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from .acl import AclError, AclRule, check_rules
from .api import (
    IGNORE,
    AclRequest,
    Authenticator,
    Authorizer,
    AuthOutcome,
    ClientIdentity,
    Credentials,
    Verdict,
)
from .passwords import identify, verify_password_async

if TYPE_CHECKING:
    from tidemq.config import (
        MySQLAclConfig,
        MySQLAuthConfig,
        PostgresAclConfig,
        PostgresAuthConfig,
        RedisAclConfig,
        RedisAuthConfig,
    )

__all__ = [
    "HashCheck",
    "MySQLConnector",
    "PostgresConnector",
    "RedisAuthenticator",
    "RedisAuthorizer",
    "SqlAuthenticator",
    "SqlAuthorizer",
    "bind_sql",
]

log = logging.getLogger("tidemq.auth.database")

_PLACEHOLDER: Final = re.compile(r"\$\{([A-Za-z_]+)\}")
#: Most connections a SQL source opens to its server.
POOL_SIZE: Final = 10

Dialect = Literal["postgres", "mysql"]


class SourceUnavailable(Exception):
    """The server cannot be reached or did not answer in time."""


def placeholder_values(client: ClientIdentity) -> dict[str, str | None]:
    return {
        "username": client.username,
        "clientid": client.client_id,
        "peerhost": client.peer_host,
        "cert_common_name": client.cert_common_name,
        "cert_subject": client.cert_subject,
    }


def bind_sql(query: str, dialect: Dialect) -> tuple[str, tuple[str, ...]]:
    """*query* with each ``${name}`` replaced by a bound-parameter marker, and the names in
    parameter order. For aiomysql a literal ``%`` is doubled (its format-style markers)."""
    names: list[str] = []

    def marker(match: re.Match[str]) -> str:
        names.append(match.group(1))
        return f"${len(names)}" if dialect == "postgres" else "%s"

    text = query.replace("%", "%%") if dialect == "mysql" else query
    return _PLACEHOLDER.sub(marker, text), tuple(names)


def _bind_values(names: Sequence[str], client: ClientIdentity) -> list[str] | None:
    """The parameter values, or None when one has no value (no user to look up)."""
    values = placeholder_values(client)
    out: list[str] = []
    for name in names:
        value = values.get(name)
        if value is None:
            return None
        out.append(value)
    return out


def _fill(template: str, client: ClientIdentity) -> str | None:
    values = placeholder_values(client)
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None:
            missing = True
            return ""
        return value

    out = _PLACEHOLDER.sub(fill, template)
    return None if missing else out


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _truthy(value: object) -> bool:
    text = _text(value)
    return text is not None and text.strip().lower() in ("1", "true", "t", "yes", "on")


# --- password hashes -----------------------------------------------------------------------

_DIGESTS: Final = {"md5": "md5", "sha": "sha1", "sha256": "sha256", "sha512": "sha512"}
_MACS: Final = {
    "md5": "md5",
    "sha": "sha1",
    "sha224": "sha224",
    "sha256": "sha256",
    "sha384": "sha384",
    "sha512": "sha512",
}


class HashCheck:
    """Checks a password against a stored hash made as EMQX's
    ``password_hash_algorithm`` describes (hex digests, lowercase or not)."""

    def __init__(
        self,
        algorithm: str = "sha256",
        salt_position: str = "suffix",
        pbkdf2_mac_fun: str = "sha256",
        pbkdf2_iterations: int = 4096,
        pbkdf2_dk_length: int = 0,
    ) -> None:
        if algorithm not in (*_DIGESTS, "plain", "pbkdf2", "bcrypt", "phc"):
            raise ValueError(f"unknown password_hash_algorithm {algorithm!r}")
        if salt_position not in ("disable", "prefix", "suffix"):
            raise ValueError(f"unknown salt_position {salt_position!r}")
        if pbkdf2_mac_fun not in _MACS:
            raise ValueError(f"unknown pbkdf2_mac_fun {pbkdf2_mac_fun!r}")
        self.algorithm = algorithm
        self.salt_position = salt_position
        self.mac = _MACS[pbkdf2_mac_fun]
        self.iterations = pbkdf2_iterations
        self.dk_length = pbkdf2_dk_length or None

    def _salted(self, password: bytes, salt: bytes) -> bytes:
        if self.salt_position == "prefix":
            return salt + password
        if self.salt_position == "suffix":
            return password + salt
        return password

    async def verify(self, password: bytes, stored: str, salt: str | None) -> bool:
        algorithm = self.algorithm
        if algorithm in ("bcrypt", "phc") or (algorithm != "plain" and identify(stored)):
            # A hex digest never looks like "$argon2id$...": such a hash is checked as what
            # it says it is, so a table can move to stronger hashes user by user.
            return await verify_password_async(password, stored)
        salt_bytes = (salt or "").encode()
        if algorithm == "plain":
            return hmac.compare_digest(self._salted(password, salt_bytes), stored.encode())
        if algorithm == "pbkdf2":
            digest = await asyncio.get_running_loop().run_in_executor(
                None,
                hashlib.pbkdf2_hmac,
                self.mac,
                password,
                salt_bytes,
                self.iterations,
                self.dk_length,
            )
        else:
            digest = hashlib.new(_DIGESTS[algorithm], self._salted(password, salt_bytes)).digest()
        return hmac.compare_digest(digest.hex(), stored.strip().lower())

    @classmethod
    def from_config(cls, section: Any) -> HashCheck:
        return cls(
            section.password_hash_algorithm,
            section.salt_position,
            section.pbkdf2_mac_fun,
            section.pbkdf2_iterations,
            section.pbkdf2_dk_length,
        )


async def _outcome(
    check: HashCheck, credentials: Credentials, stored: object, salt: object, superuser: object
) -> AuthOutcome:
    """The answer once the user's fields are read (no hash: not our user)."""
    stored_hash = _text(stored)
    if not stored_hash:
        return IGNORE
    password = credentials.password
    if password is None:
        return AuthOutcome(verdict=Verdict.DENY, reason="no password")
    if not await check.verify(password, stored_hash, _text(salt)):
        return AuthOutcome(verdict=Verdict.DENY, reason="bad password")
    return AuthOutcome(verdict=Verdict.ALLOW, superuser=_truthy(superuser))


# --- connections ---------------------------------------------------------------------------


class RedisConnector:
    """A ``redis.asyncio`` client made at first use; it reconnects by itself."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Any = None

    def _get(self) -> Any:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=self.timeout, socket_timeout=self.timeout
            )
        return self._client

    async def command(self, *args: str) -> Any:
        from redis.exceptions import RedisError

        try:
            return await asyncio.wait_for(self._get().execute_command(*args), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            raise SourceUnavailable(f"Redis: {exc or type(exc).__name__}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as exc:  # closing a client whose server is gone
                log.debug("closing a Redis client: %s", exc)


class PostgresConnector:
    """An asyncpg pool made at first use, remade after the server went away."""

    dialect: Dialect = "postgres"

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Any:
        async with self._lock:
            if self._pool is None:
                import asyncpg

                self._pool = await asyncpg.create_pool(
                    self.url, min_size=0, max_size=POOL_SIZE, timeout=self.timeout
                )
            return self._pool

    async def fetch(self, sql: str, args: Sequence[str]) -> list[Mapping[str, Any]]:
        import asyncpg

        for attempt in (1, 2):  # a pooled connection may have died with the server
            try:
                pool = await asyncio.wait_for(self._get(), self.timeout)
                rows = await pool.fetch(sql, *args, timeout=self.timeout)
                return [dict(r.items()) for r in rows]
            except asyncpg.PostgresError as exc:
                if isinstance(exc, asyncpg.PostgresConnectionError) and attempt == 1:
                    continue
                raise SourceUnavailable(f"PostgreSQL: {exc}") from exc
            except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
                await self._reset()
                if attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise SourceUnavailable(f"PostgreSQL: {exc or type(exc).__name__}") from exc
        raise SourceUnavailable("PostgreSQL: unreachable")  # pragma: no cover

    async def _reset(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:
                pool.terminate()


class MySQLConnector:
    """An aiomysql pool made at first use, remade after the server went away."""

    dialect: Dialect = "mysql"

    def __init__(self, url: str, timeout: float) -> None:
        from urllib.parse import unquote, urlsplit

        parts = urlsplit(url)
        self.timeout = timeout
        self._params: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "db": unquote(parts.path.lstrip("/")),
        }
        self._pool: Any = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Any:
        async with self._lock:
            if self._pool is None:
                import aiomysql

                self._pool = await aiomysql.create_pool(
                    minsize=0,
                    maxsize=POOL_SIZE,
                    autocommit=True,
                    charset="utf8mb4",
                    connect_timeout=self.timeout,
                    **self._params,
                )
            return self._pool

    async def fetch(self, sql: str, args: Sequence[str]) -> list[Mapping[str, Any]]:
        import aiomysql
        import pymysql

        for attempt in (1, 2):
            try:
                pool = await asyncio.wait_for(self._get(), self.timeout)

                async def run(pool: Any = pool) -> list[Mapping[str, Any]]:
                    async with pool.acquire() as conn, conn.cursor(aiomysql.DictCursor) as cur:
                        await cur.execute(sql, tuple(args))
                        return list(await cur.fetchall())

                return await asyncio.wait_for(run(), self.timeout)
            except pymysql.err.ProgrammingError as exc:
                raise SourceUnavailable(f"MySQL: {exc}") from exc  # a bad query: logged
            except (pymysql.MySQLError, OSError, TimeoutError) as exc:
                await self._reset()
                if attempt == 1 and not isinstance(exc, TimeoutError):
                    continue
                raise SourceUnavailable(f"MySQL: {exc or type(exc).__name__}") from exc
        raise SourceUnavailable("MySQL: unreachable")  # pragma: no cover

    async def _reset(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
            try:
                await asyncio.wait_for(pool.wait_closed(), self.timeout)
            except Exception as exc:
                log.debug("closing a MySQL pool: %s", exc)


SqlConnector = PostgresConnector | MySQLConnector


def _connector(dialect: Dialect, url: str, timeout: float) -> SqlConnector:
    if dialect == "postgres":
        return PostgresConnector(url, timeout)
    return MySQLConnector(url, timeout)


# --- authentication ------------------------------------------------------------------------

_HASH_FIELDS: Final = ("password_hash", "password")


class RedisAuthenticator(Authenticator):
    """Users in Redis hashes (``auth.redis``)."""

    name = "redis"

    def __init__(self, connector: RedisConnector, cmd: str, check: HashCheck) -> None:
        words = cmd.split()
        verb = words[0].upper() if words else ""
        if verb not in ("HMGET", "HGET") or len(words) < 3 or (verb == "HGET" and len(words) != 3):
            raise ValueError(
                f"auth.redis.cmd must be HMGET KEY FIELD... or HGET KEY FIELD, got {cmd!r}"
            )
        self.fields = tuple(words[2:])
        if verb == "HMGET" and not any(f in _HASH_FIELDS for f in self.fields):
            raise ValueError("auth.redis.cmd reads no password_hash (or password) field")
        self.verb, self.key = verb, words[1]
        self.connector = connector
        self.check = check

    @classmethod
    def from_config(cls, section: RedisAuthConfig) -> RedisAuthenticator:
        connector = RedisConnector(section.url, section.timeout)
        return cls(connector, section.cmd, HashCheck.from_config(section))

    async def close(self) -> None:
        await self.connector.close()

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        client = credentials.client
        key = _fill(self.key, client)
        if key is None:
            return IGNORE
        try:
            reply = await self.connector.command(self.verb, key, *self.fields)
        except SourceUnavailable as exc:
            log.warning("redis authentication unavailable, ignoring %s: %s", client.client_id, exc)
            return IGNORE
        if self.verb == "HGET":
            return await _outcome(self.check, credentials, reply, None, None)
        values = dict(zip(self.fields, reply or (), strict=False))
        stored = next((values[f] for f in _HASH_FIELDS if values.get(f) is not None), None)
        return await _outcome(
            self.check, credentials, stored, values.get("salt"), values.get("is_superuser")
        )


class SqlAuthenticator(Authenticator):
    """Users in a PostgreSQL or MySQL table (``auth.postgres`` / ``auth.mysql``)."""

    def __init__(self, connector: SqlConnector, query: str, check: HashCheck) -> None:
        self.connector = connector
        self.name = connector.dialect
        self.sql, self.params = bind_sql(query, connector.dialect)
        self.check = check

    @classmethod
    def from_config(
        cls, section: PostgresAuthConfig | MySQLAuthConfig, dialect: Dialect
    ) -> SqlAuthenticator:
        connector = _connector(dialect, section.url, section.timeout)
        return cls(connector, section.query, HashCheck.from_config(section))

    async def close(self) -> None:
        await self.connector.close()

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        client = credentials.client
        args = _bind_values(self.params, client)
        if args is None:
            return IGNORE
        try:
            rows = await self.connector.fetch(self.sql, args)
        except SourceUnavailable as exc:
            log.warning(
                "%s authentication unavailable, ignoring %s: %s", self.name, client.client_id, exc
            )
            return IGNORE
        if not rows:
            return IGNORE
        row = rows[0]
        stored = next((row[f] for f in _HASH_FIELDS if row.get(f) is not None), None)
        return await _outcome(
            self.check, credentials, stored, row.get("salt"), row.get("is_superuser")
        )


# --- authorization -------------------------------------------------------------------------


def _rule(
    permission: object, action: object, topic: object, qos: object = None, retain: object = None
) -> AclRule:
    """One rule from stored values (raises ``AclError`` or ``ValueError``)."""
    topic_text = _text(topic)
    if not topic_text:
        raise AclError("a rule needs a topic")
    qos_levels: list[int] | None = None
    if qos is not None and _text(qos) not in ("", None):
        if isinstance(qos, list | tuple):
            qos_levels = [int(q) for q in qos]
        else:
            qos_levels = [int(q) for q in str(_text(qos)).replace(" ", "").split(",") if q]
    retain_flag = None if retain is None or _text(retain) == "" else _truthy(retain)
    return AclRule.make(
        _text(permission) or "allow",
        _text(action) or "all",
        topic_text,
        qos=qos_levels,
        retain=retain_flag,
    )


class _PreparedAuthorizer(Authorizer):
    """Rules fetched per client at CONNECT (``prepare``), answered from memory."""

    def __init__(self) -> None:
        self._rules: dict[ClientIdentity, tuple[AclRule, ...]] = {}

    async def fetch_rules(self, client: ClientIdentity) -> list[AclRule]:
        raise NotImplementedError

    async def prepare(self, client: ClientIdentity) -> None:
        try:
            rules = await self.fetch_rules(client)
        except SourceUnavailable as exc:
            log.warning("%s ACL unavailable: no rules for %s: %s", self.name, client.client_id, exc)
            return
        if rules:
            self._rules[client] = tuple(rules)

    def forget(self, client: ClientIdentity) -> None:
        self._rules.pop(client, None)

    def check(self, request: AclRequest) -> Verdict:
        rules = self._rules.get(request.client)
        if not rules:
            return Verdict.IGNORE
        return check_rules(rules, request)

    def _parsed(self, client: ClientIdentity, raw: Sequence[tuple[object, ...]]) -> list[AclRule]:
        rules: list[AclRule] = []
        for values in raw:
            try:
                rules.append(_rule(*values))
            except (AclError, ValueError, TypeError) as exc:
                log.warning(
                    "%s ACL: skipping a bad rule %r for %s: %s",
                    self.name,
                    values,
                    client.client_id,
                    exc,
                )
        return rules


class RedisAuthorizer(_PreparedAuthorizer):
    """ACL rules in a Redis hash per client (``acl.redis``)."""

    name = "redis"

    def __init__(self, connector: RedisConnector, cmd: str) -> None:
        super().__init__()
        words = cmd.split()
        if len(words) != 2 or words[0].upper() != "HGETALL":
            raise ValueError(f"acl.redis.cmd must be HGETALL KEY, got {cmd!r}")
        self.key = words[1]
        self.connector = connector

    @classmethod
    def from_config(cls, section: RedisAclConfig) -> RedisAuthorizer:
        return cls(RedisConnector(section.url, section.timeout), section.cmd)

    async def close(self) -> None:
        await self.connector.close()

    async def fetch_rules(self, client: ClientIdentity) -> list[AclRule]:
        key = _fill(self.key, client)
        if key is None:
            return []
        reply = await self.connector.command("HGETALL", key)
        items: list[Any] = list(reply or ())
        if isinstance(reply, dict):
            items = [x for pair in reply.items() for x in pair]
        raw: list[tuple[object, ...]] = []
        for topic, value in zip(items[::2], items[1::2], strict=True):
            text = _text(value) or ""
            if text.lstrip().startswith("{"):
                try:
                    doc = json.loads(text)
                except ValueError:
                    doc = {}
                raw.append(
                    (
                        doc.get("permission", "allow"),
                        doc.get("action"),
                        topic,
                        doc.get("qos"),
                        doc.get("retain"),
                    )
                )
            else:
                raw.append(("allow", text, topic))
        return self._parsed(client, raw)


class SqlAuthorizer(_PreparedAuthorizer):
    """ACL rules in a PostgreSQL or MySQL table (``acl.postgres`` / ``acl.mysql``)."""

    def __init__(self, connector: SqlConnector, query: str) -> None:
        super().__init__()
        self.connector = connector
        self.name = connector.dialect
        self.sql, self.params = bind_sql(query, connector.dialect)

    @classmethod
    def from_config(
        cls, section: PostgresAclConfig | MySQLAclConfig, dialect: Dialect
    ) -> SqlAuthorizer:
        return cls(_connector(dialect, section.url, section.timeout), section.query)

    async def close(self) -> None:
        await self.connector.close()

    async def fetch_rules(self, client: ClientIdentity) -> list[AclRule]:
        args = _bind_values(self.params, client)
        if args is None:
            return []
        rows = await self.connector.fetch(self.sql, args)
        raw = [
            (r.get("permission"), r.get("action"), r.get("topic"), r.get("qos"), r.get("retain"))
            for r in rows
        ]
        return self._parsed(client, raw)
