"""The auth plugin through a real broker (paho 3.1.1 and 5.0): each refusal with the code
Mosquitto and EMQX give, the ACL file (everyone may subscribe except to
``test/nosubscribe``), denied publishes and wills, superusers, per-client state and
its cache, and the plugin's own unit behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

import pytest

from tests.auth.support import (
    MakeClient,
    StartBroker,
    capture_puback,
    mqtt,
    refused,
    start_broker,
)
from tests.helpers.paho import V5, V311
from tidemq.auth.acl import AclRule
from tidemq.auth.api import (
    AclRequest,
    Authenticator,
    Authorizer,
    AuthOutcome,
    ClientIdentity,
    Credentials,
    Verdict,
)
from tidemq.auth.passwords import hash_password
from tidemq.auth.plugin import AuthPlugin, client_identity
from tidemq.broker import (
    AuthenticateEvent,
    ClientInfo,
    ConnectedEvent,
    Decision,
    DisconnectedEvent,
    HookPoint,
    Hooks,
    PublishAuthEvent,
    SubscribeAuthEvent,
)

__all__ = ["mqtt", "start_broker"]  # fixtures

# The setup of the paho interoperability suite: everyone may do anything, except
# subscribe to test/nosubscribe.
NOSUBSCRIBE_ACL = """\
# TideMQ ACL: first matching rule wins
deny   all  subscribe  test/nosubscribe
allow  all  all        #
"""


def _write(path: str, text: str, *, append: bool = False) -> None:
    with open(path, "a" if append else "w") as file:
        file.write(text)


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_text(
        f"alice:{hash_password('alice-pw', 'pbkdf2')}\n"
        # A Mosquitto $7$ hash made by mosquitto_passwd 2.0 (password "secret").
        "mosq:$7$101$gFCPWeB9KrO/BW+C$InYrxOEUdTv8Z0iQyNvQuDSBNo/5P1ofzlLsiznce5pJHeCGbDSF"
        "/aF7vYxmsAxMArrXM58sCPp3IT1wdKrsmA==\n"
    )
    return str(path)


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "not_authorized"), [(V311, 5), (V5, 0x87)])
async def test_password_file_accepts_and_refuses(
    start_broker: StartBroker,
    mqtt: MakeClient,
    password_file: str,
    protocol: int,
    not_authorized: int,
) -> None:
    broker = await start_broker(
        {"auth.password_file.path": password_file, "mqtt.allow_anonymous": False}
    )
    port = broker.port
    await mqtt(port, "a", protocol, username="alice", password="alice-pw")
    await mqtt(port, "m", protocol, username="mosq", password="secret")
    # Wrong password, unknown user, no password, anonymous: Mosquitto 2 answers
    # "not authorized" (3.1.1: 5; 5.0: 0x87) to all of them.
    assert await refused(port, protocol, username="alice", password="wrong") == not_authorized
    assert await refused(port, protocol, username="nobody", password="x") == not_authorized
    assert await refused(port, protocol, username="alice") == not_authorized
    assert await refused(port, protocol) == not_authorized


async def test_allow_anonymous_lets_clients_without_username_in(
    start_broker: StartBroker, mqtt: MakeClient, password_file: str
) -> None:
    broker = await start_broker(
        {"auth.password_file.path": password_file, "mqtt.allow_anonymous": True}
    )
    await mqtt(broker.port, "anon", V5)
    # A username nobody knows is still refused: only clients without one are anonymous.
    assert await refused(broker.port, V5, username="nobody", password="x") == 0x87


async def test_password_file_is_reloaded_when_it_changes(
    start_broker: StartBroker, mqtt: MakeClient, password_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tidemq.auth import _files

    monkeypatch.setattr(_files, "CHECK_INTERVAL", 0.0)
    broker = await start_broker({"auth.password_file.path": password_file})
    assert await refused(broker.port, V311, username="carol", password="c") == 5
    _write(password_file, f"carol:{hash_password('c', 'bcrypt')}\n", append=True)
    await mqtt(broker.port, "c", V311, username="carol", password="c")


async def test_sighup_reload_and_bad_file_keeps_the_old_one(
    start_broker: StartBroker, mqtt: MakeClient, password_file: str
) -> None:
    broker = await start_broker({"auth.password_file.path": password_file})
    _write(password_file, "this line has no colon\n")
    assert broker.reload_auth() is False  # logged; alice still logs in
    await mqtt(broker.port, "a", V311, username="alice", password="alice-pw")
    _write(password_file, f"bob:{hash_password('b', 'pbkdf2')}\n")
    assert broker.reload_auth() is True
    await mqtt(broker.port, "b", V311, username="bob", password="b")
    assert await refused(broker.port, V311, username="alice", password="alice-pw") == 5


async def test_bad_files_stop_the_start(start_broker: StartBroker, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        await start_broker({"auth.password_file.path": missing})
    bad_acl = tmp_path / "acl"
    bad_acl.write_text("allow all publish\n")
    with pytest.raises(ValueError, match=r"acl:1: expected"):
        await start_broker({"acl.file": str(bad_acl)})


# --- authorization ------------------------------------------------------------------------


@pytest.mark.parametrize(("protocol", "refused_code"), [(V311, 0x80), (V5, 0x87)])
async def test_nosubscribe_acl(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, protocol: int, refused_code: int
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(NOSUBSCRIBE_ACL)
    broker = await start_broker({"acl.file": str(acl)})
    client = await mqtt(broker.port, "sub", protocol)
    assert await client.subscribe("test/nosubscribe", 1) == [refused_code]
    # Broader filters are the client's business (as in EMQX: a rule matches a filter it
    # covers); the interoperability suite subscribes to +/+ and # and expects success.
    assert await client.subscribe("test/+", 1) == [1]
    assert await client.subscribe("#", 0) == [0]
    assert await client.subscribe("$share/g/test/nosubscribe", 1) == [refused_code]
    assert await client.subscribe("TopicA/B", 2) == [2]


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_denied_publish_is_acked_and_dropped(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, protocol: int
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("deny all publish secret/#\nallow all all #\n")
    broker = await start_broker({"acl.file": str(acl)})
    sub = await mqtt(broker.port, "listener", protocol)
    await sub.subscribe("#", 1)
    pub = await mqtt(broker.port, "talker", protocol)
    acks = capture_puback(pub)
    await pub.publish("secret/a", b"q0", qos=0)
    await pub.publish("secret/b", b"q1", qos=1)
    # MQTT 5: PUBACK 0x87 Not authorized; 3.1.1 has no way to say it, the PUBACK is plain.
    assert await asyncio.to_thread(acks.get, True, 5) == (0x87 if protocol == V5 else 0)
    await pub.publish("open/c", b"ok", qos=1)
    assert (await sub.next_message()).topic == "open/c"  # and not the denied ones
    await sub.no_message(0.2)


@pytest.mark.parametrize("protocol", [V311, V5])
async def test_denied_will_is_not_published(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, protocol: int
) -> None:
    acl = tmp_path / "acl"
    acl.write_text("deny all publish wills/forbidden\nallow all all #\n")
    broker = await start_broker({"acl.file": str(acl)})
    sub = await mqtt(broker.port, "watcher", protocol)
    await sub.subscribe("wills/#", 0)
    bad = await mqtt(broker.port, "bad", protocol, will=("wills/forbidden", b"x", 0, False))
    good = await mqtt(broker.port, "good", protocol, will=("wills/allowed", b"y", 0, False))
    await bad.kill()
    await good.kill()
    assert (await sub.next_message()).topic == "wills/allowed"
    await sub.no_message(0.3)


async def test_acl_by_user_with_placeholders_and_mosquitto_file(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, password_file: str
) -> None:
    acl = tmp_path / "acl"
    acl.write_text(
        "# a Mosquitto acl_file, unchanged\n"
        "user alice\n"
        "topic readwrite alice/#\n"
        "pattern read devices/%c/#\n"
    )
    broker = await start_broker(
        {
            "auth.password_file.path": password_file,
            "acl.file": str(acl),
            "mqtt.allow_anonymous": True,
        }
    )
    alice = await mqtt(broker.port, "dev1", V5, username="alice", password="alice-pw")
    assert await alice.subscribe("alice/x", 1) == [1]
    assert await alice.subscribe("devices/dev1/#", 1) == [1]
    assert await alice.subscribe("devices/dev2/#", 1) == [0x87]  # Mosquitto files deny the rest
    anon = await mqtt(broker.port, "dev2", V5)
    assert await anon.subscribe("alice/x", 1) == [0x87]
    assert await anon.subscribe("devices/dev2/state", 0) == [0]


class _Fixed(Authenticator):
    """Accepts every client, as a superuser when its username says so, with own rules."""

    name = "fixed"

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        user = credentials.client.username
        own = (AclRule.make("allow", "all", "mine/${username}/#"),)
        return AuthOutcome(verdict=Verdict.ALLOW, superuser=user == "root", acl=own)


async def test_superuser_bypasses_and_own_rules_come_first(mqtt: MakeClient) -> None:
    from tidemq.app import Broker
    from tidemq.testing import broker_settings

    plugin = AuthPlugin(authenticators=[_Fixed()], no_match="deny")
    hooks = Hooks()
    plugin.install(hooks)
    async with Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings(), hooks=hooks) as b:
        root = await mqtt(b.port, "root", V5, username="root", password="x")
        assert await root.subscribe("anything/#", 1) == [1]
        user = await mqtt(b.port, "u", V5, username="u", password="x")
        assert await user.subscribe("mine/u/#", 1) == [1]
        assert await user.subscribe("mine/other/#", 1) == [0x87]  # no_match = deny


# --- the plugin's own state ---------------------------------------------------------------


def _info(client_id: str = "c", username: str | None = "u") -> ClientInfo:
    return ClientInfo(
        client_id=client_id,
        username=username,
        peer=("10.0.0.1", 1234),
        listener="tcp:1883",
        protocol_version=5,
    )


class _Counting(Authorizer):
    """Allows ``ok/#``, counts how often it is asked."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0
        self.prepared: list[ClientIdentity] = []
        self.forgotten: list[ClientIdentity] = []

    async def prepare(self, client: ClientIdentity) -> None:
        self.prepared.append(client)

    def forget(self, client: ClientIdentity) -> None:
        self.forgotten.append(client)

    def check(self, request: AclRequest) -> Verdict:
        self.calls += 1
        return Verdict.ALLOW if request.topic.startswith("ok/") else Verdict.IGNORE


