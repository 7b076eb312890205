"""RetainedTree: examples, then properties against the reference matcher."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tidemq.broker.retain import RetainedTree
from tidemq.protocol import topic_matches

Tree = RetainedTree[str]


@pytest.fixture
def tree() -> Tree:
    return RetainedTree()


def populate(tree: Tree, topics: list[str]) -> None:
    for topic in topics:
        tree.set(topic, f"m:{topic}")


def matched(tree: Tree, topic_filter: str) -> list[str]:
    found = tree.match(topic_filter)
    for topic, message in found:
        assert message == f"m:{topic}"
    return sorted(topic for topic, _ in found)


def node_count(tree: Tree) -> int:
    stack = [tree._root]
    count = 0
    while stack:
        node = stack.pop()
        count += 1
        if node.children:
            stack.extend(node.children.values())
    return count


TOPICS = ["a", "a/b", "a/b/c", "a/c", "a//c", "b", "/", "/a", "a/", "$SYS/x", "$SYS", "a/$x"]


def test_set_get_delete(tree: Tree) -> None:
    assert tree.get("a/b") is None
    tree.set("a/b", "one")
    assert tree.get("a/b") == "one"
    assert tree.get("a") is None
    assert tree.get("a/b/c") is None
    tree.set("a/b", "two")
    assert tree.get("a/b") == "two"
    assert len(tree) == 1
    assert tree.delete("a/b") is True
    assert tree.delete("a/b") is False
    assert tree.delete("never") is False
    assert tree.get("a/b") is None
    assert len(tree) == 0


@pytest.mark.parametrize(
    ("topic_filter", "want"),
    [
        ("a/b", ["a/b"]),
        ("a/b/", []),
        ("a/+", ["a/", "a/$x", "a/b", "a/c"]),
        ("a/+/c", ["a//c", "a/b/c"]),
        ("+", ["a", "b"]),
        ("+/+", ["/", "/a", "a/", "a/$x", "a/b", "a/c"]),
        ("/", ["/"]),
        ("+/", ["/", "a/"]),
        ("a/#", ["a", "a/", "a/$x", "a//c", "a/b", "a/b/c", "a/c"]),
        ("a/b/#", ["a/b", "a/b/c"]),
        ("a/b/c/#", ["a/b/c"]),
        ("#", sorted(t for t in TOPICS if not t.startswith("$"))),
        ("+/#", sorted(t for t in TOPICS if not t.startswith("$"))),
        ("+/c", ["a/c"]),
        ("+/+/c", ["a//c", "a/b/c"]),
        ("$SYS/#", ["$SYS", "$SYS/x"]),
        ("$SYS/+", ["$SYS/x"]),
        ("$SYS", ["$SYS"]),
        ("x/#", []),
    ],
)
def test_match_examples(tree: Tree, topic_filter: str, want: list[str]) -> None:
    populate(tree, TOPICS)
    assert matched(tree, topic_filter) == want


def test_dollar_topics_skip_leading_wildcards(tree: Tree) -> None:
    # [MQTT-4.7.2-1]
    populate(tree, ["$SYS/broker/uptime", "$x", "$", "ok"])
    assert matched(tree, "#") == ["ok"]
    assert matched(tree, "+") == ["ok"]
    assert matched(tree, "+/broker/uptime") == []
    assert matched(tree, "$SYS/broker/+") == ["$SYS/broker/uptime"]
    assert matched(tree, "$x") == ["$x"]


@pytest.mark.parametrize("bad", ["", "a#", "a/#/b", "a+", "$share/g/a", "$queue/a", "$share/g"])
def test_invalid_or_shared_filter_raises(tree: Tree, bad: str) -> None:
    populate(tree, TOPICS)
    with pytest.raises(ValueError, match=r"."):
        tree.match(bad)


def test_iteration(tree: Tree) -> None:
    populate(tree, TOPICS)
    assert sorted(tree) == sorted((t, f"m:{t}") for t in TOPICS)
    assert len(tree) == len(TOPICS)


def test_pruning(tree: Tree) -> None:
    populate(tree, ["a/b/c/d", "a/b", "x/y/z"])
    assert tree.delete("a/b/c/d")
    assert node_count(tree) == 1 + 2 + 3  # root, a, a/b, x, x/y, x/y/z
    assert tree.get("a/b") == "m:a/b"
    assert tree.delete("x/y") is False  # an inner node without a message
    assert tree.delete("a/b")
    assert tree.delete("x/y/z")
    assert node_count(tree) == 1
    assert tree._root.children is None
    assert matched(tree, "#") == []


def test_churn_does_not_grow(tree: Tree) -> None:
    for round_ in range(3):
        topics = [f"dev/{i}/state/{round_}" for i in range(100)]
        populate(tree, topics)
        assert len(tree) == 100
        for topic in topics:
            assert tree.delete(topic)
        assert node_count(tree) == 1


def test_remove_if(tree: Tree) -> None:
    populate(tree, TOPICS)
    removed = tree.remove_if(lambda message: message.startswith("m:a"))
    assert removed == sum(t.startswith("a") for t in TOPICS)
    assert sorted(topic for topic, _ in tree) == sorted(t for t in TOPICS if not t.startswith("a"))
    assert matched(tree, "a/#") == []
    assert tree.remove_if(lambda message: False) == 0
    remaining = len(tree)
    assert remaining > 0
    assert tree.remove_if(lambda message: True) == remaining
    assert len(tree) == 0
    assert node_count(tree) == 1


def test_clear(tree: Tree) -> None:
    populate(tree, TOPICS)
    tree.clear()
    assert len(tree) == 0
    assert list(tree) == []
    assert matched(tree, "#") == []


def test_deep_topic(tree: Tree) -> None:
    deep = "/".join(["x"] * 5000)
    tree.set(deep, "m:" + deep)
    assert matched(tree, "/".join(["+"] * 5000)) == [deep]
    assert matched(tree, "x/#") == [deep]
    assert tree.delete(deep)
    assert node_count(tree) == 1


def test_match_does_not_scan_unrelated_branches(tree: Tree) -> None:
    populate(tree, [f"noise/{i}" for i in range(1000)] + ["a/b"])
    root_children = tree._root.children
    assert root_children is not None
    root_children["noise"].children = _Exploding()  # any visit below "noise" fails loudly
    assert matched(tree, "a/+") == ["a/b"]
    assert matched(tree, "a/#") == ["a/b"]
    assert matched(tree, "a/b") == ["a/b"]
    with pytest.raises(AssertionError, match="visited"):
        tree.match("+/+")  # this one must look below "noise"


class _Exploding(dict[str, Any]):
    def __bool__(self) -> bool:
        raise AssertionError("unrelated branch visited")


# ---------------------------------------------------------------------------------------------
# Properties: RetainedTree.match agrees with tidemq.protocol.topic_matches.

TOPIC_LEVELS = st.sampled_from(["a", "b", "", "$SYS", "$"])
topics = st.lists(TOPIC_LEVELS, min_size=1, max_size=4).map("/".join)


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.sampled_from(["a", "b", "", "$SYS", "+"]), max_size=4))
    if draw(st.booleans()) or levels in ([], [""]):  # "" is no filter [MQTT-4.7.3-1]
        levels.append("#")
    return "/".join(levels)


@settings(max_examples=300, deadline=None)
@given(retained=st.lists(topics, max_size=30), probes=st.lists(filters(), min_size=1, max_size=8))
def test_match_agrees_with_reference(retained: list[str], probes: list[str]) -> None:
    tree: Tree = RetainedTree()
    populate(tree, retained)
    assert len(tree) == len(set(retained))
    for topic_filter in probes:
        want = sorted({t for t in retained if topic_matches(topic_filter, t)})
        assert matched(tree, topic_filter) == want, topic_filter


class RetainMachine(RuleBasedStateMachine):
    """Random set / delete / match / remove_if sequences against a dict model."""

    def __init__(self) -> None:
        super().__init__()
        self.tree: Tree = RetainedTree()
        self.model: dict[str, str] = {}
        self.serial = 0

    @rule(topic=topics)
    def set(self, topic: str) -> None:
        self.serial += 1
        self.tree.set(topic, f"{self.serial}")
        self.model[topic] = f"{self.serial}"

    @rule(topic=topics)
    def delete(self, topic: str) -> None:
        assert self.tree.delete(topic) is (topic in self.model)
        self.model.pop(topic, None)

    @rule(topic=topics)
    def get(self, topic: str) -> None:
        assert self.tree.get(topic) == self.model.get(topic)

    @rule(topic_filter=filters())
    def match(self, topic_filter: str) -> None:
        want = sorted((t, m) for t, m in self.model.items() if topic_matches(topic_filter, t))
        assert sorted(self.tree.match(topic_filter)) == want

    @rule(parity=st.integers(0, 1))
    def remove_if(self, parity: int) -> None:
        doomed = [t for t, m in self.model.items() if int(m) % 2 == parity]
        assert self.tree.remove_if(lambda m: int(m) % 2 == parity) == len(doomed)
        for t in doomed:
            del self.model[t]

    @invariant()
    def consistent(self) -> None:
        assert len(self.tree) == len(self.model)
        assert dict(self.tree) == self.model
        if not self.model:
            assert node_count(self.tree) == 1  # everything pruned


TestRetainMachine = RetainMachine.TestCase
TestRetainMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
