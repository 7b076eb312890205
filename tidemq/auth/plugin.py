"""``AuthPlugin``: the authentication and authorization sources, on the broker's hooks.

::

    plugin = AuthPlugin.from_config(config, storage)
    await plugin.open()            # files read, connections made: before listeners start
    unregister = plugin.install(broker.hooks, clients=broker.core)
    ...
    await plugin.close()

For each CONNECT (``AUTHENTICATE``, awaited by the broker): the ban checkers, then the
per-address failure limit, then the authenticators of ``auth.chain`` in order; the first
answer that is not IGNORE wins. All IGNORE: a client without a username is let in when
``mqtt.allow_anonymous`` is true, everyone else is refused. A refusal is CONNACK 0x87 Not
authorized (3.1.1: 5), as Mosquitto 2 answers a bad password, unless the source chose a
code.

For each PUBLISH and SUBSCRIBE (``AUTHORIZE_PUBLISH`` / ``AUTHORIZE_SUBSCRIBE``, plain
functions on the hot path): the per-client cache, then the client's own rules
(``AuthOutcome.acl``), then the authorizers of ``acl.sources``; the first ALLOW or DENY
wins, all IGNORE gives ``acl.no_match``. Superusers bypass all of it (the broker does not
even ask). A ``$share/GROUP/`` prefix is removed before a subscription is checked. An
``asynchronous`` authorizer (the HTTP callout) is awaited only on a cache miss: the hook
then returns an awaitable and the broker holds the client's later packets until it
resolves.

With ``acl.check_on_delivery`` on (``auto``: a Mosquitto-format ACL file), each message
delivered is checked too (``AUTHORIZE_DELIVERY``, Mosquitto's read check): the cache, the
client's own rules, then the ACL file; the asynchronous and database sources are not asked
per message (no answer from them counts as no match).

Per-connection state is keyed by the identity of the broker's ``ClientInfo`` object, which
lives exactly as long as the connection, so a client id taken over by a new connection never
sees the old connection's rules or cache.

Sources are found by name in ``AUTHENTICATORS`` and ``AUTHORIZERS``: factories taking
``(config, storage)``; ``BAN_SOURCES`` lists factories of ban checkers (objects with
``async def check(identity) -> AuthOutcome | None``, and optionally ``open``, ``close``,
``install(hooks)`` and ``attach_clients(clients)``, which receives the broker's
``ConnectedClients`` so that a new ban disconnects the clients it matches).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tidemq.broker.hooks import (
    HOOK_API_VERSION,
    AuthenticateEvent,
    AuthResult,
    ClientInfo,
    ConnectedEvent,
    Decision,
    DeliveryAuthEvent,
    DisconnectedEvent,
    HookPoint,
    Hooks,
    PublishAuthEvent,
    SubscribeAuthEvent,
)
from tidemq.protocol import parse_shared

from .acl import AclFileAuthorizer, AclRule, check_rules
from .api import (
    IGNORE,
    AclRequest,
    Action,
    Authenticator,
    Authorizer,
    AuthOutcome,
    ClientIdentity,
    Credentials,
    Verdict,
)

if TYPE_CHECKING:
    from tidemq.broker.interfaces import ConnectedClients
    from tidemq.config import Config
    from tidemq.storage.api import Storage

__all__ = [
    "AUTHENTICATORS",
    "AUTHORIZERS",
    "BAN_SOURCES",
    "AuthPlugin",
    "BanChecker",
    "CertificateAuthenticator",
    "client_identity",
]

log = logging.getLogger("tidemq.auth")

NOT_AUTHORIZED = 0x87
CONNECTION_RATE_EXCEEDED = 0x9F
#: A connection that authenticated but never completed its CONNECT (closed in between)
#: is forgotten after this long.
PENDING_TIMEOUT = 120.0
#: Disconnected clients whose own rules are kept for their delayed wills (the broker asks
#: about a will as its client, after it left); the oldest are dropped first.
MAX_OFFLINE_STATES = 10_000


@runtime_checkable
class BanChecker(Protocol):
    async def check(self, identity: ClientIdentity) -> AuthOutcome | None:
        """A DENY outcome for a banned client (reason code 0x8A Banned, say), else None."""


AuthenticatorFactory = Callable[["Config", "Storage | None"], Authenticator]
AuthorizerFactory = Callable[["Config", "Storage | None"], Authorizer]
BanFactory = Callable[["Config", "Storage | None"], Sequence[object]]


def client_identity(info: ClientInfo, connection: int = 0) -> ClientIdentity:
    """The broker's ``ClientInfo`` as the sources see it."""
    peer = info.peer
    return ClientIdentity(
        client_id=info.client_id,
        username=info.username,
        peer_host=peer[0] if peer else None,
        peer_port=peer[1] if peer else None,
        listener=info.listener,
        protocol_version=info.protocol_version,
        cert_common_name=info.cert_common_name,
        connection=connection,
    )


