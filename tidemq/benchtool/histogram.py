"""A fixed-bucket latency histogram in the manner of HdrHistogram: bounded memory, cheap
recording, mergeable across processes, percentiles within a known relative error.

Values are integers (the bench records microseconds). Values below ``2**SUB_BITS`` get one
bucket each, so they are exact. Above that, every power of two is split into
``2**(SUB_BITS-1)`` equal buckets, so a bucket is never wider than ``1/2**(SUB_BITS-1)`` of
its lower bound; a percentile reported at the bucket's midpoint is therefore within half of
that (0.4 % with ``SUB_BITS = 8``) of a value that was really recorded.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = ["MAX_VALUE", "RELATIVE_ERROR", "SUB_BITS", "Histogram", "bucket_bounds", "bucket_of"]

# 8 bits: 256 exact buckets, then 128 per power of two.
SUB_BITS = 8
_SUB = 1 << SUB_BITS
_HALF = _SUB >> 1
# Values above this (in µs: about 19 hours) are recorded as this; a bench reports nothing
# that long, and the cap keeps the bucket array a fixed size.
MAX_VALUE = (1 << 36) - 1
# The worst relative distance between a bucket's midpoint and any value in the bucket.
RELATIVE_ERROR = 0.5 / _HALF


def bucket_of(value: int) -> int:
    """The bucket index of a non-negative integer *value* (already clamped)."""
    if value < _SUB:
        return value
    shift = value.bit_length() - SUB_BITS
    return _SUB + (shift - 1) * _HALF + (value >> shift) - _HALF


def bucket_bounds(index: int) -> tuple[int, int]:
    """The lowest and highest value that fall in bucket *index*."""
    if index < _SUB:
        return index, index
    shift = (index - _SUB) // _HALF + 1
    low = ((index - _SUB) % _HALF + _HALF) << shift
    return low, low + (1 << shift) - 1


_BUCKETS = bucket_of(MAX_VALUE) + 1


class Histogram:
    """Counts of integer values in fixed buckets, with exact count, sum, min and max.

    ``record`` costs a few hundred nanoseconds and no allocation; two histograms merge by
    adding counts, so each worker process keeps its own and the parent sums them.
    """

    __slots__ = ("count", "counts", "max", "min", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.count = 0
        self.total = 0
        self.min = 0
        self.max = 0

    def record(self, value: int) -> None:
        """Record one value; negatives count as 0 and huge ones as ``MAX_VALUE``."""
        if value < 0:
            value = 0
        elif value > MAX_VALUE:
            value = MAX_VALUE
        if value < _SUB:
            self.counts[value] += 1
        else:
            shift = value.bit_length() - SUB_BITS
            self.counts[_SUB + (shift - 1) * _HALF + (value >> shift) - _HALF] += 1
        if not self.count or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += 1
        self.total += value

    def merge(self, other: Histogram) -> None:
        """Add every value of *other* to this histogram."""
        if not other.count:
            return
        mine = self.counts
        for index, n in enumerate(other.counts):
            if n:
                mine[index] += n
        self._merge_totals(other.count, other.total, other.min, other.max)

    def _merge_totals(self, count: int, total: int, low: int, high: int) -> None:
        if not self.count or low < self.min:
            self.min = low
        if high > self.max:
            self.max = high
        self.count += count
        self.total += total

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, p: float) -> int:
        """The value at percentile *p* (0-100) by nearest rank: the smallest recorded value
        with at least ``p`` % of the values at or below it (its bucket's midpoint, clamped
        to the exact min and max). 0 when empty.
        """
        if not self.count:
            return 0
        if p <= 0:
            return self.min
        if p >= 100:
            return self.max
        rank = max(1, math.ceil(p / 100.0 * self.count))
        seen = 0
        for index, n in enumerate(self.counts):
            if not n:
                continue
            seen += n
            if seen >= rank:
                low, high = bucket_bounds(index)
                return min(max((low + high) // 2, self.min), self.max)
        return self.max  # pragma: no cover - the counts always add up to count

    # --- shipping between processes: only the non-empty buckets -------------------------

    def to_sparse(self) -> dict[str, object]:
        """A small picklable/JSON-able form: ``{"buckets": {index: n}, ...totals}``."""
        return {
            "buckets": {i: n for i, n in enumerate(self.counts) if n},
            "count": self.count,
            "total": self.total,
            "min": self.min,
            "max": self.max,
        }

    def merge_sparse(self, sparse: Mapping[str, object]) -> None:
        """Add a ``to_sparse()`` result (or a ``delta_since`` one) to this histogram."""
        buckets = sparse["buckets"]
        count = sparse["count"]
        assert isinstance(buckets, dict)
        assert isinstance(count, int)
        if not count:
            return
        counts = self.counts
        for index, n in buckets.items():
            counts[int(index)] += int(n)
        total, low, high = sparse["total"], sparse["min"], sparse["max"]
        assert isinstance(total, int)
        assert isinstance(low, int)
        assert isinstance(high, int)
        self._merge_totals(count, total, low, high)

    def delta_since(self, base: Histogram) -> dict[str, object]:
        """What was recorded since *base* (an older copy) as a sparse dict, and bring
        *base* up to date. min/max of the delta are the running ones (they only widen)."""
        buckets: dict[int, int] = {}
        mine, theirs = self.counts, base.counts
        if self.count != base.count:
            for index, n in enumerate(mine):
                if n != theirs[index]:
                    buckets[index] = n - theirs[index]
                    theirs[index] = n
        delta = {
            "buckets": buckets,
            "count": self.count - base.count,
            "total": self.total - base.total,
            "min": self.min,
            "max": self.max,
        }
        base.count, base.total, base.min, base.max = self.count, self.total, self.min, self.max
        return delta

    def summary(self, scale: float = 1.0) -> dict[str, float | int]:
        """count, min, mean, p50, p90, p99, p99.9 and max, each value divided by *scale*."""
        return {
            "count": self.count,
            "min": self.min / scale,
            "mean": round(self.mean() / scale, 6),
            "p50": self.percentile(50) / scale,
            "p90": self.percentile(90) / scale,
            "p99": self.percentile(99) / scale,
            "p999": self.percentile(99.9) / scale,
            "max": self.max / scale,
        }

    @classmethod
    def of(cls, values: Iterable[int]) -> Histogram:
        hist = cls()
        for value in values:
            hist.record(value)
        return hist
