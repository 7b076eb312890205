"""Topic names and topic filters (MQTT 5.0 §4.7, MQTT 3.1.1 §4.7).

Valid filters: ``a/b``, ``a/+/c``, ``+``, ``#``, ``a/#``, ``+/+``, ``/`` (two empty levels).
Invalid filters: ``a#``, ``a/b#``, ``a/#/c`` (``#`` must be last and alone [MQTT-4.7.1-1]),
``a+``, ``+a`` (``+`` must occupy a whole level [MQTT-4.7.1-2]), ``""`` [MQTT-4.7.3-1].
Valid but non-matching: ``#`` and ``+/x`` never match ``$SYS/x``: a leading wildcard does
not match a topic starting with ``$`` [MQTT-4.7.2-1].

Shared subscriptions are ``$share/<group>/<filter>`` [MQTT-4.8.2-1]; the group is non-empty
and holds no ``/``, ``+`` or ``#`` [MQTT-4.8.2-2]. EMQX's ``$queue/<filter>`` is accepted as
the shared group ``$queue``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "SharedFilter",
    "is_wildcard_filter",
    "parse_shared",
    "topic_filter_error",
    "topic_matches",
    "topic_name_error",
]


def topic_name_error(topic: str) -> str | None:
    """Return why *topic* is not a valid topic name, or None when it is valid."""
    if not topic:
        return "topic name is empty [MQTT-4.7.3-1]"
    if "+" in topic or "#" in topic:
        return "topic name contains a wildcard [MQTT-3.3.2-2]"
    if "\x00" in topic:
        return "topic name contains U+0000 [MQTT-4.7.3-2]"
    return None


def topic_filter_error(topic_filter: str) -> str | None:
    """Return why *topic_filter* is not a valid filter (shared or not), or None."""
    if not topic_filter:
        return "topic filter is empty [MQTT-4.7.3-1]"
    if "\x00" in topic_filter:
        return "topic filter contains U+0000 [MQTT-4.7.3-2]"
    if topic_filter.startswith(("$share/", "$queue/")) or topic_filter in ("$share", "$queue"):
        try:
            shared = parse_shared(topic_filter)
        except ValueError as exc:
            return str(exc)
        assert shared is not None
        topic_filter = shared.filter
    if "+" not in topic_filter and "#" not in topic_filter:
        return None
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return "'#' must be the whole last level [MQTT-4.7.1-1]"
        if "+" in level and level != "+":
            return "'+' must be a whole level [MQTT-4.7.1-2]"
    return None


def is_wildcard_filter(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class SharedFilter(NamedTuple):
    group: str
    filter: str


def parse_shared(topic_filter: str) -> SharedFilter | None:
    """Split ``$share/<group>/<filter>`` (or ``$queue/<filter>``); None if not shared.

    Raises:
        ValueError: a shared filter with an empty or illegal group, or no filter.
    """
    if topic_filter.startswith("$queue/"):
        rest = topic_filter[7:]
        if not rest:
            raise ValueError("$queue/ without a topic filter")
        return SharedFilter("$queue", rest)
    if not topic_filter.startswith("$share/"):
        if topic_filter in ("$share", "$queue"):
            raise ValueError(f"{topic_filter} without a group and topic filter")
        return None
    group, sep, rest = topic_filter[7:].partition("/")
    if not group or "+" in group or "#" in group:
        raise ValueError("shared subscription group is empty or has a wildcard [MQTT-4.8.2-2]")
    if not sep or not rest:
        raise ValueError("shared subscription without a topic filter [MQTT-4.8.2-1]")
    return SharedFilter(group, rest)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Reference matcher (slow, obviously right): does *topic_filter* match *topic*?

    The broker's trie is tested against this function.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, f in enumerate(f_levels):
        if f == "#":
            return True  # also matches the parent level [MQTT-4.7.1-2]
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
