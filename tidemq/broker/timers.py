"""One scheduler for every timed broker duty: keepalive, connect timeout, session expiry,
will delay, message expiry sweeps, awaiting-PUBREL timeouts and $SYS.

A heap of (deadline, seq, entry) and a single ``loop.call_at`` handle for the earliest one
(Mosquitto drives all of these from ``loop.c``; no client gets a timer of its own). Entries
are cancelled lazily: ``cancel()`` flags them and the heap skips them. Keepalive uses lazy
deadlines (aiohttp ``_process_keepalive``): the entry fires at the deadline known when it
was scheduled, and the callback re-arms itself if activity moved the deadline since.

Lazy cancellation leaves cancelled entries in the heap until their deadline, which may be
days away (session expiry, a JWT's ``exp``): a fleet that reconnects all day would grow the
heap without bound. So the heap is compacted (cancelled entries dropped, the rest
re-heapified) whenever it has doubled since the last count of live entries, as asyncio does
for its own cancelled timers: O(1) amortised per push. A cancelled ``TimerEntry`` also drops
its callback and arguments at once, so it never keeps a session alive.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("tidemq.broker.timers")


class Timed(Protocol):
    """What the heap holds: ``TimerEntry``, or an object that is its own timer (a
    ``ClientHandler``: one heap tuple per deadline and nothing else, which matters at
    100,000 idle connections)."""

    @property
    def cancelled(self) -> bool: ...

    def fire(self, when: float) -> None: ...


class TimerEntry:
    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        # What the callback refers to (a Session, say) may go now, not at the deadline.
        self.callback = _noop
        self.args = ()

    def fire(self, when: float) -> None:
        self.callback(*self.args)


def _noop(*args: Any) -> None:
    pass


#: The heap is compacted once it holds this many entries and twice the live ones last counted.
COMPACT_MIN = 1024


class Scheduler:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._heap: list[tuple[float, int, Timed]] = []
        self._seq = itertools.count()
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._closed = False
        self._compact_at = COMPACT_MIN

    def time(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerEntry:
        entry = TimerEntry(when, callback, args)
        self.push(when, entry)
        return entry

    def push(self, when: float, entry: Timed) -> None:
        """Schedule ``entry.fire(when)`` at *when* (skipped if it is cancelled by then)."""
        heap = self._heap
        if len(heap) >= self._compact_at:
            self._compact()
        heapq.heappush(heap, (when, next(self._seq), entry))
        if self._armed_at is None or when < self._armed_at:
            self._arm(when)

    def _compact(self) -> None:
        """Drop the cancelled entries (see the module docstring)."""
        live = [item for item in self._heap if not item[2].cancelled]
        heapq.heapify(live)
        self._heap[:] = live  # in place: _run may hold a reference to the list
        self._compact_at = max(COMPACT_MIN, 2 * len(live))

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerEntry:
        return self.call_at(self._loop.time() + delay, callback, *args)

    def _arm(self, when: float) -> None:
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self._loop.call_at(when, self._run)

    def _run(self) -> None:
        self._handle = None
        self._armed_at = None
        heap = self._heap
        now = self._loop.time()
        while heap and heap[0][0] <= now:
            when, _, entry = heapq.heappop(heap)
            if entry.cancelled:
                continue
            try:
                entry.fire(when)
            except Exception:
                log.exception("timer %r failed", entry)
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        if heap:
            self._arm(heap[0][0])

    def __len__(self) -> int:
        return sum(1 for _, _, e in self._heap if not e.cancelled)

    def close(self) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._heap.clear()
