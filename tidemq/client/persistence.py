"""Client session persistence: what a client must remember to resume after a restart.

A ``SessionState`` holds the subscriptions, the QoS 1/2 messages not yet acknowledged (in
flight on the wire, or accepted by ``publish`` and waiting to be sent) and the last
connected/disconnected times. A ``SessionStore`` keeps states by session name:

* ``MemoryStore``: a dict; survives reconnects and new ``Client`` objects in one process.
* ``FileStore(directory)``: one JSON file per session, written atomically (a temporary
  file in the same directory, fsync, then ``os.replace``), so a crash leaves either the old
  or the new state, never half of one.
* ``RedisStore(url)``: one key per session (``tidemq:session:<name>``) with a TTL; needs
  the optional ``redis`` package.

The JSON layout (version 1) is documented in docs/client.md; bytes are base64.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from tidemq.protocol import NO_PROPERTIES, LocalProtocolError, Properties

from .errors import StorageError

__all__ = [
    "FileStore",
    "MemoryStore",
    "MessageRecord",
    "RedisStore",
    "SessionState",
    "SessionStore",
    "SubscriptionRecord",
]

log = logging.getLogger("tidemq.client.persistence")

STATE_FORMAT_VERSION = 1
# MQTTX's RedisStore keeps a session for 24 hours.
DEFAULT_REDIS_TTL = 24 * 3600
DEFAULT_REDIS_PREFIX = "tidemq:session:"

_PROPERTY_FIELDS = tuple((f.name, f.default) for f in fields(Properties))


def properties_to_json(props: Properties) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if props is NO_PROPERTIES:
        return out
    for name, default in _PROPERTY_FIELDS:
        value = getattr(props, name)
        if value == default:
            continue
        if isinstance(value, bytes):
            out[name] = {"b64": base64.b64encode(value).decode("ascii")}
        elif isinstance(value, tuple):
            out[name] = [list(v) if isinstance(v, tuple) else v for v in value]
        else:
            out[name] = value
    return out


def properties_from_json(data: dict[str, Any]) -> Properties:
    if not data:
        return NO_PROPERTIES
    values: dict[str, Any] = {}
    for name, value in data.items():
        if isinstance(value, dict):
            values[name] = base64.b64decode(value["b64"])
        elif isinstance(value, list):
            values[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            values[name] = value
    return Properties(**values)


@dataclass(slots=True, kw_only=True)
class SubscriptionRecord:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    subscription_identifier: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic_filter,
            "qos": self.qos,
            "no_local": self.no_local,
            "retain_as_published": self.retain_as_published,
            "retain_handling": self.retain_handling,
            "subscription_identifier": self.subscription_identifier,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SubscriptionRecord:
        return cls(
            topic_filter=str(data["topic"]),
            qos=int(data.get("qos", 0)),
            no_local=bool(data.get("no_local", False)),
            retain_as_published=bool(data.get("retain_as_published", False)),
            retain_handling=int(data.get("retain_handling", 0)),
            subscription_identifier=data.get("subscription_identifier"),
        )


@dataclass(slots=True, kw_only=True)
class MessageRecord:
    """A QoS 1/2 message not yet completely acknowledged.

    ``packet_id`` is 0 while it was never sent; ``released`` is True for a QoS 2 message
    whose PUBREC arrived (only PUBREL/PUBCOMP remain).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    properties: Properties = NO_PROPERTIES
    packet_id: int = 0
    released: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "qos": self.qos,
            "retain": self.retain,
            "properties": properties_to_json(self.properties),
            "packet_id": self.packet_id,
            "released": self.released,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MessageRecord:
        return cls(
            topic=str(data["topic"]),
            payload=base64.b64decode(data.get("payload", "")),
            qos=int(data["qos"]),
            retain=bool(data.get("retain", False)),
            properties=properties_from_json(data.get("properties") or {}),
            packet_id=int(data.get("packet_id", 0)),
            released=bool(data.get("released", False)),
        )