class CertificateAuthenticator(Authenticator):
    """``cert``: a client that presented a certificate the TLS listener verified (against
    ``listeners.tls.cafile``) is authenticated by it, as Mosquitto's
    ``use_identity_as_username``; other clients are left to the next source."""

    name = "cert"
    provides_acl = False

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        if credentials.client.cert_common_name is not None:
            return AuthOutcome(verdict=Verdict.ALLOW)
        return IGNORE


# --- the registry -------------------------------------------------------------------------


def _password_file(config: Config, storage: Storage | None) -> Authenticator:
    from .password_file import PasswordFileAuthenticator

    path = config.auth.password_file.path
    if not path:
        raise ValueError("auth.chain names password_file but auth.password_file.path is empty")
    return PasswordFileAuthenticator(path)


def _cert(config: Config, storage: Storage | None) -> Authenticator:
    return CertificateAuthenticator()


def _jwt(config: Config, storage: Storage | None) -> Authenticator:
    from .jwt import JwtAuthenticator

    return JwtAuthenticator.from_config(config.auth.jwt)


def _http_authn(config: Config, storage: Storage | None) -> Authenticator:
    from .http import HttpAuthenticator

    return HttpAuthenticator.from_config(config.auth.http)


def _acl_file(config: Config, storage: Storage | None) -> Authorizer:
    from .acl import AclFileAuthorizer

    if not config.acl.file:
        raise ValueError("acl.sources names file but acl.file is empty")
    return AclFileAuthorizer(config.acl.file)


def _http_authz(config: Config, storage: Storage | None) -> Authorizer:
    from .http import HttpAuthorizer

    return HttpAuthorizer.from_config(config.acl.http)


def _persistent(storage: Storage | None, setting: str, what: str) -> Storage:
    """The broker's storage for a ``builtin`` source; refused when it keeps nothing."""
    if storage is None:
        raise ValueError(
            f"{setting} names builtin, but storage.backend is memory: built-in {what} live "
            "in a persistent storage backend (sqlite, redis, postgres, mysql)"
        )
    return storage


def _builtin(config: Config, storage: Storage | None) -> Authenticator:
    from .builtin import BuiltinAuthenticator

    section = config.auth.builtin
    return BuiltinAuthenticator(
        _persistent(storage, "auth.chain", "users"),
        user_id_type=section.user_id_type,
        cache_ttl=section.cache_ttl,
        cache_size=section.cache_max_size,
    )


def _redis_authn(config: Config, storage: Storage | None) -> Authenticator:
    from .database import RedisAuthenticator

    return RedisAuthenticator.from_config(config.auth.redis)


def _postgres_authn(config: Config, storage: Storage | None) -> Authenticator:
    from .database import SqlAuthenticator

    return SqlAuthenticator.from_config(config.auth.postgres, "postgres")


def _mysql_authn(config: Config, storage: Storage | None) -> Authenticator:
    from .database import SqlAuthenticator

    return SqlAuthenticator.from_config(config.auth.mysql, "mysql")


def _redis_authz(config: Config, storage: Storage | None) -> Authorizer:
    from .database import RedisAuthorizer

    return RedisAuthorizer.from_config(config.acl.redis)


