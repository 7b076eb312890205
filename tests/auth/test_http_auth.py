"""The HTTP callout: a test auth server (aiohttp.web) answering EMQX's contract, unit-
tested and through a real broker (authentication and the awaited ACL decisions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from tests.auth.support import MakeClient, StartBroker, capture_puback, mqtt, refused, start_broker
from tests.helpers.paho import V5, V311
from tidemq.auth.api import AclRequest, Action, ClientIdentity, Credentials, Verdict
from tidemq.auth.http import HttpAuthenticator, HttpAuthorizer, HttpCallout

__all__ = ["mqtt", "start_broker"]


@dataclass
class AuthServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    delay: float = 0.0


@pytest.fixture
async def server() -> AsyncIterator[AuthServer]:
    """/auth: alice/pw allowed, root/pw a superuser, "ignored" ignored, others denied;
    /acl: deny topics under secret/, allow the rest; /204 and /500 answer those codes;
    /text answers 200 without JSON; /slow waits."""
    state = AuthServer("")

    async def fields(request: web.Request) -> dict[str, Any]:
        if request.method == "GET":
            data: dict[str, Any] = dict(request.query)
        elif request.content_type == "application/json":
            data = await request.json()
        else:
            data = dict(await request.post())
        data["_headers"] = dict(request.headers)
        data["_path"] = request.path
        state.requests.append(data)
        return data

    async def auth(request: web.Request) -> web.Response:
        data = await fields(request)
        await asyncio.sleep(state.delay)
        user, password = data.get("username"), data.get("password")
        if user == "ignored":
            return web.json_response({"result": "ignore"})
        if password == "pw" and user in ("alice", "root"):
            answer: dict[str, Any] = {"result": "allow", "is_superuser": user == "root"}
            if user == "alice":
                answer["acl"] = [{"permission": "deny", "action": "subscribe", "topic": "own/deny"}]
            return web.json_response(answer)
        return web.json_response({"result": "deny"})

    async def acl(request: web.Request) -> web.Response:
        data = await fields(request)
        topic = str(data.get("topic", ""))
        return web.json_response({"result": "deny" if topic.startswith("secret/") else "allow"})

    async def status(request: web.Request) -> web.Response:
        await fields(request)
        return web.Response(status=int(request.match_info["code"]))

    async def text(request: web.Request) -> web.Response:
        await fields(request)
        return web.Response(text="ok")

    async def slow(request: web.Request) -> web.Response:
        await fields(request)
        await asyncio.sleep(2)
        return web.json_response({"result": "allow"})

    app = web.Application()
    app.router.add_route("*", "/auth", auth)
    app.router.add_route("*", "/acl", acl)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_route("*", "/text", text)
    app.router.add_route("*", "/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


CLIENT = ClientIdentity(client_id="dev-1", username="alice", peer_host="10.0.0.7")
BODY = {
    "clientid": "${clientid}",
    "username": "${username}",
    "password": "${password}",
    "peerhost": "${peerhost}",
}


def creds(username: str = "alice", password: bytes = b"pw") -> Credentials:
    client = ClientIdentity(client_id="dev-1", username=username, peer_host="10.0.0.7")
    return Credentials(client=client, password=password)


async def test_authentication_answers(server: AuthServer) -> None:
    source = HttpAuthenticator(HttpCallout(server.url + "/auth", body=BODY))
    await source.open()
    try:
        ok = await source.authenticate(creds())
        assert ok.verdict is Verdict.ALLOW
        assert not ok.superuser
        assert ok.acl
        root = await source.authenticate(creds("root"))
        assert root.verdict is Verdict.ALLOW
        assert root.superuser
        assert (await source.authenticate(creds(password=b"bad"))).verdict is Verdict.DENY
        assert (await source.authenticate(creds("ignored"))).verdict is Verdict.IGNORE
        assert server.requests[0] | {"_headers": None} == {
            "clientid": "dev-1", "username": "alice", "password": "pw", "peerhost": "10.0.0.7",
            "_headers": None, "_path": "/auth",
        }  # fmt: skip
    finally:
        await source.close()


@pytest.mark.parametrize(("method", "body_format"), [("get", "json"), ("post", "form")])
async def test_get_and_form(server: AuthServer, method: str, body_format: str) -> None:
    callout = HttpCallout(
        server.url + "/auth?client=${clientid}",
        method=method,
        body_format=body_format,
        body={"username": "${username}", "password": "${password}"},
        headers={"X-Client": "${clientid}", "Authorization": "Bearer t0ken"},
    )
    source = HttpAuthenticator(callout)
    try:
        assert (await source.authenticate(creds())).verdict is Verdict.ALLOW
        seen = server.requests[-1]
        assert seen["username"] == "alice"
        assert seen["password"] == "pw"
        assert seen["_headers"]["X-Client"] == "dev-1"
        assert seen["_headers"]["Authorization"] == "Bearer t0ken"
    finally:
        await source.close()


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/status/204", Verdict.ALLOW),
        ("/status/403", Verdict.IGNORE),
        ("/status/500", Verdict.IGNORE),
        ("/text", Verdict.IGNORE),
        ("/slow", Verdict.IGNORE),  # timeout
    ],
)
async def test_statuses_errors_and_timeout(
    server: AuthServer, path: str, expected: Verdict, caplog: pytest.LogCaptureFixture
) -> None:
    source = HttpAuthenticator(HttpCallout(server.url + path, body=BODY, timeout=0.3))
    try:
        assert (await source.authenticate(creds())).verdict is expected
    finally:
        await source.close()
    if expected is Verdict.IGNORE:
        assert "ignored" in caplog.text


async def test_unreachable_server_is_ignored() -> None:
    source = HttpAuthenticator(HttpCallout("http://127.0.0.1:9/auth", body=BODY, timeout=1))
    try:
        assert (await source.authenticate(creds())).verdict is Verdict.IGNORE
    finally:
        await source.close()


async def test_cache(server: AuthServer) -> None:
    callout = HttpCallout(server.url + "/auth", body=BODY, cache_ttl=60, cache_max_size=2)
    source = HttpAuthenticator(callout)
    try:
        for _ in range(3):
            assert (await source.authenticate(creds())).verdict is Verdict.ALLOW
        assert len(server.requests) == 1
        await source.authenticate(creds(password=b"other"))  # a different password: asked
        assert len(server.requests) == 2
        await source.authenticate(creds("ignored"))  # ignore answers are not cached
        await source.authenticate(creds("ignored"))
        assert len(server.requests) == 4
        await source.authenticate(creds("root"))  # evicts the oldest (size 2)
        await source.authenticate(creds())
        assert len(server.requests) == 6
        assert all(b"pw" not in key for key in callout._cache)  # digests, not passwords
    finally:
        await source.close()


async def test_acl_values(server: AuthServer) -> None:
    body = {
        "clientid": "${clientid}", "action": "${action}", "topic": "${topic}",
        "qos": "${qos}", "retain": "${retain}",
    }  # fmt: skip
    source = HttpAuthorizer(HttpCallout(server.url + "/acl", body=body))
    try:
        request = AclRequest(
            client=CLIENT, action=Action.PUBLISH, topic="secret/a", qos=1, retain=True
        )
        assert source.check(request) is Verdict.IGNORE  # never asked synchronously
        assert await source.check_async(request) is Verdict.DENY
        assert server.requests[-1] | {"_headers": None} == {
            "clientid": "dev-1", "action": "publish", "topic": "secret/a", "qos": "1",
            "retain": "true", "_headers": None, "_path": "/acl",
        }  # fmt: skip
    finally:
        await source.close()


@pytest.mark.parametrize(("protocol", "not_authorized"), [(V311, 5), (V5, 0x87)])
async def test_through_the_broker(
    server: AuthServer,
    start_broker: StartBroker,
    mqtt: MakeClient,
    protocol: int,
    not_authorized: int,
) -> None:
    broker = await start_broker(
        {
            "auth.chain": "http",
            "auth.http.url": server.url + "/auth",
            "acl.sources": "http",
            "acl.http.url": server.url + "/acl",
            "mqtt.allow_anonymous": False,
        }
    )
    port = broker.port
    assert await refused(port, protocol, username="alice", password="bad") == not_authorized
    assert await refused(port, protocol, username="ignored", password="pw") == not_authorized
    alice = await mqtt(port, "a1", protocol, username="alice", password="pw")
    denied = 0x80 if protocol == V311 else 0x87
    assert await alice.subscribe("open/#", 1) == [1]
    assert await alice.subscribe("secret/#", 1) == [denied]
    assert await alice.subscribe("own/deny", 1) == [denied]  # alice's own rules first
    acks = capture_puback(alice)
    await alice.publish("secret/x", b"no", qos=1)
    await alice.publish("open/x", b"yes", qos=1)
    assert await asyncio.to_thread(acks.get, True, 5) == (0x87 if protocol == V5 else 0)
    assert await asyncio.to_thread(acks.get, True, 5) == 0
    msg = await alice.next_message()
    assert (msg.topic, msg.payload) == ("open/x", b"yes")  # held in order behind the callout
    root = await mqtt(port, "r1", protocol, username="root", password="pw")
    assert await root.subscribe("secret/#", 1) == [1]  # a superuser is not asked about
    acl_requests = [r for r in server.requests if r["_path"] == "/acl"]
    assert not any(r["clientid"] == "r1" for r in acl_requests)
