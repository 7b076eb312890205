"""The composition root: builds the broker core, listeners and plugins from config.

``Broker`` is the embeddable broker::

    async with Broker(listen=["tcp://127.0.0.1:0"]) as broker:
        port = broker.port

Listener URLs take their options from ``config.listeners`` (TLS files, WebSocket options,
...) and their own URL query; ``Broker.addresses`` gives the real ports.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from tidemq import __version__
from tidemq.broker import BrokerCore, BrokerSettings, Hooks
from tidemq.broker.persist import Persistence
from tidemq.broker.sys_topics import SysPublisher
from tidemq.protocol import ReasonCode
from tidemq.transport import (
    Listener,
    ListenerSpec,
    TLSOptions,
    WebSocketOptions,
    WriteBatcher,
    start_listener,
)

if TYPE_CHECKING:
    from tidemq.auth.plugin import AuthPlugin
    from tidemq.config import Config, ListenerConfig
    from tidemq.storage.api import Storage

log = logging.getLogger("tidemq")

# How long a graceful stop waits for queued bytes to reach the kernel.
SHUTDOWN_FLUSH_TIMEOUT = 2.0


def settings_from_config(config: Config) -> BrokerSettings:
    """Map the user-facing config tree onto the broker core's settings."""
    limits, mqtt = config.limits, config.mqtt
    return BrokerSettings(
        node_name=config.node.name,
        max_packet_size=limits.max_packet_size,
        max_connections=limits.max_connections,
        max_inflight=limits.max_inflight,
        max_queued_messages=limits.max_queued_messages,
        queue_qos0=limits.queue_qos0,
        max_topic_levels=limits.max_topic_levels,
        max_client_id_length=limits.max_client_id_length,
        max_subscriptions_per_client=limits.max_subscriptions_per_client,
        max_awaiting_rel=limits.max_awaiting_rel,
        await_rel_timeout=float(limits.await_rel_timeout),
        max_keepalive=limits.max_keepalive,
        connect_timeout=float(limits.connect_timeout),
        topic_alias_maximum=limits.topic_alias_maximum,
        max_qos=limits.max_qos,
        retain_available=limits.retain_available,
        wildcard_subscription_available=limits.wildcard_subscription_available,
        shared_subscription_available=limits.shared_subscription_available,
        default_session_expiry=limits.default_session_expiry,
        max_session_expiry=limits.max_session_expiry,
        retry_interval=float(limits.retry_interval),
        message_expiry_max=limits.message_expiry_max,
        allow_anonymous=mqtt.allow_anonymous,
        shared_subscription_strategy=mqtt.shared_subscription_strategy,
        assign_topic_aliases=mqtt.assign_topic_aliases,
        reason_strings=mqtt.reason_strings,
        sys_interval=float(mqtt.sys_interval),
        version=__version__,
    )


def listener_spec(listener: ListenerConfig) -> ListenerSpec:
    """Map one resolved listener of the config onto the transport's ``ListenerSpec``."""
    tls = ws = None
    if listener.tls is not None:
        t = listener.tls
        tls = TLSOptions(
            certfile=t.certfile,
            keyfile=t.keyfile,
            cafile=t.cafile,
            require_client_cert=t.require_client_cert,
            cert_as_username=t.cert_as_username,
            min_version=t.min_version,
            ciphers=t.ciphers,
        )
    if listener.ws is not None:
        w = listener.ws
        ws = WebSocketOptions(
            path=listener.path,
            allowed_origins=w.allowed_origins,
            compression=w.compression,
            max_frame_size=w.max_frame_size,
        )
    return ListenerSpec(
        scheme=listener.scheme,
        host=listener.host,
        port=listener.port,
        path=listener.path,
        name=listener.name,
        max_connections=listener.max_connections,
        proxy_protocol=listener.proxy_protocol,
        handshake_timeout=listener.handshake_timeout,
        tls=tls,
        ws=ws,
    )


async def open_storage_from_config(config: Config) -> Storage | None:
    """Open the storage ``[storage]`` names (SQLite under ``node.data_dir`` by default);
    None for the ``memory`` backend, which keeps nothing across a restart anyway.

    Raises:
        StorageError: a bad URL, a missing driver, a corrupt or foreign file, a server
            that cannot be reached.
    """
    from tidemq.storage import open_storage

    section = config.storage
    if section.backend == "memory":
        return None
    return await open_storage(
        section.backend, section.url, data_dir=config.node.data_dir, durability=section.durability
    )


