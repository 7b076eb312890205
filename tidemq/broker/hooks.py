"""Typed hook points: the one door for auth, ACL, rules, extensions and cluster.

Modelled on Mosquitto's plugin events (``MOSQ_EVT_*``, each with its own struct) and its
``security.c`` chain: callbacks are registered explicitly per hook point; for decision hooks
the first answer that is not ``DEFER`` wins and an all-``DEFER`` chain falls to the
configured default. Per-message hooks are plain functions (no task per call); connect-time
authentication may be ``async`` and is awaited with a timeout.

``HOOK_API_VERSION`` is carried from the first release so plugins can check what they get.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from tidemq.protocol import Properties

log = logging.getLogger("tidemq.hooks")

# 2: AUTHORIZE_* callbacks may return an awaitable (``Hooks.async_decisions``), and
# AUTHENTICATE callbacks that answer at once run without a task (``authenticate_now``).
# 3: AUTHORIZE_DELIVERY (``DeliveryAuthEvent``), a synchronous check of each delivery.
HOOK_API_VERSION = 3


class Decision(Enum):
    ALLOW = "allow"
    DENY = "deny"
    DEFER = "defer"


class HookPoint(Enum):
    __hash__ = object.__hash__  # identity: cheap on the per-message ``Hooks.has`` checks
    # Decision hooks (return Decision)
    AUTHENTICATE = "client.authenticate"  # may be async
    ENHANCED_AUTH = "client.enhanced_auth"  # MQTT 5 AUTH exchanges (§4.12); may be async
    AUTHORIZE_PUBLISH = "client.authorize.publish"
    AUTHORIZE_SUBSCRIBE = "client.authorize.subscribe"
    # Per delivery, synchronous only (``Hooks.decide_now``): may this client receive the
    # message? Mosquitto's per-message read check; a DENY drops it for that client alone.
    AUTHORIZE_DELIVERY = "client.authorize.deliver"
    # Notification hooks (return None)
    CLIENT_CONNECTED = "client.connected"
    CLIENT_DISCONNECTED = "client.disconnected"
    SESSION_SUBSCRIBED = "session.subscribed"
    SESSION_UNSUBSCRIBED = "session.unsubscribed"
    MESSAGE_PUBLISH = "message.publish"  # may return a replacement message or None
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_ACKED = "message.acked"
    MESSAGE_DROPPED = "message.dropped"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientInfo:
    client_id: str
    username: str | None
    peer: tuple[str, int] | None
    listener: str
    protocol_version: int
    cert_common_name: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthenticateEvent:
    client: ClientInfo
    password: bytes | None
    auth_method: str | None = None
    auth_data: bytes | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResult:
    """What an authenticator answers: a decision, optionally a reason code and superuser.

    ``expires_at`` (wall-clock epoch seconds, ``time.time()``) is when the accepted
    credentials stop being valid (a JWT's ``exp``): the broker then disconnects the client,
    MQTT 5 with DISCONNECT 0x87 Not authorized, as EMQX's ``disconnect_after_expire``.
    None: they do not expire.
    """

    decision: Decision
    reason_code: int | None = None
    superuser: bool = False
    expires_at: float | None = None


class AuthStep(Enum):
    """What an enhanced-authentication callback answers for one step of the exchange."""

    SUCCESS = "success"  # authenticated: CONNACK 0x00 (or AUTH 0x00 on re-authentication)
    CONTINUE = "continue"  # send AUTH 0x18 with ``data`` and wait for the client's answer
    FAILURE = "failure"  # refuse: CONNACK (or DISCONNECT) with ``reason_code`` or 0x87
    UNSUPPORTED = "unsupported"  # not this callback's method: ask the next one (DEFER)


@dataclass(frozen=True, slots=True, kw_only=True)
class EnhancedAuthEvent:
    """One step of an MQTT 5 enhanced authentication (CONNECT or AUTH from the client)."""

    client: ClientInfo
    method: str
    data: bytes | None
    step: int  # 0 for the CONNECT (or the AUTH 0x19 that starts a re-authentication)
    reauthenticate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class EnhancedAuthResult:
    step: AuthStep
    data: bytes | None = None  # Authentication Data to send back
    reason_code: int | None = None
    superuser: bool = False
    #: On SUCCESS: when the credentials expire (wall-clock epoch seconds), as in
    #: ``AuthResult``; a successful re-authentication replaces the deadline (None: none).
    expires_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PublishAuthEvent:
    client: ClientInfo
    topic: str
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscribeAuthEvent:
    client: ClientInfo
    topic_filter: str
    qos: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryAuthEvent:
    """A message about to go to *client*: ``topic`` is the message's topic name, ``qos``
    the QoS it is delivered at."""

    client: ClientInfo
    topic: str
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectedEvent:
    client: ClientInfo
    session_present: bool
    clean_start: bool
    keepalive: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DisconnectedEvent:
    client: ClientInfo
    reason: str
    reason_code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriptionEvent:
    client: ClientInfo
    topic_filter: str
    qos: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent:
    """A message entering the broker (``MESSAGE_PUBLISH``) or leaving it to a client."""

    client_id: str | None  # the publisher (None for broker-internal messages)
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties
    receiver: str | None = None  # MESSAGE_DELIVERED / ACKED / DROPPED
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


Callback = Callable[[Any], Any]


class Hooks:
    """The registry of callbacks per hook point."""

    #: AUTHORIZE_* callbacks may return an awaitable ``Decision`` (see ``decide``).
    async_decisions = True

    def __init__(self) -> None:
        self._callbacks: dict[HookPoint, list[tuple[int, str, Callback]]] = {
            point: [] for point in HookPoint
        }
        #: The points with at least one callback: the per-message checks test membership
        #: here (``point in hooks.active``) instead of calling ``has``.
        self.active: frozenset[HookPoint] = frozenset()

    def register(
        self, point: HookPoint, callback: Callback, *, priority: int = 0, name: str = ""
    ) -> Callable[[], None]:
        """Add *callback* at *point* (higher priority runs first); returns an unregister."""
        entry = (priority, name or getattr(callback, "__qualname__", repr(callback)), callback)
        chain = self._callbacks[point]
        chain.append(entry)
        chain.sort(key=lambda e: -e[0])
        self.active = self.active | {point}

        def unregister() -> None:
            if entry in chain:
                chain.remove(entry)
                if not chain:
                    self.active = self.active - {point}

        return unregister

    def has(self, point: HookPoint) -> bool:
        return point in self.active

    def decide(
        self, point: HookPoint, event: object, default: Decision
    ) -> Decision | Awaitable[Decision]:
        """Run a decision chain: first non-DEFER answer wins.

        Callbacks answer synchronously on the hot path. One that must do I/O (an HTTP
        ACL callout on a cache miss) may return an awaitable; the rest of the chain then
        runs after it, and the caller gets an awaitable ``Decision`` (the broker holds that
        client's later packets until it resolves, keeping their order).
        """
        chain = self._callbacks[point]
        for index, (_, name, callback) in enumerate(chain):
            try:
                result = callback(event)
            except Exception:
                log.exception("hook %s (%s) failed; denying", name, point.value)
                return Decision.DENY
            if result.__class__ is not Decision and inspect.isawaitable(result):
                return self._decide_async(point, chain[index:], result, event, default)
            if isinstance(result, AuthResult):
                result = result.decision
            if result is not Decision.DEFER and result is not None:
                return Decision(result)
        return default

    def decide_now(self, point: HookPoint, event: object, default: Decision) -> Decision:
        """Run a decision chain that must answer at once (``AUTHORIZE_DELIVERY``, on the
        delivery path where nothing may wait): a callback returning an awaitable is a
        plugin bug, logged, and its answer is DENY."""
        for _, name, callback in self._callbacks[point]:
            try:
                result = callback(event)
            except Exception:
                log.exception("hook %s (%s) failed; denying", name, point.value)
                return Decision.DENY
            if result.__class__ is Decision:
                if result is not Decision.DEFER:
                    return result
                continue
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()  # a coroutine never awaited: no warning at garbage collection
                log.error("hook %s (%s) must answer synchronously; denying", name, point.value)
                return Decision.DENY
            if isinstance(result, AuthResult):
                result = result.decision
            if result is not Decision.DEFER and result is not None:
                return Decision(result)
        return default

    async def _decide_async(
        self,
        point: HookPoint,
        chain: list[tuple[int, str, Callback]],
        first: Awaitable[Any],
        event: object,
        default: Decision,
    ) -> Decision:
        for index, (_, name, callback) in enumerate(chain):
            try:
                result = first if index == 0 else callback(event)
                if inspect.isawaitable(result):
                    result = await result
            except Exception:
                log.exception("hook %s (%s) failed; denying", name, point.value)
                return Decision.DENY
            if isinstance(result, AuthResult):
                result = result.decision
            if result is not Decision.DEFER and result is not None:
                return Decision(result)
        return default

    def authenticate_now(
        self, event: AuthenticateEvent, default: Decision, timeout: float
    ) -> AuthResult | Awaitable[AuthResult]:
        """Run the authentication chain synchronously while its callbacks answer at once
        (a ban list, a rate limit, a cached answer): no task per CONNECT. From the first
        callback that returns an awaitable on, the rest runs in ``authenticate``."""
        chain = self._callbacks[HookPoint.AUTHENTICATE]
        for index, (_, name, callback) in enumerate(chain):
            try:
                result = callback(event)
            except Exception:
                log.exception("authenticator %s failed; denying", name)
                return AuthResult(decision=Decision.DENY)
            if inspect.isawaitable(result):
                return self.authenticate(event, default, timeout, start=index, first=result)
            if isinstance(result, Decision):
                result = AuthResult(decision=result)
            if isinstance(result, AuthResult) and result.decision is not Decision.DEFER:
                return result
        return AuthResult(decision=default)

    async def authenticate(
        self,
        event: AuthenticateEvent,
        default: Decision,
        timeout: float,
        *,
        start: int = 0,
        first: Awaitable[Any] | None = None,
    ) -> AuthResult:
        """Run the (possibly async) authentication chain with a timeout per callback
        (from callback *start*, whose answer *first* is already under way)."""
        import asyncio

        for index, (_, name, callback) in enumerate(self._callbacks[HookPoint.AUTHENTICATE]):
            if index < start:
                continue
            try:
                result = first if index == start and first is not None else callback(event)
                if inspect.isawaitable(result):
                    awaitable: Awaitable[Any] = result
                    result = await asyncio.wait_for(awaitable, timeout)
            except TimeoutError:
                log.warning("authenticator %s timed out after %.1f s", name, timeout)
                return AuthResult(decision=Decision.DENY, reason_code=0x88)
            except Exception:
                log.exception("authenticator %s failed; denying", name)
                return AuthResult(decision=Decision.DENY)
            if isinstance(result, Decision):
                result = AuthResult(decision=result)
            if isinstance(result, AuthResult) and result.decision is not Decision.DEFER:
                return result
        return AuthResult(decision=default)

    async def enhanced_auth(self, event: EnhancedAuthEvent, timeout: float) -> EnhancedAuthResult:
        """Run the enhanced-authentication chain: the first answer that is not
        ``UNSUPPORTED`` wins; none at all means the method is not supported (0x8C)."""
        import asyncio

        for _, name, callback in self._callbacks[HookPoint.ENHANCED_AUTH]:
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    awaitable: Awaitable[Any] = result
                    result = await asyncio.wait_for(awaitable, timeout)
            except TimeoutError:
                log.warning("enhanced authenticator %s timed out after %.1f s", name, timeout)
                return EnhancedAuthResult(step=AuthStep.FAILURE, reason_code=0x88)
            except Exception:
                log.exception("enhanced authenticator %s failed; denying", name)
                return EnhancedAuthResult(step=AuthStep.FAILURE)
            if isinstance(result, EnhancedAuthResult) and result.step is not AuthStep.UNSUPPORTED:
                return result
        return EnhancedAuthResult(step=AuthStep.UNSUPPORTED)

    def notify(self, point: HookPoint, event: object) -> None:
        """Run a notification chain; a failing callback is logged and skipped."""
        for _, name, callback in self._callbacks[point]:
            try:
                callback(event)
            except Exception:
                log.exception("hook %s (%s) failed", name, point.value)

    def transform(self, point: HookPoint, event: MessageEvent) -> MessageEvent | None:
        """Run a message chain: a callback may return a replacement ``MessageEvent``,
        ``Decision.DENY`` to drop the message, or anything else (``None``) to pass it on."""
        current: MessageEvent | None = event
        for _, name, callback in self._callbacks[point]:
            try:
                result = callback(current)
            except Exception:
                log.exception("hook %s (%s) failed; message passes unchanged", name, point.value)
                continue
            if result is Decision.DENY:
                return None
            if isinstance(result, MessageEvent):
                current = result
        return current
