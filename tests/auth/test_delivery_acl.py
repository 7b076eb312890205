"""``acl.check_on_delivery``: Mosquitto checks read access on every message it delivers,
EMQX checks only the SUBSCRIBE filter. A Mosquitto acl_file (``auto``) gets Mosquitto's
meaning: a client subscribed to ``#`` does not receive what its ``deny`` lines forbid,
live, retained, or queued while it was offline; ``off`` keeps EMQX's semantics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.auth.support import MakeClient, StartBroker, mqtt, start_broker
from tests.helpers.paho import V5, V311, Paho
from tidemq.auth.acl import AclFileAuthorizer, AclRule, parse_acl
from tidemq.auth.api import AclRequest, Action, Authenticator, AuthOutcome, Credentials, Verdict
from tidemq.auth.passwords import hash_password
from tidemq.auth.plugin import AuthPlugin
from tidemq.broker import (
    AuthenticateEvent,
    ClientInfo,
    Decision,
    DeliveryAuthEvent,
    HookPoint,
    Hooks,
)

__all__ = ["mqtt", "start_broker"]  # fixtures

# reader may use everything except secret/; writer everything.
MOSQUITTO_ACL = """\
# Mosquitto acl_file
user reader
topic readwrite #
topic deny secret/#

user writer
topic readwrite #

