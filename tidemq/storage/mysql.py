"""The MySQL / MariaDB backend (aiomysql): tables prefixed ``tidemq_`` in one database.

Theory of operation
-------------------
* **One connection** in autocommit mode, guarded by a lock; a batch is one explicit
  transaction (``BEGIN`` … ``COMMIT``, InnoDB), each run of same-type operations one
  ``executemany`` (one multi-row ``REPLACE`` for puts). The server's warnings would reach
  Python's ``warnings`` through aiomysql, so no statement here is written to cause one.
* **Durability** is the server's: InnoDB flushes its log at each commit when
  ``innodb_flush_log_at_trx_commit = 1`` (the default), which ``durability = "sync"``
  needs; ``open`` logs a warning when the server runs otherwise. The setting is global, so
  ``batch`` and ``none`` cannot relax it per connection.
* **Keys**: InnoDB keys are at most 3072 bytes, client ids and topics up to 64 KiB, so rows
  are keyed by the SHA-256 of the client id, topic filter or topic, as in ``postgres``.
* **Schema versions**: ``tidemq_schema`` holds one row per applied migration. MySQL DDL is
  not transactional, so every statement of a migration is idempotent (``IF NOT EXISTS``)
  and an interrupted migration is simply run again; ``GET_LOCK`` keeps brokers starting
  together from racing.
* **Faults**: when the server goes away, calls raise ``StorageUnavailable`` and the
  connection is dropped; the next call connects again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import replace
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

import aiomysql
import pymysql

from tidemq.storage import _sql
from tidemq.storage.api import (
    AclRuleRecord,
    AclWhoKind,
    BanKind,
    BanRecord,
    DeleteIncomingQos2,
    DeleteInflight,
    DeleteMessage,
    DeleteRetained,
    DeleteSession,
    DeleteSubscription,
    Dequeue,
    Durability,
    Enqueue,
    IncomingQos2Record,
    InflightRecord,
    MessageRecord,
    Op,
    PutIncomingQos2,
    PutInflight,
    PutMessage,
    PutSession,
    PutSubscription,
    QueuedRecord,
    RetainedRecord,
    SessionRecord,
    SetRetained,
    Storage,
    StorageError,
    StorageUnavailable,
    SubscriptionRecord,
    UserRecord,
    WriteBatch,
)

__all__ = ["MIGRATIONS", "MySQLStorage", "from_url"]

log = logging.getLogger(__name__)

# Seconds to wait for a connection, and for any one call, before giving up.
CONNECT_TIMEOUT: Final = 5.0
COMMAND_TIMEOUT: Final = 30.0
DEFAULT_PORT: Final = 3306

_TABLE_OPTIONS: Final = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            f"""CREATE TABLE IF NOT EXISTS tidemq_sessions (
                ckey BINARY(32) NOT NULL PRIMARY KEY,
                client_id TEXT NOT NULL,
                expiry_interval BIGINT NOT NULL,
                protocol_version SMALLINT NOT NULL,
                username TEXT NULL,
                disconnected_at DOUBLE NULL,
                expires_at DOUBLE NULL,
                will_topic TEXT NULL,
                will_payload BLOB NULL,
                will_qos SMALLINT NULL,
                will_retain BOOLEAN NULL,
                will_properties LONGBLOB NULL,
                will_delay BIGINT NULL,
                KEY tidemq_sessions_expires (expires_at)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_subscriptions (
                ckey BINARY(32) NOT NULL,
                fkey BINARY(32) NOT NULL,
                client_id TEXT NOT NULL,
                topic_filter TEXT NOT NULL,
                qos SMALLINT NOT NULL,
                no_local BOOLEAN NOT NULL,
                retain_as_published BOOLEAN NOT NULL,
                retain_handling SMALLINT NOT NULL,
                subscription_id INT NULL,
                share_group TEXT NULL,
                PRIMARY KEY (ckey, fkey)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_messages (
                message_id BIGINT NOT NULL PRIMARY KEY,
                topic TEXT NOT NULL,
                payload LONGBLOB NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                properties LONGBLOB NOT NULL,
                sender TEXT NULL,
                created_at DOUBLE NOT NULL,
                expires_at DOUBLE NULL,
                KEY tidemq_messages_expires (expires_at)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_queue (
                ckey BINARY(32) NOT NULL,
                seq BIGINT NOT NULL,
                client_id TEXT NOT NULL,
                message_id BIGINT NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                sub_ids TEXT NOT NULL,
                PRIMARY KEY (ckey, seq),
                KEY tidemq_queue_message (message_id)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_inflight (
                ckey BINARY(32) NOT NULL,
                packet_id INT NOT NULL,
                client_id TEXT NOT NULL,
                message_id BIGINT NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                sub_ids TEXT NOT NULL,
                released BOOLEAN NOT NULL,
                seq BIGINT NOT NULL,
                PRIMARY KEY (ckey, packet_id),
                KEY tidemq_inflight_message (message_id)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_incoming_qos2 (
                ckey BINARY(32) NOT NULL,
                packet_id INT NOT NULL,
                client_id TEXT NOT NULL,
                received_at DOUBLE NOT NULL,
                PRIMARY KEY (ckey, packet_id)) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_retained (
                tkey BINARY(32) NOT NULL PRIMARY KEY,
                topic TEXT NOT NULL,
                payload LONGBLOB NOT NULL,
                qos SMALLINT NOT NULL,
                properties LONGBLOB NOT NULL,
                sender TEXT NULL,
                created_at DOUBLE NOT NULL,
                expires_at DOUBLE NULL,
                KEY tidemq_retained_expires (expires_at)) {_TABLE_OPTIONS}""",
        ),
    ),
    (
        2,
        (
            f"""CREATE TABLE IF NOT EXISTS tidemq_users (
                ukey BINARY(32) NOT NULL PRIMARY KEY,
                username TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                superuser BOOLEAN NOT NULL,
                created_at DOUBLE NOT NULL,
                updated_at DOUBLE NULL) {_TABLE_OPTIONS}""",
            f"""CREATE TABLE IF NOT EXISTS tidemq_bans (
                bkey BINARY(32) NOT NULL PRIMARY KEY,
                ban_kind VARCHAR(16) NOT NULL,
                ban_value TEXT NOT NULL,
                reason TEXT NOT NULL,
                created_at DOUBLE NOT NULL,
                expires_at DOUBLE NULL,
                banned_by TEXT NOT NULL,
                KEY tidemq_bans_expires (expires_at)) {_TABLE_OPTIONS}""",
        ),
    ),
    (
        3,
        (
            # wkey is the hash of "<who_kind>:<who>", as the other keys here. The rules are
            # only ever INSERTed, never REPLACEd, so the auto-increment id stays put.
            f"""CREATE TABLE IF NOT EXISTS tidemq_acl (
                rule_id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                wkey BINARY(32) NOT NULL,
                who_kind VARCHAR(16) NOT NULL,
                who TEXT NOT NULL,
                permission VARCHAR(16) NOT NULL,
                acl_action VARCHAR(16) NOT NULL,
                topic TEXT NOT NULL,
                qos_levels VARCHAR(16) NOT NULL,
                retain BOOLEAN NULL,
                created_at DOUBLE NOT NULL,
                KEY tidemq_acl_who (wkey, rule_id)) {_TABLE_OPTIONS}""",
        ),
    ),
)
assert MIGRATIONS[-1][0] == _sql.SCHEMA_VERSION

_CLIENT_TABLES: Final = (
    "tidemq_subscriptions",
    "tidemq_queue",
    "tidemq_inflight",
    "tidemq_incoming_qos2",
)


def _columns(*keys: str, columns: str) -> tuple[str, ...]:
    return (*keys, *(c.strip() for c in columns.split(",")))


def _upsert(table: str, names: tuple[str, ...], keys: tuple[str, ...]) -> str:
    """REPLACE of *names*: the row with the same *keys* is replaced whole. (INSERT … ON
    DUPLICATE KEY UPDATE col = VALUES(col) warns on MySQL 8 and its replacement syntax
    does not exist in MariaDB; these tables have no triggers, foreign keys or
    auto-increment columns, so REPLACE's delete-then-insert is equivalent.)"""
    del keys  # the primary key; REPLACE finds it by itself
    marks = ", ".join(["%s"] * len(names))
    return f"REPLACE INTO {table} ({', '.join(names)}) VALUES ({marks})"


def _h(text: str) -> bytes:
    return _sql.key_hash(text)


# Operation type → (statements, parameters of one operation).
_WRITES: Final[dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]]] = {
    PutSession: (
        (_upsert("tidemq_sessions", _columns("ckey", columns=_sql.SESSION_COLUMNS), ("ckey",)),),
        lambda op: (_h(op.record.client_id), *_sql.session_params(op.record)),
    ),
    DeleteSession: (
        tuple(f"DELETE FROM {t} WHERE ckey = %s" for t in ("tidemq_sessions", *_CLIENT_TABLES)),
        lambda op: (_h(op.client_id),),
    ),
    PutSubscription: (
        (
            _upsert(
                "tidemq_subscriptions",
                _columns("ckey", "fkey", columns=_sql.SUBSCRIPTION_COLUMNS),
                ("ckey", "fkey"),
            ),
        ),
        lambda op: (
            _h(op.record.client_id),
            _h(op.record.topic_filter),
            *_sql.subscription_params(op.record),
        ),
    ),
    DeleteSubscription: (
        ("DELETE FROM tidemq_subscriptions WHERE ckey = %s AND fkey = %s",),
        lambda op: (_h(op.client_id), _h(op.topic_filter)),
    ),
    PutMessage: (
        (_upsert("tidemq_messages", _columns(columns=_sql.MESSAGE_COLUMNS), ("message_id",)),),
        lambda op: _sql.message_params(op.record),
    ),
    DeleteMessage: (
        ("DELETE FROM tidemq_messages WHERE message_id = %s",),
        lambda op: (op.message_id,),
    ),
    Enqueue: (
        (_upsert("tidemq_queue", _columns("ckey", columns=_sql.QUEUE_COLUMNS), ("ckey", "seq")),),
        lambda op: (_h(op.record.client_id), *_sql.queued_params(op.record)),
    ),
    Dequeue: (
        ("DELETE FROM tidemq_queue WHERE ckey = %s AND seq = %s",),
        lambda op: (_h(op.client_id), op.seq),
    ),
    PutInflight: (
        (
            _upsert(
                "tidemq_inflight",
                _columns("ckey", columns=_sql.INFLIGHT_COLUMNS),
                ("ckey", "packet_id"),
            ),
        ),
        lambda op: (_h(op.record.client_id), *_sql.inflight_params(op.record)),
    ),
    DeleteInflight: (
        ("DELETE FROM tidemq_inflight WHERE ckey = %s AND packet_id = %s",),
        lambda op: (_h(op.client_id), op.packet_id),
    ),
    PutIncomingQos2: (
        (
            _upsert(
                "tidemq_incoming_qos2",
                _columns("ckey", columns=_sql.INCOMING_COLUMNS),
                ("ckey", "packet_id"),
            ),
        ),
        lambda op: (_h(op.record.client_id), *_sql.incoming_params(op.record)),
    ),
    DeleteIncomingQos2: (
        ("DELETE FROM tidemq_incoming_qos2 WHERE ckey = %s AND packet_id = %s",),
        lambda op: (_h(op.client_id), op.packet_id),
    ),
    SetRetained: (
        (_upsert("tidemq_retained", _columns("tkey", columns=_sql.RETAINED_COLUMNS), ("tkey",)),),
        lambda op: (_h(op.record.topic), *_sql.retained_params(op.record)),
    ),
    DeleteRetained: (
        ("DELETE FROM tidemq_retained WHERE tkey = %s",),
        lambda op: (_h(op.topic),),
    ),
}

# purge_expired's statements, in order, each with whether it takes `now` and whether it
# counts towards the result.
_PURGE: Final[tuple[tuple[str, bool, bool], ...]] = (
    *(
        (
            f"DELETE FROM {t} WHERE ckey IN "
            "(SELECT ckey FROM tidemq_sessions WHERE expires_at <= %s)",
            True,
            False,
        )
        for t in _CLIENT_TABLES
    ),
    ("DELETE FROM tidemq_sessions WHERE expires_at <= %s", True, True),
    ("DELETE FROM tidemq_retained WHERE expires_at <= %s", True, True),
    ("DELETE FROM tidemq_bans WHERE expires_at <= %s", True, True),
    (
        "DELETE FROM tidemq_queue WHERE message_id IN "
        "(SELECT message_id FROM tidemq_messages WHERE expires_at <= %s)",
        True,
        False,
    ),
    (
        "DELETE FROM tidemq_messages WHERE NOT EXISTS "
        "(SELECT 1 FROM tidemq_queue q WHERE q.message_id = tidemq_messages.message_id) "
        "AND NOT EXISTS "
        "(SELECT 1 FROM tidemq_inflight i WHERE i.message_id = tidemq_messages.message_id)",
        False,
        True,
    ),
)

_PUT_USER: Final = _upsert("tidemq_users", _columns("ukey", columns=_sql.USER_COLUMNS), ("ukey",))
_PUT_BAN: Final = _upsert("tidemq_bans", _columns("bkey", columns=_sql.BAN_COLUMNS), ("bkey",))


def _ban_key(kind: str, value: str) -> bytes:
    return _sql.key_hash(f"{kind}:{value}")


_ADD_ACL: Final = (
    f"INSERT INTO tidemq_acl (wkey, {_sql.ACL_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SELECT_ACL: Final = f"SELECT rule_id, {_sql.ACL_COLUMNS} FROM tidemq_acl"


def _who_key(kind: str, who: str) -> bytes:
    return _sql.key_hash(f"{kind}:{'' if kind == 'all' else who}")


# Client error codes (CR_*) and server error codes (ER_*) that mean the server is gone or
# refuses work for now: too many connections, shutdown in progress, connection killed,
# cannot connect (socket, TCP), server gone away, lost connection (twice).
_UNAVAILABLE_CODES: Final = frozenset({1040, 1053, 1927, 2002, 2003, 2006, 2013, 2055})


class MySQLStorage(Storage):
    """``Storage`` in a MySQL or MariaDB database.

    Args:
        host, port, user, password, database: where to connect.
        unix_socket: a socket path instead of TCP.
        durability: ``sync``, ``batch`` or ``none`` (see the module docstring).
    """

    name = "mysql"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        user: str = "tidemq",
        password: str = "",
        database: str = "tidemq",
        unix_socket: str | None = None,
        durability: Durability = "sync",
    ) -> None:
        super().__init__(durability)
        self._params: dict[str, Any] = {
            "host": host,
            "port": port,
            "user": user,
            "password": password,
            "db": database,
            "unix_socket": unix_socket,
        }
        self.where = f"mysql://{user}@{host}:{port}/{database}"
        self._opened = False
        self._conn: Any = None  # aiomysql.Connection (the driver is untyped)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<MySQLStorage {self.where!r}>"

    # --- connection ----------------------------------------------------------------------

    async def _connect(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._conn = None
        conn = await aiomysql.connect(
            **self._params,
            autocommit=True,
            charset="utf8mb4",
            connect_timeout=CONNECT_TIMEOUT,
        )
        try:
            async with conn.cursor() as cur:
                await cur.execute(
                    "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"
                )
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        if not self._opened:
            raise StorageError("MySQL storage is not open")
        async with self._lock:
            try:
                conn = await asyncio.wait_for(self._connect(), CONNECT_TIMEOUT * 2)
                return await asyncio.wait_for(fn(conn), COMMAND_TIMEOUT)
            except StorageError:
                raise
            except asyncio.CancelledError:
                self._drop()  # cancelled mid-reply: the connection is out of step
                raise
            except Exception as exc:
                conn = self._conn
                if _unavailable(exc) or (conn is not None and conn.closed):
                    # After a timeout the connection is mid-reply: never reuse it.
                    self._drop()
                    raise StorageUnavailable(f"MySQL at {self.where} unavailable: {exc}") from exc
                if isinstance(exc, pymysql.MySQLError):
                    raise StorageError(f"MySQL error: {exc}") from exc
                raise

    # --- open / close --------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            await self._call(self._migrate)
            if self.durability == "sync":
                await self._call(self._check_durability)
        except BaseException:
            self._opened = False
            self._drop()
            raise
        log.info("MySQL storage at %s (durability %s)", self.where, self.durability)

    async def _migrate(self, conn: Any) -> None:
        async with conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK('tidemq_schema', %s)", (COMMAND_TIMEOUT,))
            try:
                await cur.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = DATABASE() AND table_name IN "
                    "('tidemq_schema', 'tidemq_sessions')"
                )
                tables = {row[0] for row in await cur.fetchall()}
                if "tidemq_sessions" in tables and "tidemq_schema" not in tables:
                    raise StorageError(
                        "the database has tidemq_* tables but no tidemq_schema; "
                        "refusing to use or change them"
                    )
                if "tidemq_schema" not in tables:
                    await cur.execute(
                        "CREATE TABLE IF NOT EXISTS tidemq_schema (version INT NOT NULL "
                        f"PRIMARY KEY, applied_at DOUBLE NOT NULL) {_TABLE_OPTIONS}"
                    )
                await cur.execute("SELECT COALESCE(MAX(version), 0) FROM tidemq_schema")
                current = int((await cur.fetchone())[0])
                latest = MIGRATIONS[-1][0]
                if current > latest:
                    raise StorageError(
                        f"the database has TideMQ schema version {current}, newer than this "
                        f"TideMQ supports ({latest}); upgrade TideMQ"
                    )
                for version, statements in MIGRATIONS:
                    if version > current:
                        for statement in statements:
                            await cur.execute(statement)
                        await cur.execute(
                            "INSERT INTO tidemq_schema VALUES (%s, %s)", (version, time.time())
                        )
                        log.info("MySQL storage migrated to schema version %d", version)
            finally:
                await cur.execute("SELECT RELEASE_LOCK('tidemq_schema')")

    async def _check_durability(self, conn: Any) -> None:
        async with conn.cursor() as cur:
            await cur.execute("SELECT @@innodb_flush_log_at_trx_commit")
            (value,) = await cur.fetchone()
        if int(value) != 1:
            log.warning(
                "MySQL at %s runs with innodb_flush_log_at_trx_commit=%s: storage "
                "durability 'sync' needs 1, or acknowledged messages can be lost when the "
                "server stops",
                self.where,
                value,
            )

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.ensure_closed(), CONNECT_TIMEOUT)
                except (OSError, pymysql.MySQLError):
                    conn.close()

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        if batch.ops:
            await self._call(lambda conn: _apply(conn, batch))

    # --- loads ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        async def fetch(conn: Any) -> list[Any]:
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                rows: list[Any] = list(await cur.fetchall())
                return rows

        rows: list[Any] = await self._call(fetch)
        return rows

    async def _fetch_client(
        self, columns: str, table: str, order: str, client_id: str | None
    ) -> list[Any]:
        if client_id is None:
            return await self._fetch(f"SELECT {columns} FROM {table} ORDER BY {order}")
        return await self._fetch(
            f"SELECT {columns} FROM {table} WHERE ckey = %s ORDER BY {order}", (_h(client_id),)
        )

    async def load_sessions(self) -> list[SessionRecord]:
        rows = await self._fetch(
            f"SELECT {_sql.SESSION_COLUMNS} FROM tidemq_sessions ORDER BY client_id"
        )
        return [_sql.session_from_row(r) for r in rows]

    async def load_subscriptions(self, client_id: str | None = None) -> list[SubscriptionRecord]:
        rows = await self._fetch_client(
            _sql.SUBSCRIPTION_COLUMNS, "tidemq_subscriptions", "client_id, topic_filter", client_id
        )
        return [_sql.subscription_from_row(r) for r in rows]

    async def load_queue(self, client_id: str | None = None) -> list[QueuedRecord]:
        rows = await self._fetch_client(
            _sql.QUEUE_COLUMNS, "tidemq_queue", "client_id, seq", client_id
        )
        return [_sql.queued_from_row(r) for r in rows]

    async def load_inflight(self, client_id: str | None = None) -> list[InflightRecord]:
        rows = await self._fetch_client(
            _sql.INFLIGHT_COLUMNS, "tidemq_inflight", "client_id, seq, packet_id", client_id
        )
        return [_sql.inflight_from_row(r) for r in rows]

    async def load_incoming_qos2(self, client_id: str | None = None) -> list[IncomingQos2Record]:
        rows = await self._fetch_client(
            _sql.INCOMING_COLUMNS, "tidemq_incoming_qos2", "client_id, packet_id", client_id
        )
        return [_sql.incoming_from_row(r) for r in rows]

    async def load_retained(self) -> list[RetainedRecord]:
        rows = await self._fetch(
            f"SELECT {_sql.RETAINED_COLUMNS} FROM tidemq_retained ORDER BY topic"
        )
        return [_sql.retained_from_row(r) for r in rows]

    async def get_messages(self, message_ids: Collection[int]) -> dict[int, MessageRecord]:
        ids = list(message_ids)
        out: dict[int, MessageRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join(["%s"] * len(chunk))
            rows = await self._fetch(
                f"SELECT {_sql.MESSAGE_COLUMNS} FROM tidemq_messages WHERE message_id IN ({marks})",
                chunk,
            )
            out.update((r[0], _sql.message_from_row(r)) for r in rows)
        return out

    async def max_message_id(self) -> int:
        rows = await self._fetch("SELECT COALESCE(MAX(message_id), 0) FROM tidemq_messages")
        return int(rows[0][0])

    async def purge_expired(self, now: float) -> int:
        async def purge(conn: Any) -> int:
            removed = 0
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    for statement, takes_now, counted in _PURGE:
                        count = await cur.execute(statement, (now,) if takes_now else ())
                        if counted:
                            removed += count
                await conn.commit()
            except BaseException:
                await _rollback(conn)
                raise
            return removed

        removed: int = await self._call(purge)
        return removed

    # --- users and bans ------------------------------------------------------------------

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> int:
        async def execute(conn: Any) -> int:
            async with conn.cursor() as cur:
                count: int = await cur.execute(sql, args)
                return count

        count: int = await self._call(execute)
        return count

    async def get_user(self, username: str) -> UserRecord | None:
        rows = await self._fetch(
            f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users WHERE ukey = %s", (_h(username),)
        )
        return _sql.user_from_row(rows[0]) if rows else None

    async def put_user(self, record: UserRecord) -> None:
        await self._execute(_PUT_USER, (_h(record.username), *_sql.user_params(record)))

    async def delete_user(self, username: str) -> bool:
        return await self._execute("DELETE FROM tidemq_users WHERE ukey = %s", (_h(username),)) > 0

    async def list_users(self) -> list[UserRecord]:
        rows = await self._fetch(f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users ORDER BY username")
        return [_sql.user_from_row(r) for r in rows]

    async def put_ban(self, record: BanRecord) -> None:
        key = _ban_key(record.kind, record.value)
        await self._execute(_PUT_BAN, (key, *_sql.ban_params(record)))

    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        sql = "DELETE FROM tidemq_bans WHERE bkey = %s"
        return await self._execute(sql, (_ban_key(kind, value),)) > 0

    async def list_bans(self) -> list[BanRecord]:
        rows = await self._fetch(
            f"SELECT {_sql.BAN_COLUMNS} FROM tidemq_bans ORDER BY ban_kind, ban_value"
        )
        return [_sql.ban_from_row(r) for r in rows]

    # --- built-in ACL rules --------------------------------------------------------------

    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        params = (_who_key(record.who_kind, record.who), *_sql.acl_params(record))

        async def insert(conn: Any) -> int:
            async with conn.cursor() as cur:
                await cur.execute(_ADD_ACL, params)
                return int(cur.lastrowid)

        rule_id: int = await self._call(insert)
        return replace(record, rule_id=rule_id)

    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        if who_kind is None:
            rows = await self._fetch(f"{_SELECT_ACL} ORDER BY rule_id")
        else:
            rows = await self._fetch(
                f"{_SELECT_ACL} WHERE wkey = %s ORDER BY rule_id", (_who_key(who_kind, who),)
            )
        return [_sql.acl_from_row(r) for r in rows]

    async def delete_acl_rule(self, rule_id: int) -> bool:
        return await self._execute("DELETE FROM tidemq_acl WHERE rule_id = %s", (rule_id,)) > 0


async def _apply(conn: Any, batch: WriteBatch) -> None:
    await conn.begin()
    try:
        async with conn.cursor() as cur:
            for run in batch.runs():
                await _write_run(cur, run)
        await conn.commit()
    except BaseException:
        await _rollback(conn)
        raise


async def _write_run(cur: Any, run: list[Op]) -> None:
    spec = _WRITES.get(type(run[0]))
    if spec is None:
        raise StorageError(f"unknown storage operation {run[0]!r}")
    statements, params = spec
    rows = [params(op) for op in run]
    for statement in statements:
        await cur.executemany(statement, rows)


async def _rollback(conn: Any) -> None:
    if conn.closed:
        return
    try:
        await conn.rollback()
    except (OSError, pymysql.MySQLError) as exc:
        log.debug("MySQL rollback failed: %s", exc)
        conn.close()


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, OSError | pymysql.err.InterfaceError):  # incl. TimeoutError
        return True
    if isinstance(exc, pymysql.err.OperationalError) and exc.args:
        return exc.args[0] in _UNAVAILABLE_CODES
    return False


def from_url(url: str, data_dir: str, durability: Durability) -> MySQLStorage:
    """The ``create_storage`` hook: ``mysql://USER:PASSWORD@HOST:PORT/DATABASE`` (or
    ``mariadb://``), with an optional ``?unix_socket=/path``."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb"):
        raise StorageError(
            f"bad MySQL URL {_redact(url)!r}: use mysql://USER:PASSWORD@HOST:PORT/DATABASE"
        )
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise StorageError(f"bad MySQL URL {_redact(url)!r}: no database name after the host")
    query = dict(parse_qsl(parts.query))
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise StorageError(f"bad MySQL URL {_redact(url)!r}: {exc}") from None
    return MySQLStorage(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or "tidemq"),
        password=unquote(parts.password or ""),
        database=database,
        unix_socket=query.get("unix_socket"),
        durability=durability,
    )


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
