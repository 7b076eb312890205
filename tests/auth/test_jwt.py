"""JWT authentication: HMAC, RSA and EC keys, a JWKS URL; exp/nbf, algorithms, claims and
the acl claim, unit-tested and through a real broker."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.auth.support import MakeClient, StartBroker, mqtt, refused, start_broker
from tests.helpers.paho import V5, V311
from tidemq.auth.acl import AclError, rules_from_json
from tidemq.auth.api import AclRequest, Action, ClientIdentity, Credentials, Verdict
from tidemq.auth.jwt import JwtAuthenticator

__all__ = ["mqtt", "start_broker"]

SECRET = b"0123456789abcdef" * 4  # 64 bytes: long enough for HS512 (RFC 7518 §3.2)


def creds(
    token: str | None, client_id: str = "dev-1", username: str | None = "alice"
) -> Credentials:
    client = ClientIdentity(client_id=client_id, username=username, peer_host="127.0.0.1")
    return Credentials(client=client, password=token.encode() if token is not None else None)


def hs(claims: dict[str, Any], key: bytes = SECRET, algorithm: str = "HS256", **kw: Any) -> str:
    return jwt.encode(claims, key, algorithm=algorithm, **kw)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def verdict(source: JwtAuthenticator, token: str | None, **kw: Any) -> Verdict:
    return (await source.authenticate(creds(token, **kw))).verdict


async def test_hmac() -> None:
    source = JwtAuthenticator(secret=SECRET)
    now = int(time.time())
    assert await verdict(source, hs({"exp": now + 60})) is Verdict.ALLOW
    assert await verdict(source, hs({})) is Verdict.ALLOW  # exp is optional
    assert await verdict(source, hs({"exp": now - 60})) is Verdict.DENY  # expired
    assert await verdict(source, hs({"exp": now - 5})) is Verdict.ALLOW  # within leeway
    assert await verdict(source, hs({"nbf": now + 60})) is Verdict.DENY  # not yet
    assert await verdict(source, hs({}, key=b"another secret" * 5)) is Verdict.DENY
    assert await verdict(source, hs({}, algorithm="HS512")) is Verdict.ALLOW
    # Not tokens: left to the next source.
    assert await verdict(source, "plain password") is Verdict.IGNORE
    assert await verdict(source, None) is Verdict.IGNORE
    assert await verdict(source, "a.b.c") is Verdict.IGNORE


async def test_algorithm_allow_list(rsa_key: rsa.RSAPrivateKey) -> None:
    unsigned = jwt.encode({"sub": "x"}, None, algorithm="none")
    assert await verdict(JwtAuthenticator(secret=SECRET), unsigned) is Verdict.DENY
    only256 = JwtAuthenticator(secret=SECRET, algorithms=["HS256"])
    assert await verdict(only256, hs({}, algorithm="HS384")) is Verdict.DENY
    # The classic confusion: HMAC keyed with the RSA public key. Refused: a public-key
    # setup accepts no HMAC algorithm.
    public = pem(rsa_key)
    source = JwtAuthenticator(public_key=public)
    assert await verdict(source, _hmac_token(public)) is Verdict.DENY
    with pytest.raises(ValueError, match="none"):
        JwtAuthenticator(secret=SECRET, algorithms=["none"])
    with pytest.raises(ValueError, match="needs"):
        JwtAuthenticator()


def _hmac_token(key: bytes) -> str:
    """An HS256 token signed by hand (PyJWT itself refuses PEM keys for HMAC)."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(b'{"sub":"x"}')
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