user root
topic read nothing/here
"""

TIDEMQ_ACL = """\
deny  all  subscribe  secret/#
allow all  all        #
"""

END = "public/end"


@pytest.fixture
def password_file(tmp_path: Path) -> str:
    path = tmp_path / "passwd"
    path.write_text("".join(f"{u}:{hash_password('pw', 'pbkdf2')}\n" for u in ("reader", "writer")))
    return str(path)


def _acl(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acl"
    path.write_text(text)
    return str(path)


async def _until_end(client: Paho) -> list[str]:
    """The topics *client* receives up to and including the marker ``public/end``
    (published last: whatever was published before it and not received was dropped)."""
    topics: list[str] = []
    while not topics or topics[-1] != END:
        topics.append((await client.next_message()).topic)
    return topics


async def test_live_deliveries_are_checked(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, password_file: str
) -> None:
    broker = await start_broker(
        {"acl.file": _acl(tmp_path, MOSQUITTO_ACL), "auth.password_file.path": password_file}
    )
    assert HookPoint.AUTHORIZE_DELIVERY in broker.hooks.active  # auto: Mosquitto format
    reader = await mqtt(broker.port, "r", V311, username="reader", password="pw")
    assert await reader.subscribe("#", 1) == [1]  # the filter itself is allowed
    writer = await mqtt(broker.port, "w", V311, username="writer", password="pw")
    await writer.publish("secret/x", b"0", qos=0)
    await writer.publish("public/x", b"0", qos=0)
    await writer.publish("secret/y", b"1", qos=1)
    await writer.publish("public/y", b"1", qos=1)
    await writer.publish(END, b"", qos=1)
    assert await _until_end(reader) == ["public/x", "public/y", END]
    stats = broker.core.stats
    assert stats.messages_dropped_acl == 2
    assert stats.messages_dropped >= 2


async def test_retained_message_is_not_sent_on_subscribe(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, password_file: str
) -> None:
    broker = await start_broker(
        {"acl.file": _acl(tmp_path, MOSQUITTO_ACL), "auth.password_file.path": password_file}
    )
    writer = await mqtt(broker.port, "w", V311, username="writer", password="pw")
    await writer.publish("secret/r", b"s", qos=1, retain=True)
    await writer.publish("public/r", b"p", qos=1, retain=True)
    reader = await mqtt(broker.port, "r", V311, username="reader", password="pw")
    assert await reader.subscribe("#", 1) == [1]
    await writer.publish(END, b"", qos=1)
    assert await _until_end(reader) == ["public/r", END]
    assert broker.core.stats.messages_dropped_acl == 1


async def test_offline_queue_is_checked_on_reconnect(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, password_file: str
) -> None:
    broker = await start_broker(
        {"acl.file": _acl(tmp_path, MOSQUITTO_ACL), "auth.password_file.path": password_file}
    )
    reader = await mqtt(broker.port, "keep", V311, clean=False, username="reader", password="pw")
    assert await reader.subscribe("#", 1) == [1]
    await reader.disconnect()
    writer = await mqtt(broker.port, "w", V311, username="writer", password="pw")
    await writer.publish("secret/q", b"s", qos=1)
    await writer.publish("public/q", b"p", qos=1)
    assert len(broker.core.sessions["keep"].queue or ()) == 2  # both queued while away
    again = await mqtt(broker.port, "keep", V311, clean=False, username="reader", password="pw")
    await writer.publish(END, b"", qos=1)
    assert await _until_end(again) == ["public/q", END]
    assert broker.core.stats.messages_dropped_acl == 1


async def test_off_keeps_emqx_semantics(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, password_file: str
) -> None:
    broker = await start_broker(
        {
            "acl.file": _acl(tmp_path, MOSQUITTO_ACL),
            "auth.password_file.path": password_file,
            "acl.check_on_delivery": "off",
        }
    )
    assert HookPoint.AUTHORIZE_DELIVERY not in broker.hooks.active
    reader = await mqtt(broker.port, "r", V311, username="reader", password="pw")
    assert await reader.subscribe("#", 1) == [1]
    writer = await mqtt(broker.port, "w", V311, username="writer", password="pw")
    await writer.publish("secret/x", b"", qos=1)
    await writer.publish(END, b"", qos=1)
    # Only the subscription was checked: the secret message is delivered (EMQX).
    assert await _until_end(reader) == ["secret/x", END]
    assert broker.core.stats.messages_dropped_acl == 0


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("auto", ["secret/x", END]), ("off", ["secret/x", END]), ("on", [END])],
)
async def test_tidemq_format_file(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, mode: str, expected: list[str]
) -> None:
    broker = await start_broker(
        {"acl.file": _acl(tmp_path, TIDEMQ_ACL), "acl.check_on_delivery": mode}
    )
    assert (HookPoint.AUTHORIZE_DELIVERY in broker.hooks.active) is (mode == "on")
    reader = await mqtt(broker.port, "r", V5)
    assert await reader.subscribe("#", 1) == [1]
    assert await reader.subscribe("secret/#", 1) == [0x87]  # the filter is refused anyway
    writer = await mqtt(broker.port, "w", V5)
    await writer.publish("secret/x", b"", qos=1)
    await writer.publish(END, b"", qos=1)
    assert await _until_end(reader) == expected
    assert broker.core.stats.messages_dropped_acl == (1 if mode == "on" else 0)


class _Everyone(Authenticator):
    """Accepts every client; ``root`` is a superuser."""

    name = "everyone"

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        return AuthOutcome(verdict=Verdict.ALLOW, superuser=credentials.client.username == "root")


async def test_superuser_bypasses(mqtt: MakeClient, tmp_path: Path) -> None:
    from tidemq.app import Broker
    from tidemq.testing import broker_settings

    plugin = AuthPlugin(
        authenticators=[_Everyone()],
        authorizers=[AclFileAuthorizer(_acl(tmp_path, MOSQUITTO_ACL))],
        check_on_delivery="on",
    )
    await plugin.open()
    hooks = Hooks()
    plugin.install(hooks)
    try:
        settings = broker_settings()
        async with Broker(listen=["tcp://127.0.0.1:0"], settings=settings, hooks=hooks) as b:
            # root's own topic lines do not allow "#": only the superuser flag lets it in.
            root = await mqtt(b.port, "root", V311, username="root", password="x")
            assert await root.subscribe("#", 1) == [1]
            reader = await mqtt(b.port, "r", V311, username="reader", password="x")
            assert await reader.subscribe("#", 1) == [1]
            writer = await mqtt(b.port, "w", V311, username="writer", password="x")
            await writer.publish("secret/x", b"", qos=1)
            await writer.publish(END, b"", qos=1)
            assert await _until_end(root) == ["secret/x", END]
            assert await _until_end(reader) == [END]
            assert b.core.stats.messages_dropped_acl == 1
    finally:
        await plugin.close()


def test_read_rules_match_topic_names() -> None:
    from tidemq.auth.api import ClientIdentity

    rules = parse_acl("topic read #\ntopic read $SYS/broker/#\ntopic write w/#\n", "acl")
    anon = ClientIdentity(client_id="c", username=None, peer_host=None)

    def read(topic: str) -> Verdict:
        return rules.check(AclRequest(client=anon, action=Action.READ, topic=topic, qos=0))

    assert read("a/b") is Verdict.ALLOW
    assert read("$SYS/broker/uptime") is Verdict.ALLOW
    assert read("$SYS/other") is Verdict.DENY  # "#" does not match $ topics [MQTT-4.7.2-1]
    tidemq = parse_acl("allow all publish w/#\nallow all subscribe r/+ eq x/#\n", "acl")
    assert tidemq.check(AclRequest(client=anon, action=Action.READ, topic="w/1", qos=0)) is (
        Verdict.IGNORE  # publish rules do not answer a read
    )
    assert tidemq.check(AclRequest(client=anon, action=Action.READ, topic="r/1", qos=0)) is (
        Verdict.ALLOW
    )
    assert tidemq.check(AclRequest(client=anon, action=Action.READ, topic="x/1", qos=0)) is (
        Verdict.IGNORE  # eq compares literally
    )


def test_decide_now_refuses_an_async_answer() -> None:
    hooks = Hooks()

    async def slow(event: object) -> Decision:
        return Decision.ALLOW

    hooks.register(HookPoint.AUTHORIZE_DELIVERY, slow)
    assert hooks.decide_now(HookPoint.AUTHORIZE_DELIVERY, object(), Decision.ALLOW) is (
        Decision.DENY
    )
    hooks2 = Hooks()
    hooks2.register(HookPoint.AUTHORIZE_DELIVERY, lambda e: Decision.DEFER)
    assert hooks2.decide_now(HookPoint.AUTHORIZE_DELIVERY, object(), Decision.ALLOW) is (
        Decision.ALLOW
    )


def test_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="check_on_delivery"):
        AuthPlugin(check_on_delivery="sometimes")


class _OwnRules(Authenticator):
    """Accepts every client with own rules (as a JWT ``acl`` claim gives them)."""

    name = "own"

    async def authenticate(self, credentials: Credentials) -> AuthOutcome:
        own = (
            AclRule.make("allow", "subscribe", "mine/#"),
            AclRule.make("allow", "publish", "out/#"),
            AclRule.make("deny", "all", "#"),
        )
        return AuthOutcome(verdict=Verdict.ALLOW, acl=own)


async def test_own_rules_answer_reads_cached_apart_from_publish() -> None:
    plugin = AuthPlugin(authenticators=[_OwnRules()], check_on_delivery="on")
    hooks = Hooks()
    plugin.install(hooks)
    assert HookPoint.AUTHORIZE_DELIVERY in hooks.active
    info = ClientInfo(
        client_id="c", username="u", peer=("10.0.0.1", 1), listener="tcp", protocol_version=4
    )
    result = await plugin._authenticate(AuthenticateEvent(client=info, password=b"pw"))
    assert result.decision is Decision.ALLOW

    def read(topic: str) -> Decision:
        event = DeliveryAuthEvent(client=info, topic=topic, qos=0, retain=False)
        return hooks.decide_now(HookPoint.AUTHORIZE_DELIVERY, event, Decision.ALLOW)

    assert read("mine/x") is Decision.ALLOW
    assert read("other/x") is Decision.DENY
    # "out/x" may be published but not read: the two answers are cached apart.
    assert plugin.authorize(info, Action.PUBLISH, "out/x", 0) is Decision.ALLOW
    assert read("out/x") is Decision.DENY
    assert plugin.authorize(info, Action.PUBLISH, "out/x", 0) is Decision.ALLOW
    assert read("out/x") is Decision.DENY


async def test_auto_follows_the_file_format_across_reloads(tmp_path: Path) -> None:
    path = _acl(tmp_path, MOSQUITTO_ACL)
    plugin = AuthPlugin(authorizers=[AclFileAuthorizer(path)])
    await plugin.open()
    try:
        hooks = Hooks()
        unregister = plugin.install(hooks)
        assert HookPoint.AUTHORIZE_DELIVERY in hooks.active
        _acl(tmp_path, TIDEMQ_ACL)
        assert plugin.reload()
        assert HookPoint.AUTHORIZE_DELIVERY not in hooks.active
        _acl(tmp_path, MOSQUITTO_ACL)
        assert plugin.reload()
        assert HookPoint.AUTHORIZE_DELIVERY in hooks.active
        unregister()
        assert hooks.active == frozenset()
    finally:
        await plugin.close()
