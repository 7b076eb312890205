"""Reconnect policy: exponential backoff with jitter.

Defaults follow MQTTX (``ReconnectConfig``): first retry after 2 s, each next one 1.5 times
later, never more than 120 s apart. Jitter spreads a fleet of clients that lost the same
broker at the same moment, so they don't all come back in the same instant (AWS
"exponential backoff and jitter"): each delay is drawn uniformly from
``[delay × (1 - jitter), delay]``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ConfigurationError

__all__ = ["ReconnectPolicy"]

# MQTTX defaults: 2 s → ×1.5 → 120 s.
DEFAULT_INITIAL_DELAY = 2.0
DEFAULT_BACKOFF_FACTOR = 1.5
DEFAULT_MAX_DELAY = 120.0
# A fifth of the delay is random: enough to de-synchronise a fleet, small enough to keep
# the schedule predictable.
DEFAULT_JITTER = 0.2


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconnectPolicy:
    """How a client reconnects after losing its connection.

    Args:
        initial_delay: seconds before the first attempt.
        factor: each next delay is the previous one times *factor*.
        max_delay: the longest delay between attempts.
        jitter: the random fraction taken off each delay (0 disables jitter).
        max_attempts: give up after this many failed attempts (None: never).
    """

    initial_delay: float = DEFAULT_INITIAL_DELAY
    factor: float = DEFAULT_BACKOFF_FACTOR
    max_delay: float = DEFAULT_MAX_DELAY
    jitter: float = DEFAULT_JITTER
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("reconnect delays must not be negative")
        if self.factor < 1:
            raise ConfigurationError("the reconnect backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigurationError("reconnect jitter must be between 0 and 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1 (or None)")

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """The delay before each attempt, with jitter applied; ends after max_attempts."""
        uniform = (rng or random).uniform
        delay = min(self.initial_delay, self.max_delay)
        attempt = 0
        while self.max_attempts is None or attempt < self.max_attempts:
            attempt += 1
            yield uniform(delay * (1.0 - self.jitter), delay) if self.jitter else delay
            delay = min(delay * self.factor, self.max_delay)