class Broker:
    """A running TideMQ broker: core, listeners and plugins.

    Args:
        config: the full configuration (defaults when omitted).
        listen: listener URLs overriding ``config.listeners.listen``; their options still
            come from ``config.listeners`` and their own query.
        settings: broker-core settings overriding those derived from *config*.
        hooks: a hook registry to share with plugins (a new one when omitted).
        storage: where the broker persists sessions, queues, in-flight and retained
            state (opened by the caller; ``open_storage_from_config`` opens the one
            ``[storage]`` names). None keeps everything in memory. It is restored from at
            ``start`` and drained (not closed) at ``stop``.
    """

    def __init__(
        self,
        config: Config | None = None,
        *,
        listen: Sequence[str] | None = None,
        settings: BrokerSettings | None = None,
        hooks: Hooks | None = None,
        storage: Storage | None = None,
    ) -> None:
        if config is None and (settings is None or listen is None):
            from tidemq.config import load_config

            config = load_config(env={})
        self.config = config
        if settings is None:
            assert config is not None
            settings = settings_from_config(config)
        self.settings = settings
        if listen is None:
            assert config is not None
            listen = config.listeners.listen
        self.listen = list(listen)
        self.hooks = hooks or Hooks()
        self.storage = storage
        self.persistence: Persistence | None = None
        self.listeners: list[Listener] = []
        self._core: BrokerCore | None = None
        self._sys: SysPublisher | None = None
        self._started = False
        self.auth: AuthPlugin | None = None  # tidemq.auth, from config.auth and config.acl
        self._auth_unregister: Callable[[], None] | None = None

    @property
    def purge_interval(self) -> float:
        return float(self.config.storage.purge_interval) if self.config is not None else 300.0

    @property
    def core(self) -> BrokerCore:
        if self._core is None:
            raise RuntimeError("the broker is not started")
        return self._core

    async def start(self) -> None:
        if self._started:
            return
        loop = asyncio.get_running_loop()
        from tidemq.config import Config

        listeners = (self.config or Config()).listeners
        specs = [listener_spec(item) for item in listeners.resolve(self.listen)]
        core = self._core = BrokerCore(self.settings, hooks=self.hooks, loop=loop)
        if self.storage is not None:
            # Restored before any listener accepts a client (docs/storage.md).
            persistence = self.persistence = Persistence(
                self.storage, purge_interval=self.purge_interval
            )
            core.persist = persistence
            try:
                await persistence.restore(core)
            except BaseException:
                core.close()
                raise
        try:
            await self._start_auth()
        except BaseException:
            core.close()
            raise
        batcher = WriteBatcher(loop)
        try:
            for spec in specs:
                listener = await start_listener(spec, core.connection_made, batcher)
                self.listeners.append(listener)
                for host, port in listener.addresses:
                    log.info(
                        "listening on %s://%s:%d%s (%s)",
                        spec.scheme,
                        f"[{host}]" if ":" in host else host,
                        port,
                        spec.path,
                        spec.name,
                    )
        except BaseException:
            for listener in self.listeners:
                listener.close()
            self.listeners.clear()
            core.close()
            await self._stop_auth()
            raise
        if self.settings.sys_interval > 0:
            self._sys = SysPublisher(core)
            self._sys.start()
        self._started = True

    async def stop(self) -> None:
        """Close every listener, then every connection (v5: DISCONNECT 0x8B; WebSocket:
        close 1001), then the connections still in their PROXY/TLS/WebSocket handshake."""
        if not self._started:
            return
        self._started = False
        core = self.core
        core.closing = True
        for listener in self.listeners:
            listener.close()
        for handler in list(core.handlers):
            handler.disconnect(ReasonCode.SERVER_SHUTTING_DOWN, "server shutting down")
        for listener in self.listeners:
            listener.close_connections()
        for listener in self.listeners:
            try:
                await asyncio.wait_for(listener.wait_closed(), SHUTDOWN_FLUSH_TIMEOUT)
            except TimeoutError:
                log.warning("listener %s did not close in time", listener.spec.name)
        if self._sys is not None:
            self._sys.stop()
        core.close()
        self.listeners.clear()
        await self._stop_auth()
        if self.persistence is not None:
            # Sessions just went offline: their state and will timers reach storage.
            await self.persistence.drain()

    # --- authentication and authorization (tidemq.auth) --------------------------------

    async def _start_auth(self) -> None:
        """Build the auth plugin from ``config.auth``/``config.acl``, open its sources (read
        files, connect) and install it on the hooks, before any listener accepts."""
        if self.config is None:
            return
        from tidemq.auth.plugin import AuthPlugin

        plugin = AuthPlugin.from_config(self.config, self.storage)
        if not plugin.enabled:
            return
        await plugin.open()
        self.auth = plugin
        # The core too: a ban taking effect disconnects the connected clients it matches.
        self._auth_unregister = plugin.install(self.hooks, clients=self.core)

    async def _stop_auth(self) -> None:
        if self._auth_unregister is not None:
            self._auth_unregister()
            self._auth_unregister = None
        if self.auth is not None:
            await self.auth.close()
            self.auth = None

    def reload_auth(self) -> bool:
        """Re-read the password and ACL files (SIGHUP); returns whether all loaded."""
        return self.auth.reload() if self.auth is not None else True

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def reload_tls(self) -> bool:
        """Re-read every TLS listener's certificate files (SIGHUP). New connections use
        the new files; established ones are untouched. A listener whose files fail to load
        keeps its old ones (logged); returns whether all loaded."""
        ok = True
        for listener in self.listeners:
            ok = listener.reload_tls() and ok
        return ok

    def listener(self, name: str) -> Listener:
        """The started listener called *name* (``tls:8883``, or its ``?name=``)."""
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)

    @property
    def addresses(self) -> list[tuple[str, str, int]]:
        """(scheme, host, port) of every bound socket, real ports included."""
        return [
            (listener.spec.scheme, host, port)
            for listener in self.listeners
            for host, port in listener.addresses
        ]

    @property
    def port(self) -> int:
        """The bound port of the first listener (handy with ``tcp://127.0.0.1:0``)."""
        if not self.listeners:
            raise RuntimeError("the broker has no listener")
        return self.listeners[0].port
