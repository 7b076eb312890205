"""Built-in users: usernames, password hashes and a superuser flag kept in the broker's
own storage backend (``UserRecord``), managed with ``tidemq ctl users ...``.

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
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal

from tidemq.auth.api import IGNORE, Authenticator, AuthOutcome, Credentials, Verdict
from tidemq.auth.passwords import verify_password_async
from tidemq.storage.api import Storage, StorageError, UserRecord

__all__ = ["BuiltinAuthenticator", "UserIdType"]

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