@dataclass(slots=True, kw_only=True)
class SessionState:
    """Everything a client persists about one session."""

    client_id: str
    version: int = 5
    subscriptions: list[SubscriptionRecord] = field(default_factory=list)
    inflight: list[MessageRecord] = field(default_factory=list)
    last_connected: float | None = None
    last_disconnected: float | None = None
    session_expiry: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT_VERSION,
            "client_id": self.client_id,
            "version": self.version,
            "subscriptions": [s.to_json() for s in self.subscriptions],
            "inflight": [m.to_json() for m in self.inflight],
            "last_connected": self.last_connected,
            "last_disconnected": self.last_disconnected,
            "session_expiry": self.session_expiry,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionState:
        if data.get("format") != STATE_FORMAT_VERSION:
            raise StorageError(f"unknown session state format {data.get('format')!r}")
        try:
            return cls(
                client_id=str(data["client_id"]),
                version=int(data.get("version", 5)),
                subscriptions=[SubscriptionRecord.from_json(s) for s in data["subscriptions"]],
                inflight=[MessageRecord.from_json(m) for m in data["inflight"]],
                last_connected=data.get("last_connected"),
                last_disconnected=data.get("last_disconnected"),
                session_expiry=int(data.get("session_expiry", 0)),
            )
        except (KeyError, TypeError, ValueError, LocalProtocolError) as exc:
            raise StorageError(f"corrupt session state: {exc}") from exc

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode("utf-8")

    @classmethod
    def loads(cls, data: bytes | str) -> SessionState:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise StorageError(f"session state is not JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise StorageError("session state is not a JSON object")
        return cls.from_json(raw)


class SessionStore(Protocol):
    """Where session states live. All methods raise ``StorageError`` on failure."""

    async def load(self, name: str) -> SessionState | None: ...

    async def save(self, name: str, state: SessionState) -> None: ...

    async def delete(self, name: str) -> None: ...


class MemoryStore:
    """Session states in a dict (copied in and out, so callers cannot alias them)."""

    def __init__(self) -> None:
        self._states: dict[str, bytes] = {}

    async def load(self, name: str) -> SessionState | None:
        data = self._states.get(name)
        return None if data is None else SessionState.loads(data)

    async def save(self, name: str, state: SessionState) -> None:
        self._states[name] = state.dumps()

    async def delete(self, name: str) -> None:
        self._states.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._states)


class FileStore:
    """One JSON file per session in *directory*, replaced atomically on every save."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / (quote(name, safe="") + ".json")

    async def load(self, name: str) -> SessionState | None:
        return await asyncio.to_thread(self._load, name)

    async def save(self, name: str, state: SessionState) -> None:
        await asyncio.to_thread(self._save, name, state.dumps())

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self._delete, name)

    def _load(self, name: str) -> SessionState | None:
        try:
            data = self.path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read session {name!r}: {exc}", temporary=True) from exc
        return SessionState.loads(data)

    def _save(self, name: str, data: bytes) -> None:
        target = self.path(name)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        except OSError as exc:
            raise StorageError(f"cannot write session {name!r}: {exc}", temporary=True) from exc

    def _delete(self, name: str) -> None:
        try:
            self.path(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot delete session {name!r}: {exc}") from exc


class RedisStore:
    """Session states in Redis, one key per session with a TTL (needs ``redis``).

    Args:
        url: a ``redis://`` URL, or pass *client* (a ``redis.asyncio.Redis``) instead.
        prefix: key prefix.
        ttl: seconds a session state is kept after its last save.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: Any = None,
        prefix: str = DEFAULT_REDIS_PREFIX,
        ttl: int = DEFAULT_REDIS_TTL,
    ) -> None:
        if client is None:
            if url is None:
                raise StorageError("RedisStore needs a url or a client")
            try:
                import redis.asyncio as redis_asyncio  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise StorageError("RedisStore needs the 'redis' package") from exc
            client = redis_asyncio.Redis.from_url(url)
        self._redis: Any = client
        self.prefix = prefix
        self.ttl = ttl

    async def load(self, name: str) -> SessionState | None:
        try:
            data = await self._redis.get(self.prefix + name)
        except Exception as exc:
            raise StorageError(f"redis load failed: {exc}", temporary=True) from exc
        return None if data is None else SessionState.loads(data)

    async def save(self, name: str, state: SessionState) -> None:
        try:
            await self._redis.set(self.prefix + name, state.dumps(), ex=self.ttl)
        except Exception as exc:
            raise StorageError(f"redis save failed: {exc}", temporary=True) from exc

    async def delete(self, name: str) -> None:
        try:
            await self._redis.delete(self.prefix + name)
        except Exception as exc:
            raise StorageError(f"redis delete failed: {exc}", temporary=True) from exc

    async def close(self) -> None:
        await self._redis.aclose()
