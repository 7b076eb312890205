"""Authentication failures rate-limited per client address.

After ``max_failures`` refused authentications from one address within ``window`` seconds,
that address is blocked for ``block_time`` seconds: its CONNECTs are refused before any
source is asked (MQTT 5: CONNACK 0x9F Connection rate exceeded; 3.1.1: 5 Not authorized),
so password guessing costs the guesser time and the broker no hashing. Memory is bounded:
at most ``max_addresses`` addresses are tracked, the least recently seen dropped first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["AuthFailureLimiter"]


class _Entry:
    __slots__ = ("blocked_until", "count", "window_start")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.count = 0
        self.blocked_until = 0.0


class AuthFailureLimiter:
    def __init__(
        self,
        *,
        max_failures: int = 10,
        window: float = 60.0,
        block_time: float = 60.0,
        max_addresses: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window <= 0 or block_time <= 0 or max_addresses < 1:
            raise ValueError("max_failures, window, block_time and max_addresses must be > 0")
        self.max_failures = max_failures
        self.window = window
        self.block_time = block_time
        self.max_addresses = max_addresses
        self.clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def blocked(self, address: str) -> bool:
        """Whether CONNECTs from *address* are refused now."""
        entry = self._entries.get(address)
        if entry is None or not entry.blocked_until:
            return False
        if self.clock() < entry.blocked_until:
            return True
        del self._entries[address]  # the block is over: start afresh
        return False

    def failure(self, address: str) -> bool:
        """Count one failed authentication; returns whether the address is now blocked."""
        now = self.clock()
        entries = self._entries
        entry = entries.get(address)
        if entry is None or now - entry.window_start >= self.window:
            entry = _Entry(now)
            entries[address] = entry
        entries.move_to_end(address)
        entry.count += 1
        if entry.count >= self.max_failures and not entry.blocked_until:
            entry.blocked_until = now + self.block_time
        while len(entries) > self.max_addresses:
            entries.popitem(last=False)
        return bool(entry.blocked_until)

    def reset(self, address: str | None = None) -> None:
        """Forget one address, or all."""
        if address is None:
            self._entries.clear()
        else:
            self._entries.pop(address, None)
