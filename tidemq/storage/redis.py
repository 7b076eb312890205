"""The Redis backend (``redis.asyncio``): every key under one prefix per broker instance.

Theory of operation
-------------------
* **Keys** (``P`` is the prefix, ``tidemq:`` unless the URL says ``?prefix=...``)::

      P meta                   hash   schema → version
      P sessions               hash   client id → session (JSON)
      P session-expiry         zset   client id, scored by expires_at
      P clients                set    client ids that have per-client keys
      P subs:<client id>       hash   topic filter → options (JSON)
      P queue:<client id>      hash   seq → "message id|qos|retain|sub ids"
      P inflight:<client id>   hash   packet id → "message id|qos|retain|sub ids|released|seq"
      P incoming:<client id>   hash   packet id → received_at
      P messages               hash   message id → message (length-prefixed JSON + payload)
      P message-expiry         zset   message id, scored by expires_at
      P retained               hash   topic → message (as for messages)
      P retained-expiry        zset   topic, scored by expires_at
      P users                  hash   username → user (JSON)            (schema 2)
      P bans                   hash   "<kind>:<value>" → ban (JSON)      (schema 2)
      P ban-expiry             zset   "<kind>:<value>", scored by until  (schema 2)
      P acl-rules              hash   rule id → ACL rule (JSON)          (schema 3)
      P acl-seq                string the last rule id given (INCR)     (schema 3)
      P acl:<kind>:<who>       zset   rule ids of one username, client id (kind ``username``,
                                      ``clientid``) or of everyone (``acl:all:``), scored by
                                      id                                 (schema 3)

* **Batches** are one MULTI/EXEC pipeline: built whole on the client (an operation the
  backend does not know fails before anything is sent), then executed atomically. Every
  command is idempotent (HSET, HDEL, ZADD, SADD, DEL), so redis-py's retry after a lost
  connection cannot apply anything twice.
* **Schema versions**: ``P meta`` holds the version. Versions 2 (users and bans) and 3
  (ACL rules) only added keys, so moving a prefix up changes no data; a newer version is
  refused.
* **Users and bans** are single commands (a MULTI/EXEC pair for a ban and its expiry).
  An ACL rule takes its id from ``INCR`` (never reused), then is stored with its index
  entry in one MULTI/EXEC; a failure in between only leaves an id unused.
* **purge_expired** is one Lua script, so it is atomic with respect to batches: no batch
  can move a reference between the queue and the in-flight table while the script is
  looking for unreferenced messages. It walks every client's queue and in-flight table;
  run it on a schedule, not per message.
* **Durability** is the server's: with ``durability = "sync"``, run Redis with
  ``appendonly yes`` and ``appendfsync always``; ``open`` logs a warning when ``CONFIG GET``
  shows otherwise.
* **Faults**: connection errors become ``StorageUnavailable``; the client's connection
  pool reconnects on the next call once the server is back.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Awaitable, Callable, Collection
from dataclasses import fields, replace
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    WillRecord,
    WriteBatch,
)

__all__ = ["DEFAULT_PREFIX", "SCHEMA_VERSION", "RedisStorage", "from_url"]

log = logging.getLogger(__name__)

Pipeline = Any  # redis.asyncio.client.Pipeline; its command methods are loosely typed

#: The key prefix when the URL has no ``?prefix=``.
DEFAULT_PREFIX: Final = "tidemq:"
SCHEMA_VERSION: Final = 3
# Seconds to wait for a connection, and for a reply, before calling the server unavailable.
CONNECT_TIMEOUT: Final = 5.0
REPLY_TIMEOUT: Final = 30.0

_HEADER: Final = struct.Struct(">I")

_PURGE_SCRIPT: Final = """
local p = ARGV[1]
local now = ARGV[2]
local removed = 0
local expired = redis.call('ZRANGEBYSCORE', p .. 'session-expiry', '-inf', now)
for _, cid in ipairs(expired) do
  redis.call('HDEL', p .. 'sessions', cid)
  redis.call('DEL', p .. 'subs:' .. cid, p .. 'queue:' .. cid, p .. 'inflight:' .. cid,
             p .. 'incoming:' .. cid)
  redis.call('SREM', p .. 'clients', cid)
  removed = removed + 1
