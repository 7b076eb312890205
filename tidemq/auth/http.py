"""The HTTP callout for authentication and authorization (EMQX's HTTP contract).

Each question becomes a request to ``url``: POST with ``body`` as JSON or a form, or GET
with it as the query string; ``url``, ``body`` and ``headers`` may hold templates
(``${clientid}``, ``${username}``, ``${password}``, ``${peerhost}``,
``${cert_common_name}``; for ACL also ``${action}``, ``${topic}``, ``${qos}``,
``${retain}``). The answer:

* 200 with JSON ``{"result": "allow" | "deny" | "ignore", "is_superuser": bool}`` (an
  authentication answer may carry ``"acl"``, the client's own rules in EMQX's formats);
* 204 No Content: allow;
* anything else (another status, a body without ``result``), a connection error or the
  timeout: ignore, logged, so the next source answers.

``allow`` and ``deny`` answers are cached for ``cache_ttl`` seconds (at most
``cache_max_size`` of them); the key is a digest of the request, so passwords are not kept.
Needs aiohttp (``pip install 'tidemq[http]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .acl import AclError, AclRule, rules_from_json
from .api import AclRequest, Authenticator, Authorizer, AuthOutcome, Credentials, Verdict

if TYPE_CHECKING:
    from tidemq.config import HttpAclConfig, HttpAuthConfig

__all__ = ["HttpAuthenticator", "HttpAuthorizer", "HttpCallout"]

log = logging.getLogger("tidemq.auth")

_VERDICTS = {"allow": Verdict.ALLOW, "deny": Verdict.DENY, "ignore": Verdict.IGNORE}


def _pairs(items: tuple[str, ...], separator: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, _, value = item.partition(separator)
        out[name.strip()] = value.strip()
    return out


def _render(template: str, values: Mapping[str, str], *, url: bool = False) -> str:
    out = template
    for name, value in values.items():
        placeholder = "${" + name + "}"
        if placeholder in out:
            out = out.replace(placeholder, quote(value, safe="") if url else value)
    return out


class HttpCallout:
    """One HTTP service: renders requests, sends them, reads and caches the answers."""

    def __init__(
        self,
        url: str,
        *,
        method: str = "post",
        body_format: str = "json",
        body: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
        cache_ttl: float = 0.0,
        cache_max_size: int = 10_000,
    ) -> None:
        if not url:
            raise ValueError("the HTTP source needs a url")
        self.url = url
        self.method = method.upper()
        self.body_format = body_format
        self.body = dict(body or {})
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.cache_max_size = cache_max_size
        self._cache: OrderedDict[bytes, tuple[float, Verdict, dict[str, Any]]] = OrderedDict()
        self._session: Any = None

    async def open(self) -> None:
        try:
            import aiohttp
        except ImportError:
            raise ValueError("the HTTP sources need aiohttp: pip install 'tidemq[http]'") from None
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout), raise_for_status=False
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def ask(self, values: Mapping[str, str]) -> tuple[Verdict, dict[str, Any]]:
        """The service's verdict for *values* and its whole JSON answer ({} if none)."""
        url = _render(self.url, values, url=True)
        fields = {name: _render(t, values) for name, t in self.body.items()}
        headers = {name: _render(t, values) for name, t in self.headers.items()}
        key = b""
        if self.cache_ttl > 0:
            key = hashlib.sha256(
                json.dumps([url, fields, headers], sort_keys=True).encode()
            ).digest()
            hit = self._cache.get(key)
            if hit is not None:
                if hit[0] > time.monotonic():
                    self._cache.move_to_end(key)
                    return hit[1], hit[2]
                del self._cache[key]
        verdict, answer = await self._request(url, fields, headers)
        if key and verdict is not Verdict.IGNORE:
            self._cache[key] = (time.monotonic() + self.cache_ttl, verdict, answer)
            while len(self._cache) > self.cache_max_size:
                self._cache.popitem(last=False)
        return verdict, answer

    async def _request(
        self, url: str, fields: dict[str, str], headers: dict[str, str]
    ) -> tuple[Verdict, dict[str, Any]]:
        if self._session is None:
            await self.open()
        kwargs: dict[str, Any] = {"headers": headers}
        if self.method == "GET":
            kwargs["params"] = fields
        elif self.body_format == "form":
            kwargs["data"] = fields
        else:
            kwargs["json"] = fields
        try:
            async with self._session.request(self.method, url, **kwargs) as response:
                status = response.status
                if status == 204:
                    return Verdict.ALLOW, {}
                if status != 200:
                    log.warning("HTTP auth %s answered %d: ignored", self.url, status)
                    return Verdict.IGNORE, {}
                text = await response.text()
        except TimeoutError:
            log.warning("HTTP auth %s timed out after %.1f s: ignored", self.url, self.timeout)
            return Verdict.IGNORE, {}
        except Exception as exc:  # aiohttp.ClientError, a refused connection, ...
            log.warning("HTTP auth %s failed: %s: ignored", self.url, exc)
            return Verdict.IGNORE, {}
        try:
            answer = json.loads(text)
            verdict = _VERDICTS[str(answer["result"]).lower()]
        except (ValueError, KeyError, TypeError):
            log.warning("HTTP auth %s: no result in its answer: ignored", self.url)
            return Verdict.IGNORE, {}
        return verdict, answer if isinstance(answer, dict) else {}