def _postgres_authz(config: Config, storage: Storage | None) -> Authorizer:
    from .database import SqlAuthorizer

    return SqlAuthorizer.from_config(config.acl.postgres, "postgres")


def _mysql_authz(config: Config, storage: Storage | None) -> Authorizer:
    from .database import SqlAuthorizer

    return SqlAuthorizer.from_config(config.acl.mysql, "mysql")


def _bans(config: Config, storage: Storage | None) -> Sequence[object]:
    from .bans import ban_sources

    return ban_sources(config, storage)


def _builtin_authz(config: Config, storage: Storage | None) -> Authorizer:
    from .builtin import BuiltinAuthorizer

    section = config.acl.builtin
    return BuiltinAuthorizer(
        _persistent(storage, "acl.sources", "ACL rules"),
        cache_ttl=section.cache_ttl,
        cache_size=section.cache_max_size,
    )


#: Authentication sources by ``auth.chain`` name.
AUTHENTICATORS: dict[str, AuthenticatorFactory] = {
    "password_file": _password_file,
    "cert": _cert,
    "jwt": _jwt,
    "http": _http_authn,
    # tidemq.auth.builtin / tidemq.auth.database.
    "builtin": _builtin,
    "redis": _redis_authn,
    "postgres": _postgres_authn,
    "mysql": _mysql_authn,
}

#: Authorization sources by ``acl.sources`` name.
AUTHORIZERS: dict[str, AuthorizerFactory] = {
    "file": _acl_file,
    "http": _http_authz,
    # tidemq.auth.builtin / tidemq.auth.database.
    "builtin": _builtin_authz,
    "redis": _redis_authz,
    "postgres": _postgres_authz,
    "mysql": _mysql_authz,
}

#: Factories of ban checkers (and their helpers, such as flapping detection), each
#: returning the objects to run; see the module docstring.
BAN_SOURCES: list[BanFactory] = [_bans]


# --- the plugin ---------------------------------------------------------------------------


class _ClientState:
    """What the plugin keeps for one connection."""

    __slots__ = ("cache", "connected", "created", "identity", "info", "rules", "superuser")

    def __init__(
        self,
        info: ClientInfo,
        identity: ClientIdentity,
        superuser: bool = False,
        rules: tuple[AclRule, ...] = (),
    ) -> None:
        self.info = info  # keeps id(info) from being reused while the state exists
        self.identity = identity
        self.superuser = superuser
        self.rules = rules
        self.cache: OrderedDict[tuple[Action, str, int, bool], tuple[float, Decision]] = (
            OrderedDict()
        )
        self.connected = False
        self.created = time.monotonic()


_CacheKey = tuple[Action, str, int, bool]