end
redis.call('ZREMRANGEBYSCORE', p .. 'session-expiry', '-inf', now)
local topics = redis.call('ZRANGEBYSCORE', p .. 'retained-expiry', '-inf', now)
for _, topic in ipairs(topics) do
  removed = removed + redis.call('HDEL', p .. 'retained', topic)
end
redis.call('ZREMRANGEBYSCORE', p .. 'retained-expiry', '-inf', now)
local dead = {}
for _, mid in ipairs(redis.call('ZRANGEBYSCORE', p .. 'message-expiry', '-inf', now)) do
  dead[mid] = true
end
local referenced = {}
for _, cid in ipairs(redis.call('SMEMBERS', p .. 'clients')) do
  local qkey = p .. 'queue:' .. cid
  local queue = redis.call('HGETALL', qkey)
  for i = 1, #queue, 2 do
    local mid = string.match(queue[i + 1], '^[^|]*')
    if dead[mid] then
      redis.call('HDEL', qkey, queue[i])
    else
      referenced[mid] = true
    end
  end
  for _, entry in ipairs(redis.call('HVALS', p .. 'inflight:' .. cid)) do
    referenced[string.match(entry, '^[^|]*')] = true
  end
end
for _, mid in ipairs(redis.call('HKEYS', p .. 'messages')) do
  if not referenced[mid] then
    redis.call('HDEL', p .. 'messages', mid)
    redis.call('ZREM', p .. 'message-expiry', mid)
    removed = removed + 1
  end
end
local bans = redis.call('ZRANGEBYSCORE', p .. 'ban-expiry', '-inf', now)
for _, key in ipairs(bans) do
  removed = removed + redis.call('HDEL', p .. 'bans', key)
