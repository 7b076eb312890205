"""ACL rules: the rule engine, the ACL file (TideMQ's format and Mosquitto's), its source.

A rule is *permission who action topics [conditions]*; rules are tried in order and the
first that matches a request decides it. TideMQ's line format (docs/security.md)::

    # PERMISSION  WHO            ACTION     TOPICS...                 [CONDITIONS]
    allow         user alice     publish    sensors/alice/#
    allow         all            all        devices/${clientid}/#
    allow         ip 10.0.0.0/8  subscribe  sensors/#                 qos=0,1
    deny          all            publish    config/#                  retain=true
    deny          all            subscribe  $SYS/#  eq #
    allow         all            all        #

WHO is ``all``, ``anonymous`` (clients without a username), ``user NAME``, ``client ID``
or ``ip ADDRESS[/PREFIX]``; ACTION is ``publish``, ``subscribe`` or ``all``. Topics may use
``${username}``, ``${clientid}`` and ``${cert_common_name}``; ``eq TOPIC`` matches that
filter literally. Values with spaces go in double quotes.

Matching, as EMQX does it, made safe for wildcards:

* PUBLISH: the topic name matches a rule's filter as a subscription would.
* SUBSCRIBE: the rule's filter must *cover* the requested filter (every topic the
  request can match, the rule matches too): ``sensors/#`` covers ``sensors/+/temp`` and
  ``sensors`` but not ``#``, so ``allow all subscribe sensors/#`` does not allow ``#``
  and ``deny all subscribe secret/#`` does not refuse ``#`` either. Deny the wide
  filters themselves (``deny all subscribe eq # eq +/#``) where that matters, or turn on
  ``acl.check_on_delivery``. ``eq`` topics compare literally.
* READ (``acl.check_on_delivery``, each delivered message): the subscribe rules, matched
  against the message's topic name as for PUBLISH (an ``eq`` topic: the same name).
* A placeholder with no value (``${username}`` for a client without one) never matches;
  a value holding ``+``, ``#`` or ``/`` makes an ``allow`` rule fail and a ``deny`` rule
  match, so nobody widens a rule by choosing a name like ``#``.

A Mosquitto ``acl_file`` is read too (``user``, ``topic [read|write|readwrite|deny]``,
``pattern`` with ``%u`` and ``%c``), with Mosquitto's meaning: ``topic`` lines before the
first ``user`` line are for anonymous clients, ``pattern`` lines for everyone, ``read``
is subscribe and ``write`` publish, a client's ``topic`` lines are asked before the
patterns, ``deny`` lines before the others (wherever they are), and what such a file does
not allow it denies (checked against Mosquitto 2.0). As in Mosquitto, each delivered
message's topic is checked for ``read`` too (``acl.check_on_delivery`` auto).
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tidemq.protocol import topic_filter_error

from ._files import WatchedFile
from .api import AclRequest, Action, Authorizer, ClientIdentity, Verdict

__all__ = [
    "AclError",
    "AclFileAuthorizer",
    "AclRule",
    "AclRuleSet",
    "AclTopic",
    "Who",
    "check_rules",
    "filter_covers",
    "parse_acl",
    "rules_from_json",
]

log = logging.getLogger("tidemq.auth")

RuleAction = Literal["publish", "subscribe", "all"]
WhoKind = Literal["all", "anonymous", "user", "client", "ip"]
_PLACEHOLDERS = ("${username}", "${clientid}", "${cert_common_name}")
_UNSAFE = frozenset("+#/")
_IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AclError(ValueError):
    """An ACL file or rule that cannot be used; the message names the file and line."""


# --- topic matching -----------------------------------------------------------------------


def _wild_first(words: Sequence[str]) -> bool:
    return words[0] in ("+", "#")


def topic_matches_filter(rule: Sequence[str], topic: Sequence[str]) -> bool:
    """Whether the topic name (split on ``/``) matches the filter *rule*."""
    if topic[0].startswith("$") and _wild_first(rule):
        return False  # [MQTT-4.7.2-1]
    for i, word in enumerate(rule):
        if word == "#":
            return True
        if i >= len(topic) or (word != "+" and word != topic[i]):
            return False
    return len(rule) == len(topic)


def filter_covers(rule: Sequence[str], requested: Sequence[str]) -> bool:
    """Whether every topic the filter *requested* matches is matched by *rule* too."""
    if requested[0].startswith("$") and _wild_first(rule):
        return False
    for i, word in enumerate(requested):
        if i >= len(rule):
            return False
        r = rule[i]
        if r == "#":
            return True
        if word == "#":
            return False
        if r != "+" and (word == "+" or word != r):
            return False
    return len(rule) == len(requested) or (len(rule) == len(requested) + 1 and rule[-1] == "#")


# --- rules --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AclTopic:
    """One topic filter of a rule; ``eq`` compares it literally, wildcards included."""

    filter: str
    eq: bool = False
    words: tuple[str, ...] = field(init=False, repr=False, compare=False)
    templated: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.filter.split("/")))
        object.__setattr__(self, "templated", any(p in self.filter for p in _PLACEHOLDERS))

    @classmethod
    def parse(cls, text: str) -> AclTopic:
        """``"sensors/#"``, or ``"eq sensors/#"`` for a literal filter (EMQX's form)."""
        if text.startswith("eq "):
            return cls(text[3:].strip(), eq=True)
        return cls(text)


@dataclass(frozen=True, slots=True)
class Who:
    """Whom a rule is for."""

    kind: WhoKind = "all"
    value: str = ""
    network: _IPNetwork | None = field(default=None, compare=False)

    @classmethod
    def ip(cls, text: str) -> Who:
        return cls("ip", text, ipaddress.ip_network(text, strict=False))

    def matches(self, client: ClientIdentity) -> bool:
        kind = self.kind
        if kind == "all":
            return True
        if kind == "user":
            return client.username == self.value
        if kind == "client":
            return client.client_id == self.value
        if kind == "anonymous":
            return client.username is None
        if self.network is None or not client.peer_host:
            return False
        try:
            address = ipaddress.ip_address(client.peer_host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in self.network

    def __str__(self) -> str:
        return self.kind if self.kind in ("all", "anonymous") else f"{self.kind} {self.value}"


ALL = Who()


@dataclass(frozen=True, slots=True)
class AclRule:
    """One rule. ``qos`` limits it to those QoS levels; ``retain`` (publish only) to
    messages with that retain flag, and such a rule never matches a SUBSCRIBE."""

    permission: Verdict  # ALLOW or DENY
    action: RuleAction
    topics: tuple[AclTopic, ...]
    who: Who = ALL
    qos: frozenset[int] | None = None
    retain: bool | None = None
    origin: str = field(default="", compare=False)  # "file:line", for logs

    def __post_init__(self) -> None:
        if self.permission is Verdict.IGNORE:
            raise AclError("a rule allows or denies")
        if self.action not in ("publish", "subscribe", "all"):
            raise AclError(f"unknown action {self.action!r}; use publish, subscribe or all")
        if not self.topics:
            raise AclError("a rule needs at least one topic")
        for topic in self.topics:
            error = topic_filter_error(topic.filter)
            if error is not None:
                raise AclError(f"bad topic filter {topic.filter!r}: {error}")

    @classmethod
    def make(
        cls,
        permission: str,
        action: str,
        topics: str | Iterable[str],
        *,
        who: Who = ALL,
        qos: Iterable[int] | None = None,
        retain: bool | None = None,
        origin: str = "",
    ) -> AclRule:
        """A rule from plain values: ``AclRule.make("allow", "publish", ["a/#", "eq b/#"])``."""
        try:
            verdict = {"allow": Verdict.ALLOW, "deny": Verdict.DENY}[permission.lower()]
        except KeyError:
            raise AclError(f"unknown permission {permission!r}; use allow or deny") from None
        act = _ACTIONS.get(action.lower())
        if act is None:
            raise AclError(f"unknown action {action!r}; use publish, subscribe or all")
        names = [topics] if isinstance(topics, str) else list(topics)
        return cls(
            verdict,
            act,
            tuple(AclTopic.parse(t) for t in names),
            who,
            None if qos is None else frozenset(qos),
            retain,
            origin,
        )

    def decides(self, request: AclRequest) -> bool:
        """Whether this rule matches *request* (and so decides it)."""
        action = request.action
        if (
            self.action != "all"
            and self.action != action.value
            and (action is not Action.READ or self.action != "subscribe")
        ):
            return False  # READ is answered by the subscribe rules
        if self.qos is not None and request.qos not in self.qos:
            return False
        if self.retain is not None and (
            action is not Action.PUBLISH or request.retain != self.retain
        ):
            return False
        if not self.who.matches(request.client):
            return False
        deny = self.permission is Verdict.DENY  # an unsafe placeholder value matches
        requested = request.topic.split("/")
        for topic in self.topics:
            words = topic.words
            if topic.templated:
                expanded = _expand(topic.filter, request.client)
                if expanded is None:
                    continue
                if expanded is _UNSAFE_VALUE:
                    if deny:
                        return True
                    continue
                if topic.eq:
                    if expanded == request.topic:
                        return True
                    continue
                words = tuple(expanded.split("/"))
            elif topic.eq:
                if topic.filter == request.topic:
                    return True
                continue
            if action is not Action.SUBSCRIBE:  # PUBLISH and READ: a topic name
                if topic_matches_filter(words, requested):
                    return True
            elif filter_covers(words, requested):
                return True
        return False


_ACTIONS: Mapping[str, RuleAction] = {
    "publish": "publish",
    "pub": "publish",
    "subscribe": "subscribe",
    "sub": "subscribe",
    "all": "all",
    "pubsub": "all",
}
_UNSAFE_VALUE = "\0unsafe"


def _expand(template: str, client: ClientIdentity) -> str | None:
    """*template* with its placeholders filled in; None when one has no value and
    ``_UNSAFE_VALUE`` when a value holds ``+``, ``#`` or ``/``."""
    values = {
        "${username}": client.username,
        "${clientid}": client.client_id,
        "${cert_common_name}": client.cert_common_name,
    }
    out = template
    for name, value in values.items():
        if name in out:
            if not value:
                return None
            if not _UNSAFE.isdisjoint(value):
                return _UNSAFE_VALUE
            out = out.replace(name, value)
    return out


def check_rules(rules: Iterable[AclRule], request: AclRequest) -> Verdict:
    """The permission of the first rule that decides *request*; IGNORE if none does."""
    for rule in rules:
        if rule.decides(request):
            return rule.permission
    return Verdict.IGNORE


def rules_from_json(claim: object, origin: str = "json") -> tuple[AclRule, ...]:
    """A client's own rules from JSON in either of EMQX's formats (a JWT ``acl`` claim,
    the ``acl`` of an HTTP authentication answer); see ``tidemq.auth.jwt``.

    Raises:
        AclError: a claim that is neither format, or a bad rule in it.
    """
    if isinstance(claim, Mapping):  # {"pub": [...], "sub": [...], "all": [...]}
        rules: list[AclRule] = []
        for key, action in (("pub", "publish"), ("sub", "subscribe"), ("all", "all")):
            topics = claim.get(key, [])
            if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
                raise AclError(f"acl: {key} must be a list of topics")
            if topics:
                rules.append(AclRule.make("allow", action, topics, origin=origin))
        unknown = set(claim) - {"pub", "sub", "all"}
        if unknown:
            raise AclError(f"acl: unknown keys {sorted(unknown)}")
        return (*rules, AclRule.make("deny", "all", "#", origin=origin))
    if not isinstance(claim, list):
        raise AclError("acl: expected a list of rules or {pub, sub, all}")
    out = []
    for item in claim:
        if not isinstance(item, Mapping):
            raise AclError("acl: each rule is an object")
        topics = item.get("topics", item.get("topic"))
        if isinstance(topics, str):
            topics = [topics]
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise AclError("acl: a rule needs topic (or topics)")
        qos = item.get("qos")
        if isinstance(qos, int):
            qos = [qos]
        if qos is not None and (not isinstance(qos, list) or any(q not in (0, 1, 2) for q in qos)):
            raise AclError("acl: qos is a level or a list of levels")
        retain = item.get("retain")
        if retain in ("all", None):
            retain = None
        elif not isinstance(retain, bool):
            raise AclError("acl: retain is true, false or all")
        out.append(
            AclRule.make(
                str(item.get("permission", "")),
                str(item.get("action", "all")),
                topics,
                qos=qos,
                retain=retain,
                origin=origin,
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AclRuleSet:
    """An ordered rule list; ``final`` answers when no rule matches (IGNORE for TideMQ
    files, DENY for Mosquitto ones)."""

    rules: tuple[AclRule, ...]
    final: Verdict = Verdict.IGNORE
    mosquitto: bool = False  # read from a Mosquitto acl_file

    def check(self, request: AclRequest) -> Verdict:
        verdict = check_rules(self.rules, request)
        return self.final if verdict is Verdict.IGNORE else verdict


# --- the file -----------------------------------------------------------------------------

_WHO_WORDS: Mapping[str, WhoKind] = {
    "user": "user",
    "username": "user",
    "client": "client",
    "clientid": "client",
    "ip": "ip",
    "ipaddr": "ip",
}
_MOSQUITTO_WORDS = ("user", "topic", "pattern")
_MOSQUITTO_ACCESS: Mapping[str, tuple[Verdict, RuleAction]] = {
    "read": (Verdict.ALLOW, "subscribe"),
    "write": (Verdict.ALLOW, "publish"),
    "readwrite": (Verdict.ALLOW, "all"),
    "deny": (Verdict.DENY, "all"),
}


def _tokens(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    lexer.escape = ""  # backslashes are ordinary characters in topics
    return list(lexer)


def parse_acl(text: str, path: str = "acl") -> AclRuleSet:
    """Parse an ACL file in TideMQ's format or Mosquitto's (chosen by the first rule line;
    one file is one or the other).

    Raises:
        AclError: with ``path:line:`` and what is wrong.
    """
    rules: list[AclRule] = []
    patterns: list[AclRule] = []
    mosquitto: bool | None = None
    user: str | None = None  # Mosquitto: the current "user" block (None: anonymous)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        keyword = line.split(None, 1)[0].lower()
        is_mosquitto = keyword in _MOSQUITTO_WORDS
        if mosquitto is None:
            mosquitto = is_mosquitto
        elif mosquitto != is_mosquitto:
            style = "Mosquitto" if mosquitto else "TideMQ"
            raise AclError(f"{where}: {keyword!r}: this file uses the {style} format throughout")
        try:
            if not is_mosquitto:
                rules.append(_parse_rule(_tokens(line), where))
            elif keyword == "user":
                rest = line.split(None, 1)
                if len(rest) != 2:
                    raise AclError("user needs a name")
                user = rest[1].strip()
            else:
                rule = _parse_mosquitto(keyword, line, user, where)
                (patterns if keyword == "pattern" else rules).append(rule)
        except AclError as exc:
            text = str(exc)
            raise AclError(text if text.startswith(where) else f"{where}: {text}") from None
        except ValueError as exc:  # shlex: no closing quotation; ip_network
            raise AclError(f"{where}: {exc}") from None
    if mosquitto:
        # Mosquitto 2 asks a client's own topic lines, then the patterns; in each, the
        # deny lines come first whatever their place in the file.
        ordered = [
            rule
            for group in (rules, patterns)
            for deny in (True, False)
            for rule in group
            if (rule.permission is Verdict.DENY) is deny
        ]
        return AclRuleSet(tuple(ordered), final=Verdict.DENY, mosquitto=True)
    return AclRuleSet(tuple(rules))


def _parse_rule(tokens: list[str], where: str) -> AclRule:
    usage = "expected: allow|deny WHO publish|subscribe|all TOPIC... [qos=N,...] [retain=BOOL]"
    if len(tokens) < 4:
        raise AclError(usage)
    permission, rest = tokens[0].lower(), tokens[1:]
    if permission not in ("allow", "deny"):
        raise AclError(f"unknown permission {tokens[0]!r}; a rule starts with allow or deny")
    kind = rest.pop(0).lower()
    if kind in ("all", "anonymous"):
        who = Who(kind)  # type: ignore[arg-type]
    elif kind in _WHO_WORDS:
        if not rest:
            raise AclError(f"{kind} needs a value")
        value = rest.pop(0)
        who = Who.ip(value) if _WHO_WORDS[kind] == "ip" else Who(_WHO_WORDS[kind], value)
    else:
        raise AclError(
            f"unknown WHO {kind!r}; use all, anonymous, user NAME, client ID or ip ADDRESS[/N]"
        )
    if not rest:
        raise AclError(usage)
    action = rest.pop(0)
    qos: list[int] | None = None
    retain: bool | None = None
    topics: list[str] = []
    while rest:
        token = rest.pop(0)
        lowered = token.lower()
        if lowered.startswith("qos="):
            try:
                qos = [int(q) for q in lowered[4:].split(",")]
            except ValueError:
                raise AclError(f"bad {token!r}: qos=0, qos=1,2 ...") from None
            if not qos or any(q not in (0, 1, 2) for q in qos):
                raise AclError(f"bad {token!r}: QoS levels are 0, 1 and 2")
        elif lowered.startswith("retain="):
            if lowered[7:] not in ("true", "false"):
                raise AclError(f"bad {token!r}: retain=true or retain=false")
            retain = lowered[7:] == "true"
        elif token == "eq":  # noqa: S105 (a keyword, not a password)
            if not rest:
                raise AclError("eq needs a topic")
            topics.append("eq " + rest.pop(0))
        else:
            topics.append(token)
    if not topics:
        raise AclError("no topic: " + usage)
    rule = AclRule.make(permission, action, topics, who=who, qos=qos, retain=retain, origin=where)
    if rule.retain is not None and rule.action == "subscribe":
        raise AclError("retain= only applies to publish")
    return rule


def _parse_mosquitto(keyword: str, line: str, user: str | None, where: str) -> AclRule:
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise AclError(f"{keyword} needs a topic")
    access = "readwrite"
    if len(parts) == 3 and parts[1].lower() in _MOSQUITTO_ACCESS:
        access, topic = parts[1].lower(), parts[2].strip()
    else:
        topic = line.split(None, 1)[1].strip()
    permission, action = _MOSQUITTO_ACCESS[access]
    if keyword == "pattern":
        topic = topic.replace("%u", "${username}").replace("%c", "${clientid}")
        who = ALL
    else:
        who = Who("anonymous") if user is None else Who("user", user)
    return AclRule(permission, action, (AclTopic(topic),), who, origin=where)


class AclFileAuthorizer(Authorizer):
    """The ACL file as an authorization source, read again when it changes or on SIGHUP."""

    name = "file"

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: WatchedFile[AclRuleSet] | None = None

    async def open(self) -> None:
        self._file = WatchedFile(self.path, parse_acl, "ACL file")
        rules = self._file.value
        log.info(
            "ACL file %s: %d rules%s",
            self.path,
            len(rules.rules),
            " (Mosquitto format)" if rules.mosquitto else "",
        )

    @property
    def listeners(self) -> list[object]:
        """Callbacks run after each reload (the plugin drops its decision caches)."""
        assert self._file is not None
        return self._file.listeners  # type: ignore[return-value]

    def reload(self) -> bool:
        return self._file.reload() if self._file is not None else False

    @property
    def mosquitto_format(self) -> bool:
        """Whether the file in force is a Mosquitto acl_file (``acl.check_on_delivery``
        auto turns the per-delivery check on for it)."""
        return self._file is not None and self._file.value.mosquitto

    def check(self, request: AclRequest) -> Verdict:
        if self._file is None:
            return Verdict.IGNORE
        return self._file.current().check(request)
