"""Micro-benchmark of the subscription trie and the retained-message tree.

Usage::

    python bench/topic_tree.py [--subs 10000] [--retained 100000] [--seed 1]

Subscriptions are a fixed-seed mix over a ``site/<s>/dev/<d>/<metric>`` topic space: 70 %
literal topics, 20 % ``site/<s>/dev/+/<metric>``, 8 % ``site/<s>/#`` and 2 %
``+/+/dev/<d>/#``. Publishes go to random topics of the same space:

* ``match, cached``: 1,000 distinct hot topics, so the default 1,024-entry cache holds them;
* ``match, cache thrash``: 100,000 distinct topics through the same cache;
* ``match, no cache``: ``TopicTree(cache_size=0)``;
* ``naive scan``: ``topic_matches`` against every filter, the loop the trie replaces;
* ``churn``: subscribe + unsubscribe of a wildcard filter with a warm cache (invalidation cost).

Retained lookups compare :meth:`RetainedTree.match` with a scan of a dict of every retained
topic for three wildcard filters. Every timing is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from tidemq.broker.retain import RetainedTree
from tidemq.broker.topic_tree import TopicTree
from tidemq.protocol import topic_matches

METRICS = ["temp", "hum", "co2", "lux", "batt"]


def best_rate(fn: Callable[[], int], repeats: int) -> float:
    """Operations per second: fn() returns how many operations it ran; best of *repeats*."""
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        ops = fn()
        elapsed = time.perf_counter() - start
        best = max(best, ops / elapsed)
    return best


def make_filters(rng: random.Random, n: int, sites: int, devs: int) -> list[str]:
    out = []
    for _ in range(n):
        s, d, m = rng.randrange(sites), rng.randrange(devs), rng.choice(METRICS)
        r = rng.random()
        if r < 0.70:
            out.append(f"site/{s}/dev/{d}/{m}")
        elif r < 0.90:
            out.append(f"site/{s}/dev/+/{m}")
        elif r < 0.98:
            out.append(f"site/{s}/#")
        else:
            out.append(f"+/+/dev/{d}/#")
    return out


def random_topics(rng: random.Random, n: int, sites: int, devs: int) -> list[str]:
    return [
        f"site/{rng.randrange(sites)}/dev/{rng.randrange(devs)}/{rng.choice(METRICS)}"
        for _ in range(n)
    ]


def bench_subscriptions(args: argparse.Namespace, rng: random.Random) -> list[tuple[str, str]]:
    sites, devs = 100, 100
    filters = make_filters(rng, args.subs, sites, devs)
    hot = random_topics(rng, 1000, sites, devs)
    hot_stream = [rng.choice(hot) for _ in range(100_000)]
    cold_stream = random_topics(rng, 100_000, sites, devs)

    def build(cache_size: int) -> TopicTree[int, str]:
        tree: TopicTree[int, str] = TopicTree(cache_size=cache_size)
        for key, f in enumerate(filters):
            tree.subscribe(f, key, f)
        return tree

    start = time.perf_counter()
    cached = build(1024)
    build_rate = len(filters) / (time.perf_counter() - start)
    uncached = build(0)

    # Both trees must agree with each other and with the reference, or the numbers mean nothing.
    for topic in hot[:50]:
        want = sorted(f for f in filters if topic_matches(f, topic))
        assert sorted(v for _, v in cached.match(topic).plain) == want
        assert sorted(v for _, v in uncached.match(topic).plain) == want
    fanout = sum(len(cached.match(t).plain) for t in hot) / len(hot)

    def run(tree: TopicTree[int, str], stream: list[str]) -> Callable[[], int]:
        def go() -> int:
            match = tree.match
            for topic in stream:
                match(topic)
            return len(stream)

        return go

    naive_stream = hot_stream[:200]

    def naive() -> int:
        for topic in naive_stream:
            [f for f in filters if topic_matches(f, topic)]
        return len(naive_stream)

    churn_tree = build(1024)
    for topic in hot:
        churn_tree.match(topic)

    def churn() -> int:
        for i in range(5000):
            f = f"site/{i % sites}/dev/+/temp"
            churn_tree.subscribe(f, -1, f)
            churn_tree.unsubscribe(f, -1)
        return 10_000

    rows = [
        ("subscribe (build the tree)", f"{build_rate:,.0f} subs/s"),
        (
            "match, cached (1k hot topics)",
            f"{best_rate(run(cached, hot_stream), args.repeats):,.0f}/s",
        ),
    ]
    hit_rate = cached.stats()["hit_rate"]
    thrash = build(1024)
    rows += [
        (f"  (hit rate {hit_rate:.1%})", ""),
        (
            "match, cache thrash (100k topics)",
            f"{best_rate(run(thrash, cold_stream), args.repeats):,.0f}/s",
        ),
        (
            "match, no cache (cache_size=0)",
            f"{best_rate(run(uncached, hot_stream), args.repeats):,.0f}/s",
        ),
        ("naive scan of every filter", f"{best_rate(naive, 1):,.0f}/s"),
        ("churn: (un)subscribe, warm cache", f"{best_rate(churn, args.repeats):,.0f} ops/s"),
        ("mean fan-out per topic", f"{fanout:.2f}"),
        ("trie nodes", f"{cached.stats()['nodes']:,}"),
    ]
    return rows


def bench_retained(
    args: argparse.Namespace, rng: random.Random
) -> tuple[int, list[tuple[str, str, str, str]]]:
    sites, devs = max(1, args.retained // (100 * len(METRICS))), 100
    tree: RetainedTree[bytes] = RetainedTree()
    flat: dict[str, bytes] = {}
    for s in range(sites):
        for d in range(devs):
            for m in METRICS:
                topic = f"site/{s}/dev/{d}/{m}"
                tree.set(topic, b"x")
                flat[topic] = b"x"
    tree.set("$SYS/broker/uptime", b"1")
    flat["$SYS/broker/uptime"] = b"1"
    probe_site = rng.randrange(sites)
    probe_dev = rng.randrange(devs)
    n_tree = 200  # tree lookups per timing run; the scan runs once
    rows = []
    for f in (
        f"site/{probe_site}/dev/{probe_dev}/temp",
        f"site/{probe_site}/dev/+/temp",
        f"site/{probe_site}/#",
        f"+/+/dev/{probe_dev}/temp",
    ):
        got = tree.match(f)
        want = sorted(t for t in flat if topic_matches(f, t))
        assert sorted(t for t, _ in got) == want, f

        def via_tree(f: str = f, n_tree: int = n_tree) -> int:
            for _ in range(n_tree):
                tree.match(f)
            return n_tree

        def via_scan(f: str = f) -> int:
            [m for t, m in flat.items() if topic_matches(f, t)]
            return 1

        t_tree = 1e6 / best_rate(via_tree, args.repeats)
        t_scan = 1e6 / best_rate(via_scan, 1)
        rows.append(
            (
                f"{f}  ({len(got)} hits)",
                f"{t_tree:,.1f} µs",
                f"{t_scan:,.0f} µs",
                f"{t_scan / t_tree:,.0f}×",
            )
        )
    return len(tree), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subs", type=int, default=10_000)
    parser.add_argument("--retained", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    print(f"TopicTree, {args.subs:,} subscriptions")
    for name, value in bench_subscriptions(args, rng):
        print(f"  {name:<36} {value:>18}")
    print()
    count, rows = bench_retained(args, rng)
    print(f"RetainedTree, {count:,} retained topics: time of one lookup")
    print(f"  {'filter':<36} {'tree':>12} {'naive scan':>12} {'speed-up':>9}")
    for name, t_tree, t_scan, ratio in rows:
        print(f"  {name:<36} {t_tree:>12} {t_scan:>12} {ratio:>9}")


if __name__ == "__main__":
    main()
