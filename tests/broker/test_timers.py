"""The broker's one scheduler (tidemq/broker/timers.py): order, lazy cancellation, and the
compaction that keeps cancelled far-off entries (session expiry, a JWT's exp) from piling up
in the heap of a broker whose clients reconnect all day."""

from __future__ import annotations

import asyncio
import gc
import weakref

from tidemq.broker.timers import COMPACT_MIN, Scheduler


async def test_entries_fire_in_deadline_order_and_cancelled_ones_do_not() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    fired: list[str] = []
    done = loop.create_future()
    now = loop.time()
    scheduler.call_at(now + 0.03, fired.append, "c")
    scheduler.call_at(now + 0.01, fired.append, "a")
    scheduler.call_at(now + 0.02, fired.append, "never").cancel()
    scheduler.call_at(now + 0.02, fired.append, "b")
    scheduler.call_at(now + 0.04, done.set_result, None)
    await asyncio.wait_for(done, 5)
    assert fired == ["a", "b", "c"]
    scheduler.close()


async def test_cancelled_far_off_entries_are_compacted() -> None:
    scheduler = Scheduler(asyncio.get_running_loop())
    far = scheduler.time() + 86_400  # a day away: they would otherwise stay a day
    keep = [scheduler.call_at(far, lambda: None) for _ in range(10)]
    for _ in range(20 * COMPACT_MIN):
        scheduler.call_at(far, lambda: None).cancel()
    # Bounded by the live entries, not by everything ever scheduled.
    assert len(scheduler._heap) <= 2 * COMPACT_MIN
    assert len(scheduler) == len(keep)
    live = [entry for _, _, entry in scheduler._heap if not entry.cancelled]
    assert sorted(map(id, live)) == sorted(map(id, keep))
    scheduler.close()


async def test_compaction_keeps_the_order_of_live_entries() -> None:
    loop = asyncio.get_running_loop()
    scheduler = Scheduler(loop)
    fired: list[int] = []
    done = loop.create_future()
    now = loop.time()
    for i in range(3 * COMPACT_MIN):
        entry = scheduler.call_at(now + 0.01 + (i % 50) / 1000, fired.append, i)
        if i % 3:
            entry.cancel()
    scheduler.call_at(now + 0.2, done.set_result, None)
    await asyncio.wait_for(done, 5)
    expected = sorted((i for i in range(3 * COMPACT_MIN) if i % 3 == 0), key=lambda i: (i % 50, i))
    assert fired == expected
    scheduler.close()


async def test_a_cancelled_entry_lets_go_of_its_arguments() -> None:
    scheduler = Scheduler(asyncio.get_running_loop())

    class Session:
        pass

    session = Session()
    ref = weakref.ref(session)
    entry = scheduler.call_later(86_400, print, session)
    del session
    gc.collect()
    assert ref() is not None  # scheduled: the entry holds it
    entry.cancel()
    gc.collect()
    assert ref() is None  # cancelled: gone now, not a day later
    scheduler.close()