def _client_values(client: Any) -> dict[str, str]:
    return {
        "clientid": client.client_id,
        "username": client.username or "",
        "peerhost": client.peer_host or "",
        "cert_common_name": client.cert_common_name or "",
        "cert_subject": client.cert_subject or "",
    }


def _callout(config: HttpAuthConfig | HttpAclConfig) -> HttpCallout:
    return HttpCallout(
        config.url,
        method=config.method,
        body_format=config.body_format,
        body=_pairs(config.body, "="),
        headers=_pairs(config.headers, ":"),
        timeout=config.timeout,
        cache_ttl=config.cache_ttl,
        cache_max_size=config.cache_max_size,
    )


class HttpAuthenticator(Authenticator):
    name = "http"

    def __init__(self, callout: HttpCallout) -> None:
        self.callout = callout

    @classmethod
    def from_config(cls, config: HttpAuthConfig) -> HttpAuthenticator:
        return cls(_callout(config))

    async def open(self) -> None:
        await self.callout.open()

    async def close(self) -> None:
        await self.callout.close()

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        values = _client_values(credentials.client)
        password = credentials.password
        values["password"] = password.decode("utf-8", "replace") if password else ""
        verdict, answer = await self.callout.ask(values)
        if verdict is not Verdict.ALLOW:
            denied = verdict is Verdict.DENY
            return AuthOutcome(
                verdict=verdict, reason="denied by the HTTP service" if denied else ""
            )
        acl: tuple[AclRule, ...] | None = None
        if "acl" in answer:
            try:
                acl = rules_from_json(answer["acl"], "http")
            except AclError as exc:
                log.warning("HTTP auth %s: bad acl in its answer: %s", self.callout.url, exc)
                return AuthOutcome(verdict=Verdict.DENY, reason="bad acl from HTTP service")
        return AuthOutcome(
            verdict=Verdict.ALLOW, superuser=answer.get("is_superuser") is True, acl=acl
        )


class HttpAuthorizer(Authorizer):
    """Asks the service about each request the client's cache cannot answer."""

    name = "http"
    asynchronous = True

    def __init__(self, callout: HttpCallout) -> None:
        self.callout = callout

    @classmethod
    def from_config(cls, config: HttpAclConfig) -> HttpAuthorizer:
        return cls(_callout(config))

    async def open(self) -> None:
        await self.callout.open()

    async def close(self) -> None:
        await self.callout.close()

    def check(self, request: AclRequest) -> Verdict:
        return Verdict.IGNORE  # only asked asynchronously (check_async)

    async def check_async(self, request: AclRequest) -> Verdict:
        values = _client_values(request.client)
        values.update(
            action=request.action.value,
            topic=request.topic,
            qos=str(request.qos),
            retain="true" if request.retain else "false",
        )
        verdict, _ = await self.callout.ask(values)
        return verdict
