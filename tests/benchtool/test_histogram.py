"""The latency histogram: bucket layout, percentiles within the stated error of the exact
nearest-rank percentile, and merging (direct, sparse, deltas) equal to recording it all."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemq.benchtool.histogram import (
    MAX_VALUE,
    RELATIVE_ERROR,
    SUB_BITS,
    Histogram,
    bucket_bounds,
    bucket_of,
)

values = st.integers(min_value=0, max_value=MAX_VALUE)
# Latencies as they come: mostly small, some huge.
samples = st.lists(
    st.one_of(st.integers(0, 2000), st.integers(0, 10_000_000), values), min_size=1, max_size=400
)


def exact_percentile(data: list[int], p: float) -> int:
    ordered = sorted(data)
    if p <= 0:
        return ordered[0]
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def test_small_values_are_exact_and_buckets_tile_the_range() -> None:
    for value in range(1 << SUB_BITS):
        assert bucket_bounds(bucket_of(value)) == (value, value)
    previous_high = (1 << SUB_BITS) - 1
    for index in range(1 << SUB_BITS, bucket_of(MAX_VALUE) + 1):
        low, high = bucket_bounds(index)
        assert low == previous_high + 1  # no gaps, no overlaps
        assert (high - low + 1) / low <= 2 * RELATIVE_ERROR
        previous_high = high
    assert previous_high == MAX_VALUE


@settings(deadline=None)  # the machine is shared: timing is not what this checks
@given(values)
def test_every_value_falls_in_its_bucket(value: int) -> None:
    low, high = bucket_bounds(bucket_of(value))
    assert low <= value <= high


@settings(max_examples=200, deadline=None)
@given(samples, st.sampled_from([1, 10, 50, 90, 99, 99.9]))
def test_percentiles_are_within_the_stated_error(data: list[int], p: float) -> None:
    hist = Histogram.of(data)
    exact = exact_percentile(data, p)
    got = hist.percentile(p)
    assert abs(got - exact) <= max(RELATIVE_ERROR * exact, 1)
    assert hist.min <= got <= hist.max


@settings(max_examples=100, deadline=None)
@given(samples)
def test_count_sum_min_max_are_exact(data: list[int]) -> None:
    hist = Histogram.of(data)
    assert (hist.count, hist.total, hist.min, hist.max) == (
        len(data),
        sum(data),
        min(data),
        max(data),
    )
    assert hist.percentile(0) == min(data)
    assert hist.percentile(100) == max(data)
    assert hist.mean() == pytest.approx(sum(data) / len(data))


@settings(max_examples=100, deadline=None)
@given(samples, samples, samples)
def test_merging_equals_recording_everything(a: list[int], b: list[int], c: list[int]) -> None:
    whole = Histogram.of(a + b + c)
    direct = Histogram.of(a)
    direct.merge(Histogram.of(b))
    direct.merge(Histogram.of(c))
    sparse = Histogram()
    for part in (a, b, c):
        sparse.merge_sparse(Histogram.of(part).to_sparse())
    # Deltas: one histogram recording a, then b, then c, shipped after each part.
    live, base, shipped = Histogram(), Histogram(), Histogram()
    for part in (a, b, c):
        for value in part:
            live.record(value)
        shipped.merge_sparse(live.delta_since(base))
    for merged in (direct, sparse, shipped):
        assert merged.counts == whole.counts
        assert (merged.count, merged.total, merged.min, merged.max) == (
            whole.count,
            whole.total,
            whole.min,
            whole.max,
        )


def test_out_of_range_values_are_clamped() -> None:
    hist = Histogram.of([-5, MAX_VALUE * 4])
    assert (hist.min, hist.max) == (0, MAX_VALUE)


def test_empty_histogram() -> None:
    hist = Histogram()
    assert hist.percentile(99) == 0
    assert hist.summary()["count"] == 0
    assert hist.to_sparse()["buckets"] == {}
    delta = hist.delta_since(Histogram())
    assert delta["count"] == 0
    other = Histogram()
    other.merge_sparse(delta)
    other.merge(hist)
    assert other.count == 0


def test_summary_scales_to_milliseconds() -> None:
    hist = Histogram.of([1000] * 90 + [5000] * 10)
    summary = hist.summary(scale=1000.0)
    assert summary["p50"] == pytest.approx(1.0, rel=RELATIVE_ERROR)
    assert summary["p90"] == pytest.approx(1.0, rel=RELATIVE_ERROR)
    assert summary["p99"] == pytest.approx(5.0, rel=RELATIVE_ERROR)
    assert summary["max"] == 5.0
    assert summary["mean"] == pytest.approx(1.4)
    assert summary["count"] == 100


def test_memory_is_fixed() -> None:
    hist = Histogram.of(range(0, 10_000_000, 997))
    assert len(hist.counts) == bucket_of(MAX_VALUE) + 1 < 4096
