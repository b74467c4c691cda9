"""A circuit breaker for an optional dependency (the Redis cache).

A hung Redis costs every call its full timeout; after ``failure_threshold`` failures
in a row the breaker opens and callers skip the dependency for ``cool_down_seconds``.
Then one call is let through as a probe (half-open): success closes the breaker,
failure opens it for another cool-down.

    closed --N failures in a row--> open --cool-down--> half-open --probe ok--> closed
                                      ^                      |
                                      +-----probe failed-----+
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


class CircuitState(enum.IntEnum):
    """The value is what the hitl_cache_circuit_state gauge shows."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failure_threshold: int = 5
    cool_down_seconds: float = 5.0


def _ignore(state: CircuitState) -> None:
    pass


class CircuitBreaker:
    """Decides whether a call may go to the dependency; told how each call ended.

    Single event loop, no awaits inside: no lock is needed.
    """

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        on_change: Callable[[CircuitState], None] = _ignore,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._on_change = on_change
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None

    @property
    def state(self) -> CircuitState:
        return self._state

    @property
    def is_open(self) -> bool:
        """Open or half-open: callers are being turned away."""
        return self._state is not CircuitState.CLOSED

    def allow(self) -> bool:
        """May a call go to the dependency now? In half-open, only the probe may."""
        if self._state is CircuitState.CLOSED:
            return True
        now = self._clock()
        if self._state is CircuitState.OPEN:
            if now - self._opened_at < self.policy.cool_down_seconds:
                return False
            self._set(CircuitState.HALF_OPEN)
            self._probe_started_at = None
        # A probe that never reported back (cancelled mid-call) must not keep the
        # breaker half-open forever: after a cool-down another probe may go.
        if (
            self._probe_started_at is not None
            and now - self._probe_started_at < self.policy.cool_down_seconds
        ):
            return False
        self._probe_started_at = now
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._probe_started_at = None
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or (
            self._state is CircuitState.CLOSED and self._failures >= self.policy.failure_threshold
        ):
            self._opened_at = self._clock()
            self._probe_started_at = None
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        self._state = state
        self._on_change(state)
