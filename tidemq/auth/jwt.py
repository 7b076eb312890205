"""JWT authentication: a signed token as the password (or the username).

Keys: an HMAC secret (HS256/384/512), an RSA or EC public key from a PEM file (RS*, PS*,
ES*, EdDSA), or a JSON Web Key Set fetched from a URL, chosen by the token's ``kid``, kept
for ``jwks_refresh`` seconds and fetched again early (at most every 10 s) when an unknown
``kid`` shows up. Only the configured algorithms are accepted (``none`` never), so a token
cannot pick a weaker check, such as HMAC keyed with the public key.

Answers: a password that is not a JWT (three base64url parts) is left to the next source
(IGNORE); a JWT that fails (bad signature, wrong algorithm, ``exp`` passed, ``nbf`` not yet,
a ``verify_claims`` mismatch, a malformed ``acl`` claim) is refused; a valid one is
accepted, with the rules of its ``acl`` claim (EMQX's formats) as the client's own rules,
and, with ``disconnect_after_expire`` (EMQX's option of that name, on by default), its
``exp`` plus ``leeway`` as the time the broker disconnects the client (the moment the same
token would be refused at CONNECT):

* ``[{"permission": "allow", "action": "publish", "topic": "t/#", "qos": [0, 1],
  "retain": false}, ...]`` (``topics`` may list several; ``action`` is publish, subscribe
  or all), tried in order; when none matches, the ACL sources decide;
* the older ``{"pub": [...], "sub": [...], "all": [...]}``: those topics are allowed and
  everything else is denied.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jwt as pyjwt

from .acl import AclError, AclRule, rules_from_json
from .api import IGNORE, Authenticator, AuthOutcome, Credentials, Verdict

if TYPE_CHECKING:
    from tidemq.config import JwtConfig

__all__ = ["JwtAuthenticator"]

log = logging.getLogger("tidemq.auth")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
PUBLIC_KEY_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
#: The soonest a JWKS is fetched again for an unknown ``kid``.
JWKS_MIN_REFETCH = 10.0


def _expand(template: str, credentials: Credentials) -> str:
    client = credentials.client
    return (
        template.replace("${clientid}", client.client_id)
        .replace("${username}", client.username or "")
        .replace("${cert_common_name}", client.cert_common_name or "")
    )


class JwtAuthenticator(Authenticator):
    """See the module docstring. Give at least one of *secret*, *public_key* (PEM text)
    and *jwks_url*."""

    name = "jwt"

    def __init__(
        self,
        *,
        secret: bytes | None = None,
        public_key: str | bytes | None = None,
        jwks_url: str = "",
        jwks_refresh: float = 300.0,
        algorithms: Sequence[str] = (),
        token_from: str = "password",  # noqa: S107 (where the token is, not a secret)
        verify_claims: Mapping[str, str] | None = None,
        acl_claim: str = "acl",
        leeway: float = 10.0,
        http_timeout: float = 5.0,
        disconnect_after_expire: bool = True,
    ) -> None:
        if not secret and not public_key and not jwks_url:
            raise ValueError("JWT needs auth.jwt.secret, public_key or jwks_url")
        if token_from not in ("password", "username"):
            raise ValueError("the token comes from the password or the username")
        self.secret = secret or None
        self.public_key = public_key or None
        self.jwks_url = jwks_url
        self.jwks_refresh = jwks_refresh
        if algorithms:
            allowed = tuple(algorithms)
        else:
            allowed = (HMAC_ALGORITHMS if secret else ()) + (
                PUBLIC_KEY_ALGORITHMS if public_key or jwks_url else ()
            )
        if any(a.lower() == "none" for a in allowed):
            raise ValueError('the "none" algorithm cannot be allowed')
        self.algorithms = allowed
        self.token_from = token_from
        self.verify_claims = dict(verify_claims or {})
        self.acl_claim = acl_claim
        self.leeway = leeway
        self.http_timeout = http_timeout
        self.disconnect_after_expire = disconnect_after_expire
        self._jwks: dict[str | None, Any] = {}
        self._jwks_at = -1e9
        self._jwks_lock = asyncio.Lock()
        self._session: Any = None

    @classmethod
    def from_config(cls, config: JwtConfig) -> JwtAuthenticator:
        secret: bytes | None = None
        if config.secret:
            secret = (
                base64.b64decode(config.secret) if config.secret_base64 else config.secret.encode()
            )
        public_key = None
        if config.public_key:
            with open(config.public_key, "rb") as file:
                public_key = file.read()
        claims = {}
        for item in config.verify_claims:
            name, _, template = item.partition("=")
            claims[name.strip()] = template.strip()
        return cls(
            secret=secret,
            public_key=public_key,
            jwks_url=config.jwks_url,
            jwks_refresh=config.jwks_refresh,
            algorithms=config.algorithms,
            token_from=config.token_from,
            verify_claims=claims,
            acl_claim=config.acl_claim,
            leeway=config.leeway,
            disconnect_after_expire=config.disconnect_after_expire,
        )

    async def open(self) -> None:
        if self.jwks_url:
            try:
                import aiohttp  # noqa: F401
            except ImportError:
                raise ValueError(
                    "auth.jwt.jwks_url needs aiohttp: pip install 'tidemq[http]'"
                ) from None
            await self._refresh_jwks(force=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        client = credentials.client
        if self.token_from == "username":  # noqa: S105
            token = client.username
        else:
            try:
                token = credentials.password.decode() if credentials.password else None
            except UnicodeDecodeError:
                token = None
        if not token or token.count(".") != 2:
            return IGNORE
        try:
            header = pyjwt.get_unverified_header(token)
        except pyjwt.InvalidTokenError:
            return IGNORE  # dotted, but not a JWT
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            return _deny(f"algorithm {algorithm!r} not allowed")
        key = await self._key(algorithm, header.get("kid"))
        if key is None:
            return _deny("no key for the token")
        try:
            claims = pyjwt.decode(
                token,
                key,
                algorithms=[algorithm],
                leeway=self.leeway,
                options={"verify_aud": False},
            )
        except pyjwt.ExpiredSignatureError:
            return _deny("token expired")
        except pyjwt.ImmatureSignatureError:
            return _deny("token not valid yet (nbf)")
        except pyjwt.InvalidTokenError as exc:
            return _deny(f"invalid token: {exc}")
        for name, template in self.verify_claims.items():
            expected = _expand(template, credentials)
            value = claims.get(name)
            if isinstance(value, list):
                ok = expected in [str(v) for v in value]
            else:
                ok = value is not None and str(value) == expected
            if not ok:
                return _deny(f"claim {name!r} does not match")
        acl: tuple[AclRule, ...] | None = None
        if self.acl_claim and self.acl_claim in claims:
            try:
                acl = rules_from_json(claims[self.acl_claim], "jwt")
            except AclError as exc:
                return _deny(str(exc))
        expires_at: float | None = None
        if self.disconnect_after_expire and "exp" in claims:
            # PyJWT validated exp as int(exp) and refuses the token from int(exp) + leeway
            # on: the same instant ends the connection.
            expires_at = int(claims["exp"]) + self.leeway
        return AuthOutcome(verdict=Verdict.ALLOW, acl=acl, expires_at=expires_at)

    async def _key(self, algorithm: str, kid: str | None) -> Any:
        if algorithm in HMAC_ALGORITHMS:
            return self.secret
        if self.public_key is not None:
            return self.public_key
        if not self.jwks_url:
            return None
        if time.monotonic() - self._jwks_at > self.jwks_refresh:
            await self._refresh_jwks(force=True)
        key = self._pick(kid)
        if key is None:
            await self._refresh_jwks(force=False)
            key = self._pick(kid)
        return key

    def _pick(self, kid: str | None) -> Any:
        if kid in self._jwks:
            return self._jwks[kid]
        if kid is None and len(self._jwks) == 1:
            return next(iter(self._jwks.values()))
        return None

    async def _refresh_jwks(self, *, force: bool) -> None:
        async with self._jwks_lock:
            age = time.monotonic() - self._jwks_at
            if (not force and age < JWKS_MIN_REFETCH) or (force and age < 1.0):
                return  # fetched just now (by another CONNECT waiting on the lock)
            self._jwks_at = time.monotonic()
            try:
                data = await self._fetch_jwks()
                keys: dict[str | None, Any] = {}
                for jwk in pyjwt.PyJWKSet.from_dict(data).keys:
                    keys[jwk.key_id] = jwk.key
            except Exception as exc:
                log.warning(
                    "JWKS %s not loaded (keeping %d keys): %s", self.jwks_url, len(self._jwks), exc
                )
                return
            self._jwks = keys
            log.info("JWKS %s: %d keys", self.jwks_url, len(keys))

    async def _fetch_jwks(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.http_timeout)
            )
        async with self._session.get(self.jwks_url) as response:
            response.raise_for_status()
            return await response.json(content_type=None)


def _deny(reason: str) -> AuthOutcome:
    return AuthOutcome(verdict=Verdict.DENY, reason=reason)
