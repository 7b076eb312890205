"""Authentication failures limited per address: the limiter and the refusals it causes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.auth.support import MakeClient, StartBroker, mqtt, refused, start_broker
from tests.helpers.paho import V5, V311
from tidemq.auth.passwords import hash_password
from tidemq.auth.ratelimit import AuthFailureLimiter

__all__ = ["mqtt", "start_broker"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_block_after_failures_within_the_window() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(max_failures=3, window=10, block_time=30, clock=clock)
    assert not limiter.failure("a")
    assert not limiter.failure("a")
    assert not limiter.blocked("a")
    assert limiter.failure("a")
    assert limiter.blocked("a")
    assert not limiter.blocked("b")
    clock.now += 29
    assert limiter.blocked("a")
    clock.now += 2
    assert not limiter.blocked("a")  # the block is over and forgotten
    assert not limiter.failure("a")


def test_failures_outside_the_window_do_not_add_up() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(max_failures=2, window=10, block_time=30, clock=clock)
    limiter.failure("a")
    clock.now += 11
    assert not limiter.failure("a")
    assert limiter.failure("a")


def test_memory_is_bounded() -> None:
    limiter = AuthFailureLimiter(max_failures=2, max_addresses=3)
    for n in range(10):
        limiter.failure(f"10.0.0.{n}")
    assert len(limiter) == 3
    limiter.failure("10.0.0.9")
    assert limiter.blocked("10.0.0.9")
    limiter.reset("10.0.0.9")
    assert not limiter.blocked("10.0.0.9")
    limiter.reset()
    assert len(limiter) == 0
    with pytest.raises(ValueError, match="must be > 0"):
        AuthFailureLimiter(max_failures=0)


@pytest.mark.parametrize(("protocol", "blocked_code"), [(V311, 5), (V5, 0x9F)])
async def test_refused_quickly_after_failures(
    start_broker: StartBroker, mqtt: MakeClient, tmp_path: Path, protocol: int, blocked_code: int
) -> None:
    path = tmp_path / "passwd"
    path.write_text(f"alice:{hash_password('pw', 'pbkdf2')}\n")
    broker = await start_broker(
        {
            "auth.password_file.path": str(path),
            "auth.rate_limit.max_failures": 3,
            "auth.rate_limit.block_time": 60,
        }
    )
    for _ in range(3):
        assert await refused(broker.port, protocol, username="alice", password="bad") in (5, 0x87)
    # Blocked now, even with the right password: 0x9F Connection rate exceeded (3.1.1: 5).
    assert await refused(broker.port, protocol, username="alice", password="pw") == blocked_code
    assert broker.auth is not None
    broker.auth.rate_limiter.reset()
    await mqtt(broker.port, "a", protocol, username="alice", password="pw")
