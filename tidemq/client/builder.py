"""``SessionBuilder``: a fluent way to configure a ``Session`` (MQTTX's builder).

::

    session = (
        SessionBuilder("meter")
        .broker("mqtts://broker.example.com:8883")
        .client_id("meter-17")
        .auth("user", "secret")
        .tls(ca="ca.pem")
        .keepalive(30)
        .clean_session(False)
        .reconnect(initial=1, maximum=60, factor=2)
        .persistent()
        .file_storage("/var/lib/meter")
        .subscribe("meters/17/commands", 1, on_command)
        .build()
    )

``build()`` checks everything at once and raises one ``ConfigurationError`` listing every
problem (``validate()`` returns the list without raising). Defaults are MQTTX's: keepalive
60 s, connect timeout 30 s, clean session, auto-reconnect 2 s → ×1.5 → 120 s, client id
``tidemq-<name>-<random>``.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from tidemq.protocol import Will

from .client import Client
from .errors import ConfigurationError
from .manager import Session
from .options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_KEEPALIVE, DEFAULT_MAX_BUFFERED, parse_url
from .persistence import FileStore, MemoryStore, RedisStore, SessionStore
from .reconnect import ReconnectPolicy
from .streams import Handler

__all__ = ["SessionBuilder", "quick_connect", "secure_connect"]


@dataclass(slots=True)
class _Config:
    url: str | None = None
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    skip_verify: bool = False
    tls: bool = False
    version: int = 5
    keepalive: int = DEFAULT_KEEPALIVE
    clean_session: bool = True
    session_expiry: int | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    reconnect: bool = True
    initial: float = 2.0
    maximum: float = 120.0
    factor: float = 1.5
    max_attempts: int | None = None
    max_buffered: int = DEFAULT_MAX_BUFFERED
    persistent: bool = False
    storage: str = "memory"  # memory | file | redis
    storage_target: str | None = None
    will: Will | None = None
    subscriptions: list[tuple[str, int, Handler | None]] = field(default_factory=list)


class SessionBuilder:
    """Collects a session's options; ``build()`` validates them and makes the ``Session``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._c = _Config()

    def reset(self) -> SessionBuilder:
        self._c = _Config()
        return self

    # --- connection ------------------------------------------------------------------

    def broker(self, url: str) -> SessionBuilder:
        """``mqtt://host:port``, ``mqtts://host:port``, ``ws://host:port/path`` or
        ``wss://host:port/path`` (``.tls()`` applies to mqtts:// and wss://)."""
        self._c.url = url
        return self

    def client_id(self, client_id: str) -> SessionBuilder:
        self._c.client_id = client_id
        return self

    def auth(self, username: str, password: str | None = None) -> SessionBuilder:
        self._c.username, self._c.password = username, password
        return self

    def tls(
        self,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        skip_verify: bool = False,
    ) -> SessionBuilder:
        """Use TLS: *ca* to verify the broker (system CAs if None), *cert*/*key* for a
        client certificate; *skip_verify* disables verification (tests only)."""
        c = self._c
        c.tls, c.ca, c.cert, c.key, c.skip_verify = True, ca, cert, key, skip_verify
        return self

    def version(self, version: int) -> SessionBuilder:
        """5 (default), 311 or 31."""
        self._c.version = version
        return self

    def keepalive(self, seconds: int) -> SessionBuilder:
        self._c.keepalive = seconds
        return self

    def clean_session(self, clean: bool = True) -> SessionBuilder:
        self._c.clean_session = clean
        return self

    def session_expiry(self, seconds: int) -> SessionBuilder:
        self._c.session_expiry = seconds
        return self

    def will(self, will: Will) -> SessionBuilder:
        self._c.will = will
        return self

    def timeouts(self, connect: float) -> SessionBuilder:
        self._c.connect_timeout = connect
        return self

    def max_buffered(self, messages: int) -> SessionBuilder:
        """Publishes kept while offline (default 1000)."""
        self._c.max_buffered = messages
        return self

    # --- reconnecting ----------------------------------------------------------------

    def auto_reconnect(self) -> SessionBuilder:
        self._c.reconnect = True
        return self

    def disable_reconnect(self) -> SessionBuilder:
        self._c.reconnect = False
        return self

    def reconnect(
        self,
        initial: float = 2.0,
        maximum: float = 120.0,
        factor: float = 1.5,
        *,
        max_attempts: int | None = None,
    ) -> SessionBuilder:
        c = self._c
        c.reconnect, c.initial, c.maximum, c.factor = True, initial, maximum, factor
        c.max_attempts = max_attempts
        return self

    # --- persistence -----------------------------------------------------------------

    def persistent(self, enabled: bool = True) -> SessionBuilder:
        """Keep subscriptions and unacknowledged messages in a store (memory by default)."""
        self._c.persistent = enabled
        return self

    def memory_storage(self) -> SessionBuilder:
        self._c.storage, self._c.storage_target = "memory", None
        return self

    def file_storage(self, directory: str | os.PathLike[str]) -> SessionBuilder:
        self._c.storage, self._c.storage_target = "file", os.fspath(directory)
        return self

    def redis_storage(self, url: str) -> SessionBuilder:
        self._c.storage, self._c.storage_target = "redis", url
        return self

    # --- subscriptions ---------------------------------------------------------------

    def subscribe(self, topic: str, qos: int = 0, handler: Handler | None = None) -> SessionBuilder:
        """Subscribe once the session is connected (``session_ready`` follows)."""
        self._c.subscriptions.append((topic, qos, handler))
        return self

    # --- finishing -------------------------------------------------------------------

    def validate(self) -> list[str]:
        """Every problem with the options, as sentences (empty when all is well)."""
        c = self._c
        problems: list[str] = []
        if not self.name:
            problems.append("the session needs a name")
        if not c.url:
            problems.append("no broker: call .broker(url)")
        else:
            try:
                endpoint = parse_url(c.url)
                if endpoint.tls:
                    c.tls = True
            except ConfigurationError as exc:
                problems.append(str(exc))
        if c.version not in (3, 31, 4, 311, 5):
            problems.append(f"unknown MQTT version {c.version!r} (use 5, 311 or 31)")
        if not 0 <= c.keepalive <= 0xFFFF:
            problems.append("keepalive must be 0..65535 seconds")
        if c.connect_timeout <= 0:
            problems.append("the connect timeout must be positive")
        if c.reconnect:
            if c.initial <= 0:
                problems.append("the initial reconnect delay must be positive")
            if c.maximum < c.initial:
                problems.append("the maximum reconnect delay is below the initial one")
            if c.factor < 1:
                problems.append("the reconnect factor must be at least 1")
        if c.max_buffered < 0:
            problems.append("max_buffered must not be negative")
        if c.password is not None and not c.username and c.version != 5:
            problems.append("MQTT 3 needs a username with a password")
        for label, path in (("CA", c.ca), ("certificate", c.cert), ("key", c.key)):
            if path is not None and not Path(path).is_file():
                problems.append(f"TLS {label} file {path!r} does not exist")
        if c.key and not c.cert:
            problems.append("a TLS key needs a certificate")
        if (c.persistent or not c.clean_session) and not c.client_id:
            problems.append("a persistent session needs a fixed client_id")
        if c.storage in ("file", "redis") and not c.persistent:
            problems.append(f"{c.storage} storage needs .persistent()")
        for topic, qos, _ in c.subscriptions:
            if qos not in (0, 1, 2):
                problems.append(f"subscription {topic!r}: QoS {qos!r} is not 0, 1 or 2")
        return problems

    def build(self) -> Session:
        """The configured session (not connected: add it to a ``SessionManager``, or
        call ``session.start()`` / ``await session.client.connect()``).

        Raises:
            ConfigurationError: every problem ``validate()`` finds, in one message.
        """
        problems = self.validate()
        if problems:
            raise ConfigurationError(f"session {self.name!r}: " + "; ".join(problems))
        c = self._c
        assert c.url is not None
        context = None
        if c.tls:
            context = ssl.create_default_context(cafile=c.ca)
            if c.cert:
                context.load_cert_chain(c.cert, c.key)
            if c.skip_verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        policy: ReconnectPolicy | bool = False
        if c.reconnect:
            policy = ReconnectPolicy(
                initial_delay=c.initial,
                max_delay=c.maximum,
                factor=c.factor,
                max_attempts=c.max_attempts,
            )
        store: SessionStore | None = None
        if c.persistent:
            if c.storage == "file":
                assert c.storage_target is not None
                store = FileStore(c.storage_target)
            elif c.storage == "redis":
                store = RedisStore(c.storage_target)
            else:
                store = MemoryStore()
        client = Client(
            c.url,
            client_id=c.client_id or f"tidemq-{self.name}-{os.urandom(4).hex()}",
            version=c.version,
            username=c.username,
            password=c.password,
            keepalive=c.keepalive,
            clean_start=c.clean_session,
            session_expiry=c.session_expiry,
            will=c.will,
            ssl=context,
            connect_timeout=c.connect_timeout,
            reconnect=policy,
            max_buffered=c.max_buffered,
            store=store,
            session_name=self.name if store is not None else None,
            name=self.name,
        )
        return Session(self.name, client, subscriptions=c.subscriptions, persistent=c.persistent)


def quick_connect(name: str, url: str) -> Session:
    """A session with every default (MQTT 5, auto-reconnect) for *url*."""
    return SessionBuilder(name).broker(url).build()


def secure_connect(name: str, url: str, ca: str) -> Session:
    """A TLS session verifying the broker against the CA file *ca*."""
    return SessionBuilder(name).broker(url).tls(ca=ca).build()
