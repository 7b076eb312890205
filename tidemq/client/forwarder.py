"""Message forwarders: from topics of one or more sessions to another session.

A ``Forwarder`` subscribes to topic filters on its source sessions (of a
``SessionManager``) and republishes what arrives on its target session, after:

1. **loop detection**: a message that already carries this forwarder's name in its
   ``forwarded_by`` user property went through it before (its target feeds one of its
   sources, directly or through other forwarders) and is dropped (``loops``);
2. **filters** (all must pass): ``TopicFilter`` (MQTT filter or regular expression),
   ``PayloadFilter`` (a predicate on the payload), any ``Message -> bool`` function, and
   their combinations ``AndFilter`` / ``OrFilter`` / ``NotFilter`` (also ``&``, ``|``, ``~``);
3. **topic mapping**: exact (``"a/b" -> "c/d"``) first, then wildcard mappings in the
   order given, whose template refers to the levels the wildcards matched: with
   ``"sensors/+/temp" -> "fleet/{1}/temperature"``, ``sensors/k1/temp`` becomes
   ``fleet/k1/temperature`` (``{n}``: the n-th wildcard, ``#`` giving every remaining level
   joined by ``/``; ``{topic}``: the source topic; ``{session}``: the source session).
   An unmapped topic is forwarded unchanged (as MQTTX does);
4. **transforms**, in order: ``PayloadTransform`` (a function of the payload),
   ``JsonSet`` (set a field of a JSON object payload), ``TopicRewrite`` (a regular
   expression substitution on the topic), ``CompositeTransform``, or any
   ``ForwardedMessage -> ForwardedMessage | None`` function (None drops the message);
5. **metadata**: MQTT 5 user properties ``forwarded_by``, ``source_session``,
   ``source_topic`` and ``forwarded_at`` (Unix time, milliseconds) plus any static
   pairs, appended after the message's own user properties. The source message's other
   properties (content type, correlation data, response topic, expiry…) are kept;
   subscription identifiers and topic aliases belong to one connection and are not.

Received messages wait in a bounded FIFO (``buffer_size``, MQTTX's default 100); when it
is full a new message is dropped and counted. One worker task drains it; QoS 1/2
publishes are awaited concurrently up to ``max_inflight`` at a time, in order (each
publish is on the wire before the next one starts). A failed publish is counted in
``errors`` (``last_error``), or in ``dropped`` when the target's offline buffer was full;
the target client already re-sends across reconnects, so nothing is retried here.

``ForwarderRegistry`` adds, starts, stops, lists and removes forwarders of a manager, and
stops them all when the manager closes (``manager.forwarders`` is one for each manager).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from tidemq.protocol import (
    NO_PROPERTIES,
    Properties,
    parse_shared,
    topic_filter_error,
    topic_matches,
    topic_name_error,
)

from .errors import ClientError, ForwarderError, PublishError
from .message import Message
from .streams import Route

if TYPE_CHECKING:
    from .manager import SessionManager

__all__ = [
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_MAX_INFLIGHT",
    "META_FORWARDED_AT",
    "META_FORWARDED_BY",
    "META_SOURCE_SESSION",
    "META_SOURCE_TOPIC",
    "AndFilter",
    "CompositeTransform",
    "ForwardedMessage",
    "Forwarder",
    "ForwarderBuilder",
    "ForwarderConfig",
    "ForwarderMetrics",
    "ForwarderRegistry",
    "JsonSet",
    "MessageFilter",
    "NotFilter",
    "OrFilter",
    "PayloadFilter",
    "PayloadTransform",
    "TopicFilter",
    "TopicRewrite",
    "Transform",
]

log = logging.getLogger("tidemq.client.forwarder")

#: Messages waiting between a source and the target before new ones are dropped
#: (MQTTX's forwarder ``BufferSize`` default).
DEFAULT_BUFFER_SIZE = 100
#: QoS 1/2 publishes to the target awaiting their acknowledgement at once.
DEFAULT_MAX_INFLIGHT = 32
#: How long ``stop()`` lets queued messages go out before dropping them.
DEFAULT_STOP_TIMEOUT = 5.0

# The user property names of the injected metadata. ``forwarded_by`` is the key MQTTX's
# README puts in its forwarder metadata; the others follow its snake_case style.
META_FORWARDED_BY = "forwarded_by"
META_SOURCE_SESSION = "source_session"
META_SOURCE_TOPIC = "source_topic"
META_FORWARDED_AT = "forwarded_at"

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


# --- the message as it goes through the pipeline -------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardedMessage:
    """What will be published on the target; transforms return a changed copy.

    Attributes:
        topic: the target topic (after mapping).
        payload: the payload to publish.
        qos: the QoS to publish with.
        retain: the retain flag to publish with.
        properties: the MQTT 5 properties to publish with (metadata is added after the
            transforms).
        source: the message as the source session received it.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    source: Message

    def replace(self, **changes: Any) -> ForwardedMessage:
        """A copy with *changes* (``topic=``, ``payload=``…)."""
        return replace(self, **changes)


