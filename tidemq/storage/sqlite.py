"""The SQLite backend, TideMQ's default: one file under the data directory.

Theory of operation
-------------------
* **One thread.** The stdlib ``sqlite3`` connection lives in one dedicated thread (a
  single-worker executor); every call runs there, so the event loop never blocks on disk
  and the connection is never shared between threads.
* **Durability.** WAL journal; ``synchronous=FULL`` under ``durability = "sync"`` (each
  commit is fsynced before ``apply`` returns), ``NORMAL`` under ``batch``, ``OFF`` under
  ``none``. One ``apply`` is one ``BEGIN IMMEDIATE … COMMIT``.
* **One owner, and admin beside it.** The broker holds an exclusive ``flock`` on
  ``tidemq.db.lock`` beside the database from ``open`` to ``close``, so a second broker on
  the same data directory gets a clear error instead of two writers; the lock goes with the
  process, even on SIGKILL. The database itself is in the normal locking mode, so that an
  administrative process (``tidemq ctl``, ``Storage.shared``) can read and write users and
  bans while the broker runs: WAL lets it read beside the broker, and a writer waits up to
  ``_BUSY_TIMEOUT`` for the other's transaction to end.
* **Never clobber.** The data directory is created ``0700`` and the file ``0600``. A file at
  the path that is not SQLite, is corrupt, or is another program's database (tables but no
  ``tidemq_schema``) is refused with ``StorageError`` at ``open`` and left byte for byte as
  it was: it is inspected through a read-only connection before anything writes to it.
* **Schema versions.** ``tidemq_schema`` holds one row per applied migration;
  ``MIGRATIONS`` lists them, each applied in its own transaction (SQLite DDL is
  transactional). A file with a newer version than this TideMQ knows is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote

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
    SubscriptionRecord,
    UserRecord,
    WriteBatch,
)

__all__ = ["DEFAULT_FILENAME", "MIGRATIONS", "SQLiteStorage", "from_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The database file's name inside the data directory.
DEFAULT_FILENAME: Final = "tidemq.db"
# The first 16 bytes of every SQLite 3 database file.
_MAGIC: Final = b"SQLite format 3\x00"
# How long to wait for a lock held by another connection before failing (seconds): rides
# out a transaction of the broker or of ``tidemq ctl``, which are short.
_BUSY_TIMEOUT: Final = 5.0
#: Beside the database: the broker's ownership lock (``flock``).
LOCK_SUFFIX: Final = ".lock"
_SYNCHRONOUS: Final[dict[str, str]] = {"sync": "FULL", "batch": "NORMAL", "none": "OFF"}

MIGRATIONS: Final[tuple[tuple[int, tuple[str, ...]], ...]] = (
    (
        1,
        (
            """CREATE TABLE tidemq_sessions (
                client_id TEXT PRIMARY KEY NOT NULL,
                expiry_interval INTEGER NOT NULL,
                protocol_version INTEGER NOT NULL,
                username TEXT,
                disconnected_at REAL,
                expires_at REAL,
                will_topic TEXT,
                will_payload BLOB,
                will_qos INTEGER,
                will_retain INTEGER,
                will_properties BLOB,
                will_delay INTEGER)""",
            "CREATE INDEX tidemq_sessions_expires ON tidemq_sessions (expires_at) "
            "WHERE expires_at IS NOT NULL",
            """CREATE TABLE tidemq_subscriptions (
                client_id TEXT NOT NULL,
                topic_filter TEXT NOT NULL,
                qos INTEGER NOT NULL,
                no_local INTEGER NOT NULL,
                retain_as_published INTEGER NOT NULL,
                retain_handling INTEGER NOT NULL,
                subscription_id INTEGER,
                share_group TEXT,
                PRIMARY KEY (client_id, topic_filter)) WITHOUT ROWID""",
            """CREATE TABLE tidemq_messages (
                message_id INTEGER PRIMARY KEY,
                topic TEXT NOT NULL,
                payload BLOB NOT NULL,
                qos INTEGER NOT NULL,
                retain INTEGER NOT NULL,
                properties BLOB NOT NULL,
                sender TEXT,
                created_at REAL NOT NULL,
                expires_at REAL)""",
            "CREATE INDEX tidemq_messages_expires ON tidemq_messages (expires_at) "
            "WHERE expires_at IS NOT NULL",
            """CREATE TABLE tidemq_queue (
                client_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                message_id INTEGER NOT NULL,
                qos INTEGER NOT NULL,
                retain INTEGER NOT NULL,
                sub_ids TEXT NOT NULL,
                PRIMARY KEY (client_id, seq)) WITHOUT ROWID""",
            "CREATE INDEX tidemq_queue_message ON tidemq_queue (message_id)",
            """CREATE TABLE tidemq_inflight (
                client_id TEXT NOT NULL,
                packet_id INTEGER NOT NULL,
                message_id INTEGER NOT NULL,
                qos INTEGER NOT NULL,
                retain INTEGER NOT NULL,
                sub_ids TEXT NOT NULL,
                released INTEGER NOT NULL,
                seq INTEGER NOT NULL,
                PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID""",
            "CREATE INDEX tidemq_inflight_message ON tidemq_inflight (message_id)",
            """CREATE TABLE tidemq_incoming_qos2 (
                client_id TEXT NOT NULL,
                packet_id INTEGER NOT NULL,
                received_at REAL NOT NULL,
                PRIMARY KEY (client_id, packet_id)) WITHOUT ROWID""",
            """CREATE TABLE tidemq_retained (
                topic TEXT PRIMARY KEY NOT NULL,
                payload BLOB NOT NULL,
                qos INTEGER NOT NULL,
                properties BLOB NOT NULL,
                sender TEXT,
                created_at REAL NOT NULL,
                expires_at REAL)""",
        ),
    ),
    (
        2,
        (
            """CREATE TABLE tidemq_users (
                username TEXT PRIMARY KEY NOT NULL,
                password_hash TEXT NOT NULL,
                superuser INTEGER NOT NULL,
                created_at REAL NOT NULL,
                updated_at REAL)""",
            """CREATE TABLE tidemq_bans (
                ban_kind TEXT NOT NULL,
                ban_value TEXT NOT NULL,
                reason TEXT NOT NULL,
                created_at REAL NOT NULL,
                expires_at REAL,
                banned_by TEXT NOT NULL,
                PRIMARY KEY (ban_kind, ban_value)) WITHOUT ROWID""",
        ),
    ),
    (
        3,
        (
            # AUTOINCREMENT: a deleted rule's id is never given again, so an id seen in
            # `tidemq ctl acl list` cannot come to mean another rule.
            """CREATE TABLE tidemq_acl (
                rule_id INTEGER PRIMARY KEY AUTOINCREMENT,
                who_kind TEXT NOT NULL,
                who TEXT NOT NULL,
                permission TEXT NOT NULL,
                acl_action TEXT NOT NULL,
                topic TEXT NOT NULL,
                qos_levels TEXT NOT NULL,
                retain INTEGER,
                created_at REAL NOT NULL)""",
            "CREATE INDEX tidemq_acl_who ON tidemq_acl (who_kind, who, rule_id)",
        ),
    ),
)
assert MIGRATIONS[-1][0] == _sql.SCHEMA_VERSION

# The tables a client's rows live in, for delete_session's cascade.
_CLIENT_TABLES: Final = (
    "tidemq_subscriptions",
    "tidemq_queue",
    "tidemq_inflight",
    "tidemq_incoming_qos2",
)

_PUT_SESSION: Final = (
    f"INSERT OR REPLACE INTO tidemq_sessions ({_sql.SESSION_COLUMNS}) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
)
_PUT_SUBSCRIPTION: Final = (
    f"INSERT OR REPLACE INTO tidemq_subscriptions ({_sql.SUBSCRIPTION_COLUMNS}) "
    "VALUES (?,?,?,?,?,?,?,?)"
)
_PUT_MESSAGE: Final = (
    f"INSERT OR REPLACE INTO tidemq_messages ({_sql.MESSAGE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)"
)
_ENQUEUE: Final = f"INSERT OR REPLACE INTO tidemq_queue ({_sql.QUEUE_COLUMNS}) VALUES (?,?,?,?,?,?)"
_PUT_INFLIGHT: Final = (
    f"INSERT OR REPLACE INTO tidemq_inflight ({_sql.INFLIGHT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
)
_PUT_INCOMING: Final = (
    f"INSERT OR REPLACE INTO tidemq_incoming_qos2 ({_sql.INCOMING_COLUMNS}) VALUES (?,?,?)"
)
_SET_RETAINED: Final = (
    f"INSERT OR REPLACE INTO tidemq_retained ({_sql.RETAINED_COLUMNS}) VALUES (?,?,?,?,?,?,?)"
)


def _session_params(op: PutSession) -> tuple[Any, ...]:
    return _sql.session_params(op.record)


def _subscription_params(op: PutSubscription) -> tuple[Any, ...]:
    return _sql.subscription_params(op.record)


def _message_params(op: PutMessage) -> tuple[Any, ...]:
    return _sql.message_params(op.record)


def _queued_params(op: Enqueue) -> tuple[Any, ...]:
    return _sql.queued_params(op.record)


def _inflight_params(op: PutInflight) -> tuple[Any, ...]:
    return _sql.inflight_params(op.record)


def _incoming_params(op: PutIncomingQos2) -> tuple[Any, ...]:
    return _sql.incoming_params(op.record)


def _retained_params(op: SetRetained) -> tuple[Any, ...]:
    return _sql.retained_params(op.record)


# Operation type → (statements, parameters of one operation); delete_session runs one
# statement per table.
_WRITES: Final[dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]]] = {
    PutSession: ((_PUT_SESSION,), _session_params),
    DeleteSession: (
        tuple(f"DELETE FROM {t} WHERE client_id = ?" for t in ("tidemq_sessions", *_CLIENT_TABLES)),
        lambda op: (op.client_id,),
    ),
    PutSubscription: ((_PUT_SUBSCRIPTION,), _subscription_params),
    DeleteSubscription: (
        ("DELETE FROM tidemq_subscriptions WHERE client_id = ? AND topic_filter = ?",),
        lambda op: (op.client_id, op.topic_filter),
    ),
    PutMessage: ((_PUT_MESSAGE,), _message_params),
    DeleteMessage: (
        ("DELETE FROM tidemq_messages WHERE message_id = ?",),
        lambda op: (op.message_id,),
    ),
    Enqueue: ((_ENQUEUE,), _queued_params),
    Dequeue: (
        ("DELETE FROM tidemq_queue WHERE client_id = ? AND seq = ?",),
        lambda op: (op.client_id, op.seq),
    ),
    PutInflight: ((_PUT_INFLIGHT,), _inflight_params),
    DeleteInflight: (
        ("DELETE FROM tidemq_inflight WHERE client_id = ? AND packet_id = ?",),
        lambda op: (op.client_id, op.packet_id),
    ),
    PutIncomingQos2: ((_PUT_INCOMING,), _incoming_params),
    DeleteIncomingQos2: (
        ("DELETE FROM tidemq_incoming_qos2 WHERE client_id = ? AND packet_id = ?",),
        lambda op: (op.client_id, op.packet_id),
    ),
    SetRetained: ((_SET_RETAINED,), _retained_params),
    DeleteRetained: (("DELETE FROM tidemq_retained WHERE topic = ?",), lambda op: (op.topic,)),
}

# purge_expired's statements, in order, each with whether it counts towards the result.
_PURGE: Final[tuple[tuple[str, bool], ...]] = (
    *(
        (
            f"DELETE FROM {t} WHERE client_id IN "
            "(SELECT client_id FROM tidemq_sessions WHERE expires_at <= :now)",
            False,
        )
        for t in _CLIENT_TABLES
    ),
    ("DELETE FROM tidemq_sessions WHERE expires_at <= :now", True),
    ("DELETE FROM tidemq_retained WHERE expires_at <= :now", True),
    (
        "DELETE FROM tidemq_queue WHERE message_id IN "
        "(SELECT message_id FROM tidemq_messages WHERE expires_at <= :now)",
        False,
    ),
    (
        "DELETE FROM tidemq_messages WHERE NOT EXISTS "
        "(SELECT 1 FROM tidemq_queue q WHERE q.message_id = tidemq_messages.message_id) "
        "AND NOT EXISTS "
        "(SELECT 1 FROM tidemq_inflight i WHERE i.message_id = tidemq_messages.message_id)",
        True,
    ),
    ("DELETE FROM tidemq_bans WHERE expires_at <= :now", True),
)

_PUT_USER: Final = f"INSERT OR REPLACE INTO tidemq_users ({_sql.USER_COLUMNS}) VALUES (?,?,?,?,?)"
_PUT_BAN: Final = f"INSERT OR REPLACE INTO tidemq_bans ({_sql.BAN_COLUMNS}) VALUES (?,?,?,?,?,?)"
_ADD_ACL: Final = f"INSERT INTO tidemq_acl ({_sql.ACL_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
_SELECT_ACL: Final = f"SELECT rule_id, {_sql.ACL_COLUMNS} FROM tidemq_acl"


def _client_filter(client_id: str | None) -> tuple[str, tuple[Any, ...]]:
    return ("", ()) if client_id is None else (" WHERE client_id = ?", (client_id,))


class SQLiteStorage(Storage):
    """``Storage`` in one SQLite file (``data_dir/tidemq.db`` unless *path* says otherwise).

    Args:
        data_dir: the broker's data directory; created ``0700`` when missing.
        path: the database file; relative paths are relative to *data_dir*.
        durability: ``sync``, ``batch`` or ``none`` (see ``tidemq.storage.api.Durability``).
    """

    name = "sqlite"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        path: str | os.PathLike[str] = DEFAULT_FILENAME,
        durability: Durability = "sync",
    ) -> None:
        super().__init__(durability)
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None

    def __repr__(self) -> str:
        return f"<SQLiteStorage {str(self.path)!r} durability={self.durability}>"

    # --- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None or self._conn is None:
            raise StorageError("SQLite storage is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error on {self.path}: {exc}") from exc

    def _conn_or_fail(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite storage is not open")
        return conn

    # --- open / close --------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidemq-sqlite")
        loop = asyncio.get_running_loop()
        try:
            self._conn = await loop.run_in_executor(self._executor, self._open_sync)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            self._release_lock()
            raise
        log.info("SQLite storage at %s (durability %s)", self.path, self.durability)

    def _open_sync(self) -> sqlite3.Connection:
        self._prepare_files()
        self._inspect()
        if not self.shared:
            self._take_lock()
        uri = f"file:{quote(str(self.path))}?mode=rw"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch to WAL journal mode ({mode})")
            conn.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")
            self._migrate(conn)
        except sqlite3.OperationalError as exc:
            conn.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StorageError(
                    f"SQLite database {self.path} is in use by another process "
                    "(another broker on the same data directory?)"
                ) from exc
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc
            raise
        return conn

    def _take_lock(self) -> None:
        """Take the broker's ownership lock, or fail at once if another process holds it."""
        lock_path = self.path.with_name(self.path.name + LOCK_SUFFIX)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot create {lock_path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                f"SQLite database {self.path} is in use by another process "
                "(another broker on the same data directory?)"
            ) from exc
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock

    def _prepare_files(self) -> None:
        """Create the data directory (0700) and an empty database file (0600) if missing."""
        try:
            for directory in dict.fromkeys((self.data_dir, self.path.parent)):
                if not directory.exists():
                    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                    directory.chmod(0o700)  # mkdir's mode is masked by the umask
                elif directory.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                    log.warning(
                        "data directory %s is accessible by other users; "
                        "consider chmod 700 (the database holds messages)",
                        directory,
                    )
            if not self.path.exists():
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot create {self.path}: {exc}") from exc

    def _inspect(self) -> None:
        """Refuse, without writing a byte, a file that is not an intact TideMQ database."""
        path = self.path
        try:
            if not path.is_file():
                raise StorageError(f"{path} is not a regular file")
            with path.open("rb") as f:
                head = f.read(len(_MAGIC))
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc}") from exc
        if not head:
            return  # a new, empty file
        if head != _MAGIC:
            raise StorageError(
                f"{path} is not a SQLite database; refusing to use or overwrite it "
                "(move it away or set storage.url to another file)"
            )
        uri = f"file:{quote(str(path))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT)
            try:
                tables = {
                    row[0]
                    for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                version = 0
                if "tidemq_schema" in tables:
                    row = conn.execute("SELECT MAX(version) FROM tidemq_schema").fetchone()
                    version = row[0] or 0
            finally:
                conn.close()
        except sqlite3.Error as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StorageError(
                    f"SQLite database {path} is in use by another process "
                    "(another broker on the same data directory?)"
                ) from exc
            raise StorageError(
                f"{path} is corrupt or not a SQLite database ({exc}); refusing to use or "
                "overwrite it (move it away, or restore a backup)"
            ) from exc
        if tables and "tidemq_schema" not in tables:
            raise StorageError(
                f"{path} is another program's SQLite database (tables: "
                f"{', '.join(sorted(tables)[:5])}); refusing to use or overwrite it"
            )
        _check_version(path, version)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS tidemq_schema "
            "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM tidemq_schema").fetchone()[0]
        _check_version(self.path, current)
        for version, statements in MIGRATIONS:
            if version <= current:
                continue
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: ``tidemq ctl`` may be migrating too.
                current = conn.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM tidemq_schema"
                ).fetchone()[0]
                if version <= current:
                    conn.execute("COMMIT")
                    continue
                for statement in statements:
                    conn.execute(statement)
                conn.execute("INSERT INTO tidemq_schema VALUES (?, ?)", (version, time.time()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            log.info("SQLite storage %s migrated to schema version %d", self.path, version)

    async def close(self) -> None:
        executor, conn = self._executor, self._conn
        self._executor = self._conn = None
        if executor is None:
            return
        loop = asyncio.get_running_loop()
        if conn is not None:
            try:
                await loop.run_in_executor(executor, conn.close)
            except sqlite3.Error as exc:
                log.warning("closing SQLite database %s: %s", self.path, exc)
        executor.shutdown(wait=True)
        self._release_lock()

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        if batch.ops:
            await self._run(self._apply_sync, batch)

    def _apply_sync(self, batch: WriteBatch) -> None:
        conn = self._conn_or_fail()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for run in batch.runs():
                self._write_run(conn, run)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _write_run(conn: sqlite3.Connection, run: list[Op]) -> None:
        spec = _WRITES.get(type(run[0]))
        if spec is None:
            raise StorageError(f"unknown storage operation {run[0]!r}")
        statements, params = spec
        rows = [params(op) for op in run]
        for statement in statements:
            conn.executemany(statement, rows)

    # --- loads ---------------------------------------------------------------------------

    def _select(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        return self._conn_or_fail().execute(sql, params).fetchall()

    async def load_sessions(self) -> list[SessionRecord]:
        rows = await self._run(
            self._select,
            f"SELECT {_sql.SESSION_COLUMNS} FROM tidemq_sessions ORDER BY client_id",
        )
        return [_sql.session_from_row(r) for r in rows]

    async def load_subscriptions(self, client_id: str | None = None) -> list[SubscriptionRecord]:
        where, params = _client_filter(client_id)
        rows = await self._run(
            self._select,
            f"SELECT {_sql.SUBSCRIPTION_COLUMNS} FROM tidemq_subscriptions{where} "
            "ORDER BY client_id, topic_filter",
            params,
        )
        return [_sql.subscription_from_row(r) for r in rows]

    async def load_queue(self, client_id: str | None = None) -> list[QueuedRecord]:
        where, params = _client_filter(client_id)
        rows = await self._run(
            self._select,
            f"SELECT {_sql.QUEUE_COLUMNS} FROM tidemq_queue{where} ORDER BY client_id, seq",
            params,
        )
        return [_sql.queued_from_row(r) for r in rows]

    async def load_inflight(self, client_id: str | None = None) -> list[InflightRecord]:
        where, params = _client_filter(client_id)
        rows = await self._run(
            self._select,
            f"SELECT {_sql.INFLIGHT_COLUMNS} FROM tidemq_inflight{where} "
            "ORDER BY client_id, seq, packet_id",
            params,
        )
        return [_sql.inflight_from_row(r) for r in rows]

    async def load_incoming_qos2(self, client_id: str | None = None) -> list[IncomingQos2Record]:
        where, params = _client_filter(client_id)
        rows = await self._run(
            self._select,
            f"SELECT {_sql.INCOMING_COLUMNS} FROM tidemq_incoming_qos2{where} "
            "ORDER BY client_id, packet_id",
            params,
        )
        return [_sql.incoming_from_row(r) for r in rows]

    async def load_retained(self) -> list[RetainedRecord]:
        rows = await self._run(
            self._select, f"SELECT {_sql.RETAINED_COLUMNS} FROM tidemq_retained ORDER BY topic"
        )
        return [_sql.retained_from_row(r) for r in rows]

    async def get_messages(self, message_ids: Collection[int]) -> dict[int, MessageRecord]:
        if not message_ids:
            return {}
        rows = await self._run(self._get_messages_sync, list(message_ids))
        return {r.message_id: r for r in rows}

    def _get_messages_sync(self, ids: list[int]) -> list[MessageRecord]:
        conn = self._conn_or_fail()
        out: list[MessageRecord] = []
        # SQLite caps the number of parameters of a statement; stay well below.
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            sql = (
                f"SELECT {_sql.MESSAGE_COLUMNS} FROM tidemq_messages WHERE message_id IN ({marks})"
            )
            out.extend(_sql.message_from_row(r) for r in conn.execute(sql, chunk))
        return out

    async def max_message_id(self) -> int:
        rows = await self._run(
            self._select, "SELECT COALESCE(MAX(message_id), 0) FROM tidemq_messages"
        )
        return int(rows[0][0])

    async def purge_expired(self, now: float) -> int:
        return await self._run(self._purge_sync, now)

    def _purge_sync(self, now: float) -> int:
        conn = self._conn_or_fail()
        removed = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement, counted in _PURGE:
                count = conn.execute(statement, {"now": now}).rowcount
                if counted:
                    removed += count
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return removed

    # --- users and bans ------------------------------------------------------------------

    def _write(self, sql: str, params: tuple[Any, ...]) -> int:
        # Autocommit: one statement is one transaction.
        count: int = self._conn_or_fail().execute(sql, params).rowcount
        return count

    async def get_user(self, username: str) -> UserRecord | None:
        rows = await self._run(
            self._select,
            f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users WHERE username = ?",
            (username,),
        )
        return _sql.user_from_row(rows[0]) if rows else None

    async def put_user(self, record: UserRecord) -> None:
        await self._run(self._write, _PUT_USER, _sql.user_params(record))

    async def delete_user(self, username: str) -> bool:
        sql = "DELETE FROM tidemq_users WHERE username = ?"
        return await self._run(self._write, sql, (username,)) > 0

    async def list_users(self) -> list[UserRecord]:
        rows = await self._run(
            self._select, f"SELECT {_sql.USER_COLUMNS} FROM tidemq_users ORDER BY username"
        )
        return [_sql.user_from_row(r) for r in rows]

    async def put_ban(self, record: BanRecord) -> None:
        await self._run(self._write, _PUT_BAN, _sql.ban_params(record))

    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        sql = "DELETE FROM tidemq_bans WHERE ban_kind = ? AND ban_value = ?"
        return await self._run(self._write, sql, (kind, value)) > 0

    async def list_bans(self) -> list[BanRecord]:
        rows = await self._run(
            self._select,
            f"SELECT {_sql.BAN_COLUMNS} FROM tidemq_bans ORDER BY ban_kind, ban_value",
        )
        return [_sql.ban_from_row(r) for r in rows]

    # --- built-in ACL rules --------------------------------------------------------------

    def _insert(self, sql: str, params: tuple[Any, ...]) -> int:
        rule_id = self._conn_or_fail().execute(sql, params).lastrowid
        assert rule_id is not None
        return rule_id

    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        rule_id = await self._run(self._insert, _ADD_ACL, _sql.acl_params(record))
        return replace(record, rule_id=rule_id)

    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        params: tuple[Any, ...] = ()
        if who_kind is None:
            sql = f"{_SELECT_ACL} ORDER BY rule_id"
        elif who_kind == "all":
            sql = f"{_SELECT_ACL} WHERE who_kind = 'all' ORDER BY rule_id"
        else:
            sql = f"{_SELECT_ACL} WHERE who_kind = ? AND who = ? ORDER BY rule_id"
            params = (who_kind, who)
        rows = await self._run(self._select, sql, params)
        return [_sql.acl_from_row(r) for r in rows]

    async def delete_acl_rule(self, rule_id: int) -> bool:
        sql = "DELETE FROM tidemq_acl WHERE rule_id = ?"
        return await self._run(self._write, sql, (rule_id,)) > 0


def _check_version(path: Path, version: int) -> None:
    latest = MIGRATIONS[-1][0]
    if version > latest:
        raise StorageError(
            f"{path} has schema version {version}, newer than this TideMQ supports "
            f"({latest}); upgrade TideMQ"
        )


def from_url(url: str, data_dir: str, durability: Durability) -> SQLiteStorage:
    """The ``create_storage`` hook: *url* is empty (``data_dir/tidemq.db``), a file path or
    ``sqlite:///path``; a relative path is relative to *data_dir*."""
    path = url.removeprefix("sqlite://") if url.startswith("sqlite://") else url
    if url.startswith("sqlite:") and not url.startswith("sqlite://"):
        raise StorageError(f"bad SQLite URL {url!r}: use sqlite:///path/to/file.db or a path")
    return SQLiteStorage(data_dir, path or DEFAULT_FILENAME, durability)
