"""The retained-message tree: one message per topic name, found by topic filter.

Theory of operation
-------------------
The shape is mosquitto's ``retain.c`` (``mosquitto__retainhier``): the topic name is split on
``/`` and each level is one edge from the root, held in a dict of children per node. The node
at the end of a topic's path holds the pair ``(topic, message)``, so a lookup returns it as is,
without joining levels back together or building a tuple.

A new subscription calls :meth:`RetainedTree.match` with its filter, and the walk follows the
filter, never every retained message (mosquitto ``retain__search``):

* a literal level follows one child;
* ``+`` follows every child of one level;
* ``#`` yields the whole subtree, including the node it hangs from (``a/#`` returns ``a``).

At the root, a filter starting with ``+`` or ``#`` skips the children whose name starts with
``$``, so ``#`` never returns ``$SYS/...`` [MQTT-4.7.2-1]. The cost is the size of the
answer plus the nodes on the way to it, and an explicit stack replaces recursion.

Deleting a topic (a retained PUBLISH with an empty payload [MQTT-3.3.1-6]) prunes the nodes
it leaves empty, so churn does not leak. The tree knows nothing about message expiry: the
broker keeps the deadline inside M, filters expired messages out of :meth:`match`, and sweeps
them with :meth:`remove_if`. :meth:`__iter__` walks every entry, for persistence.

Topic filters for :meth:`match`:

* valid: ``a/b``, ``a/+``, ``+/+``, ``#``, ``a/#``, ``/``, ``$SYS/#``;
* invalid (``ValueError``): ``""``, ``a#``, ``a/#/b``, ``a+``, and every shared filter
  (``$share/g/a``): MQTT 5.0 §3.3.1.3 sends retained messages "when a new Non-shared
  Subscription is made", so the broker never asks for a shared one;
* valid but not matching: ``a/+`` returns neither ``a`` nor ``a/b/c``; ``#`` and ``+/x``
  return no ``$SYS/x``; ``+/+`` returns ``/`` but not ``a``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tidemq.protocol import parse_shared, topic_filter_error

__all__ = ["RetainedTree"]

M = TypeVar("M")


class _Node(Generic[M]):
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node[M]] | None = None  # created on first use
        self.entry: tuple[str, M] | None = None  # (topic, message) retained here


class RetainedTree(Generic[M]):
    """At most one retained message M per topic name."""

    __slots__ = ("_count", "_root")

    def __init__(self) -> None:
        self._root: _Node[M] = _Node()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[tuple[str, M]]:
        """Every ``(topic, message)``, in no particular order (for persistence)."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            if node.entry is not None:
                yield node.entry
            if node.children:
                stack.extend(node.children.values())

    def set(self, topic: str, message: M) -> None:
        """Retain *message* for the topic name *topic*, replacing any earlier one.

        *topic* must be a valid topic name; it is not checked here.
        """
        node = self._root
        for level in topic.split("/"):
            children = node.children
            if children is None:
                children = node.children = {}
            nxt = children.get(level)
            if nxt is None:
                nxt = children[level] = _Node()
            node = nxt
        if node.entry is None:
            self._count += 1
        node.entry = (topic, message)

    def get(self, topic: str) -> M | None:
        """The message retained for *topic*, or None."""
        node: _Node[M] | None = self._root
        for level in topic.split("/"):
            assert node is not None
            children = node.children
            node = children.get(level) if children else None
            if node is None:
                return None
        assert node is not None
        entry = node.entry
        return entry[1] if entry is not None else None

    def delete(self, topic: str) -> bool:
        """Forget the message retained for *topic*.

        Returns:
            True if there was one.
        """
        node = self._root
        path: list[tuple[_Node[M], str]] = []
        for level in topic.split("/"):
            children = node.children
            nxt = children.get(level) if children else None
            if nxt is None:
                return False
            path.append((node, level))
            node = nxt
        if node.entry is None:
            return False
        node.entry = None
        self._count -= 1
        # Prune the nodes left with neither a message nor children.
        for parent, level in reversed(path):
            if node.entry is not None or node.children:
                break
            children = parent.children
            assert children is not None
            del children[level]
            if not children:
                parent.children = None
            node = parent
        return True

    def match(self, topic_filter: str) -> list[tuple[str, M]]:
        """Every ``(topic, message)`` whose topic *topic_filter* matches, in no set order.

        Raises:
            ValueError: *topic_filter* is invalid, or shared (shared subscriptions get no
                retained messages, MQTT 5.0 §3.3.1.3).
        """
        error = topic_filter_error(topic_filter)
        if error is not None:
            raise ValueError(error)
        if parse_shared(topic_filter) is not None:
            raise ValueError("shared subscriptions receive no retained messages")
        out: list[tuple[str, M]] = []
        levels = topic_filter.split("/")
        n = len(levels)
        root = self._root
        stack: list[tuple[_Node[M], int]]
        if levels[0] in ("+", "#"):
            children = root.children
            if not children:
                return out
            # [MQTT-4.7.2-1] "The Server MUST NOT match Topic Filters starting with a wildcard
            # character (# or +) with Topic Names beginning with a $ character."
            tops = [child for name, child in children.items() if not name.startswith("$")]
            if levels[0] == "#":
                self._collect_subtrees(tops, out)
                return out
            stack = [(child, 1) for child in tops]
        else:
            stack = [(root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.entry is not None:
                    out.append(node.entry)
                continue
            level = levels[i]
            if level == "#":
                self._collect_subtrees([node], out)  # "a/#" includes "a" itself
                continue
            children = node.children
            if not children:
                continue
            if level == "+":
                i += 1
                stack.extend((child, i) for child in children.values())
            else:
                child = children.get(level)
                if child is not None:
                    stack.append((child, i + 1))
        return out

    def remove_if(self, predicate: Callable[[M], bool]) -> int:
        """Delete every entry whose message satisfies *predicate* (e.g. has expired).

        Returns:
            How many entries were deleted.
        """
        doomed = [topic for topic, message in self if predicate(message)]
        for topic in doomed:
            self.delete(topic)
        return len(doomed)

    def clear(self) -> None:
        """Forget every retained message."""
        self._root = _Node()
        self._count = 0

    @staticmethod
    def _collect_subtrees(nodes: list[_Node[M]], out: list[tuple[str, M]]) -> None:
        stack = nodes
        while stack:
            node = stack.pop()
            if node.entry is not None:
                out.append(node.entry)
            if node.children:
                stack.extend(node.children.values())
