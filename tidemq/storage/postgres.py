"""The PostgreSQL backend (asyncpg): tables prefixed ``tidemq_`` in any database.

Theory of operation
-------------------
* **One connection**, opened by ``open`` and guarded by a lock: group commit sends one
  batch at a time anyway. A batch is one transaction, each run of same-type operations one
  pipelined ``executemany``.
* **Durability**: ``synchronous_commit`` is ``on`` under ``durability = "sync"`` (the commit
  waits for the WAL flush) and ``off`` under ``batch`` and ``none`` (the commit returns before
  the flush; a server crash may lose the last few hundred milliseconds, never consistency).
* **Keys**: a btree entry cannot exceed about 2.7 kB, while client ids and topics may be
  64 KiB, so rows are keyed by the SHA-256 of the client id (``ckey``), topic filter
  (``fkey``) or topic (``tkey``); the text is stored beside it.
* **Schema versions**: ``tidemq_schema`` holds one row per applied migration; ``open``
  applies the missing ones in one transaction under an advisory lock, so brokers starting
  together do not race. A newer version than this TideMQ knows is refused.
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
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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

__all__ = ["MIGRATIONS", "PostgresStorage", "from_url"]

log = logging.getLogger(__name__)

# Seconds to wait for a connection, and for any one statement, before giving up.
CONNECT_TIMEOUT: Final = 5.0
COMMAND_TIMEOUT: Final = 30.0
# pg_advisory_xact_lock key that serialises migrations ("TIDEMQ" in ASCII).
_MIGRATION_LOCK: Final = 0x5449_4445_4D51

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """CREATE TABLE tidemq_sessions (
                ckey BYTEA PRIMARY KEY,
                client_id TEXT COLLATE "C" NOT NULL,
                expiry_interval BIGINT NOT NULL,
                protocol_version SMALLINT NOT NULL,
                username TEXT,
                disconnected_at DOUBLE PRECISION,
                expires_at DOUBLE PRECISION,
                will_topic TEXT,
                will_payload BYTEA,
                will_qos SMALLINT,
                will_retain BOOLEAN,
                will_properties BYTEA,
                will_delay BIGINT)""",
            "CREATE INDEX tidemq_sessions_expires ON tidemq_sessions (expires_at) "
            "WHERE expires_at IS NOT NULL",
            """CREATE TABLE tidemq_subscriptions (
                ckey BYTEA NOT NULL,
                fkey BYTEA NOT NULL,
                client_id TEXT COLLATE "C" NOT NULL,
                topic_filter TEXT COLLATE "C" NOT NULL,
                qos SMALLINT NOT NULL,
                no_local BOOLEAN NOT NULL,
                retain_as_published BOOLEAN NOT NULL,
                retain_handling SMALLINT NOT NULL,
                subscription_id INTEGER,
                share_group TEXT,
                PRIMARY KEY (ckey, fkey))""",
            """CREATE TABLE tidemq_messages (
                message_id BIGINT PRIMARY KEY,
                topic TEXT COLLATE "C" NOT NULL,
                payload BYTEA NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                properties BYTEA NOT NULL,
                sender TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION)""",
            "CREATE INDEX tidemq_messages_expires ON tidemq_messages (expires_at) "
            "WHERE expires_at IS NOT NULL",
            """CREATE TABLE tidemq_queue (
                ckey BYTEA NOT NULL,
                seq BIGINT NOT NULL,
                client_id TEXT COLLATE "C" NOT NULL,
                message_id BIGINT NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                sub_ids TEXT NOT NULL,
                PRIMARY KEY (ckey, seq))""",
            "CREATE INDEX tidemq_queue_message ON tidemq_queue (message_id)",
            """CREATE TABLE tidemq_inflight (
                ckey BYTEA NOT NULL,
                packet_id INTEGER NOT NULL,
                client_id TEXT COLLATE "C" NOT NULL,
                message_id BIGINT NOT NULL,
                qos SMALLINT NOT NULL,
                retain BOOLEAN NOT NULL,
                sub_ids TEXT NOT NULL,
                released BOOLEAN NOT NULL,
                seq BIGINT NOT NULL,
                PRIMARY KEY (ckey, packet_id))""",
            "CREATE INDEX tidemq_inflight_message ON tidemq_inflight (message_id)",
            """CREATE TABLE tidemq_incoming_qos2 (
                ckey BYTEA NOT NULL,
                packet_id INTEGER NOT NULL,
                client_id TEXT COLLATE "C" NOT NULL,
                received_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (ckey, packet_id))""",
            """CREATE TABLE tidemq_retained (
                tkey BYTEA PRIMARY KEY,
                topic TEXT COLLATE "C" NOT NULL,
                payload BYTEA NOT NULL,
                qos SMALLINT NOT NULL,
                properties BYTEA NOT NULL,
                sender TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION)""",
            "CREATE INDEX tidemq_retained_expires ON tidemq_retained (expires_at) "
            "WHERE expires_at IS NOT NULL",
        ),
    ),
    (
        2,
        (
            """CREATE TABLE tidemq_users (
                ukey BYTEA PRIMARY KEY,
                username TEXT COLLATE "C" NOT NULL,
                password_hash TEXT NOT NULL,
                superuser BOOLEAN NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION)""",
            """CREATE TABLE tidemq_bans (
                bkey BYTEA PRIMARY KEY,
                ban_kind TEXT COLLATE "C" NOT NULL,
                ban_value TEXT COLLATE "C" NOT NULL,
                reason TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION,
                banned_by TEXT NOT NULL)""",
        ),
    ),
    (
        3,
        (
            # An identity column never gives a deleted rule's id again. wkey is the hash of
            # "<who_kind>:<who>" (a username or client id can be too long for a btree).
            """CREATE TABLE tidemq_acl (
                rule_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                wkey BYTEA NOT NULL,
                who_kind TEXT COLLATE "C" NOT NULL,
                who TEXT COLLATE "C" NOT NULL,
                permission TEXT NOT NULL,
                acl_action TEXT NOT NULL,
                topic TEXT COLLATE "C" NOT NULL,
                qos_levels TEXT NOT NULL,
                retain BOOLEAN,
                created_at DOUBLE PRECISION NOT NULL)""",
            "CREATE INDEX tidemq_acl_who ON tidemq_acl (wkey, rule_id)",
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


def _upsert(table: str, conflict: tuple[str, ...], names: tuple[str, ...]) -> str:
    """INSERT of *names* (in order) … ON CONFLICT (*conflict*) DO UPDATE the others."""
    marks = ", ".join(f"${i}" for i in range(1, len(names) + 1))
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in names if n not in conflict)
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO UPDATE SET {updates}"
    )


def _h(text: str) -> bytes:
    return _sql.key_hash(text)


# Operation type → (statements, parameters of one operation).
_WRITES: Final[dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]]] = {
    PutSession: (
        (_upsert("tidemq_sessions", ("ckey",), _columns("ckey", columns=_sql.SESSION_COLUMNS)),),
        lambda op: (_h(op.record.client_id), *_sql.session_params(op.record)),
    ),
    DeleteSession: (
        tuple(f"DELETE FROM {t} WHERE ckey = $1" for t in ("tidemq_sessions", *_CLIENT_TABLES)),
        lambda op: (_h(op.client_id),),
    ),
    PutSubscription: (
        (
            _upsert(
                "tidemq_subscriptions",
                ("ckey", "fkey"),
                _columns("ckey", "fkey", columns=_sql.SUBSCRIPTION_COLUMNS),
            ),
        ),
        lambda op: (
            _h(op.record.client_id),
            _h(op.record.topic_filter),
            *_sql.subscription_params(op.record),
        ),
    ),
    DeleteSubscription: (
        ("DELETE FROM tidemq_subscriptions WHERE ckey = $1 AND fkey = $2",),
        lambda op: (_h(op.client_id), _h(op.topic_filter)),
    ),
    PutMessage: (
        (_upsert("tidemq_messages", ("message_id",), _columns(columns=_sql.MESSAGE_COLUMNS)),),
        lambda op: _sql.message_params(op.record),
    ),
    DeleteMessage: (
        ("DELETE FROM tidemq_messages WHERE message_id = $1",),
        lambda op: (op.message_id,),
    ),
    Enqueue: (
        (_upsert("tidemq_queue", ("ckey", "seq"), _columns("ckey", columns=_sql.QUEUE_COLUMNS)),),
        lambda op: (_h(op.record.client_id), *_sql.queued_params(op.record)),
    ),
    Dequeue: (
        ("DELETE FROM tidemq_queue WHERE ckey = $1 AND seq = $2",),
        lambda op: (_h(op.client_id), op.seq),
    ),
    PutInflight: (
        (
            _upsert(
                "tidemq_inflight",
                ("ckey", "packet_id"),
                _columns("ckey", columns=_sql.INFLIGHT_COLUMNS),
            ),
        ),
        lambda op: (_h(op.record.client_id), *_sql.inflight_params(op.record)),
    ),
    DeleteInflight: (
        ("DELETE FROM tidemq_inflight WHERE ckey = $1 AND packet_id = $2",),
        lambda op: (_h(op.client_id), op.packet_id),
    ),
    PutIncomingQos2: (
        (
            _upsert(
                "tidemq_incoming_qos2",
                ("ckey", "packet_id"),
                _columns("ckey", columns=_sql.INCOMING_COLUMNS),
            ),
        ),
        lambda op: (_h(op.record.client_id), *_sql.incoming_params(op.record)),
    ),
    DeleteIncomingQos2: (
        ("DELETE FROM tidemq_incoming_qos2 WHERE ckey = $1 AND packet_id = $2",),
        lambda op: (_h(op.client_id), op.packet_id),
    ),
    SetRetained: (
        (_upsert("tidemq_retained", ("tkey",), _columns("tkey", columns=_sql.RETAINED_COLUMNS)),),
        lambda op: (_h(op.record.topic), *_sql.retained_params(op.record)),
    ),
    DeleteRetained: (
        ("DELETE FROM tidemq_retained WHERE tkey = $1",),
        lambda op: (_h(op.topic),),
    ),
}


# purge_expired's statements, in order, each with whether it counts towards the result.
_PURGE: Final[tuple[tuple[str, bool], ...]] = (
    *(
        (
            f"DELETE FROM {t} WHERE ckey IN "
            "(SELECT ckey FROM tidemq_sessions WHERE expires_at <= $1)",
            False,
        )
        for t in _CLIENT_TABLES
    ),
    ("DELETE FROM tidemq_sessions WHERE expires_at <= $1", True),
    ("DELETE FROM tidemq_retained WHERE expires_at <= $1", True),
    ("DELETE FROM tidemq_bans WHERE expires_at <= $1", True),
    (
        "DELETE FROM tidemq_queue WHERE message_id IN "
        "(SELECT message_id FROM tidemq_messages WHERE expires_at <= $1)",
        False,
    ),
    (
        "DELETE FROM tidemq_messages m WHERE "
        "NOT EXISTS (SELECT 1 FROM tidemq_queue q WHERE q.message_id = m.message_id) "
        "AND NOT EXISTS (SELECT 1 FROM tidemq_inflight i WHERE i.message_id = m.message_id)",
        True,
    ),
)

_PUT_USER: Final = _upsert("tidemq_users", ("ukey",), _columns("ukey", columns=_sql.USER_COLUMNS))
_PUT_BAN: Final = _upsert("tidemq_bans", ("bkey",), _columns("bkey", columns=_sql.BAN_COLUMNS))


def _ban_key(kind: str, value: str) -> bytes:
    return _sql.key_hash(f"{kind}:{value}")


_ADD_ACL: Final = (
    f"INSERT INTO tidemq_acl (wkey, {_sql.ACL_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING rule_id"
)
_SELECT_ACL: Final = f"SELECT rule_id, {_sql.ACL_COLUMNS} FROM tidemq_acl"


def _who_key(kind: str, who: str) -> bytes:
    return _sql.key_hash(f"{kind}:{'' if kind == 'all' else who}")


# Errors after which the connection is gone or the server refuses work for now.
_UNAVAILABLE: Final = (
    OSError,  # includes ConnectionError and TimeoutError
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, cannot connect now
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)


def _rowcount(status: str) -> int:
    """The row count of a command status such as ``DELETE 3``."""
    return int(status.rpartition(" ")[2] or 0)


class PostgresStorage(Storage):
    """``Storage`` in a PostgreSQL database.

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq style; asyncpg).
        durability: ``sync``, ``batch`` or ``none`` (see ``tidemq.storage.api.Durability``).
    """

    name = "postgres"

    def __init__(self, url: str, durability: Durability = "sync") -> None:
        super().__init__(durability)
        self.url = url
        self._opened = False
        self._conn: Any = None  # asyncpg.Connection (the driver is untyped)
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<PostgresStorage {_redact(self.url)!r}>"

    # --- connection ----------------------------------------------------------------------

    async def _connect(self) -> Any:
        conn = self._conn
        if conn is not None and not conn.is_closed():
            return conn
        self._conn = None
        conn = await asyncpg.connect(
            self.url,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={
                "application_name": "tidemq",
                "synchronous_commit": "on" if self.durability == "sync" else "off",
            },
        )
        self._conn = conn
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        if not self._opened:
            raise StorageError("PostgreSQL storage is not open")
        async with self._lock:
            try:
                conn = await self._connect()
                return await fn(conn)
            except StorageError:
                raise
            except Exception as exc:
                conn = self._conn
                if isinstance(exc, _UNAVAILABLE) or (
                    isinstance(exc, asyncpg.InterfaceError) and (conn is None or conn.is_closed())
                ):
                    await self._drop()
                    raise StorageUnavailable(
                        f"PostgreSQL at {_redact(self.url)} unavailable: {exc}"
                    ) from exc
                if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
                    raise StorageError(f"PostgreSQL error: {exc}") from exc
                raise

    # --- open / close --------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        try:
            await self._call(self._migrate)
        except BaseException:
            self._opened = False
            await self._drop()
            raise
        log.info("PostgreSQL storage at %s (durability %s)", _redact(self.url), self.durability)

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            ours = await conn.fetchval("SELECT to_regclass('tidemq_schema') IS NOT NULL")
            if not ours and await conn.fetchval(
                "SELECT to_regclass('tidemq_sessions') IS NOT NULL"
            ):
                raise StorageError(
                    "the database has tidemq_* tables but no tidemq_schema; "
                    "refusing to use or change them"
                )
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS tidemq_schema "
                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
            )
            current = await conn.fetchval("SELECT COALESCE(MAX(version), 0) FROM tidemq_schema")
            latest = MIGRATIONS[-1][0]
            if current > latest:
                raise StorageError(
                    f"the database has TideMQ schema version {current}, newer than this "
                    f"TideMQ supports ({latest}); upgrade TideMQ"
                )
            for version, statements in MIGRATIONS:
                if version > current:
                    for statement in statements:
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO tidemq_schema VALUES ($1, $2)", version, time.time()
                    )
                    log.info("PostgreSQL storage migrated to schema version %d", version)

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), CONNECT_TIMEOUT)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    conn.terminate()

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        if batch.ops:
            await self._call(lambda conn: self._apply(conn, batch))

    @staticmethod
    async def _apply(conn: Any, batch: WriteBatch) -> None:
        async with conn.transaction():
            for run in batch.runs():
                await _write_run(conn, run)

    # --- loads ---------------------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._call(lambda conn: conn.fetch(sql, *args))
        return rows

    async def _fetch_client(
        self, columns: str, table: str, order: str, client_id: str | None
    ) -> list[Any]:
        if client_id is None:
            return await self._fetch(f"SELECT {columns} FROM {table} ORDER BY {order}")
        return await self._fetch(
            f"SELECT {columns} FROM {table} WHERE ckey = $1 ORDER BY {order}", _h(client_id)
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
        if not message_ids:
            return {}
        rows = await self._fetch(
            f"SELECT {_sql.MESSAGE_COLUMNS} FROM tidemq_messages WHERE message_id = ANY($1)",
            list(message_ids),
        )
        return {r[0]: _sql.message_from_row(r) for r in rows}

    async def max_message_id(self) -> int:
        value = await self._call(
            lambda conn: conn.fetchval("SELECT COALESCE(MAX(message_id), 0) FROM tidemq_messages")
        )
        return int(value)

    async def purge_expired(self, now: float) -> int:
        async def purge(conn: Any) -> int:
            removed = 0
            async with conn.transaction():
                for statement, counted in _PURGE:
                    status = await conn.execute(
                        statement, *(() if "$1" not in statement else (now,))
                    )
                    if counted:
                        removed += _rowcount(status)
            return removed

        removed: int = await self._call(purge)
        return removed

    # --- users and bans ------------------------------------------------------------------

    async def _execute(self, sql: str, *args: Any) -> int:
        status: str = await self._call(lambda conn: conn.execute(sql, *args))
        return _rowcount(status)

    async def get_user(self, username: str) -> UserRecord | None:
        rows = await self._fetch(
            f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users WHERE ukey = $1", _h(username)
        )
        return _sql.user_from_row(rows[0]) if rows else None

    async def put_user(self, record: UserRecord) -> None:
        await self._execute(_PUT_USER, _h(record.username), *_sql.user_params(record))

    async def delete_user(self, username: str) -> bool:
        return await self._execute("DELETE FROM tidemq_users WHERE ukey = $1", _h(username)) > 0

    async def list_users(self) -> list[UserRecord]:
        rows = await self._fetch(f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users ORDER BY username")
        return [_sql.user_from_row(r) for r in rows]

    async def put_ban(self, record: BanRecord) -> None:
        key = _ban_key(record.kind, record.value)
        await self._execute(_PUT_BAN, key, *_sql.ban_params(record))

    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        sql = "DELETE FROM tidemq_bans WHERE bkey = $1"
        return await self._execute(sql, _ban_key(kind, value)) > 0

    async def list_bans(self) -> list[BanRecord]:
        rows = await self._fetch(
            f"SELECT {_sql.BAN_COLUMNS} FROM tidemq_bans ORDER BY ban_kind, ban_value"
        )
        return [_sql.ban_from_row(r) for r in rows]

    # --- built-in ACL rules --------------------------------------------------------------

    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        key = _who_key(record.who_kind, record.who)
        params = _sql.acl_params(record)
        rule_id = await self._call(lambda conn: conn.fetchval(_ADD_ACL, key, *params))
        return replace(record, rule_id=int(rule_id))

    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        if who_kind is None:
            rows = await self._fetch(f"{_SELECT_ACL} ORDER BY rule_id")
        else:
            rows = await self._fetch(
                f"{_SELECT_ACL} WHERE wkey = $1 ORDER BY rule_id", _who_key(who_kind, who)
            )
        return [_sql.acl_from_row(r) for r in rows]

    async def delete_acl_rule(self, rule_id: int) -> bool:
        return await self._execute("DELETE FROM tidemq_acl WHERE rule_id = $1", rule_id) > 0


async def _write_run(conn: Any, run: list[Op]) -> None:
    spec = _WRITES.get(type(run[0]))
    if spec is None:
        raise StorageError(f"unknown storage operation {run[0]!r}")
    statements, params = spec
    rows = [params(op) for op in run]
    for statement in statements:
        await conn.executemany(statement, rows)


def _redact(url: str) -> str:
    """*url* without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def from_url(url: str, data_dir: str, durability: Durability) -> PostgresStorage:
    """The ``create_storage`` hook: a ``postgresql://`` (or ``postgres://``) URL."""
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise StorageError(
            f"bad PostgreSQL URL {_redact(url)!r}: use postgresql://USER:PASSWORD@HOST:PORT/DB"
        )
    return PostgresStorage(url, durability)