class AuthPlugin:
    """Authentication and authorization through the broker's hooks.

    Args:
        authenticators: ``auth.chain``, in order.
        authorizers: ``acl.sources``, in order.
        allow_anonymous: let in clients without a username that no source answered for.
        no_match: the decision when no rule or source answers (``"allow"``/``"deny"``).
        cache_ttl: seconds an authorization answer is reused per client (0: no cache).
        cache_max_size: most answers cached per client.
        rate_limiter: an ``AuthFailureLimiter`` (None: no limit).
        ban_checkers: checkers asked before anything else.
        helpers: objects opened, closed and installed along (flapping detection).
        check_on_delivery: ``"on"``, ``"off"`` or ``"auto"`` (on when the ACL file in
            force is in Mosquitto's format): check each delivery as Mosquitto does.
    """

    def __init__(
        self,
        *,
        authenticators: Sequence[Authenticator] = (),
        authorizers: Sequence[Authorizer] = (),
        allow_anonymous: bool = True,
        no_match: str = "allow",
        cache_ttl: float = 60.0,
        cache_max_size: int = 32,
        rate_limiter: Any = None,
        ban_checkers: Sequence[BanChecker] = (),
        helpers: Sequence[object] = (),
        check_on_delivery: str = "auto",
    ) -> None:
        if no_match not in ("allow", "deny"):
            raise ValueError("no_match is allow or deny")
        if check_on_delivery not in ("auto", "on", "off"):
            raise ValueError("check_on_delivery is auto, on or off")
        self.check_on_delivery = check_on_delivery
        self.authenticators = list(authenticators)
        self.authorizers = list(authorizers)
        self.allow_anonymous = allow_anonymous
        self.no_match = Decision.ALLOW if no_match == "allow" else Decision.DENY
        self.cache_ttl = cache_ttl
        self.cache_max_size = cache_max_size
        self.rate_limiter = rate_limiter
        self.ban_checkers = list(ban_checkers)
        self.helpers = list(helpers)
        self._clients: dict[int, _ClientState] = {}
        self._offline: OrderedDict[int, _ClientState] = OrderedDict()
        self._numbers = itertools.count(1)
        self._opened: list[object] = []
        self._async_decisions = True
        self._tracking = True  # per-client state for authorization (see install)
        self._hooks: Hooks | None = None
        self._undo_delivery: Callable[[], None] | None = None

    @classmethod
    def from_config(cls, config: Config, storage: Storage | None = None) -> AuthPlugin:
        """Build the sources named in *config*.

        Raises:
            ValueError: an unknown source, or a source whose settings are missing.
        """
        auth, acl = config.auth, config.acl
        chain = auth.chain or (("password_file",) if auth.password_file.path else ())
        sources = acl.sources or (("file",) if acl.file else ())
        authenticators = [_build(AUTHENTICATORS, "auth.chain", n, config, storage) for n in chain]
        authorizers = [_build(AUTHORIZERS, "acl.sources", n, config, storage) for n in sources]
        ban_checkers: list[BanChecker] = []
        helpers: list[object] = []
        for factory in BAN_SOURCES:
            for obj in factory(config, storage):
                (ban_checkers if isinstance(obj, BanChecker) else helpers).append(obj)  # type: ignore[arg-type]
        limiter = None
        if auth.rate_limit.max_failures and authenticators:
            from .ratelimit import AuthFailureLimiter

            rl = auth.rate_limit
            limiter = AuthFailureLimiter(
                max_failures=rl.max_failures,
                window=rl.window,
                block_time=rl.block_time,
                max_addresses=rl.max_addresses,
            )
        return cls(
            authenticators=authenticators,
            authorizers=authorizers,
            allow_anonymous=config.mqtt.allow_anonymous,
            no_match=acl.no_match,
            cache_ttl=acl.cache_ttl,
            cache_max_size=acl.cache_max_size,
            rate_limiter=limiter,
            ban_checkers=ban_checkers,
            helpers=helpers,
            check_on_delivery=acl.check_on_delivery,
        )

    @property
    def enabled(self) -> bool:
        """Whether there is anything to install (no sources: the broker runs as before)."""
        return bool(
            self.authenticators
            or self.authorizers
            or self.ban_checkers
            or self.helpers
            or self.no_match is Decision.DENY
        )

    def add_ban_checker(self, checker: BanChecker) -> None:
        self.ban_checkers.append(checker)

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> None:
        """Open every source (read files, connect to servers); on a failure the ones
        already opened are closed again and the error propagates."""
        try:
            for obj in [*self.ban_checkers, *self.helpers, *self.authenticators, *self.authorizers]:
                opener = getattr(obj, "open", None)
                if opener is not None:
                    await opener()
                self._opened.append(obj)
                listeners = getattr(obj, "listeners", None) if isinstance(obj, Authorizer) else None
                if isinstance(listeners, list):
                    listeners.append(self.clear_cache)
                    listeners.append(self._resolve_delivery_check)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        opened, self._opened = self._opened, []
        for obj in reversed(opened):
            closer = getattr(obj, "close", None)
            if closer is None:
                continue
            try:
                await closer()
            except Exception:
                log.exception("closing %s failed", getattr(obj, "name", obj))
        self._clients.clear()
        self._offline.clear()

    def reload(self) -> bool:
        """Re-read the sources' files (SIGHUP); returns whether all loaded."""
        ok = True
        for obj in [*self.authenticators, *self.authorizers]:
            reload = getattr(obj, "reload", None)
            if reload is not None:
                ok = bool(reload()) and ok
        self.clear_cache()
        return ok

    def clear_cache(self) -> None:
        """Forget every cached authorization answer (the rules changed)."""
        for state in self._clients.values():
            state.cache.clear()

    def install(
        self, hooks: Hooks, *, clients: ConnectedClients | None = None
    ) -> Callable[[], None]:
        """Register on *hooks*; returns a function that unregisters everything.

        *clients* (the broker's ``BrokerCore``) lets the ban checkers disconnect the
        connected clients a new ban matches; without it a ban only refuses new CONNECTs.
        """
        undo: list[Callable[[], None]] = []
        if clients is not None:
            attached = [
                attach
                for obj in [*self.ban_checkers, *self.helpers]
                if (attach := getattr(obj, "attach_clients", None)) is not None
            ]
            for attach in attached:
                attach(clients)

            def detach() -> None:
                for attach in attached:
                    attach(None)

            undo.append(detach)
        name = "tidemq.auth"
        if self.authenticators or self.ban_checkers:
            undo.append(hooks.register(HookPoint.AUTHENTICATE, self._authenticate, name=name))
        # Per-client state serves authorization only: without it, nothing is kept per
        # connection (memory per idle connection is a benchmark target).
        self._tracking = bool(
            self.authorizers
            or self.no_match is Decision.DENY
            or any(getattr(a, "provides_acl", True) for a in self.authenticators)
        )
        if self._tracking:
            self._async_decisions = _broker_awaits_decisions(hooks)
            if not self._async_decisions and any(a.asynchronous for a in self.authorizers):
                log.warning(
                    "this broker cannot wait for authorization decisions: the asynchronous "
                    "ACL sources (%s) answer ignore",
                    ", ".join(a.name for a in self.authorizers if a.asynchronous),
                )
            undo += [
                hooks.register(HookPoint.AUTHORIZE_PUBLISH, self._authorize_publish, name=name),
                hooks.register(HookPoint.AUTHORIZE_SUBSCRIBE, self._authorize_subscribe, name=name),
            ]
        if self._tracking:
            undo += [
                hooks.register(HookPoint.CLIENT_CONNECTED, self._connected, name=name),
                hooks.register(HookPoint.CLIENT_DISCONNECTED, self._disconnected, name=name),
            ]
            self._hooks = hooks
            self._resolve_delivery_check()

            def undo_delivery() -> None:
                self._hooks = None
                self._resolve_delivery_check()

            undo.append(undo_delivery)
        for helper in self.helpers:
            installer = getattr(helper, "install", None)
            if installer is not None:
                result = installer(hooks)
                if callable(result):
                    undo.append(result)

        def unregister() -> None:
            for fn in reversed(undo):
                fn()

        return unregister

    @property
    def delivery_check(self) -> bool:
        """Whether ``acl.check_on_delivery`` resolves to on now."""
        mode = self.check_on_delivery
        if mode != "auto":
            return mode == "on"
        return any(getattr(a, "mosquitto_format", False) for a in self.authorizers)

    def _resolve_delivery_check(self) -> None:
        """Register or drop the delivery hook to match ``delivery_check`` (at install and
        after an ACL file reload, which may change its format). Connections decide at
        CONNACK whether they ask it: a change reaches clients as they reconnect."""
        want = self._hooks is not None and self.delivery_check
        if want and self._undo_delivery is None:
            assert self._hooks is not None
            self._undo_delivery = self._hooks.register(
                HookPoint.AUTHORIZE_DELIVERY, self._authorize_delivery, name="tidemq.auth"
            )
            log.info("ACL: each delivery is checked for read access (acl.check_on_delivery)")
        elif not want and self._undo_delivery is not None:
            self._undo_delivery()
            self._undo_delivery = None

    # --- authentication ---------------------------------------------------------------

    def _authenticate(self, event: AuthenticateEvent) -> AuthResult | Awaitable[AuthResult]:
        """Bans and the rate limit answer at once; sources that do I/O (a password hash on
        the thread pool, a database, HTTP) make the rest asynchronous. A broker with only a
        ban list and anonymous clients thus starts no task per CONNECT."""
        info = event.client
        identity = client_identity(info, next(self._numbers))
        who = f"{info.client_id!r} (user {info.username!r}, {identity.peer_host})"
        waiting: list[BanChecker] = []
        refused = self._banned_now(identity, who, waiting)
        if refused is not None:
            return refused
        if waiting or self.authenticators or any(map(_prepares, self.authorizers)):
            return self._authenticate_async(event, identity, who, waiting)
        blocked = self._rate_limited(identity, who)
        if blocked is not None:
            return blocked
        return self._decide(event, identity, who, IGNORE, "default")

    def _banned_now(
        self, identity: ClientIdentity, who: str, waiting: list[BanChecker] | None = None
    ) -> AuthResult | None:
        """The refusal if a ban checker that answers at once (the ban list) bans the
        client; the checkers that must be awaited go to *waiting*, if given."""
        for checker in self.ban_checkers:
            check_now = getattr(checker, "check_now", None)
            if check_now is None:
                if waiting is not None:
                    waiting.append(checker)
                continue
            try:
                banned = check_now(identity)
            except Exception:
                log.exception("ban checker %s failed; not applied", checker)
                continue
            refused = _banned(banned, who)
            if refused is not None:
                return refused
        return None

    async def _authenticate_async(
        self,
        event: AuthenticateEvent,
        identity: ClientIdentity,
        who: str,
        waiting: list[BanChecker],
    ) -> AuthResult:
        for checker in waiting:
            try:
                banned = await checker.check(identity)
            except Exception:
                log.exception("ban checker %s failed; not applied", checker)
                continue
            refused = _banned(banned, who)
            if refused is not None:
                return refused
        blocked = self._rate_limited(identity, who)
        if blocked is not None:
            return blocked
        credentials = Credentials(client=identity, password=event.password)
        outcome = IGNORE
        source = "default"
        for authenticator in self.authenticators:
            try:
                outcome = await authenticator.authenticate(credentials)
            except Exception:
                log.exception("authenticator %s failed; ignoring it", authenticator.name)
                outcome = IGNORE
            if outcome.verdict is not Verdict.IGNORE:
                source = authenticator.name
                break
        result = self._decide(event, identity, who, outcome, source)
        if result.decision is Decision.ALLOW:
            for authorizer in filter(_prepares, self.authorizers):
                try:
                    await authorizer.prepare(identity)
                except Exception:
                    log.exception("ACL source %s failed to prepare %s", authorizer.name, who)
            # A ban that came into force while this CONNECT was awaited (a slow password
            # hash or HTTP source) would miss it: the ban list's sweep only reaches clients
            # already connected. (The state _decide kept is swept as never connected.)
            refused = self._banned_now(identity, who)
            if refused is not None:
                return refused
        return result

    def _rate_limited(self, identity: ClientIdentity, who: str) -> AuthResult | None:
        limiter = self.rate_limiter
        host = identity.peer_host
        if limiter is not None and host and limiter.blocked(host):
            log.info("refusing %s: too many failed authentications from %s", who, host)
            v5 = identity.protocol_version == 5
            code = CONNECTION_RATE_EXCEEDED if v5 else NOT_AUTHORIZED
            return AuthResult(decision=Decision.DENY, reason_code=code)
        return None

    def _decide(
        self,
        event: AuthenticateEvent,
        identity: ClientIdentity,
        who: str,
        outcome: AuthOutcome,
        source: str,
    ) -> AuthResult:
        """The chain's answer (*outcome* from *source*, or IGNORE) as the broker's result;
        an accepted client's state is kept for authorization."""
        info = event.client
        if outcome.verdict is Verdict.IGNORE:
            if info.username is None and self.allow_anonymous:
                outcome = AuthOutcome(verdict=Verdict.ALLOW)
            else:
                reason = "anonymous" if info.username is None else "unknown user"
                outcome = AuthOutcome(verdict=Verdict.DENY, reason=reason)
        if outcome.verdict is Verdict.DENY:
            limiter = self.rate_limiter
            host = identity.peer_host
            if limiter is not None and host:
                limiter.failure(host)
            log.info(
                "authentication of %s refused by %s%s",
                who,
                source,
                f": {outcome.reason}" if outcome.reason else "",
            )
            return AuthResult(
                decision=Decision.DENY, reason_code=outcome.reason_code or NOT_AUTHORIZED
            )
        if self._tracking:
            rules = tuple(r for r in (outcome.acl or ()) if isinstance(r, AclRule))
            state = _ClientState(info, identity, outcome.superuser, rules)
            self._sweep_pending()
            self._clients[id(info)] = state
        return AuthResult(
            decision=Decision.ALLOW, superuser=outcome.superuser, expires_at=outcome.expires_at
        )

    def _sweep_pending(self) -> None:
        """Forget connections that authenticated but never completed their CONNECT."""
        limit = time.monotonic() - PENDING_TIMEOUT
        stale = [k for k, s in self._clients.items() if not s.connected and s.created < limit]
        for key in stale:
            self._forget(self._clients.pop(key))

    def _connected(self, event: ConnectedEvent) -> None:
        info = event.client
        state = self._clients.get(id(info))
        if state is None or state.info is not info:
            # Not seen at AUTHENTICATE: MQTT 5 enhanced authentication.
            state = self._clients[id(info)] = _ClientState(
                info, client_identity(info, next(self._numbers))
            )
        state.connected = True

    def _disconnected(self, event: DisconnectedEvent) -> None:
        info = event.client
        state = self._clients.get(id(info))
        if state is not None and state.info is info:
            del self._clients[id(info)]
            self._forget(state)
            if state.rules:  # a delayed will is still checked against them
                state.cache.clear()
                self._offline[id(info)] = state
                while len(self._offline) > MAX_OFFLINE_STATES:
                    self._offline.popitem(last=False)

    def _forget(self, state: _ClientState) -> None:
        for authorizer in self.authorizers:
            try:
                authorizer.forget(state.identity)
            except Exception:
                log.exception("ACL source %s failed to forget a client", authorizer.name)

    # --- authorization ----------------------------------------------------------------

    def _state(self, info: ClientInfo) -> _ClientState:
        state = self._clients.get(id(info))
        if state is not None and state.info is info:
            return state
        state = self._offline.get(id(info))
        if state is not None and state.info is info:
            return state  # the will of a client that left
        # Unknown (installed after it connected, or a will restored from storage): asked
        # without own rules and not cached.
        return _ClientState(info, client_identity(info, next(self._numbers)))

    def _authorize_publish(self, event: PublishAuthEvent) -> Decision | Awaitable[Decision]:
        return self._authorize(event.client, Action.PUBLISH, event.topic, event.qos, event.retain)

    def _authorize_subscribe(self, event: SubscribeAuthEvent) -> Decision | Awaitable[Decision]:
        topic = event.topic_filter
        try:
            shared = parse_shared(topic)
        except ValueError:
            return Decision.DENY
        return self._authorize(
            event.client, Action.SUBSCRIBE, shared.filter if shared else topic, event.qos, False
        )

    def _authorize_delivery(self, event: DeliveryAuthEvent) -> Decision:
        """Mosquitto's read check of one delivered message, synchronous: the client's
        cache, its own rules, then the ACL file (the sources that answer at once and hold
        rules; HTTP and the databases are not asked per message)."""
        state = self._state(event.client)
        if state.superuser:
            return Decision.ALLOW
        topic = event.topic
        key = (Action.READ, topic, event.qos, False)
        now = time.monotonic()
        if self.cache_ttl > 0:
            hit = state.cache.get(key)
            if hit is not None:
                if hit[0] > now:
                    state.cache.move_to_end(key)
                    return hit[1]
                del state.cache[key]
        request = AclRequest(client=state.identity, action=Action.READ, topic=topic, qos=event.qos)
        verdict = check_rules(state.rules, request) if state.rules else Verdict.IGNORE
        if verdict is Verdict.IGNORE:
            for authorizer in self.authorizers:
                if isinstance(authorizer, AclFileAuthorizer):
                    verdict = _check(authorizer, request)
                    if verdict is not Verdict.IGNORE:
                        break
        return self._remember(state, key, verdict, now)

    def authorize(
        self, info: ClientInfo, action: Action, topic: str, qos: int, retain: bool = False
    ) -> Decision | Awaitable[Decision]:
        """The decision for one request (what the hooks answer)."""
        return self._authorize(info, action, topic, qos, retain)

    def _authorize(
        self, info: ClientInfo, action: Action, topic: str, qos: int, retain: bool
    ) -> Decision | Awaitable[Decision]:
        state = self._state(info)
        if state.superuser:
            return Decision.ALLOW
        key = (action, topic, qos, retain)
        now = time.monotonic()
        if self.cache_ttl > 0:
            hit = state.cache.get(key)
            if hit is not None:
                if hit[0] > now:
                    state.cache.move_to_end(key)
                    return hit[1]
                del state.cache[key]
        request = AclRequest(
            client=state.identity, action=action, topic=topic, qos=qos, retain=retain
        )
        verdict = check_rules(state.rules, request) if state.rules else Verdict.IGNORE
        authorizers = self.authorizers
        for i, authorizer in enumerate(authorizers):
            if verdict is not Verdict.IGNORE:
                break
            if authorizer.asynchronous:
                if self._async_decisions:
                    return self._authorize_async(state, key, request, i)
                continue
            verdict = _check(authorizer, request)
        return self._remember(state, key, verdict, now)

    async def _authorize_async(
        self, state: _ClientState, key: _CacheKey, request: AclRequest, start: int
    ) -> Decision:
        verdict = Verdict.IGNORE
        for authorizer in self.authorizers[start:]:
            if authorizer.asynchronous:
                try:
                    verdict = await authorizer.check_async(request)
                except Exception:
                    log.exception("ACL source %s failed; ignoring it", authorizer.name)
                    verdict = Verdict.IGNORE
            else:
                verdict = _check(authorizer, request)
            if verdict is not Verdict.IGNORE:
                break
        return self._remember(state, key, verdict, time.monotonic())

    def _remember(
        self, state: _ClientState, key: _CacheKey, verdict: Verdict, now: float
    ) -> Decision:
        if verdict is Verdict.ALLOW:
            decision = Decision.ALLOW
        elif verdict is Verdict.DENY:
            decision = Decision.DENY
        else:
            decision = self.no_match
        if decision is Decision.DENY:
            action, topic, _, _ = key
            log.debug("%s on %r denied to %r", action.value, topic, state.identity.client_id)
        if self.cache_ttl > 0:
            cache = state.cache
            cache[key] = (now + self.cache_ttl, decision)
            if len(cache) > self.cache_max_size:
                cache.popitem(last=False)
        return decision


