"""TopicTree: examples, then properties against the reference matcher.

As nats-server's sublist tests do, every test runs twice: with the match cache and without it
(``cache_size=0``). The stateful test also runs with a two-entry cache, to exercise eviction.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tidemq.broker.topic_tree import DEFAULT_CACHE_SIZE, MatchResult, TopicTree
from tidemq.protocol import parse_shared, topic_matches

Tree = TopicTree[str, str]


@pytest.fixture(params=[DEFAULT_CACHE_SIZE, 0], ids=["cache", "nocache"])
def tree(request: pytest.FixtureRequest) -> Tree:
    return TopicTree(cache_size=request.param)


def plain(result: MatchResult[str, str]) -> list[tuple[str, str]]:
    return sorted(result.plain)


def groups(result: MatchResult[str, str]) -> dict[tuple[str, str], list[tuple[str, str]]]:
    return {(g.name, g.filter): sorted(g.members) for g in result.shared}


def matched_filters(tree: Tree, topic: str) -> list[str]:
    """The values (here: the filters) of the plain subscriptions matching *topic*."""
    return sorted(value for _, value in tree.match(topic).plain)


def subscribe_all(tree: Tree, filters: list[str], key: str = "k") -> None:
    for f in filters:
        assert tree.subscribe(f, key, f)


# ---------------------------------------------------------------------------------------------
# Examples


def test_exact(tree: Tree) -> None:
    assert tree.subscribe("a/b", "k1", "v1") is True
    assert plain(tree.match("a/b")) == [("k1", "v1")]
    for topic in ("a", "a/b/c", "a/b/", "/a/b", "a/bb", "A/b"):
        assert not tree.match(topic), topic


def test_plus(tree: Tree) -> None:
    subscribe_all(tree, ["a/+/c", "+"])
    assert matched_filters(tree, "a/b/c") == ["a/+/c"]
    assert matched_filters(tree, "a//c") == ["a/+/c"]
    assert matched_filters(tree, "a") == ["+"]
    assert matched_filters(tree, "") == ["+"]
    for topic in ("a/c", "a/b/c/d", "a/b", "b/b/c", "/a"):
        assert matched_filters(tree, topic) == [], topic


def test_hash_matches_parent_level(tree: Tree) -> None:
    subscribe_all(tree, ["a/#", "a/b/#"])
    assert matched_filters(tree, "a") == ["a/#"]
    assert matched_filters(tree, "a/b") == ["a/#", "a/b/#"]
    assert matched_filters(tree, "a/b/c/d") == ["a/#", "a/b/#"]
    assert matched_filters(tree, "a/") == ["a/#"]
    assert matched_filters(tree, "ab") == []
    assert matched_filters(tree, "b/a") == []


def test_root_hash_and_plus_plus(tree: Tree) -> None:
    subscribe_all(tree, ["#", "+/+", "+/#"])
    assert matched_filters(tree, "/") == ["#", "+/#", "+/+"]
    assert matched_filters(tree, "a") == ["#", "+/#"]
    assert matched_filters(tree, "a/b") == ["#", "+/#", "+/+"]
    assert matched_filters(tree, "a/b/c") == ["#", "+/#"]


def test_dollar_topics_skip_leading_wildcards(tree: Tree) -> None:
    # [MQTT-4.7.2-1]
    subscribe_all(tree, ["#", "+/x", "+/#", "+", "$SYS/#", "$SYS/+", "a/+"])
    assert matched_filters(tree, "$SYS/x") == ["$SYS/#", "$SYS/+"]
    assert matched_filters(tree, "$SYS") == ["$SYS/#"]
    assert matched_filters(tree, "$") == []
    # Only the first level counts: "a/$x" is an ordinary topic.
    assert matched_filters(tree, "a/$x") == ["#", "+/#", "a/+"]
    assert matched_filters(tree, "x/x") == ["#", "+/#", "+/x"]


def test_overlapping_filters_of_one_key(tree: Tree) -> None:
    subscribe_all(tree, ["a/b", "a/+", "#", "+/b", "a/#"], key="s")
    result = tree.match("a/b")
    assert sorted(result.plain) == [("s", f) for f in sorted(["a/b", "a/+", "#", "+/b", "a/#"])]
    assert tree.count == 5


def test_resubscribe_replaces_value(tree: Tree) -> None:
    assert tree.subscribe("a/+", "k", "qos0") is True
    assert plain(tree.match("a/b")) == [("k", "qos0")]
    assert tree.subscribe("a/+", "k", "qos1") is False
    assert plain(tree.match("a/b")) == [("k", "qos1")]
    assert tree.count == 1
    assert tree.inserts == 1


def test_several_keys(tree: Tree) -> None:
    for key in ("k1", "k2", "k3"):
        tree.subscribe("a/+", key, key.upper())
    assert plain(tree.match("a/x")) == [("k1", "K1"), ("k2", "K2"), ("k3", "K3")]


@pytest.mark.parametrize(
    "bad", ["", "a/#/b", "a#", "a+", "+a/b", "$share/g", "$share//a", "$share/g+/a", "$queue/"]
)
def test_invalid_filters_raise(tree: Tree, bad: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        tree.subscribe(bad, "k", "v")
    assert tree.count == 0
    assert tree.stats()["nodes"] == 1
    assert tree.unsubscribe(bad, "k") is False


def test_negative_cache_size() -> None:
    with pytest.raises(ValueError, match="cache_size"):
        TopicTree(cache_size=-1)


def test_shared_groups(tree: Tree) -> None:
    tree.subscribe("a/+", "p", "plain")
    tree.subscribe("$share/g/a/+", "s1", "g1")
    tree.subscribe("$share/g/a/+", "s2", "g2")
    tree.subscribe("$share/h/a/+", "s1", "h1")
    tree.subscribe("$queue/a/b", "q", "q")
    tree.subscribe("$share/g/a/c", "s3", "other")
    result = tree.match("a/b")
    assert plain(result) == [("p", "plain")]
    assert groups(result) == {
        ("g", "a/+"): [("s1", "g1"), ("s2", "g2")],
        ("h", "a/+"): [("s1", "h1")],
        ("$queue", "a/b"): [("q", "q")],
    }
    assert tree.count == 6
    assert tree.stats()["shared_groups"] == 4


def test_shared_group_same_name_different_filters_are_different_groups(tree: Tree) -> None:
    tree.subscribe("$share/g/a/+", "s1", "x")
    tree.subscribe("$share/g/a/#", "s2", "y")
    result = tree.match("a/b")
    assert groups(result) == {("g", "a/+"): [("s1", "x")], ("g", "a/#"): [("s2", "y")]}


def test_shared_round_robin_and_removal(tree: Tree) -> None:
    for key in ("s1", "s2", "s3"):
        tree.subscribe("$share/g/t", key, key)
    (group,) = tree.match("t").shared
    picks = [group.next_member()[0] for _ in range(6)]
    assert sorted(picks[:3]) == ["s1", "s2", "s3"]
    assert picks[3:] == picks[:3]
    assert tree.unsubscribe("$share/g/t", "s2") is True
    assert tree.unsubscribe("$share/g/t", "s2") is False
    (group,) = tree.match("t").shared
    assert sorted(group.members) == [("s1", "s1"), ("s3", "s3")]
    assert sorted(group.next_member()[0] for _ in range(2)) == ["s1", "s3"]
    assert tree.remove_key("s1", ["$share/g/t"]) == 1
    assert tree.remove_key("s3", ["$share/g/t", "t", "$share/h/t"]) == 1
    assert not tree.match("t")
    assert tree.stats()["nodes"] == 1
    assert tree.stats()["shared_groups"] == 0
    with pytest.raises(IndexError):
        group.next_member()


def test_shared_and_plain_on_one_filter_are_independent(tree: Tree) -> None:
    tree.subscribe("a/b", "k", "plain")
    tree.subscribe("$share/g/a/b", "k", "shared")
    assert tree.unsubscribe("a/b", "k") is True
    result = tree.match("a/b")
    assert result.plain == []
    assert groups(result) == {("g", "a/b"): [("k", "shared")]}
    assert tree.unsubscribe("$share/g/a/b", "k") is True
    assert not tree.match("a/b")
    assert tree.stats()["nodes"] == 1


def test_shared_member_joins_cached_group(tree: Tree) -> None:
    tree.subscribe("$share/g/a/#", "s1", "1")
    first = tree.match("a/b")
    tree.subscribe("$share/g/a/#", "s2", "2")
    tree.subscribe("$share/g/a/#", "s1", "1b")
    assert groups(tree.match("a/b")) == {("g", "a/#"): [("s1", "1b"), ("s2", "2")]}
    # A result already handed out refers to the live group, too.
    assert groups(first) == {("g", "a/#"): [("s1", "1b"), ("s2", "2")]}


def test_unsubscribe(tree: Tree) -> None:
    tree.subscribe("a/+", "k1", "v")
    tree.subscribe("a/+", "k2", "v")
    assert tree.unsubscribe("a/+", "k1") is True
    assert tree.unsubscribe("a/+", "k1") is False
    assert tree.unsubscribe("a/b", "k2") is False
    assert tree.unsubscribe("a/+/c", "k2") is False
    assert tree.unsubscribe("a/#", "k2") is False
    assert plain(tree.match("a/x")) == [("k2", "v")]
    assert tree.count == 1
    assert tree.removes == 1


def test_pruning_after_churn(tree: Tree) -> None:
    filters = ["a/b/c", "a/b/+", "a/#", "+/+/+", "#", "/", "a/b/c/d/e/f", "$SYS/#"]
    filters += [f"$share/g/{f}" for f in filters]
    for round_ in range(3):
        for i, f in enumerate(filters):
            tree.subscribe(f, f"k{i % 3}", str(round_))
        for topic in ("a/b/c", "x/y/z", "$SYS/a"):
            tree.match(topic)
        assert tree.stats()["nodes"] > 1
        for i, f in enumerate(filters):
            assert tree.unsubscribe(f, f"k{i % 3}") is True, f
        assert tree.count == 0
        assert tree.stats()["nodes"] == 1
        assert tree.stats()["shared_groups"] == 0
        assert not tree.match("a/b/c")


def test_pruning_keeps_shared_prefix(tree: Tree) -> None:
    tree.subscribe("a/b/c", "k", "abc")
    tree.subscribe("a/b", "k", "ab")
    nodes = tree.stats()["nodes"]
    assert nodes == 4
    assert tree.unsubscribe("a/b/c", "k")
    assert tree.stats()["nodes"] == 3
    assert plain(tree.match("a/b")) == [("k", "ab")]


def test_remove_key(tree: Tree) -> None:
    filters = ["a", "a/+", "$share/g/a"]
    for f in filters:
        tree.subscribe(f, "gone", f)
        tree.subscribe(f, "stays", f)
    assert tree.remove_key("gone", [*filters, "never/subscribed", "a/#/bad"]) == 3
    result = tree.match("a")
    assert plain(result) == [("stays", "a")]
    assert groups(result) == {("g", "a"): [("stays", "$share/g/a")]}


def test_deep_plus_filter_has_no_recursion_limit(tree: Tree) -> None:
    depth = 5000
    tree.subscribe("/".join(["+"] * depth), "k", "deep")
    tree.subscribe("/".join(["+"] * (depth - 1) + ["#"]), "k", "deep#")
    topic = "/".join(["x"] * depth)
    assert matched_filters(tree, topic) == ["deep", "deep#"]


# ---------------------------------------------------------------------------------------------
# The cache


def test_cache_sees_new_subscription() -> None:
    tree: Tree = TopicTree()
    assert not tree.match("a/b")  # caches the miss
    tree.subscribe("a/+", "k", "wild")
    assert matched_filters(tree, "a/b") == ["wild"]
    tree.match("a/b")
    tree.subscribe("a/b", "k", "literal")
    assert matched_filters(tree, "a/b") == ["literal", "wild"]
    tree.subscribe("#", "k", "all")
    assert matched_filters(tree, "a/b") == ["all", "literal", "wild"]
    tree.subscribe("+/b", "k2", "other")
    assert sorted(tree.match("a/b").plain)[-1] == ("k2", "other")
    tree.subscribe("$share/g/a/b", "k", "shared")
    assert groups(tree.match("a/b")) == {("g", "a/b"): [("k", "shared")]}


def test_cache_sees_new_hash_subscription_on_parent_level() -> None:
    tree: Tree = TopicTree()
    assert not tree.match("a")
    assert not tree.match("a/b/c")
    tree.subscribe("a/#", "k", "a/#")  # matches "a" too, which does not start with "a/"
    assert matched_filters(tree, "a") == ["a/#"]
    assert matched_filters(tree, "a/b/c") == ["a/#"]
    tree.subscribe("a/b/#", "k", "a/b/#")
    assert matched_filters(tree, "a/b/c") == ["a/#", "a/b/#"]
    tree.unsubscribe("a/#", "k")
    assert matched_filters(tree, "a") == []
    assert matched_filters(tree, "a/b/c") == ["a/b/#"]


def test_cache_sees_unsubscribe() -> None:
    tree: Tree = TopicTree()
    subscribe_all(tree, ["a/b", "a/+", "#"])
    assert matched_filters(tree, "a/b") == ["#", "a/+", "a/b"]
    tree.unsubscribe("a/+", "k")
    assert matched_filters(tree, "a/b") == ["#", "a/b"]
    tree.unsubscribe("a/b", "k")
    assert matched_filters(tree, "a/b") == ["#"]
    tree.subscribe("$share/g/#", "k", "s")
    assert len(tree.match("a/b").shared) == 1
    tree.unsubscribe("$share/g/#", "k")
    assert tree.match("a/b").shared == []


def test_cache_invalidation_is_selective() -> None:
    tree: Tree = TopicTree()
    subscribe_all(tree, ["a/b", "c/d"])
    tree.match("a/b")
    tree.match("c/d")
    tree.match("$SYS/x")
    assert tree.stats()["cache_entries"] == 3
    tree.subscribe("c/+", "k", "c/+")  # touches only c/d
    tree.subscribe("#", "k", "#")  # never matches $SYS/x
    tree.subscribe("x/y", "k", "x/y")  # literal: matches no cached topic
    hits = tree.cache_hits
    assert matched_filters(tree, "$SYS/x") == []
    assert tree.cache_hits == hits + 1
    assert matched_filters(tree, "c/d") == ["#", "c/+", "c/d"]
    assert matched_filters(tree, "a/b") == ["#", "a/b"]
    assert tree.cache_hits == hits + 1
    assert tree.match("a/b") is tree.match("a/b")
    assert tree.cache_hits == hits + 3


def test_cache_is_bounded() -> None:
    tree: Tree = TopicTree(cache_size=4)
    tree.subscribe("t/+", "k", "v")
    for i in range(20):
        assert plain(tree.match(f"t/{i}")) == [("k", "v")]
        assert tree.stats()["cache_entries"] <= 4
    assert tree.stats()["cache_entries"] == 4
    # The most recent topics are still cached, the oldest were evicted.
    hits = tree.cache_hits
    tree.match("t/19")
    assert tree.cache_hits == hits + 1
    tree.match("t/0")
    assert tree.cache_hits == hits + 1


def test_no_cache() -> None:
    tree: Tree = TopicTree(cache_size=0)
    tree.subscribe("a/+", "k", "v")
    first = tree.match("a/b")
    assert tree.match("a/b") is not first
    assert tree.cache_hits == 0
    assert tree.stats()["cache_entries"] == 0


def test_stats(tree: Tree) -> None:
    tree.subscribe("a/b", "k", "v")
    tree.subscribe("$share/g/a/+", "k", "v")
    tree.unsubscribe("a/b", "k")
    tree.match("a/b")
    tree.match("a/b")
    stats = tree.stats()
    assert stats["subscriptions"] == 1 == len(tree)
    assert stats["shared_groups"] == 1
    assert stats["nodes"] == 3  # root, a, a/+
    assert stats["matches"] == 2
    assert stats["inserts"] == 2
    assert stats["removes"] == 1
    if stats["cache_size"]:
        assert stats["cache_hits"] == 1
        assert stats["hit_rate"] == 0.5
        assert stats["cache_entries"] == 1
    else:
        assert stats["cache_hits"] == 0
        assert stats["hit_rate"] == 0.0


# ---------------------------------------------------------------------------------------------
# Properties: the trie agrees with tidemq.protocol.topic_matches.

# A small alphabet, so that random topics and filters often meet.
TOPIC_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$"])
topics = st.lists(TOPIC_LEVELS, min_size=1, max_size=4).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "", "$SYS", "+"]), max_size=4))
    if draw(st.booleans()) or levels in ([], [""]):  # "" is no filter [MQTT-4.7.3-1]
        levels.append("#")
    topic_filter = "/".join(levels)
    group = draw(st.sampled_from([None, None, "g", "h", "$queue"]))
    if group == "$queue":
        return f"$queue/{topic_filter}"
    return f"$share/{group}/{topic_filter}" if group else topic_filter


KEYS = st.sampled_from(["k0", "k1", "k2"])


def expected(
    subs: dict[tuple[str, str], str], topic: str
) -> tuple[Counter[tuple[str, str]], dict[tuple[str, str], list[tuple[str, str]]]]:
    """Brute force over every subscription: (plain multiset, shared groups)."""
    want_plain: Counter[tuple[str, str]] = Counter()
    want_shared: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (full, key), value in subs.items():
        shared = parse_shared(full)
        inner = shared.filter if shared else full
        if not topic_matches(inner, topic):
            continue
        if shared is None:
            want_plain[key, value] += 1
        else:
            want_shared.setdefault((shared.group, inner), []).append((key, value))
    return want_plain, {k: sorted(v) for k, v in want_shared.items()}


def check(tree: Tree, subs: dict[tuple[str, str], str], topic: str) -> None:
    want_plain, want_shared = expected(subs, topic)
    result = tree.match(topic)
    assert Counter(result.plain) == want_plain, topic
    assert len(result.shared) == len(want_shared), topic
    assert groups(result) == want_shared, topic


@pytest.mark.parametrize("cache_size", [DEFAULT_CACHE_SIZE, 0], ids=["cache", "nocache"])
@settings(max_examples=150, deadline=None)
@given(
    subscriptions=st.lists(st.tuples(filters(), KEYS), max_size=25),
    probes=st.lists(topics, min_size=1, max_size=10),
)
def test_match_agrees_with_reference(
    cache_size: int, subscriptions: list[tuple[str, str]], probes: list[str]
) -> None:
    tree: Tree = TopicTree(cache_size=cache_size)
    subs: dict[tuple[str, str], str] = {}
    for n, (topic_filter, key) in enumerate(subscriptions):
        new = tree.subscribe(topic_filter, key, str(n))
        assert new == ((topic_filter, key) not in subs)
        subs[topic_filter, key] = str(n)
    assert tree.count == len(subs)
    for topic in probes + probes:  # the second round is served from the cache, if any
        check(tree, subs, topic)


class TreeMachine(RuleBasedStateMachine):
    """Random subscribe / unsubscribe / match sequences against a dict model."""

    cache_size = DEFAULT_CACHE_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.tree: Tree = TopicTree(cache_size=self.cache_size)
        self.subs: dict[tuple[str, str], str] = {}
        self.serial = 0

    @rule(topic_filter=filters(), key=KEYS)
    def subscribe(self, topic_filter: str, key: str) -> None:
        self.serial += 1
        value = str(self.serial)
        new = self.tree.subscribe(topic_filter, key, value)
        assert new == ((topic_filter, key) not in self.subs)
        self.subs[topic_filter, key] = value

    @rule(data=st.data())
    def unsubscribe_existing(self, data: st.DataObject) -> None:
        if not self.subs:
            return
        topic_filter, key = data.draw(st.sampled_from(sorted(self.subs)))
        assert self.tree.unsubscribe(topic_filter, key) is True
        del self.subs[topic_filter, key]

    @rule(topic_filter=filters(), key=KEYS)
    def unsubscribe_any(self, topic_filter: str, key: str) -> None:
        existed = (topic_filter, key) in self.subs
        assert self.tree.unsubscribe(topic_filter, key) is existed
        self.subs.pop((topic_filter, key), None)

    @rule(topic=topics)
    def match(self, topic: str) -> None:
        check(self.tree, self.subs, topic)

    @invariant()
    def counts(self) -> None:
        assert self.tree.count == len(self.subs)
        if not self.subs:
            assert self.tree.stats()["nodes"] == 1  # everything pruned
        stats = self.tree.stats()
        assert stats["cache_entries"] <= max(self.cache_size, 0)


class TreeMachineNoCache(TreeMachine):
    cache_size = 0


class TreeMachineTinyCache(TreeMachine):
    cache_size = 2  # evicts all the time


MACHINE_SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestTreeWithCache = TreeMachine.TestCase
TestTreeWithCache.settings = MACHINE_SETTINGS
TestTreeNoCache = TreeMachineNoCache.TestCase
TestTreeNoCache.settings = MACHINE_SETTINGS
TestTreeTinyCache = TreeMachineTinyCache.TestCase
TestTreeTinyCache.settings = MACHINE_SETTINGS