end
redis.call('ZREMRANGEBYSCORE', p .. 'ban-expiry', '-inf', now)
return removed
"""


# --- encodings -------------------------------------------------------------------------------


def _hex(data: bytes) -> str:
    return data.hex()


def _encode_session(r: SessionRecord) -> bytes:
    will = r.will
    doc: dict[str, Any] = {
        "expiry_interval": r.expiry_interval,
        "protocol_version": r.protocol_version,
        "username": r.username,
        "disconnected_at": r.disconnected_at,
        "expires_at": r.expires_at,
        "will": None
        if will is None
        else {
            "topic": will.topic,
            "payload": _hex(will.payload),
            "qos": will.qos,
            "retain": will.retain,
            "properties": _hex(will.properties),
            "delay": will.delay,
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode_session(client_id: str, data: bytes) -> SessionRecord:
    doc = json.loads(data)
    w = doc["will"]
    will = None
    if w is not None:
        will = WillRecord(
            topic=w["topic"],
            payload=bytes.fromhex(w["payload"]),
            qos=w["qos"],
            retain=w["retain"],
            properties=bytes.fromhex(w["properties"]),
            delay=w["delay"],
        )
    return SessionRecord(
        client_id=client_id,
        expiry_interval=doc["expiry_interval"],
        protocol_version=doc["protocol_version"],
        username=doc["username"],
        disconnected_at=doc["disconnected_at"],
        expires_at=doc["expires_at"],
        will=will,
    )


def _encode_subscription(r: SubscriptionRecord) -> bytes:
    doc = [
        r.qos,
        r.no_local,
        r.retain_as_published,
        int(r.retain_handling),
        r.subscription_id,
        r.share_group,
    ]
    return json.dumps(doc, separators=(",", ":")).encode()


def _decode_subscription(client_id: str, topic_filter: str, data: bytes) -> SubscriptionRecord:
    qos, no_local, rap, rh, sub_id, group = json.loads(data)
    return SubscriptionRecord(
        client_id=client_id,
        topic_filter=topic_filter,
        qos=qos,
        no_local=no_local,
        retain_as_published=rap,
        retain_handling=rh,
        subscription_id=sub_id,
        share_group=group,
    )


def _sub_ids(sub_ids: tuple[int, ...]) -> str:
    return ",".join(map(str, sub_ids))


def _parse_sub_ids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else ()


def _encode_queued(r: QueuedRecord) -> str:
    return f"{r.message_id}|{r.qos}|{int(r.retain)}|{_sub_ids(r.sub_ids)}"


def _decode_queued(client_id: str, seq: bytes, data: bytes) -> QueuedRecord:
    mid, qos, retain, sub_ids = data.decode().split("|")
    return QueuedRecord(
        client_id=client_id,
        seq=int(seq),
        message_id=int(mid),
        qos=int(qos),
        retain=retain == "1",
        sub_ids=_parse_sub_ids(sub_ids),
    )


def _encode_inflight(r: InflightRecord) -> str:
    return f"{r.message_id}|{r.qos}|{int(r.retain)}|{_sub_ids(r.sub_ids)}|{int(r.released)}|{r.seq}"


def _decode_inflight(client_id: str, packet_id: bytes, data: bytes) -> InflightRecord:
    mid, qos, retain, sub_ids, released, seq = data.decode().split("|")
    return InflightRecord(
        client_id=client_id,
        packet_id=int(packet_id),
        message_id=int(mid),
        qos=int(qos),
        retain=retain == "1",
        sub_ids=_parse_sub_ids(sub_ids),
        released=released == "1",
        seq=int(seq),
    )


def _pack(doc: dict[str, Any], payload: bytes) -> bytes:
    header = json.dumps(doc, separators=(",", ":")).encode()
    return _HEADER.pack(len(header)) + header + payload


def _unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    (size,) = _HEADER.unpack_from(data)
    start = _HEADER.size
    doc: dict[str, Any] = json.loads(data[start : start + size])
    return doc, data[start + size :]


def _encode_message(r: MessageRecord) -> bytes:
    doc = {
        "topic": r.topic,
        "qos": r.qos,
        "retain": r.retain,
        "created_at": r.created_at,
        "properties": _hex(r.properties),
        "sender": r.sender,
        "expires_at": r.expires_at,
    }
    return _pack(doc, r.payload)


def _decode_message(message_id: int, data: bytes) -> MessageRecord:
    doc, payload = _unpack(data)
    return MessageRecord(
        message_id=message_id,
        topic=doc["topic"],
        payload=payload,
        qos=doc["qos"],
        retain=doc["retain"],
        created_at=doc["created_at"],
        properties=bytes.fromhex(doc["properties"]),
        sender=doc["sender"],
        expires_at=doc["expires_at"],
    )


def _encode_retained(r: RetainedRecord) -> bytes:
    doc = {
        "qos": r.qos,
        "created_at": r.created_at,
        "properties": _hex(r.properties),
        "sender": r.sender,
        "expires_at": r.expires_at,
    }
    return _pack(doc, r.payload)


def _decode_retained(topic: str, data: bytes) -> RetainedRecord:
    doc, payload = _unpack(data)
    return RetainedRecord(
        topic=topic,
        payload=payload,
        qos=doc["qos"],
        created_at=doc["created_at"],
        properties=bytes.fromhex(doc["properties"]),
        sender=doc["sender"],
        expires_at=doc["expires_at"],
    )


def _encode_doc(record: UserRecord | BanRecord | AclRuleRecord, *key: str) -> bytes:
    """A record as compact JSON, without the fields that are its Redis key (*key*)."""
    doc = {f.name: getattr(record, f.name) for f in fields(record) if f.name not in key}
    return json.dumps(doc, separators=(",", ":")).encode()


def _encode_user(r: UserRecord) -> bytes:
    return _encode_doc(r, "username")


def _decode_user(username: str, data: bytes) -> UserRecord:
    return UserRecord(username=username, **json.loads(data))


def _ban_field(kind: str, value: str) -> str:
    return f"{kind}:{value}"  # kinds have no colon, so the first one splits


def _encode_ban(r: BanRecord) -> bytes:
    return _encode_doc(r)


def _decode_ban(data: bytes) -> BanRecord:
    return BanRecord(**json.loads(data))


def _encode_acl(r: AclRuleRecord) -> bytes:
    return _encode_doc(r, "rule_id")


def _decode_acl(rule_id: int, data: bytes) -> AclRuleRecord:
    doc = json.loads(data)
    doc["qos"] = tuple(doc["qos"])  # a JSON list
    return AclRuleRecord(rule_id=rule_id, **doc)


# --- the backend -----------------------------------------------------------------------------


class RedisStorage(Storage):
    """``Storage`` in Redis.

    Args:
        url: ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: the key prefix; one per broker instance sharing the server.
        durability: as in ``tidemq.storage.api.Durability``; the server's own persistence
            settings decide what it means here (see the module docstring).
    """

    name = "redis"

    def __init__(
        self, url: str, prefix: str = DEFAULT_PREFIX, durability: Durability = "sync"
    ) -> None:
        super().__init__(durability)
        self.url = url
        self.prefix = prefix
        self._p = prefix.encode()
        self._client: Any = None  # redis.asyncio.Redis
        self._purge: Any = None
        self._ops: dict[type, Callable[[Pipeline, Any], None]] = {
            PutSession: self._put_session,
            DeleteSession: self._delete_session,
            PutSubscription: self._put_subscription,
            DeleteSubscription: self._delete_subscription,
            PutMessage: self._put_message,
            DeleteMessage: self._delete_message,
            Enqueue: self._enqueue,
            Dequeue: self._dequeue,
            PutInflight: self._put_inflight,
            DeleteInflight: self._delete_inflight,
            PutIncomingQos2: self._put_incoming,
            DeleteIncomingQos2: self._delete_incoming,
            SetRetained: self._set_retained,
            DeleteRetained: self._delete_retained,
        }

    def __repr__(self) -> str:
        return f"<RedisStorage {_redact(self.url)!r} prefix={self.prefix!r}>"

    def _key(self, name: str) -> bytes:
        return self._p + name.encode()

    def _client_key(self, name: str, client_id: str) -> bytes:
        return self._p + name.encode() + b":" + client_id.encode()

    async def _call(self, fn: Callable[[Any], Awaitable[Any]]) -> Any:
        # redis-py types replies as bytes | str | ...; with decode_responses off they are
        # bytes, and callers annotate what they get.
        client = self._client
        if client is None:
            raise StorageError("Redis storage is not open")
        try:
            return await fn(client)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StorageUnavailable(f"Redis at {_redact(self.url)} unavailable: {exc}") from exc
        except RedisError as exc:
            raise StorageError(f"Redis error: {exc}") from exc

    # --- open / close --------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        try:
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=REPLY_TIMEOUT,
                # One immediate retry replaces a pooled connection the server has closed.
                retry=Retry(NoBackoff(), 1),
            )
        except ValueError as exc:
            raise StorageError(f"bad Redis URL {_redact(self.url)!r}: {exc}") from exc
        self._client = client
        self._purge = client.register_script(_PURGE_SCRIPT)
        try:
            await self._call(self._check_schema)
            if self.durability == "sync":
                await self._call(self._check_persistence)
        except BaseException:
            self._client = None
            await client.aclose()
            raise
        log.info("Redis storage at %s, prefix %r", _redact(self.url), self.prefix)

    async def _check_schema(self, client: Any) -> None:
        meta = self._key("meta")
        await client.hsetnx(meta, "schema", SCHEMA_VERSION)
        version = int(await client.hget(meta, "schema") or 0)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"Redis prefix {self.prefix!r} has schema version {version}, newer than "
                f"this TideMQ supports ({SCHEMA_VERSION}); upgrade TideMQ"
            )
        if version < SCHEMA_VERSION:
            # 1 → 2 → 3 added keys only; nothing to convert.
            await client.hset(meta, "schema", SCHEMA_VERSION)
            log.info("Redis prefix %r migrated to schema version %d", self.prefix, SCHEMA_VERSION)

    async def _check_persistence(self, client: Any) -> None:
        try:
            config = await client.config_get("append*")
        except ResponseError:
            return  # CONFIG disabled or renamed: nothing to check
        appendonly = _text(config.get("appendonly") or config.get(b"appendonly"))
        fsync = _text(config.get("appendfsync") or config.get(b"appendfsync"))
        if appendonly != "yes" or fsync != "always":
            log.warning(
                "Redis at %s runs with appendonly=%s appendfsync=%s: storage durability "
                "'sync' needs appendonly yes and appendfsync always, or acknowledged "
                "messages can be lost when Redis stops",
                _redact(self.url),
                appendonly,
                fsync,
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except (RedisError, OSError) as exc:
                log.debug("closing Redis client: %s", exc)

    # --- writes --------------------------------------------------------------------------

    async def apply(self, batch: WriteBatch) -> None:
        if not batch.ops:
            return
        client = self._client
        if client is None:
            raise StorageError("Redis storage is not open")
        pipe = client.pipeline(transaction=True)
        ops = self._ops
        try:
            for op in batch.ops:
                handler = ops.get(type(op))
                if handler is None:
                    raise StorageError(f"unknown storage operation {op!r}")
                handler(pipe, op)
        except BaseException:
            await pipe.reset()
            raise
        await self._call(lambda _: pipe.execute())

    def _put_session(self, pipe: Pipeline, op: PutSession) -> None:
        r = op.record
        pipe.hset(self._key("sessions"), r.client_id, _encode_session(r))
        if r.expires_at is None:
            pipe.zrem(self._key("session-expiry"), r.client_id)
        else:
            pipe.zadd(self._key("session-expiry"), {r.client_id: r.expires_at})

    def _delete_session(self, pipe: Pipeline, op: DeleteSession) -> None:
        cid = op.client_id
        pipe.hdel(self._key("sessions"), cid)
        pipe.zrem(self._key("session-expiry"), cid)
        pipe.delete(*(self._client_key(n, cid) for n in ("subs", "queue", "inflight", "incoming")))
        pipe.srem(self._key("clients"), cid)

    def _put_subscription(self, pipe: Pipeline, op: PutSubscription) -> None:
        r = op.record
        pipe.sadd(self._key("clients"), r.client_id)
        pipe.hset(self._client_key("subs", r.client_id), r.topic_filter, _encode_subscription(r))

    def _delete_subscription(self, pipe: Pipeline, op: DeleteSubscription) -> None:
        pipe.hdel(self._client_key("subs", op.client_id), op.topic_filter)

    def _put_message(self, pipe: Pipeline, op: PutMessage) -> None:
        r = op.record
        pipe.hset(self._key("messages"), str(r.message_id), _encode_message(r))
        if r.expires_at is not None:
            pipe.zadd(self._key("message-expiry"), {str(r.message_id): r.expires_at})

    def _delete_message(self, pipe: Pipeline, op: DeleteMessage) -> None:
        pipe.hdel(self._key("messages"), str(op.message_id))
        pipe.zrem(self._key("message-expiry"), str(op.message_id))

    def _enqueue(self, pipe: Pipeline, op: Enqueue) -> None:
        r = op.record
        pipe.sadd(self._key("clients"), r.client_id)
        pipe.hset(self._client_key("queue", r.client_id), str(r.seq), _encode_queued(r))

    def _dequeue(self, pipe: Pipeline, op: Dequeue) -> None:
        pipe.hdel(self._client_key("queue", op.client_id), str(op.seq))

    def _put_inflight(self, pipe: Pipeline, op: PutInflight) -> None:
        r = op.record
        pipe.sadd(self._key("clients"), r.client_id)
        pipe.hset(self._client_key("inflight", r.client_id), str(r.packet_id), _encode_inflight(r))

    def _delete_inflight(self, pipe: Pipeline, op: DeleteInflight) -> None:
        pipe.hdel(self._client_key("inflight", op.client_id), str(op.packet_id))

    def _put_incoming(self, pipe: Pipeline, op: PutIncomingQos2) -> None:
        r = op.record
        pipe.sadd(self._key("clients"), r.client_id)
        pipe.hset(self._client_key("incoming", r.client_id), str(r.packet_id), repr(r.received_at))

    def _delete_incoming(self, pipe: Pipeline, op: DeleteIncomingQos2) -> None:
        pipe.hdel(self._client_key("incoming", op.client_id), str(op.packet_id))

    def _set_retained(self, pipe: Pipeline, op: SetRetained) -> None:
        r = op.record
        pipe.hset(self._key("retained"), r.topic, _encode_retained(r))
        if r.expires_at is None:
            pipe.zrem(self._key("retained-expiry"), r.topic)
        else:
            pipe.zadd(self._key("retained-expiry"), {r.topic: r.expires_at})

    def _delete_retained(self, pipe: Pipeline, op: DeleteRetained) -> None:
        pipe.hdel(self._key("retained"), op.topic)
        pipe.zrem(self._key("retained-expiry"), op.topic)

    # --- loads ---------------------------------------------------------------------------

    async def _client_hashes(
        self, name: str, client_id: str | None
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """(client id, HGETALL of its ``name`` hash) for one client or every client."""

        async def load(client: Any) -> list[tuple[str, dict[bytes, bytes]]]:
            if client_id is not None:
                clients = [client_id]
            else:
                clients = sorted(m.decode() for m in await client.smembers(self._key("clients")))
            pipe = client.pipeline(transaction=True)
            for cid in clients:
                pipe.hgetall(self._client_key(name, cid))
            hashes = await pipe.execute() if clients else []
            return list(zip(clients, hashes, strict=True))

        result: list[tuple[str, dict[bytes, bytes]]] = await self._call(load)
        return result

    async def load_sessions(self) -> list[SessionRecord]:
        rows: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._key("sessions")))
        records = [_decode_session(k.decode(), v) for k, v in rows.items()]
        records.sort(key=lambda r: r.client_id)
        return records

    async def load_subscriptions(self, client_id: str | None = None) -> list[SubscriptionRecord]:
        out: list[SubscriptionRecord] = []
        for cid, rows in await self._client_hashes("subs", client_id):
            subs = [_decode_subscription(cid, k.decode(), v) for k, v in rows.items()]
            out.extend(sorted(subs, key=lambda r: r.topic_filter))
        return out

    async def load_queue(self, client_id: str | None = None) -> list[QueuedRecord]:
        out: list[QueuedRecord] = []
        for cid, rows in await self._client_hashes("queue", client_id):
            entries = [_decode_queued(cid, k, v) for k, v in rows.items()]
            out.extend(sorted(entries, key=lambda r: r.seq))
        return out

    async def load_inflight(self, client_id: str | None = None) -> list[InflightRecord]:
        out: list[InflightRecord] = []
        for cid, rows in await self._client_hashes("inflight", client_id):
            entries = [_decode_inflight(cid, k, v) for k, v in rows.items()]
            out.extend(sorted(entries, key=lambda r: (r.seq, r.packet_id)))
        return out

    async def load_incoming_qos2(self, client_id: str | None = None) -> list[IncomingQos2Record]:
        out: list[IncomingQos2Record] = []
        for cid, rows in await self._client_hashes("incoming", client_id):
            entries = [
                IncomingQos2Record(client_id=cid, packet_id=int(k), received_at=float(v))
                for k, v in rows.items()
            ]
            out.extend(sorted(entries, key=lambda r: r.packet_id))
        return out

    async def load_retained(self) -> list[RetainedRecord]:
        rows: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._key("retained")))
        records = [_decode_retained(k.decode(), v) for k, v in rows.items()]
        records.sort(key=lambda r: r.topic)
        return records

    async def get_messages(self, message_ids: Collection[int]) -> dict[int, MessageRecord]:
        ids = list(message_ids)
        if not ids:
            return {}
        values: list[bytes | None] = await self._call(
            lambda c: c.hmget(self._key("messages"), [str(i) for i in ids])
        )
        return {i: _decode_message(i, v) for i, v in zip(ids, values, strict=True) if v is not None}

    async def max_message_id(self) -> int:
        keys: list[bytes] = await self._call(lambda c: c.hkeys(self._key("messages")))
        return max((int(k) for k in keys), default=0)

    async def purge_expired(self, now: float) -> int:
        script = self._purge
        removed = await self._call(lambda _: script(args=[self.prefix, repr(now)]))
        return int(removed)

    # --- users and bans ------------------------------------------------------------------

    async def get_user(self, username: str) -> UserRecord | None:
        data: bytes | None = await self._call(lambda c: c.hget(self._key("users"), username))
        return None if data is None else _decode_user(username, data)

    async def put_user(self, record: UserRecord) -> None:
        data = _encode_user(record)
        await self._call(lambda c: c.hset(self._key("users"), record.username, data))

    async def delete_user(self, username: str) -> bool:
        count: int = await self._call(lambda c: c.hdel(self._key("users"), username))
        return count > 0

    async def list_users(self) -> list[UserRecord]:
        rows: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._key("users")))
        users = [_decode_user(k.decode(), v) for k, v in rows.items()]
        users.sort(key=lambda u: u.username)
        return users

    async def put_ban(self, record: BanRecord) -> None:
        name = _ban_field(record.kind, record.value)

        async def put(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._key("bans"), name, _encode_ban(record))
            if record.until is None:
                pipe.zrem(self._key("ban-expiry"), name)
            else:
                pipe.zadd(self._key("ban-expiry"), {name: record.until})
            await pipe.execute()

        await self._call(put)

    async def delete_ban(self, kind: BanKind, value: str) -> bool:
        name = _ban_field(kind, value)

        async def delete(client: Any) -> int:
            pipe = client.pipeline(transaction=True)
            pipe.hdel(self._key("bans"), name)
            pipe.zrem(self._key("ban-expiry"), name)
            count, _ = await pipe.execute()
            return int(count)

        count: int = await self._call(delete)
        return count > 0

    async def list_bans(self) -> list[BanRecord]:
        rows: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._key("bans")))
        bans = [_decode_ban(v) for v in rows.values()]
        bans.sort(key=lambda b: (b.kind, b.value))
        return bans

    # --- built-in ACL rules --------------------------------------------------------------

    def _acl_index(self, who_kind: str, who: str) -> bytes:
        # Kinds have no colon, so "acl:<kind>:" cannot run into another kind's keys.
        return self._p + f"acl:{who_kind}:{'' if who_kind == 'all' else who}".encode()

    async def add_acl_rule(self, record: AclRuleRecord) -> AclRuleRecord:
        rule_id = int(await self._call(lambda c: c.incr(self._key("acl-seq"))))
        stored = replace(record, rule_id=rule_id)

        async def put(client: Any) -> None:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._key("acl-rules"), str(rule_id), _encode_acl(stored))
            pipe.zadd(self._acl_index(record.who_kind, record.who), {str(rule_id): rule_id})
            await pipe.execute()

        await self._call(put)
        return stored

    async def list_acl_rules(
        self, who_kind: AclWhoKind | None = None, who: str = ""
    ) -> list[AclRuleRecord]:
        if who_kind is None:
            rows: dict[bytes, bytes] = await self._call(lambda c: c.hgetall(self._key("acl-rules")))
            rules = [_decode_acl(int(k), v) for k, v in rows.items()]
            rules.sort(key=lambda r: r.rule_id)
            return rules

        async def load(client: Any) -> list[tuple[bytes, bytes | None]]:
            ids: list[bytes] = await client.zrange(self._acl_index(who_kind, who), 0, -1)
            if not ids:
                return []
            values: list[bytes | None] = await client.hmget(self._key("acl-rules"), ids)
            return list(zip(ids, values, strict=True))

        pairs: list[tuple[bytes, bytes | None]] = await self._call(load)
        return [_decode_acl(int(k), v) for k, v in pairs if v is not None]

    async def delete_acl_rule(self, rule_id: int) -> bool:
        field = str(rule_id)

        async def delete(client: Any) -> bool:
            data = await client.hget(self._key("acl-rules"), field)
            if data is None:
                return False
            rule = _decode_acl(rule_id, data)
            pipe = client.pipeline(transaction=True)
            pipe.hdel(self._key("acl-rules"), field)
            pipe.zrem(self._acl_index(rule.who_kind, rule.who), field)
            count, _ = await pipe.execute()
            return int(count) > 0

        deleted: bool = await self._call(delete)
        return deleted


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _redact(url: str) -> str:
    """*url* without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def from_url(url: str, data_dir: str, durability: Durability) -> RedisStorage:
    """The ``create_storage`` hook: a Redis URL, with an optional ``prefix`` query
    parameter (``redis://127.0.0.1:6379/0?prefix=node1:``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise StorageError(f"bad Redis URL {_redact(url)!r}: use redis://HOST:PORT/DB")
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest = []
    for key, value in query:
        if key == "prefix":
            prefix = value
        else:
            rest.append((key, value))
    return RedisStorage(urlunsplit(parts._replace(query=urlencode(rest))), prefix, durability)
