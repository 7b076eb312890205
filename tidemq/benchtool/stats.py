"""Counters: ``WorkerStats`` is what one process's clients update (plain attribute
increments on the hot path); ``snapshot()`` turns it into a small picklable dict (running
totals plus the histogram buckets recorded since the previous snapshot) that a worker
process sends to the parent once a second; ``Totals`` sums those from every worker.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .histogram import Histogram

__all__ = ["COUNTERS", "Totals", "WorkerStats"]

# The running totals every snapshot carries (summed over workers by ``Totals``).
COUNTERS = (
    "attempted",  # connections started
    "connected",  # CONNACK accepted
    "failed",  # connections that never got a (successful) CONNACK
    "lost",  # connections dropped by the broker or the network after connecting
    "aborted",  # still connecting when the run stopped
    "active",  # connected now
    "subscribed",  # subscribers whose SUBACK granted every filter
    "finished",  # clients that reached -L
    "ended",  # clients that stopped for any reason (finished, failed, lost)
    "sent",  # PUBLISH calls made (QoS 0: handed to the socket)
    "acked",  # QoS 1/2 publishes acknowledged (PUBACK / PUBCOMP)
    "received",  # messages received by subscribers
    "stamped",  # received messages that carried a send time
)
# Wall-clock marks, as time.time(); the earliest "first" and latest "last" win.
FIRST_MARKS = ("first_attempt", "first_message")
LAST_MARKS = ("last_connack", "last_message", "stopped_at")


class WorkerStats:
    """The counters of one worker process; the event loop is its only writer."""

    __slots__ = (
        *COUNTERS,
        *FIRST_MARKS,
        *LAST_MARKS,
        "_connect_base",
        "_latency_base",
        "connect_latency",
        "errors",
        "latency",
        "ready",
    )

    def __init__(self) -> None:
        # The names of COUNTERS, FIRST_MARKS and LAST_MARKS, spelled out for the type checker.
        self.attempted = self.connected = self.failed = self.lost = self.aborted = 0
        self.active = self.subscribed = self.finished = self.ended = 0
        self.sent = self.acked = self.received = self.stamped = 0
        self.first_attempt = self.first_message = 0.0
        self.last_connack = self.last_message = self.stopped_at = 0.0
        self.errors: Counter[str] = Counter()
        # CONNACK latency and message latency (publish→ack for pub, end to end for sub), µs.
        self.connect_latency = Histogram()
        self.latency = Histogram()
        self._connect_base = Histogram()
        self._latency_base = Histogram()
        self.ready = False  # every client has connected (and subscribed) or failed

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        """Running totals and the histogram buckets filled since the last snapshot."""
        return {
            "counters": {name: getattr(self, name) for name in COUNTERS},
            "marks": {name: getattr(self, name) for name in (*FIRST_MARKS, *LAST_MARKS)},
            "errors": dict(self.errors),
            "connect_latency": self.connect_latency.delta_since(self._connect_base),
            "latency": self.latency.delta_since(self._latency_base),
            "ready": self.ready,
        }


class Totals:
    """The sum over every worker's latest snapshot, plus histograms of all deltas."""

    def __init__(self, workers: int) -> None:
        self.started = time.time()
        self._latest: dict[int, dict[str, Any]] = {}
        self.workers = workers
        self.connect_latency = Histogram()
        self.latency = Histogram()
        # Latency recorded since the last progress line, for its live percentiles.
        self.recent_latency = Histogram()

    def add(self, worker: int, snapshot: dict[str, Any]) -> None:
        self._latest[worker] = snapshot
        self.connect_latency.merge_sparse(snapshot["connect_latency"])
        self.latency.merge_sparse(snapshot["latency"])
        self.recent_latency.merge_sparse(snapshot["latency"])

    def take_recent_latency(self) -> Histogram:
        recent, self.recent_latency = self.recent_latency, Histogram()
        return recent

    def counter(self, name: str) -> int:
        return sum(int(s["counters"][name]) for s in self._latest.values())

    def counters(self) -> dict[str, int]:
        return {name: self.counter(name) for name in COUNTERS}

    def mark(self, name: str) -> float:
        values = [float(s["marks"][name]) for s in self._latest.values() if s["marks"][name]]
        if not values:
            return 0.0
        return min(values) if name in FIRST_MARKS else max(values)

    def errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for snapshot in self._latest.values():
            total.update(snapshot["errors"])
        return dict(sorted(total.items()))

    @property
    def ready(self) -> bool:
        return len(self._latest) == self.workers and all(s["ready"] for s in self._latest.values())
