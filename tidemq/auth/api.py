"""The interfaces every authentication and authorization source implements.

The broker knows none of this module: ``tidemq.auth.plugin`` adapts these sources to the
broker's typed hook points (``AUTHENTICATE``, ``AUTHORIZE_PUBLISH``, ``AUTHORIZE_SUBSCRIBE``,
``CLIENT_DISCONNECTED``). The rules, as in EMQX's authentication chain and Mosquitto's
security chain:

* **Authentication** runs the configured ``Authenticator`` sources in order; the first answer
  that is not ``IGNORE`` wins. All ``IGNORE`` falls to ``allow_anonymous`` for clients without
  a username and to a denial for the others. A source that fails (a server down, a timeout)
  answers ``IGNORE`` and logs, so the next source may still answer.
* An accepted client may carry ACL rules of its own (``AuthOutcome.acl``: a JWT ``acl`` claim,
  rules a database returned with the user) and a superuser flag that bypasses authorization.
* **Authorization** asks, in order: the client's own rules, then each configured
  ``Authorizer``; the first ``ALLOW`` or ``DENY`` wins; all ``IGNORE`` falls to
  ``acl.no_match``. Results are cached per client for ``acl.cache_ttl`` seconds.
* ``Authorizer.check`` is synchronous: it runs on the hot path for every PUBLISH. Sources
  whose rules live on a server fetch a client's rules once, at connect, in the asynchronous
  ``Authorizer.prepare`` (EMQX's Redis/PostgreSQL/MySQL sources query by username).
  A source that must ask per request (the HTTP callout) implements ``check_async``; the
  plugin awaits it only on a cache miss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum

__all__ = [
    "IGNORE",
    "AclRequest",
    "Action",
    "AuthOutcome",
    "Authenticator",
    "Authorizer",
    "ClientIdentity",
    "Credentials",
    "Verdict",
]


class Verdict(Enum):
    """A source's answer: decide, or pass the question to the next source."""

    __hash__ = object.__hash__
    ALLOW = "allow"
    DENY = "deny"
    IGNORE = "ignore"


class Action(Enum):
    __hash__ = object.__hash__
    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"
    #: May the client receive a message on this topic name (``acl.check_on_delivery``)?
    #: Answered by the subscribe rules, matched as a PUBLISH is; only the synchronous
    #: rule sources (the ACL file, a client's own rules) are asked.
    READ = "read"


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientIdentity:
    """Who a client is, as every source sees it (placeholders ``${clientid}``,
    ``${username}``, ``${peerhost}``, ``${cert_common_name}``, ``${cert_subject}``)."""

    client_id: str
    username: str | None
    peer_host: str | None  # the real client address (after any PROXY header)
    peer_port: int | None = None
    listener: str = ""
    protocol_version: int = 4  # 3, 4 or 5
    cert_common_name: str | None = None
    cert_subject: str | None = None  # the certificate's DN, RFC 4514
    #: Unique per connection (the plugin numbers them): two connections with the same
    #: client id (a takeover) never compare equal, so state that ``Authorizer.prepare``
    #: keeps in a dict keyed by the identity cannot be mixed up or forgotten too early.
    connection: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """What a client presented in its CONNECT."""

    client: ClientIdentity
    password: bytes | None


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthOutcome:
    """An authenticator's answer.

    Attributes:
        verdict: ALLOW, DENY, or IGNORE (not this source's user: ask the next one).
        superuser: the client bypasses authorization.
        acl: rules that belong to this client (checked before every ``Authorizer``);
            ``None`` when the source has none. The type is ``tidemq.auth.acl.AclRule``;
            declared loosely here so this module stays free of the rule engine.
        reason_code: the CONNACK reason code for a DENY (default: 0x87 Not authorized,
            CONNACK 5 on MQTT 3.1.1, which is what Mosquitto 2 answers to a bad password).
        reason: a short text for logs and MQTT 5 reason strings.
        expires_at: for an ALLOW, when the credentials stop being valid (wall-clock epoch
            seconds, ``time.time()``): the broker disconnects the client then (a JWT's
            ``exp`` with ``auth.jwt.disconnect_after_expire``). None: never.
    """

    verdict: Verdict
    superuser: bool = False
    acl: tuple[object, ...] | None = None
    reason_code: int | None = None
    reason: str = ""
    expires_at: float | None = None


IGNORE = AuthOutcome(verdict=Verdict.IGNORE)


@dataclass(frozen=True, slots=True, kw_only=True)
class AclRequest:
    """One authorization question. ``topic`` is a topic name for PUBLISH and READ and a
    topic filter (without any ``$share/<group>/`` prefix) for SUBSCRIBE."""

    client: ClientIdentity
    action: Action
    topic: str
    qos: int
    retain: bool = False


class Authenticator(ABC):
    """One authentication source (password file, built-in users, JWT, HTTP, a database)."""

    #: The name used in config (``auth.chain``) and logs.
    name: str = ""
    #: False when this source never gives a client ACL rules of its own
    #: (``AuthOutcome.acl``); with no such source and no ACL source the plugin does not
    #: hook authorization at all.
    provides_acl: bool = True

    async def open(self) -> None:  # noqa: B027 (optional)
        """Connect, load files; called once before the broker accepts clients."""

    async def close(self) -> None:  # noqa: B027 (optional)
        """Release connections; called once at shutdown."""

    @abstractmethod
    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        """Answer for one CONNECT. Raise nothing: a failure is logged and answers IGNORE."""


class Authorizer(ABC):
    """One authorization source (ACL file, a database, the HTTP callout)."""

    name: str = ""

    async def open(self) -> None:  # noqa: B027 (optional)
        """Connect, load files; called once before the broker accepts clients."""

    async def close(self) -> None:  # noqa: B027 (optional)
        """Release connections; called once at shutdown."""

    async def prepare(self, client: ClientIdentity) -> None:  # noqa: B027 (optional)
        """Fetch what ``check`` needs for *client*; awaited once after it authenticates."""

    def forget(self, client: ClientIdentity) -> None:  # noqa: B027 (optional)
        """Drop what ``prepare`` kept for *client*; called when it disconnects."""

    @abstractmethod
    def check(self, request: AclRequest) -> Verdict:
        """Answer synchronously (the hot path). Return IGNORE when another source should."""

    async def check_async(self, request: AclRequest) -> Verdict:
        """The answer for sources that must ask per request; by default ``check``."""
        return self.check(request)

    #: True when ``check_async`` does real I/O (the plugin then awaits it on a cache miss).
    asynchronous: bool = False