def _check(authorizer: Authorizer, request: AclRequest) -> Verdict:
    try:
        return authorizer.check(request)
    except Exception:
        log.exception("ACL source %s failed; ignoring it", authorizer.name)
        return Verdict.IGNORE


def _build(
    registry: dict[str, Any], key: str, name: str, config: Config, storage: Storage | None
) -> Any:
    factory = registry.get(name)
    if factory is None:
        raise ValueError(f"{key}: unknown source {name!r}; known: {', '.join(registry)}")
    source = factory(config, storage)
    if not source.name:
        source.name = name
    return source


def _prepares(authorizer: Authorizer) -> bool:
    """Whether *authorizer* fetches something per client at connect (``prepare``)."""
    return type(authorizer).prepare is not Authorizer.prepare


def _banned(outcome: AuthOutcome | None, who: str) -> AuthResult | None:
    if outcome is not None and outcome.verdict is Verdict.DENY:
        because = f" ({outcome.reason})" if outcome.reason else ""
        log.info("refusing %s: banned%s", who, because)
        return AuthResult(decision=Decision.DENY, reason_code=outcome.reason_code or 0x8A)
    return None


def _broker_awaits_decisions(hooks: Hooks) -> bool:
    """Whether the broker accepts an awaitable from an AUTHORIZE_* callback."""
    return HOOK_API_VERSION >= 2 and bool(getattr(hooks, "async_decisions", False))
