"""Built-in users and ACL rules, kept in the broker's own storage backend and managed with
``tidemq ctl users ...`` / ``tidemq ctl acl ...``.

Users
-----
Usernames, password hashes and a superuser flag (``UserRecord``).

Like EMQX's built-in database authenticator: a client whose username (or client id, with
``user_id_type = "clientid"``) is not a stored user is not this source's (IGNORE, so the
next source may answer); a stored user with the right password is accepted, with its
superuser flag; a wrong or missing password is refused.

**Caching.** Looking a user up on every CONNECT would put a server round trip (Redis,
PostgreSQL, MySQL) on the connect path, so records, and the absence of a record, are
cached for ``cache_ttl`` seconds (default 5). A change made by ``tidemq ctl`` in another
process therefore takes effect within ``cache_ttl`` seconds; ``invalidate`` drops the
cache at once for changes made in this process. The password itself is verified at every
CONNECT (a cached *result* would let a changed password keep working), on the password
module's thread pool so the event loop keeps serving.

If storage cannot be read, the source answers IGNORE and logs, so the chain can fall to
its next source; it recovers by itself when storage does.

ACL rules
---------
``BuiltinAuthorizer`` is the ``builtin`` ACL source, like EMQX's built-in database
authorization: rules (``AclRuleRecord``) for one username, one client id, or for all. A
request is checked against the client's username rules, then its client-id rules, then the
rules for all, each list in the order the rules were added; the first rule that matches
decides (the rule engine of ``tidemq.auth.acl``: ``${username}`` / ``${clientid}``
placeholders, ``eq`` literal filters, QoS and retain conditions). No match: IGNORE, so the
next source or ``acl.no_match`` decides.

The three lists are read from storage and cached for ``acl.builtin.cache_ttl`` seconds
(keyed by username, client id, and one entry for the "all" rules, shared by every
client), at CONNECT (``prepare``) and again when an authorization answer is not cached by
the plugin and a list has expired. So a ``tidemq ctl acl`` change reaches connected
clients too, within ``acl.builtin.cache_ttl`` plus ``acl.cache_ttl`` seconds. The source
is ``asynchronous``: the plugin awaits it on its cache misses, and it does I/O only when a
list has expired. If storage cannot be read, the last lists read are used (logged); with
none, the source answers IGNORE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Literal

from tidemq.auth.acl import AclError, AclRule, check_rules
from tidemq.auth.api import (
    IGNORE,
    AclRequest,
    Authenticator,
    Authorizer,
    AuthOutcome,
    ClientIdentity,
    Credentials,
    Verdict,
)
from tidemq.auth.passwords import verify_password_async
from tidemq.storage.api import AclRuleRecord, AclWhoKind, Storage, StorageError, UserRecord

__all__ = ["BuiltinAuthenticator", "BuiltinAuthorizer", "UserIdType", "acl_rule"]

log = logging.getLogger("tidemq.auth.builtin")

UserIdType = Literal["username", "clientid"]


class BuiltinAuthenticator(Authenticator):
    """Authenticates against the users in *storage*.

    Args:
        storage: an opened ``Storage`` (the broker's).
        user_id_type: look users up by the CONNECT's ``username`` or its ``clientid``.
        cache_ttl: seconds a looked-up user (or its absence) is reused; 0 disables caching.
        cache_size: most users cached at once (least recently used go first).
        clock: monotonic clock for the cache (tests pass their own).
    """

    name = "builtin"

    def __init__(
        self,
        storage: Storage,
        *,
        user_id_type: UserIdType = "username",
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.user_id_type = user_id_type
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[str, tuple[float, UserRecord | None]] = OrderedDict()

    def invalidate(self, user_id: str | None = None) -> None:
        """Forget one cached user, or all of them."""
        if user_id is None:
            self._cache.clear()
        else:
            self._cache.pop(user_id, None)

    async def lookup(self, user_id: str) -> UserRecord | None:
        """The stored user, through the cache.

        Raises:
            StorageError: storage cannot be read (nothing is cached then).
        """
        now = self.clock()
        cache = self._cache
        hit = cache.get(user_id)
        if hit is not None:
            expires, cached = hit
            if expires > now:
                cache.move_to_end(user_id)
                return cached
            del cache[user_id]
        record = await self.storage.get_user(user_id)
        if self.cache_ttl > 0:
            cache[user_id] = (now + self.cache_ttl, record)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return record

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        client = credentials.client
        user_id = client.username if self.user_id_type == "username" else client.client_id
        if user_id is None:
            return IGNORE
        try:
            record = await self.lookup(user_id)
        except StorageError as exc:
            log.warning("built-in users unavailable, ignoring %s: %s", client.client_id, exc)
            return IGNORE
        if record is None:
            return IGNORE
        password = credentials.password
        if password is None:
            return AuthOutcome(verdict=Verdict.DENY, reason="no password")
        if not await verify_password_async(password, record.password_hash):
            return AuthOutcome(verdict=Verdict.DENY, reason="bad password")
        return AuthOutcome(verdict=Verdict.ALLOW, superuser=record.superuser)


# --- ACL rules ------------------------------------------------------------------------------


def acl_rule(record: AclRuleRecord) -> AclRule:
    """The rule engine's form of a stored rule (the list it is in says whom it is for).

    Raises:
        AclError: a rule the engine refuses (a bad filter, ``retain`` on subscribe).
    """
    rule = AclRule.make(
        record.permission,
        record.action,
        record.topic,
        qos=record.qos or None,
        retain=record.retain,
        origin=f"builtin:{record.rule_id}",
    )
    if rule.retain is not None and rule.action == "subscribe":
        raise AclError("retain only applies to publish rules")
    return rule


_ListKey = tuple[AclWhoKind, str]


class BuiltinAuthorizer(Authorizer):
    """The ACL rules in *storage* (see the module docstring).

    Args:
        storage: an opened ``Storage`` (the broker's).
        cache_ttl: seconds a list of rules read from storage is reused; 0 disables caching.
        cache_size: most lists cached at once (least recently used go first).
        clock: monotonic clock for the cache (tests pass their own).
    """

    name = "builtin"
    asynchronous = True

    def __init__(
        self,
        storage: Storage,
        *,
        cache_ttl: float = 5.0,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.storage = storage
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[_ListKey, tuple[float, tuple[AclRule, ...]]] = OrderedDict()
        # One read per list at a time: clients connecting together share it.
        self._loading: dict[_ListKey, asyncio.Future[tuple[AclRule, ...]]] = {}

    def invalidate(self) -> None:
        """Forget every cached list (for changes made in this process)."""
        self._cache.clear()

    @staticmethod
    def _keys(client: ClientIdentity) -> list[_ListKey]:
        keys: list[_ListKey] = []
        if client.username is not None:
            keys.append(("username", client.username))
        keys.append(("clientid", client.client_id))
        keys.append(("all", ""))
        return keys

    async def rules(self, client: ClientIdentity) -> tuple[AclRule, ...]:
        """The client's rules in the order they are tried, through the cache.

        Raises:
            StorageError: storage cannot be read and a list was never read before.
        """
        out: list[AclRule] = []
        for key in self._keys(client):
            out.extend(await self._list(key))
        return tuple(out)

    async def _list(self, key: _ListKey) -> tuple[AclRule, ...]:
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            self._cache.move_to_end(key)
            return hit[1]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[tuple[AclRule, ...]] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            try:
                rules = self._parse(key, await self.storage.list_acl_rules(*key))
            except StorageError as exc:
                if hit is None:
                    raise
                log.warning(
                    "built-in ACL rules of %s %r unavailable, using the last read: %s",
                    key[0],
                    key[1],
                    exc,
                )
                rules = hit[1]
            if self.cache_ttl > 0:
                self._cache[key] = (self.clock() + self.cache_ttl, rules)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            future.set_result(rules)
            return rules
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: waiters, if any, re-raise it themselves
            raise
        finally:
            del self._loading[key]

    @staticmethod
    def _parse(key: _ListKey, records: Iterable[AclRuleRecord]) -> tuple[AclRule, ...]:
        rules: list[AclRule] = []
        for record in records:
            try:
                rules.append(acl_rule(record))
            except AclError as exc:
                # Only another writer than tidemq ctl (which checks) can store such a rule.
                log.warning("skipping built-in ACL rule %d (%s %r): %s", record.rule_id, *key, exc)
        return tuple(rules)

    async def prepare(self, client: ClientIdentity) -> None:
        try:
            await self.rules(client)
        except StorageError as exc:
            log.warning("built-in ACL rules unavailable for %s: %s", client.client_id, exc)

    async def check_async(self, request: AclRequest) -> Verdict:
        try:
            rules = await self.rules(request.client)
        except StorageError as exc:
            log.warning(
                "built-in ACL rules unavailable, ignoring %s: %s", request.client.client_id, exc
            )
            return Verdict.IGNORE
        return check_rules(rules, request)

    def check(self, request: AclRequest) -> Verdict:
        """From the cached lists alone, expired or not (for a caller that cannot await);
        IGNORE while one of the client's lists was never read."""
        rules: list[AclRule] = []
        for key in self._keys(request.client):
            hit = self._cache.get(key)
            if hit is None:
                return Verdict.IGNORE
            rules.extend(hit[1])
        return check_rules(rules, request)