# --- filters -------------------------------------------------------------------------


class MessageFilter:
    """A predicate on a received ``Message``; combine with ``&``, ``|`` and ``~``."""

    def __call__(self, msg: Message) -> bool:
        raise NotImplementedError

    def __and__(self, other: MessageFilter | Callable[[Message], bool]) -> AndFilter:
        return AndFilter(self, other)

    def __or__(self, other: MessageFilter | Callable[[Message], bool]) -> OrFilter:
        return OrFilter(self, other)

    def __invert__(self) -> NotFilter:
        return NotFilter(self)


class TopicFilter(MessageFilter):
    """Passes messages whose topic matches *pattern*: an MQTT topic filter
    (``sensors/+/temp``), or with ``regex=True`` a regular expression searched in the
    topic (anchor it with ``^…$`` to match the whole topic).

    Raises:
        ForwarderError: an invalid filter or expression.
    """

    def __init__(self, pattern: str, regex: bool = False) -> None:
        self.pattern = pattern
        self.regex = regex
        self._re: re.Pattern[str] | None = None
        if regex:
            try:
                self._re = re.compile(pattern)
            except re.error as exc:
                raise ForwarderError(f"bad topic regex {pattern!r}: {exc}") from exc
        else:
            error = topic_filter_error(pattern)
            if error:
                raise ForwarderError(f"bad topic filter {pattern!r}: {error}")

    def __call__(self, msg: Message) -> bool:
        if self._re is not None:
            return self._re.search(msg.topic) is not None
        return topic_matches(self.pattern, msg.topic)

    def __repr__(self) -> str:
        return f"TopicFilter({self.pattern!r}, regex={self.regex})"


class PayloadFilter(MessageFilter):
    """Passes messages for which *predicate(payload bytes)* is true."""

    def __init__(self, predicate: Callable[[bytes], bool]) -> None:
        self.predicate = predicate

    def __call__(self, msg: Message) -> bool:
        return bool(self.predicate(msg.payload))


class _Predicate(MessageFilter):
    def __init__(self, predicate: Callable[[Message], bool]) -> None:
        self.predicate = predicate

    def __call__(self, msg: Message) -> bool:
        return bool(self.predicate(msg))


def _as_filter(f: MessageFilter | Callable[[Message], bool]) -> MessageFilter:
    return f if isinstance(f, MessageFilter) else _Predicate(f)


class AndFilter(MessageFilter):
    """Passes when every one of *filters* passes (and with none)."""

    def __init__(self, *filters: MessageFilter | Callable[[Message], bool]) -> None:
        self.filters = tuple(_as_filter(f) for f in filters)

    def __call__(self, msg: Message) -> bool:
        return all(f(msg) for f in self.filters)


class OrFilter(MessageFilter):
    """Passes when at least one of *filters* passes."""

    def __init__(self, *filters: MessageFilter | Callable[[Message], bool]) -> None:
        if not filters:
            raise ForwarderError("OrFilter needs at least one filter")
        self.filters = tuple(_as_filter(f) for f in filters)

    def __call__(self, msg: Message) -> bool:
        return any(f(msg) for f in self.filters)


class NotFilter(MessageFilter):
    """Passes when *inner* does not."""

    def __init__(self, inner: MessageFilter | Callable[[Message], bool]) -> None:
        self.inner = _as_filter(inner)

    def __call__(self, msg: Message) -> bool:
        return not self.inner(msg)


