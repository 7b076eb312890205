"""``node.gc_threshold``: ``tidemq serve`` tunes the garbage collector once started."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from tidemq.cli import tune_gc
from tidemq.config import load_config

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def gc_state() -> Iterator[tuple[int, int, int]]:
    before = gc.get_threshold()
    yield before
    gc.unfreeze()
    gc.set_threshold(*before)


def test_threshold_is_set_and_start_up_objects_frozen(gc_state: tuple[int, int, int]) -> None:
    kept = [object() for _ in range(10)]  # noqa: F841 - alive across the freeze
    tune_gc(20_000)
    assert gc.get_threshold() == (20_000, gc_state[1], gc_state[2])
    assert gc.get_freeze_count() > 0


def test_zero_leaves_the_collector_alone(gc_state: tuple[int, int, int]) -> None:
    tune_gc(0)
    assert gc.get_threshold() == gc_state
    assert gc.get_freeze_count() == 0


def test_default_and_override() -> None:
    assert load_config(None, env={}).node.gc_threshold == 20_000
    assert load_config(None, env={"TIDEMQ_NODE_GC_THRESHOLD": "0"}).node.gc_threshold == 0
    assert (
        load_config(None, env={}, overrides={"node.gc_threshold": "5000"}).node.gc_threshold == 5000
    )
