"""ACL rules and files: matching, placeholders, conditions, both file formats, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidemq.auth import _files
from tidemq.auth.acl import (
    AclError,
    AclFileAuthorizer,
    AclRule,
    AclTopic,
    Who,
    check_rules,
    filter_covers,
    parse_acl,
    topic_matches_filter,
)
from tidemq.auth.api import AclRequest, Action, ClientIdentity, Verdict

ALICE = ClientIdentity(client_id="dev-1", username="alice", peer_host="10.1.2.3")
ANON = ClientIdentity(client_id="dev-2", username=None, peer_host="192.168.0.9")
ALLOW, DENY, IGNORE = Verdict.ALLOW, Verdict.DENY, Verdict.IGNORE


def pub(
    topic: str, client: ClientIdentity = ALICE, qos: int = 0, retain: bool = False
) -> AclRequest:
    return AclRequest(client=client, action=Action.PUBLISH, topic=topic, qos=qos, retain=retain)


def sub(topic: str, client: ClientIdentity = ALICE, qos: int = 0) -> AclRequest:
    return AclRequest(client=client, action=Action.SUBSCRIBE, topic=topic, qos=qos)


def w(text: str) -> tuple[str, ...]:
    return tuple(text.split("/"))


@pytest.mark.parametrize(
    ("rule", "topic", "ok"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("+/b", "a/b", True),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a//b", "a//b", True),
    ],
)
def test_topic_matches_filter(rule: str, topic: str, ok: bool) -> None:
    assert topic_matches_filter(w(rule), w(topic)) is ok


@pytest.mark.parametrize(
    ("rule", "requested", "ok"),
    [
        ("#", "a/+/c", True),
        ("#", "#", True),
        ("a/#", "a/+/c", True),
        ("a/#", "a", True),
        ("a/#", "#", False),
        ("a/+", "a/+", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b", True),
        ("a/b", "a/+", False),
        ("+/+", "a/b", True),
        ("+/b", "+/+", False),
        ("#", "$SYS/#", False),
        ("$SYS/#", "$SYS/+/x", True),
    ],
)
def test_filter_covers(rule: str, requested: str, ok: bool) -> None:
    assert filter_covers(w(rule), w(requested)) is ok


def test_first_matching_rule_wins_and_actions() -> None:
    rules = parse_acl(
        "deny all subscribe test/nosubscribe\n"
        "allow user alice publish sensors/alice/#\n"
        "deny all publish sensors/#\n"
        "allow all all #\n"
    )
    assert rules.check(sub("test/nosubscribe")) is DENY
    assert rules.check(pub("test/nosubscribe")) is ALLOW
    assert rules.check(sub("test/+")) is ALLOW  # the deny's filter does not cover test/+
    assert rules.check(pub("sensors/alice/t")) is ALLOW
    assert rules.check(pub("sensors/alice/t", ANON)) is DENY
    assert rules.check(pub("sensors/bob/t")) is DENY
    assert rules.check(sub("sensors/bob/t")) is ALLOW


def test_who() -> None:
    rules = parse_acl(
        "allow client dev-1 publish c\n"
        "allow user alice publish u\n"
        "allow ip 10.0.0.0/8 publish net\n"
        "allow ip 192.168.0.9 publish host\n"
        "allow anonymous publish anon\n"
        'allow user "name with space" publish spaced\n'
    )
    assert rules.check(pub("c")) is ALLOW
    assert rules.check(pub("c", ANON)) is IGNORE
    assert rules.check(pub("u")) is ALLOW
    assert rules.check(pub("u", ANON)) is IGNORE
    assert rules.check(pub("net")) is ALLOW
    assert rules.check(pub("net", ANON)) is IGNORE
    assert rules.check(pub("host", ANON)) is ALLOW
    assert rules.check(pub("host")) is IGNORE
    assert rules.check(pub("anon", ANON)) is ALLOW
    assert rules.check(pub("anon")) is IGNORE
    spaced = ClientIdentity(client_id="x", username="name with space", peer_host=None)
    assert rules.check(pub("spaced", spaced)) is ALLOW
    assert rules.check(pub("net", spaced)) is IGNORE  # no address: ip rules never match
    mapped = ClientIdentity(client_id="x", username=None, peer_host="::ffff:10.9.9.9")
    assert rules.check(pub("net", mapped)) is ALLOW  # a dual-stack view of an IPv4 client


def test_placeholders_and_eq() -> None:
    rules = parse_acl(
        "allow all all users/${username}/#\n"
        "allow all subscribe devices/${clientid}/+\n"
        "allow all subscribe eq shared/#\n"
        "deny all all #\n"
    )
    assert rules.check(pub("users/alice/x")) is ALLOW
    assert rules.check(pub("users/bob/x")) is DENY
    assert rules.check(pub("users/alice/x", ANON)) is DENY  # no username: no match
    assert rules.check(sub("devices/dev-1/+")) is ALLOW
    assert rules.check(sub("devices/dev-1/#")) is DENY
    assert rules.check(sub("shared/#")) is ALLOW
    assert rules.check(sub("shared/x")) is DENY  # eq: only that very filter
    # A username made of wildcards cannot widen a rule.
    sneaky = ClientIdentity(client_id="c", username="#", peer_host=None)
    assert rules.check(sub("users/#", sneaky)) is DENY
    slash = ClientIdentity(client_id="c", username="a/b", peer_host=None)
    assert rules.check(pub("users/a/b/x", slash)) is DENY


def test_unsafe_placeholder_value_makes_a_deny_match() -> None:
    rules = parse_acl("deny all publish private/${username}\nallow all all #\n")
    sneaky = ClientIdentity(client_id="c", username="+", peer_host=None)
    assert rules.check(pub("anything", sneaky)) is DENY
    assert rules.check(pub("private/alice")) is DENY
    assert rules.check(pub("private/bob")) is ALLOW


def test_qos_and_retain_conditions() -> None:
    rules = parse_acl(
        "deny all publish config/# retain=true\n"
        "allow all publish config/# qos=0,1\n"
        "allow all subscribe data/# qos=0\n"
        "deny all all #\n"
    )
    assert rules.check(pub("config/a", retain=True)) is DENY
    assert rules.check(pub("config/a", qos=1)) is ALLOW
    assert rules.check(pub("config/a", qos=2)) is DENY
    assert rules.check(sub("data/x", qos=0)) is ALLOW
    assert rules.check(sub("data/x", qos=1)) is DENY


def test_mosquitto_acl_file() -> None:
    rules = parse_acl(
        "# topic lines before any user line are for anonymous clients\n"
        "topic read public/#\n"
        "\n"
        "user alice\n"
        "topic readwrite alice/#\n"
        "topic deny alice/secret\n"
        "topic write alice/secret2\n"
        "topic foo/bar\n"
        "\n"
        "user bob smith\n"
        "topic read bob/#\n"
        "\n"
        "pattern write devices/%c/status\n"
        "pattern read users/%u/#\n"
    )
    assert rules.final is DENY
    assert rules.check(sub("public/x", ANON)) is ALLOW
    assert rules.check(pub("public/x", ANON)) is DENY
    assert rules.check(sub("public/x")) is DENY  # alice is not anonymous
    assert rules.check(pub("alice/x")) is ALLOW
    assert rules.check(pub("alice/secret")) is DENY  # Mosquitto asks the deny lines first
    assert rules.check(pub("foo/bar")) is ALLOW  # no access word: readwrite
    bob = ClientIdentity(client_id="b", username="bob smith", peer_host=None)
    assert rules.check(sub("bob/#", bob)) is ALLOW
    assert rules.check(pub("devices/dev-1/status")) is ALLOW
    assert rules.check(pub("devices/dev-2/status")) is DENY
    assert rules.check(sub("users/alice/+")) is ALLOW
    assert rules.check(sub("users/bob smith/+", bob)) is ALLOW


def test_mosquitto_order() -> None:
    # As Mosquitto 2.0.11 answers: the user's lines, deny first, then the patterns.
    rules = parse_acl(
        "user alice\n"
        "topic readwrite devices/#\n"
        "topic deny other/%u\n"
        "pattern deny devices/%u/x\n"
        "pattern readwrite other/#\n"
        "pattern deny other/%c\n"
    )
    assert rules.check(pub("devices/alice/x")) is ALLOW  # the user's own line wins
    assert rules.check(pub("other/alice")) is ALLOW  # %u is literal in topic lines
    assert rules.check(pub("other/%u")) is DENY
    assert rules.check(pub("other/dev-1")) is DENY  # pattern deny before pattern allow
    assert rules.check(pub("other/y")) is ALLOW


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("allow all publish\n", r"acl:1: expected"),
        ("\n\npermit all all #\n", r"acl:3: unknown permission 'permit'"),
        ("allow everyone all #\n", r"acl:1: unknown WHO 'everyone'"),
        ("allow user\n", r"acl:1: expected"),
        ("allow all read #\n", r"acl:1: unknown action 'read'"),
        ("allow all all a/#/b\n", r"acl:1: bad topic filter 'a/#/b'"),
        ("allow all all a qos=3\n", r"acl:1: bad 'qos=3'"),
        ("allow all all a retain=maybe\n", r"acl:1: bad 'retain=maybe'"),
        ("allow all subscribe a retain=true\n", r"acl:1: retain= only applies to publish"),
        ("allow ip 10.0.0.300 all a\n", r"acl:1: .*10.0.0.300"),
        ('allow user "open all #\n', r"acl:1: No closing quotation"),
        ("allow all all eq\n", r"acl:1: eq needs a topic"),
        ("allow all all #\ntopic read x\n", r"acl:2: 'topic': this file uses the TideMQ format"),
        ("user a\nallow all all #\n", r"acl:2: 'allow': this file uses the Mosquitto format"),
        ("topic\n", r"acl:1: topic needs a topic"),
    ],
)
def test_parse_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(AclError, match=match):
        parse_acl(text, "acl")


def test_rules_from_code() -> None:
    rule = AclRule.make("deny", "sub", ["eq #", "secret/#"], who=Who("user", "alice"), qos=[2])
    assert rule.topics == (AclTopic("#", eq=True), AclTopic("secret/#"))
    assert check_rules([rule], sub("#", qos=2)) is DENY
    assert check_rules([rule], sub("#", qos=1)) is IGNORE
    with pytest.raises(AclError):
        AclRule.make("maybe", "all", "#")
    with pytest.raises(AclError):
        AclRule.make("allow", "all", [])


async def test_file_source_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_files, "CHECK_INTERVAL", 0.0)
    path = tmp_path / "acl"
    path.write_text("allow all all a\n")
    source = AclFileAuthorizer(str(path))
    assert source.check(pub("a")) is IGNORE  # not open yet
    await source.open()
    reloaded: list[bool] = []
    source.listeners.append(lambda: reloaded.append(True))
    assert source.check(pub("a")) is ALLOW
    path.write_text("deny all all a\n")
    assert source.check(pub("a")) is DENY
    assert reloaded == [True]
    path.write_text("garbage\n")
    assert source.check(pub("a")) is DENY  # the last good rules stay
    assert source.reload() is False