async def _authenticate(plugin: AuthPlugin, info: ClientInfo) -> Decision:
    result = await plugin._authenticate(AuthenticateEvent(client=info, password=b"pw"))
    return result.decision


async def test_cache_ttl_size_and_per_connection_state() -> None:
    authorizer = _Counting()
    plugin = AuthPlugin(
        authenticators=[_Fixed()], authorizers=[authorizer], cache_ttl=60, cache_max_size=2
    )
    old, new = _info(), _info()  # a takeover: equal fields, two connections
    assert old == new
    assert old is not new
    assert await _authenticate(plugin, old) is Decision.ALLOW
    assert await _authenticate(plugin, new) is Decision.ALLOW
    first, second = authorizer.prepared
    assert first != second  # distinct identities (connection numbers)
    publish = lambda info, topic: plugin._authorize_publish(  # noqa: E731
        PublishAuthEvent(client=info, topic=topic, qos=1, retain=False)
    )
    assert publish(old, "ok/1") is Decision.ALLOW
    assert publish(old, "ok/1") is Decision.ALLOW
    assert authorizer.calls == 1  # cached
    assert publish(new, "ok/1") is Decision.ALLOW
    assert authorizer.calls == 2  # the other connection has its own cache
    publish(old, "ok/2")
    publish(old, "ok/3")  # evicts ok/1 (max size 2)
    publish(old, "ok/1")
    assert authorizer.calls == 5
    plugin.clear_cache()
    publish(old, "ok/3")
    publish(new, "ok/1")
    assert authorizer.calls == 7
    # The old connection ends: its state goes, the new one's stays.
    plugin._disconnected(DisconnectedEvent(client=old, reason="takeover", reason_code=0x8E))
    assert authorizer.forgotten == [first]
    calls = authorizer.calls
    assert publish(new, "ok/1") is Decision.ALLOW
    assert authorizer.calls == calls  # still cached for the new connection