@pytest.mark.parametrize("kind", ["rsa", "ec"])
async def test_public_keys(
    kind: str, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    key: Any = rsa_key if kind == "rsa" else ec_key
    algorithm = "RS256" if kind == "rsa" else "ES256"
    source = JwtAuthenticator(public_key=pem(key))
    good = jwt.encode({"exp": int(time.time()) + 60}, key, algorithm=algorithm)
    assert await verdict(source, good) is Verdict.ALLOW
    other: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    wrong = jwt.encode({}, other, algorithm=algorithm)
    assert await verdict(source, wrong) is Verdict.DENY
    assert await verdict(source, hs({})) is Verdict.DENY  # HMAC not allowed here


async def test_token_from_username() -> None:
    source = JwtAuthenticator(secret=SECRET, token_from="username")
    token = hs({})
    assert await verdict(source, None, username=token) is Verdict.ALLOW
    assert await verdict(source, token, username="alice") is Verdict.IGNORE


async def test_verify_claims() -> None:
    source = JwtAuthenticator(
        secret=SECRET, verify_claims={"clientid": "${clientid}", "username": "${username}"}
    )
    token = hs({"clientid": "dev-1", "username": "alice"})
    assert await verdict(source, token) is Verdict.ALLOW
    assert await verdict(source, token, client_id="dev-2") is Verdict.DENY
    assert await verdict(source, token, username="bob") is Verdict.DENY
    assert await verdict(source, hs({"clientid": "dev-1"})) is Verdict.DENY  # claim missing
    aud = JwtAuthenticator(secret=SECRET, verify_claims={"aud": "mqtt"})
    assert await verdict(aud, hs({"aud": ["web", "mqtt"]})) is Verdict.ALLOW
    assert await verdict(aud, hs({"aud": "web"})) is Verdict.DENY


def _request(topic: str, action: Action = Action.PUBLISH, qos: int = 0) -> AclRequest:
    client = ClientIdentity(client_id="dev-1", username="alice", peer_host=None)
    return AclRequest(client=client, action=action, topic=topic, qos=qos)


async def test_acl_claim_formats() -> None:
    source = JwtAuthenticator(secret=SECRET)
    claim = [
        {"permission": "allow", "action": "publish", "topic": "up/${clientid}"},
        {
            "permission": "allow",
            "action": "subscribe",
            "topics": ["down/#", "eq all/#"],
            "qos": [0, 1],
        },
        {"permission": "deny", "action": "all", "topic": "#"},
    ]
    outcome = await source.authenticate(creds(hs({"acl": claim})))
    assert outcome.verdict is Verdict.ALLOW
    assert outcome.acl is not None
    from tidemq.auth.acl import check_rules

    rules = outcome.acl
    assert check_rules(rules, _request("up/dev-1")) is Verdict.ALLOW  # type: ignore[arg-type]
    assert check_rules(rules, _request("up/dev-2")) is Verdict.DENY  # type: ignore[arg-type]
    assert check_rules(rules, _request("down/x", Action.SUBSCRIBE, 1)) is Verdict.ALLOW  # type: ignore[arg-type]
    assert check_rules(rules, _request("down/x", Action.SUBSCRIBE, 2)) is Verdict.DENY  # type: ignore[arg-type]
    old = rules_from_json({"pub": ["a/#"], "sub": ["b/#"]})
    assert check_rules(old, _request("a/1")) is Verdict.ALLOW
    assert check_rules(old, _request("b/1")) is Verdict.DENY  # the old format denies the rest
    assert check_rules(old, _request("b/1", Action.SUBSCRIBE)) is Verdict.ALLOW
    for bad in (
        "x",
        [{"permission": "maybe", "topic": "a"}],
        [{"permission": "allow"}],
        {"pubs": []},
    ):
        with pytest.raises(AclError):
            rules_from_json(bad)
    assert await verdict(source, hs({"acl": "x"})) is Verdict.DENY  # a malformed claim


# --- JWKS ---------------------------------------------------------------------------------


@pytest.fixture
async def jwks_server(rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    jwk.update(kid="k1", alg="RS256", use="sig")
    state: dict[str, Any] = {"keys": [jwk], "hits": 0}

    async def handle(request: web.Request) -> web.Response:
        state["hits"] += 1
        return web.json_response({"keys": state["keys"]})

    app = web.Application()
    app.router.add_get("/jwks", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/jwks", state
    finally:
        await runner.cleanup()


async def test_jwks(jwks_server: tuple[str, dict[str, Any]], rsa_key: rsa.RSAPrivateKey) -> None:
    url, state = jwks_server
    source = JwtAuthenticator(jwks_url=url)
    await source.open()
    try:
        assert state["hits"] == 1
        token = jwt.encode({}, rsa_key, algorithm="RS256", headers={"kid": "k1"})
        assert await verdict(source, token) is Verdict.ALLOW
        assert await verdict(source, token) is Verdict.ALLOW
        assert state["hits"] == 1  # cached
        source._jwks_at -= 60  # the keys are a minute old: an unknown kid fetches again
        unknown = jwt.encode({}, rsa_key, algorithm="RS256", headers={"kid": "k2"})
        assert await verdict(source, unknown) is Verdict.DENY
        assert await verdict(source, unknown) is Verdict.DENY
        assert state["hits"] == 2  # fetched again once for the unknown kid, not twice
        # A rotated key set: the new kid is found after the next fetch.
        state["keys"][0]["kid"] = "k2"
        source._jwks_at -= 60
        assert await verdict(source, unknown) is Verdict.ALLOW
    finally:
        await source.close()


# --- through the broker -------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "not_authorized"), [(V311, 5), (V5, 0x87)])
async def test_jwt_through_the_broker(
    start_broker: StartBroker, mqtt: MakeClient, protocol: int, not_authorized: int
) -> None:
    broker = await start_broker(
        {
            "auth.chain": "jwt",
            "auth.jwt.secret": SECRET.decode(),
            "auth.jwt.verify_claims": '["clientid=${clientid}"]',
            "mqtt.allow_anonymous": False,
        }
    )
    acl = [{"permission": "allow", "action": "all", "topic": "dev/${clientid}/#"},
           {"permission": "deny", "action": "all", "topic": "#"}]  # fmt: skip
    token = hs({"clientid": "d1", "exp": int(time.time()) + 60, "acl": acl})
    client = await mqtt(broker.port, "d1", protocol, username="d1", password=token)
    assert await client.subscribe("dev/d1/cmd", 1) == [1]
    assert await client.subscribe("dev/d2/cmd", 1) == [0x80 if protocol == V311 else 0x87]
    expired = hs({"clientid": "d1", "exp": int(time.time()) - 60})
    assert await refused(broker.port, protocol, username="d1", password=expired) == not_authorized
    wrong_key = hs({"clientid": "d1"}, key=b"not the secret" * 5)
    assert await refused(broker.port, protocol, username="d1", password=wrong_key) == not_authorized
    assert await refused(broker.port, protocol, username="d1", password="no jwt") == not_authorized


def test_config_builds_it(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    from tidemq.config import Config

    key_file = tmp_path / "pub.pem"
    key_file.write_bytes(pem(rsa_key))
    cfg = Config().with_values(
        {"auth.jwt.public_key": str(key_file), "auth.jwt.token_from": "username"}
    )
    source = JwtAuthenticator.from_config(cfg.auth.jwt)
    assert source.public_key == pem(rsa_key)
    assert source.token_from == "username"
    assert "RS256" in source.algorithms
    assert "HS256" not in source.algorithms
    import base64

    cfg = Config().with_values(
        {"auth.jwt.secret": base64.b64encode(b"k").decode(), "auth.jwt.secret_base64": True}
    )
    assert JwtAuthenticator.from_config(cfg.auth.jwt).secret == b"k"