# --- transforms ----------------------------------------------------------------------


class Transform:
    """Changes a ``ForwardedMessage``; returning None drops the message (``filtered``)."""

    def __call__(self, fm: ForwardedMessage) -> ForwardedMessage | None:
        raise NotImplementedError


class PayloadTransform(Transform):
    """Replaces the payload by *fn(payload)* (bytes, or str sent as UTF-8; None drops)."""

    def __init__(self, fn: Callable[[bytes], bytes | str | None]) -> None:
        self.fn = fn

    def __call__(self, fm: ForwardedMessage) -> ForwardedMessage | None:
        out = self.fn(fm.payload)
        if out is None:
            return None
        return fm.replace(payload=out.encode("utf-8") if isinstance(out, str) else bytes(out))


class JsonSet(Transform):
    """Sets a field of a JSON object payload: *path* is ``"a.b.c"`` (or a sequence of
    keys), created as needed; *value* is any JSON value, or a function of the
    ``ForwardedMessage`` returning one.

    A payload that is not a JSON object is an error (counted; the message is dropped).
    """

    def __init__(self, path: str | Sequence[str], value: Any) -> None:
        keys = path.split(".") if isinstance(path, str) else list(path)
        if not keys or not all(keys):
            raise ForwarderError(f"bad JSON path {path!r}")
        self.keys = keys
        self.value = value

    def __call__(self, fm: ForwardedMessage) -> ForwardedMessage:
        try:
            doc = json.loads(fm.payload)
        except ValueError as exc:
            raise ForwarderError(f"payload on {fm.source.topic!r} is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ForwarderError(f"payload on {fm.source.topic!r} is not a JSON object")
        node = doc
        for key in self.keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        value = self.value(fm) if callable(self.value) else self.value
        node[self.keys[-1]] = value
        return fm.replace(payload=json.dumps(doc, separators=(",", ":")).encode("utf-8"))


class TopicRewrite(Transform):
    """Rewrites the topic with ``re.sub(pattern, replacement, topic)`` (``\\1`` refers to
    groups). A result that is not a valid topic name is an error."""

    def __init__(self, pattern: str, replacement: str) -> None:
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise ForwarderError(f"bad topic rewrite {pattern!r}: {exc}") from exc
        self.replacement = replacement

    def __call__(self, fm: ForwardedMessage) -> ForwardedMessage:
        topic = self.pattern.sub(self.replacement, fm.topic)
        error = topic_name_error(topic)
        if error:
            raise ForwarderError(f"rewritten topic {topic!r} is invalid: {error}")
        return fm.replace(topic=topic)


TransformLike = Transform | Callable[[ForwardedMessage], ForwardedMessage | None]


class CompositeTransform(Transform):
    """Applies *transforms* in order; stops at the first that drops the message."""

    def __init__(self, *transforms: TransformLike) -> None:
        self.transforms = transforms

    def __call__(self, fm: ForwardedMessage) -> ForwardedMessage | None:
        for transform in self.transforms:
            out = transform(fm)
            if out is None:
                return None
            fm = out
        return fm


# --- topic mapping -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mapping:
    pattern: str
    template: str

    def apply(self, topic: str, session: str) -> str | None:
        """The mapped topic, or None when *pattern* does not match *topic*."""
        if not topic_matches(self.pattern, topic):
            return None
        f_levels = self.pattern.split("/")
        t_levels = topic.split("/")
        captured: list[str] = []
        for i, level in enumerate(f_levels):
            if level == "+":
                captured.append(t_levels[i])
            elif level == "#":
                captured.append("/".join(t_levels[i:]))

        def fill(m: re.Match[str]) -> str:
            key = m.group(1)
            if key == "topic":
                return topic
            if key == "session":
                return session
            return captured[int(key) - 1]

        return _PLACEHOLDER.sub(fill, self.template)


def _check_mapping(pattern: str, template: str) -> str | None:
    """Why the mapping *pattern* → *template* is invalid, or None."""
    error = topic_filter_error(pattern)
    if error:
        return f"mapping source {pattern!r}: {error}"
    if parse_shared(pattern) is not None:
        return f"mapping source {pattern!r}: match topic names, not a shared subscription"
    wildcards = sum(1 for level in pattern.split("/") if level in ("+", "#"))
    for key in _PLACEHOLDER.findall(template):
        if key in ("topic", "session"):
            continue
        if not key.isdigit() or not 1 <= int(key) <= wildcards:
            return (
                f"mapping {pattern!r} -> {template!r}: {{{key}}} is not one of "
                f"{{1}}..{{{wildcards}}}, {{topic}} or {{session}}"
            )
    bare = _PLACEHOLDER.sub("x", template)
    if "{" in bare or "}" in bare:
        return f"mapping target {template!r}: unbalanced braces"
    error = topic_name_error(bare)
    if error:
        return f"mapping target {template!r}: {error}"
    return None


# --- configuration -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwarderConfig:
    """Everything a forwarder does; make one directly or with ``ForwarderBuilder``.

    Attributes:
        name: unique within a registry; also the ``forwarded_by`` metadata.
        sources: (session name, topic filters) pairs to subscribe to.
        target: the session that publishes the forwarded messages.
        qos: the target QoS; None publishes with the QoS each message was received with.
        source_qos: the QoS of the source subscriptions.
        retain: the target retain flag; None keeps the received flag (the source
            subscriptions then ask for Retain As Published, MQTT 5).
        topic_map: exact topic mappings (source topic → target topic).
        wildcard_map: (filter, template) mappings tried in order after *topic_map*.
        filters: every one must pass.
        transforms: applied in order after the topic mapping.
        inject_metadata: add the ``forwarded_by``/``source_*``/``forwarded_at`` user
            properties (MQTT 5 targets). Loop detection relies on them.
        metadata: static (name, value) user properties added to every message.
        buffer_size: messages waiting for the target; more are dropped.
        max_inflight: unacknowledged QoS 1/2 publishes on the target at once.
        enabled: a registry starts it when added.
    """

    name: str
    sources: tuple[tuple[str, tuple[str, ...]], ...]
    target: str
    qos: int | None = None
    source_qos: int = 1
    retain: bool | None = False
    topic_map: Mapping[str, str] = field(default_factory=dict)
    wildcard_map: tuple[tuple[str, str], ...] = ()
    filters: tuple[MessageFilter | Callable[[Message], bool], ...] = ()
    transforms: tuple[TransformLike, ...] = ()
    inject_metadata: bool = True
    metadata: tuple[tuple[str, str], ...] = ()
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_inflight: int = DEFAULT_MAX_INFLIGHT
    enabled: bool = True

    def problems(self) -> list[str]:
        """Every problem with the configuration (empty when it is valid)."""
        out: list[str] = []
        if not self.name:
            out.append("the forwarder needs a name")
        if not self.sources:
            out.append("no source: call .source(session, topic, ...)")
        for session, topics in self.sources:
            if not session:
                out.append("a source needs a session name")
            if not topics:
                out.append(f"source {session!r} has no topic filter")
            for t in topics:
                error = topic_filter_error(t)
                if error:
                    out.append(f"source {session!r} filter {t!r}: {error}")
        if not self.target:
            out.append("no target: call .target(session)")
        if self.qos not in (None, 0, 1, 2):
            out.append(f"target QoS {self.qos!r} is not 0, 1 or 2")
        if self.source_qos not in (0, 1, 2):
            out.append(f"source QoS {self.source_qos!r} is not 0, 1 or 2")
        for src, dst in self.topic_map.items():
            for label, topic in (("source", src), ("target", dst)):
                error = topic_name_error(topic)
                if error:
                    out.append(f"topic mapping {label} {topic!r}: {error}")
        for pattern, template in self.wildcard_map:
            error = _check_mapping(pattern, template)
            if error:
                out.append(error)
        if self.buffer_size < 1:
            out.append("buffer_size must be at least 1")
        if self.max_inflight < 1:
            out.append("max_inflight must be at least 1")
        reserved = {META_FORWARDED_BY, META_SOURCE_SESSION, META_SOURCE_TOPIC, META_FORWARDED_AT}
        for key, _ in self.metadata:
            if key in reserved:
                out.append(f"metadata key {key!r} is reserved")
        return out


class ForwarderBuilder:
    """Fluent ``ForwarderConfig`` maker (MQTTX's ``NewForwarderBuilder``)::

    config = (
        ForwarderBuilder("temps")
        .source("plant", "sensors/+/temp")
        .target("cloud")
        .qos(1)
        .map_topic("sensors/+/temp", "fleet/{1}/temperature")
        .filter(PayloadFilter(lambda p: p != b"nan"))
        .build()
    )
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._sources: list[tuple[str, tuple[str, ...]]] = []
        self._target = ""
        self._qos: int | None = None
        self._source_qos = 1
        self._retain: bool | None = False
        self._topic_map: dict[str, str] = {}
        self._wildcard_map: list[tuple[str, str]] = []
        self._filters: list[MessageFilter | Callable[[Message], bool]] = []
        self._transforms: list[TransformLike] = []
        self._inject = True
        self._metadata: list[tuple[str, str]] = []
        self._buffer = DEFAULT_BUFFER_SIZE
        self._inflight = DEFAULT_MAX_INFLIGHT
        self._enabled = True

    def source(self, session: str, *topics: str) -> ForwarderBuilder:
        """Forward *topics* (MQTT topic filters) received by *session*."""
        self._sources.append((session, topics))
        return self

    def target(self, session: str) -> ForwarderBuilder:
        self._target = session
        return self

    def qos(self, qos: int | None) -> ForwarderBuilder:
        """The target QoS (None: as received); the source subscriptions use it too."""
        self._qos = qos
        if qos is not None:
            self._source_qos = qos
        return self

    def source_qos(self, qos: int) -> ForwarderBuilder:
        self._source_qos = qos
        return self

    def retain(self, retain: bool | None) -> ForwarderBuilder:
        """Publish retained (True), not retained (False, the default) or as received."""
        self._retain = retain
        return self

    def map_topic(self, source: str, target: str) -> ForwarderBuilder:
        """Map *source* to *target*: exact, or with wildcards and a ``{n}`` template."""
        if "+" in source or "#" in source:
            self._wildcard_map.append((source, target))
        else:
            self._topic_map[source] = target
        return self

    def topic_mapping(self, mapping: Mapping[str, str]) -> ForwarderBuilder:
        for source, target in mapping.items():
            self.map_topic(source, target)
        return self

    def filter(self, *filters: MessageFilter | Callable[[Message], bool]) -> ForwarderBuilder:
        self._filters.extend(filters)
        return self

    def transform(self, *transforms: TransformLike) -> ForwarderBuilder:
        self._transforms.extend(transforms)
        return self

    def metadata(self, key: str | Mapping[str, str], value: str | None = None) -> ForwarderBuilder:
        """Add static user properties: ``.metadata("site", "a")`` or ``.metadata({...})``."""
        if isinstance(key, str):
            if value is None:
                raise ForwarderError(f"metadata {key!r} needs a value")
            self._metadata.append((key, str(value)))
        else:
            self._metadata.extend((k, str(v)) for k, v in key.items())
        return self

    def inject_metadata(self, enabled: bool = True) -> ForwarderBuilder:
        self._inject = enabled
        return self

    def buffer_size(self, size: int) -> ForwarderBuilder:
        self._buffer = size
        return self

    def max_inflight(self, count: int) -> ForwarderBuilder:
        self._inflight = count
        return self

    def enable(self) -> ForwarderBuilder:
        self._enabled = True
        return self

    def disable(self) -> ForwarderBuilder:
        self._enabled = False
        return self

    def build(self) -> ForwarderConfig:
        """The configuration.

        Raises:
            ForwarderError: every problem found, in one message.
        """
        config = ForwarderConfig(
            name=self._name,
            sources=tuple(self._sources),
            target=self._target,
            qos=self._qos,
            source_qos=self._source_qos,
            retain=self._retain,
            topic_map=dict(self._topic_map),
            wildcard_map=tuple(self._wildcard_map),
            filters=tuple(self._filters),
            transforms=tuple(self._transforms),
            inject_metadata=self._inject,
            metadata=tuple(self._metadata),
            buffer_size=self._buffer,
            max_inflight=self._inflight,
            enabled=self._enabled,
        )
        problems = config.problems()
        if problems:
            raise ForwarderError(f"forwarder {self._name!r}: " + "; ".join(problems))
        return config


# --- metrics -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ForwarderMetrics:
    """A snapshot of a forwarder's counters (times from ``time.time()``).

    ``received`` = ``forwarded`` + ``filtered`` + ``loops`` + ``dropped`` + ``errors``
    + ``queued`` + ``in_flight``, once every publish has completed or failed.
    """

    name: str
    running: bool
    received: int
    forwarded: int
    filtered: int
    loops: int
    dropped: int
    errors: int
    queued: int
    in_flight: int
    last_forwarded: float | None
    last_error: str | None
    last_error_time: float | None

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}


# --- the forwarder -------------------------------------------------------------------


class Forwarder:
    """Forwards messages between sessions of *manager* as *config* says.

    ``await start()`` subscribes on every source (waiting for sessions that are still
    connecting) and ``await stop()`` unsubscribes and lets queued messages go out.
    """

    def __init__(self, config: ForwarderConfig, manager: SessionManager) -> None:
        problems = config.problems()
        if problems:
            raise ForwarderError(f"forwarder {config.name!r}: " + "; ".join(problems))
        self.config = config
        self.manager = manager
        self.name = config.name
        self._filters = tuple(_as_filter(f) for f in config.filters)
        self._exact = dict(config.topic_map)
        self._wild = tuple(_Mapping(p, t) for p, t in config.wildcard_map)
        self._static_meta = tuple(config.metadata)
        self._queue: asyncio.Queue[Message] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._slots: asyncio.Semaphore | None = None
        self._subscriptions: list[tuple[str, list[Route]]] = []
        self._running = False
        self.received = 0
        self.forwarded = 0
        self.filtered = 0
        self.loops = 0
        self.dropped = 0
        self.errors = 0
        self.last_forwarded: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def source_sessions(self) -> list[str]:
        return [session for session, _ in self.config.sources]

    @property
    def target_session(self) -> str:
        return self.config.target

    def metrics(self) -> ForwarderMetrics:
        return ForwarderMetrics(
            name=self.name,
            running=self._running,
            received=self.received,
            forwarded=self.forwarded,
            filtered=self.filtered,
            loops=self.loops,
            dropped=self.dropped,
            errors=self.errors,
            queued=self._queue.qsize() if self._queue is not None else 0,
            in_flight=len(self._publishing),
            last_forwarded=self.last_forwarded,
            last_error=self.last_error,
            last_error_time=self.last_error_time,
        )

    def reset_metrics(self) -> None:
        self.received = self.forwarded = self.filtered = 0
        self.loops = self.dropped = self.errors = 0
        self.last_forwarded = self.last_error = self.last_error_time = None

    # --- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe on the sources and start forwarding.

        Raises:
            ForwarderError: an unknown session, or a source subscription failed (the
                forwarder is then stopped again).
        """
        if self._running:
            return
        manager = self.manager
        for session in [*self.source_sessions, self.config.target]:
            if session not in manager:
                raise ForwarderError(f"forwarder {self.name!r}: no session named {session!r}")
        self._queue = asyncio.Queue(self.config.buffer_size)
        self._slots = asyncio.Semaphore(self.config.max_inflight)
        self._running = True
        self._worker = asyncio.get_running_loop().create_task(self._work(self._queue))
        try:
            for session_name, topics in self.config.sources:
                client = manager.get_session(session_name).client
                handler = self._intake_for()
                sub = client.subscribe(
                    list(topics),
                    self.config.source_qos,
                    handler,
                    retain_as_published=self.config.retain is None and client.version == 5,
                )
                await sub
                self._subscriptions.append((session_name, sub.routes))
        except ClientError as exc:
            await self.stop(timeout=0)
            raise ForwarderError(
                f"forwarder {self.name!r}: subscribing on the sources failed: {exc}",
                temporary=exc.is_temporary,
            ) from exc
        except BaseException:
            await self.stop(timeout=0)
            raise
        log.info(
            "forwarder %s started: %s -> %s",
            self.name,
            ", ".join(f"{s}[{', '.join(t)}]" for s, t in self.config.sources),
            self.config.target,
        )

    def _intake_for(self) -> Callable[[Message], None]:
        # Runs on the source client's read path: no awaiting, just the queue.
        def intake(msg: Message) -> None:
            if not self._running:
                return
            self.received += 1
            if self.config.inject_metadata and (META_FORWARDED_BY, self.name) in (
                msg.properties.user_properties
            ):
                self.loops += 1
                log.debug(
                    "forwarder %s: dropping %r, it went through us before", self.name, msg.topic
                )
                return
            queue = self._queue
            assert queue is not None
            try:
                queue.put_nowait(msg)
            except asyncio.QueueFull:
                self.dropped += 1

        return intake

    async def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop taking messages, let the queued ones go out for up to *timeout* seconds
        (the rest are dropped and counted), and unsubscribe the source filters no other
        handler of that session still uses."""
        if not self._running and self._worker is None:
            return
        self._running = False
        subscriptions, self._subscriptions = self._subscriptions, []
        for session_name, routes in subscriptions:
            session = self.manager._sessions.get(session_name)
            if session is not None:
                session.client._remove_routes(routes)
        worker, self._worker = self._worker, None
        queue = self._queue
        if worker is not None and queue is not None:
            if timeout > 0:
                try:
                    await asyncio.wait_for(self._drain(queue), timeout)
                except TimeoutError:
                    pass
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            leftover = queue.qsize()
            if leftover:
                self.dropped += leftover
                log.warning("forwarder %s: %d queued messages dropped at stop", self.name, leftover)
            for task in list(self._publishing):
                task.cancel()
            await asyncio.gather(*self._publishing, return_exceptions=True)
        self._queue = None
        for session_name, routes in subscriptions:
            await self._unsubscribe(session_name, routes)
        log.info("forwarder %s stopped", self.name)

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every message received so far is forwarded (or filtered, dropped,
        failed): the buffer is empty and no publish awaits its acknowledgement.

        Raises:
            ForwarderError: *timeout* passed first (``is_timeout``).
        """
        queue = self._queue
        if queue is None:
            return
        try:
            await asyncio.wait_for(self._drain(queue), timeout)
        except TimeoutError:
            raise ForwarderError(
                f"forwarder {self.name!r}: not flushed within {timeout} s", timeout=True
            ) from None

    async def _drain(self, queue: asyncio.Queue[Message]) -> None:
        await queue.join()
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)

    async def _unsubscribe(self, session_name: str, routes: list[Route]) -> None:
        session = self.manager._sessions.get(session_name)
        if session is None or not session.is_connected:
            return
        client = session.client
        still_used = {r.filter for r in client._routes}
        topics = [r.filter for r in routes if r.filter not in still_used]
        if not topics:
            return
        try:
            await client.unsubscribe(topics)
        except ClientError as exc:
            log.warning(
                "forwarder %s: unsubscribing on %s failed: %s", self.name, session_name, exc
            )

    # --- the pipeline ----------------------------------------------------------------

    async def _work(self, queue: asyncio.Queue[Message]) -> None:
        slots = self._slots
        assert slots is not None
        while True:
            msg = await queue.get()
            try:
                fm = self._process(msg)
                if fm is None:
                    continue
                target = self.manager._sessions.get(self.config.target)
                if target is None:
                    self._fail(ForwarderError(f"target session {self.config.target!r} is gone"))
                    continue
                if not fm.qos:
                    await self._publish(target.client, fm)
                    continue
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(self._publish(target.client, fm))
                self._publishing.add(task)
                task.add_done_callback(self._published)
            except asyncio.CancelledError:
                self.dropped += 1  # stop() gave up while this message was in hand
                raise
            finally:
                queue.task_done()

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if task.cancelled():
            self.dropped += 1  # still unacknowledged when stop() gave up waiting
        assert self._slots is not None
        self._slots.release()

    def _process(self, msg: Message) -> ForwardedMessage | None:
        """Filters, mapping, transforms and metadata; None when the message stops here."""
        try:
            for f in self._filters:
                if not f(msg):
                    self.filtered += 1
                    return None
            config = self.config
            topic = self.map_topic(msg.topic, msg.session)
            props = msg.properties
            if props.subscription_identifiers or props.topic_alias is not None:
                props = replace(props, subscription_identifiers=(), topic_alias=None)
            fm = ForwardedMessage(
                topic=topic,
                payload=msg.payload,
                qos=msg.qos if config.qos is None else config.qos,
                retain=msg.retain if config.retain is None else config.retain,
                properties=props,
                source=msg,
            )
            for transform in config.transforms:
                out = transform(fm)
                if out is None:
                    self.filtered += 1
                    return None
                fm = out
            meta: list[tuple[str, str]] = []
            if config.inject_metadata:
                meta += [
                    (META_FORWARDED_BY, self.name),
                    (META_SOURCE_SESSION, msg.session),
                    (META_SOURCE_TOPIC, msg.topic),
                    (META_FORWARDED_AT, str(int(time.time() * 1000))),
                ]
            meta += self._static_meta
            if meta:
                fm = fm.replace(
                    properties=replace(
                        fm.properties, user_properties=(*fm.properties.user_properties, *meta)
                    )
                )
            return fm
        except Exception as exc:
            self._fail(exc, msg.topic)
            return None

    def map_topic(self, topic: str, session: str = "") -> str:
        """The target topic for *topic* received by *session* (unmapped: unchanged)."""
        exact = self._exact.get(topic)
        if exact is not None:
            return exact
        for mapping in self._wild:
            mapped = mapping.apply(topic, session)
            if mapped is not None:
                return mapped
        return topic

    async def _publish(self, client: Any, fm: ForwardedMessage) -> None:
        props = fm.properties if client.version == 5 else NO_PROPERTIES
        try:
            await client.publish(fm.topic, fm.payload, fm.qos, fm.retain, props or None)
        except PublishError as exc:
            if exc.is_temporary and exc.reason_code is None:
                self.dropped += 1  # the target's offline buffer is full
                self._note(exc)
            else:
                self._fail(exc, fm.topic)
            return
        except ClientError as exc:
            self._fail(exc, fm.topic)
            return
        self.forwarded += 1
        self.last_forwarded = time.time()

    def _note(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.last_error_time = time.time()

    def _fail(self, exc: BaseException, topic: str = "") -> None:
        self.errors += 1
        self._note(exc)
        log.warning("forwarder %s: %s%s", self.name, f"{topic!r}: " if topic else "", exc)

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<Forwarder {self.name!r} {state}>"


# --- the registry --------------------------------------------------------------------


class ForwarderRegistry:
    """The forwarders of one manager: add, start, stop, list, remove.

    Closing the manager stops every forwarder first (``SessionManager.forwarders`` is a
    registry made for it; a registry made directly registers itself the same way).
    """

    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self._forwarders: dict[str, Forwarder] = {}
        manager._add_close_hook(self.stop_all)

    async def add(self, config: ForwarderConfig | Forwarder) -> Forwarder:
        """Register a forwarder (made from *config* for this manager) and start it when
        its configuration is enabled.

        Raises:
            ForwarderError: the name is taken, the configuration is invalid, or it
                could not start (it stays registered, stopped).
        """
        forwarder = config if isinstance(config, Forwarder) else Forwarder(config, self.manager)
        if forwarder.manager is not self.manager:
            raise ForwarderError(f"forwarder {forwarder.name!r} belongs to another manager")
        if forwarder.name in self._forwarders:
            raise ForwarderError(f"forwarder {forwarder.name!r} already exists")
        self._forwarders[forwarder.name] = forwarder
        if forwarder.config.enabled:
            await forwarder.start()
        return forwarder

    def get(self, name: str) -> Forwarder:
        try:
            return self._forwarders[name]
        except KeyError:
            raise ForwarderError(f"no forwarder named {name!r}") from None

    def list(self) -> list[str]:
        return list(self._forwarders)

    def __contains__(self, name: object) -> bool:
        return name in self._forwarders

    def __len__(self) -> int:
        return len(self._forwarders)

    async def start(self, name: str) -> None:
        await self.get(name).start()

    async def stop(self, name: str, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        await self.get(name).stop(timeout)

    async def remove(self, name: str) -> None:
        """Stop the forwarder and forget it."""
        forwarder = self.get(name)
        await forwarder.stop()
        del self._forwarders[name]

    async def stop_all(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        await asyncio.gather(*(f.stop(timeout) for f in self._forwarders.values()))

    def metrics(self) -> dict[str, ForwarderMetrics]:
        """Every forwarder's metrics (MQTTX ``GetAllMetrics``)."""
        return {name: f.metrics() for name, f in self._forwarders.items()}