async def test_no_cache_and_no_match() -> None:
    authorizer = _Counting()
    plugin = AuthPlugin(authorizers=[authorizer], cache_ttl=0, no_match="deny")
    info = _info()
    event = SubscribeAuthEvent(client=info, topic_filter="other/x", qos=0)
    assert plugin._authorize_subscribe(event) is Decision.DENY
    assert plugin._authorize_subscribe(event) is Decision.DENY
    assert authorizer.calls == 2
    shared = SubscribeAuthEvent(client=info, topic_filter="$share/g/ok/x", qos=0)
    assert plugin._authorize_subscribe(shared) is Decision.ALLOW


class _Slow(Authorizer):
    """An asynchronous source (like the HTTP callout)."""

    name = "slow"
    asynchronous = True

    def check(self, request: AclRequest) -> Verdict:
        raise AssertionError("the plugin awaits check_async")

    async def check_async(self, request: AclRequest) -> Verdict:
        await asyncio.sleep(0)
        return Verdict.DENY if request.topic == "no" else Verdict.ALLOW


async def test_asynchronous_source_is_awaited_on_a_miss_only() -> None:
    plugin = AuthPlugin(authorizers=[_Slow()])
    plugin._async_decisions = True
    info = _info()
    plugin._connected(
        ConnectedEvent(client=info, session_present=False, clean_start=True, keepalive=0)
    )
    result = plugin._authorize_publish(
        PublishAuthEvent(client=info, topic="no", qos=0, retain=False)
    )
    assert isinstance(result, Awaitable)
    assert await result is Decision.DENY
    cached = plugin._authorize_publish(
        PublishAuthEvent(client=info, topic="no", qos=0, retain=False)
    )
    assert cached is Decision.DENY


