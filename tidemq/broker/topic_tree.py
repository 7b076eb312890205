"""The subscription trie: which subscriptions does a PUBLISH to a topic reach?

Theory of operation
-------------------
The trie has the shape of nats-server's ``sublist.go``. A topic filter is split on ``/`` and
each level is one edge from the root. A node keeps its literal children in a dict, and the two
wildcards get dedicated slots of their own, ``plus`` and ``hash`` (nats ``pwc`` and ``fwc``),
so matching never has to look wildcards up in the dict. The node at the end of a filter's path
holds that filter's subscriptions:

* ``subs``: the plain subscriptions, one value per subscriber key, so subscribing again with
  the same key replaces the options [MQTT-3.8.4-3];
* ``shared``: one :class:`SharedGroup` per group name for ``$share/<group>/<filter>`` and
  ``$queue/<filter>`` (group ``"$queue"``). Shared and plain subscriptions to the same inner
  filter live in the same node but never mix: a group is keyed by (group, filter) and the
  broker delivers each message to one member of it (mosquitto keeps a second tree for them,
  nats keeps ``qsubs`` beside ``psubs`` in one node, as here).

:meth:`TopicTree.match` walks the topic's levels down the literal path and keeps an explicit
stack for the ``+`` branches it meets (nats ``matchLevel`` recurses for ``*``; a stack does the
same without Python's recursion limit, since a client may subscribe to a filter of thousands
of ``+`` levels). At every node it reaches, the ``#`` child matches: ``a/#`` matches ``a/b``
and also the parent level ``a``. A topic whose first level starts with ``$`` skips the root's
``+`` and ``#`` slots, so ``#`` and ``+/x`` never match ``$SYS/x`` [MQTT-4.7.2-1].

Matches go through a bounded front cache, topic → :class:`MatchResult`, of at most
``cache_size`` entries (:data:`DEFAULT_CACHE_SIZE`, as nats' ``slCacheMax``). Subscribing or
unsubscribing a filter drops the cached topics that filter matches: a literal filter drops one
dict entry, a wildcard filter tests only the cached topics that start with its literal prefix.
A full cache evicts its oldest entry. ``TopicTree(cache_size=0)`` has no cache at all.

Nodes left empty by an unsubscribe are pruned up to the first node still in use, so a tree
under subscription churn does not grow.

Topic filters (same rules as :mod:`tidemq.protocol`):

* valid: ``a/b``, ``a/+/c``, ``+``, ``#``, ``a/#``, ``+/+``, ``/`` (two empty levels),
  ``$SYS/#``, ``$share/g/a/+``, ``$queue/a/#``;
* invalid (``subscribe`` raises ``ValueError``): ``""``, ``a#``, ``a/#/c``, ``a+``,
  ``$share/g`` (no filter), ``$share//a`` (empty group), ``$share/g+/a``;
* valid but not matching: ``a/+`` does not match ``a`` or ``a/b/c``; ``+/+`` matches ``/`` but
  not ``a``; ``#`` and ``+/x`` do not match ``$SYS/x``; ``a/b`` does not match ``a/b/``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

from tidemq.protocol import parse_shared, topic_filter_error, topic_matches

__all__ = ["DEFAULT_CACHE_SIZE", "MatchResult", "SharedGroup", "TopicTree"]

# Most topics a TopicTree caches match results for: nats-server's slCacheMax (sublist.go).
# One entry is a topic string plus two small lists, so 1024 entries cost well under 1 MiB.
DEFAULT_CACHE_SIZE = 1024

S = TypeVar("S", bound=Hashable)
V = TypeVar("V")


class SharedGroup(Generic[S, V]):
    """The members of one shared subscription ``$share/<name>/<filter>``.

    ``members`` holds one ``(key, value)`` per member in no particular order; removing a
    member moves the last one into its place. ``cursor`` belongs to the broker, for
    round-robin: pick ``members[cursor % len(members)]`` and advance it (see
    :meth:`next_member`). The tree never changes ``cursor``.

    A group object lives as long as it has members, and cached :class:`MatchResult` objects
    refer to it directly, so a member that joins an existing group is seen at once.
    """

    __slots__ = ("_index", "cursor", "filter", "members", "name")

    def __init__(self, name: str, topic_filter: str) -> None:
        self.name = name
        self.filter = topic_filter  # the inner filter, without "$share/<name>/"
        self.members: list[tuple[S, V]] = []
        self.cursor = 0
        self._index: dict[S, int] = {}  # key → its position in members

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        return f"SharedGroup({self.name!r}, {self.filter!r}, members={len(self.members)})"

    def next_member(self) -> tuple[S, V]:
        """Round-robin: return the member at ``cursor`` and advance ``cursor``.

        Raises:
            IndexError: the group has no members.
        """
        members = self.members
        if not members:
            raise IndexError("shared subscription group has no members")
        i = self.cursor % len(members)
        self.cursor = i + 1
        return members[i]

    def _set(self, key: S, value: V) -> bool:
        i = self._index.get(key)
        if i is not None:
            self.members[i] = (key, value)
            return False
        self._index[key] = len(self.members)
        self.members.append((key, value))
        return True

    def _remove(self, key: S) -> bool:
        i = self._index.pop(key, None)
        if i is None:
            return False
        last = self.members.pop()
        if i < len(self.members):
            self.members[i] = last
            self._index[last[0]] = i
        return True


class MatchResult(Generic[S, V]):
    """What :meth:`TopicTree.match` returns for one topic.

    ``plain`` has one ``(key, value)`` per matching non-shared subscription: a key with
    several matching filters appears once per filter, and the broker merges them
    [MQTT-3.3.4-2]. ``shared`` has each matching :class:`SharedGroup` once.

    Results may come from the cache and be returned again: treat both lists as read-only.
    """

    __slots__ = ("plain", "shared")

    def __init__(self, plain: list[tuple[S, V]], shared: list[SharedGroup[S, V]]) -> None:
        self.plain = plain
        self.shared = shared

    def __bool__(self) -> bool:
        return bool(self.plain or self.shared)

    def __repr__(self) -> str:
        return f"MatchResult(plain={self.plain!r}, shared={self.shared!r})"


class _Node(Generic[S, V]):
    # Every container is created on first use: most nodes are leaves with subscriptions only.
    __slots__ = ("children", "hash", "plus", "shared", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node[S, V]] | None = None
        self.plus: _Node[S, V] | None = None
        self.hash: _Node[S, V] | None = None
        self.subs: dict[S, V] | None = None
        self.shared: dict[str, SharedGroup[S, V]] | None = None

    def is_empty(self) -> bool:
        return not (self.children or self.plus or self.hash or self.subs or self.shared)


class TopicTree(Generic[S, V]):
    """Subscriptions by topic filter: subscriber key S, per-subscription value V.

    The broker uses session objects as keys and a small options object (QoS, no-local,
    retain-as-published, subscription identifier) as values.

    Args:
        cache_size: most topics whose match results are cached; 0 disables the cache.
    """

    __slots__ = (
        "_cache",
        "_cache_size",
        "_count",
        "_groups",
        "_nodes",
        "_root",
        "cache_hits",
        "inserts",
        "matches",
        "removes",
    )

    def __init__(self, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError("cache_size must be >= 0")
        self._root: _Node[S, V] = _Node()
        self._cache: dict[str, MatchResult[S, V]] = {}
        self._cache_size = cache_size
        self._count = 0  # subscriptions, plain and shared members
        self._groups = 0  # shared groups
        self._nodes = 1  # including the root
        self.matches = 0
        self.cache_hits = 0
        self.inserts = 0
        self.removes = 0

    @property
    def count(self) -> int:
        """The number of subscriptions (plain ones plus shared-group members)."""
        return self._count

    def __len__(self) -> int:
        return self._count

    def subscribe(self, topic_filter: str, key: S, value: V) -> bool:
        """Add or replace the subscription of *key* to *topic_filter*.

        *topic_filter* may be shared (``$share/<group>/<filter>`` or ``$queue/<filter>``).

        Returns:
            True if the subscription is new, False if it replaced the value of an existing one.

        Raises:
            ValueError: *topic_filter* is not a valid topic filter.
        """
        error = topic_filter_error(topic_filter)
        if error is not None:
            raise ValueError(error)
        shared = parse_shared(topic_filter)
        group = None
        if shared is not None:
            group, topic_filter = shared
        node = self._root
        for level in topic_filter.split("/"):
            if level == "+":
                nxt = node.plus
                if nxt is None:
                    nxt = node.plus = _Node()
                    self._nodes += 1
            elif level == "#":
                nxt = node.hash
                if nxt is None:
                    nxt = node.hash = _Node()
                    self._nodes += 1
            else:
                children = node.children
                if children is None:
                    children = node.children = {}
                nxt = children.get(level)
                if nxt is None:
                    nxt = children[level] = _Node()
                    self._nodes += 1
            node = nxt

        invalidate = True
        if group is None:
            subs = node.subs
            if subs is None:
                subs = node.subs = {}
            new = key not in subs
            subs[key] = value
        else:
            groups = node.shared
            if groups is None:
                groups = node.shared = {}
            sg = groups.get(group)
            if sg is None:
                sg = groups[group] = SharedGroup(group, topic_filter)
                self._groups += 1
            else:
                # Cached results hold this very group object: nothing to drop.
                invalidate = False
            new = sg._set(key, value)
        if new:
            self._count += 1
            self.inserts += 1
        if invalidate:
            self._invalidate(topic_filter)
        return new

    def unsubscribe(self, topic_filter: str, key: S) -> bool:
        """Remove the subscription of *key* to *topic_filter* (shared or not).

        Returns:
            True if it existed; False if not (an invalid filter has no subscriptions).
        """
        try:
            shared = parse_shared(topic_filter)
        except ValueError:
            return False
        group = None
        if shared is not None:
            group, topic_filter = shared
        node = self._root
        path: list[tuple[_Node[S, V], str]] = []
        for level in topic_filter.split("/"):
            if level == "+":
                nxt = node.plus
            elif level == "#":
                nxt = node.hash
            else:
                nxt = node.children.get(level) if node.children else None
            if nxt is None:
                return False
            path.append((node, level))
            node = nxt

        if group is None:
            subs = node.subs
            if not subs or key not in subs:
                return False
            del subs[key]
            if not subs:
                node.subs = None
        else:
            groups = node.shared
            sg = groups.get(group) if groups else None
            if sg is None or not sg._remove(key):
                return False
            assert groups is not None
            if sg.members:
                # The group lives on in cached results: nothing to drop.
                self._count -= 1
                self.removes += 1
                return True
            del groups[group]
            self._groups -= 1
            if not groups:
                node.shared = None
        self._count -= 1
        self.removes += 1
        self._invalidate(topic_filter)
        self._prune(node, path)
        return True

    def remove_key(self, key: S, filters: Iterable[str]) -> int:
        """Unsubscribe *key* from each of *filters* (e.g. when its session ends).

        Returns:
            How many subscriptions were removed.
        """
        removed = 0
        for topic_filter in filters:
            if self.unsubscribe(topic_filter, key):
                removed += 1
        return removed

    def match(self, topic: str) -> MatchResult[S, V]:
        """Every subscription whose filter matches the topic name *topic*.

        *topic* must be a valid topic name (no wildcards); it is not checked here.
        """
        self.matches += 1
        cache = self._cache
        result = cache.get(topic)
        if result is not None:
            self.cache_hits += 1
            return result

        plain: list[tuple[S, V]] = []
        shared: list[SharedGroup[S, V]] = []
        levels = topic.split("/")
        n = len(levels)  # >= 1: "".split("/") is [""]
        root = self._root
        stack: list[tuple[_Node[S, V], int]] = []
        # [MQTT-4.7.2-1] "The Server MUST NOT match Topic Filters starting with a wildcard
        # character (# or +) with Topic Names beginning with a $ character."
        if not topic.startswith("$"):
            h = root.hash
            if h is not None:
                if h.subs:
                    plain.extend(h.subs.items())
                if h.shared:
                    shared.extend(h.shared.values())
            if root.plus is not None:
                stack.append((root.plus, 1))
        node = root.children.get(levels[0]) if root.children else None
        i = 1
        while True:
            # Follow the literal path from (node, i); "+" branches wait on the stack.
            while node is not None:
                h = node.hash
                if h is not None:  # "x/#" also matches "x" itself
                    if h.subs:
                        plain.extend(h.subs.items())
                    if h.shared:
                        shared.extend(h.shared.values())
                if i == n:
                    if node.subs:
                        plain.extend(node.subs.items())
                    if node.shared:
                        shared.extend(node.shared.values())
                    break
                if node.plus is not None:
                    stack.append((node.plus, i + 1))
                children = node.children
                node = children.get(levels[i]) if children else None
                i += 1
            if not stack:
                break
            node, i = stack.pop()

        result = MatchResult(plain, shared)
        if self._cache_size:
            if len(cache) >= self._cache_size:
                # Bounded, simple: drop the oldest entry (dicts keep insertion order).
                del cache[next(iter(cache))]
            cache[topic] = result
        return result

    def stats(self) -> dict[str, int | float]:
        """Counters for monitoring (nats ``Sublist.Stats``)."""
        return {
            "subscriptions": self._count,
            "shared_groups": self._groups,
            "nodes": self._nodes,
            "cache_entries": len(self._cache),
            "cache_size": self._cache_size,
            "matches": self.matches,
            "cache_hits": self.cache_hits,
            "hit_rate": self.cache_hits / self.matches if self.matches else 0.0,
            "inserts": self.inserts,
            "removes": self.removes,
        }

    def _invalidate(self, topic_filter: str) -> None:
        """Drop the cached results of every topic *topic_filter* (not shared) matches."""
        cache = self._cache
        if not cache:
            return
        if "+" not in topic_filter and "#" not in topic_filter:
            cache.pop(topic_filter, None)  # a literal filter matches only itself
            return
        # Only topics starting with the filter's literal levels can match it. The "/" before
        # the first wildcard is not part of the prefix: "a/#" also matches "a".
        cut = min(i for i in (topic_filter.find("+"), topic_filter.find("#")) if i >= 0)
        prefix = topic_filter[: cut - 1] if cut else ""
        stale = [t for t in cache if t.startswith(prefix) and topic_matches(topic_filter, t)]
        for t in stale:
            del cache[t]

    def _prune(self, node: _Node[S, V], path: list[tuple[_Node[S, V], str]]) -> None:
        """Detach *node* and its ancestors while they are empty; *path* leads to *node*."""
        for parent, level in reversed(path):
            if not node.is_empty():
                return
            if level == "+":
                parent.plus = None
            elif level == "#":
                parent.hash = None
            else:
                children = parent.children
                assert children is not None
                del children[level]
                if not children:
                    parent.children = None
            self._nodes -= 1
            node = parent