async def test_asynchronous_source_through_the_broker(mqtt: MakeClient) -> None:
    from tidemq.app import Broker
    from tidemq.testing import broker_settings

    hooks = Hooks()
    plugin = AuthPlugin(authorizers=[_Slow()])
    plugin.install(hooks)
    if not plugin._async_decisions:
        pytest.skip("this broker does not await authorization decisions yet")
    async with Broker(listen=["tcp://127.0.0.1:0"], settings=broker_settings(), hooks=hooks) as b:
        client = await mqtt(b.port, "a", V5)
        assert await client.subscribe("no", 1) == [0x87]
        assert await client.subscribe("yes", 1) == [1]
        acks = capture_puback(client)
        await client.publish("no", b"x", qos=1)
        assert await asyncio.to_thread(acks.get, True, 5) == 0x87


async def test_failing_sources_answer_ignore() -> None:
    class Broken(Authenticator):
        name = "broken"

        async def authenticate(self, credentials: Credentials) -> AuthOutcome:
            raise RuntimeError("down")

    class BrokenAcl(Authorizer):
        name = "broken-acl"

        def check(self, request: AclRequest) -> Verdict:
            raise RuntimeError("down")

    plugin = AuthPlugin(authenticators=[Broken(), _Fixed()], authorizers=[BrokenAcl()])
    info = _info()
    assert await _authenticate(plugin, info) is Decision.ALLOW
    event = PublishAuthEvent(client=info, topic="t", qos=0, retain=False)
    assert plugin._authorize_publish(event) is Decision.ALLOW  # no_match allow


async def test_unknown_client_is_authorized_without_own_rules() -> None:
    plugin = AuthPlugin(authorizers=[_Counting()], no_match="deny")
    event = PublishAuthEvent(client=_info(), topic="x", qos=0, retain=False)
    assert plugin._authorize_publish(event) is Decision.DENY


async def test_certificate_source() -> None:
    from tidemq.auth.plugin import CertificateAuthenticator

    source = CertificateAuthenticator()
    with_cert = ClientIdentity(
        client_id="c", username="dev", peer_host=None, cert_common_name="dev"
    )
    without = ClientIdentity(client_id="c", username="dev", peer_host=None)
    assert (await source.authenticate(Credentials(client=with_cert, password=None))).verdict is (
        Verdict.ALLOW
    )
    assert (await source.authenticate(Credentials(client=without, password=b"x"))).verdict is (
        Verdict.IGNORE
    )


def test_client_identity() -> None:
    identity = client_identity(_info(), 7)
    assert identity.peer_host == "10.0.0.1"
    assert identity.peer_port == 1234
    assert identity.connection == 7


async def test_install_and_unregister() -> None:
    hooks = Hooks()
    unregister = AuthPlugin(authenticators=[_Fixed()]).install(hooks)
    assert hooks.has(HookPoint.AUTHENTICATE)
    assert hooks.has(HookPoint.AUTHORIZE_PUBLISH)  # _Fixed may give own rules
    unregister()
    assert not hooks.has(HookPoint.AUTHENTICATE)
    assert not hooks.has(HookPoint.CLIENT_DISCONNECTED)


async def test_plain_broker_installs_nothing(start_broker: StartBroker) -> None:
    broker = await start_broker()
    assert broker.auth is None
    assert not broker.hooks.has(HookPoint.AUTHENTICATE)


async def test_ban_checker_runs_first() -> None:
    class Bans:
        async def check(self, identity: ClientIdentity) -> AuthOutcome | None:
            if identity.client_id == "banned":
                return AuthOutcome(verdict=Verdict.DENY, reason_code=0x8A, reason="banned")
            return None

    plugin = AuthPlugin(authenticators=[_Fixed()], ban_checkers=[Bans()])
    result = await plugin._authenticate(AuthenticateEvent(client=_info("banned"), password=None))
    assert (result.decision, result.reason_code) == (Decision.DENY, 0x8A)
    assert await _authenticate(plugin, _info("fine")) is Decision.ALLOW
