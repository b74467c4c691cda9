"""The review queue's backlog, measured for /metrics: how many reviews wait, and how
long the oldest has waited, by severity and open state.

Every scrape asks for a refresh, but the backlog is read from PostgreSQL at most once
per ``interval_seconds`` whatever the number of scrapers; scrapes that arrive while a
read runs wait for that read rather than start another. A read that fails (PostgreSQL
down) or outlasts ``wait_seconds`` leaves the last values in place and the scrape
answers with them: the gauges may go stale, /metrics never fails for them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

import structlog

from .models import OPEN_STATUSES, Severity
from .ports import ReviewRepository

log = structlog.get_logger("hitl.queue")

# The backlog metrics carry one of models.OPEN_STATUSES as `status`.
# Every label set the backlog metrics have: the closed severity set times the open states.
QUEUE_LABEL_SETS: Final = tuple((s.value, o.value) for s in Severity for o in OPEN_STATUSES)
# A scrape waits at most this long for a read (the telemetry collector timeout is 2 s,
# Prometheus' scrape timeout 10 s); a slower read finishes in the background.
DEFAULT_WAIT_SECONDS: Final = 1.0


@dataclass(frozen=True, slots=True)
class Backlog:
    """Reviews waiting in one (severity, status), and the age of the oldest in seconds
    (0 when none wait)."""

    count: int = 0
    oldest_seconds: float = 0.0


QueueKey = tuple[str, str]  # (severity, status)


class BacklogGauges(Protocol):
    """Where the backlog is published (``service.metrics.ReviewMetrics``)."""

    def set_review_queue(self, backlog: Mapping[QueueKey, Backlog]) -> None: ...


class QueueMonitor:
    """Refreshes the backlog gauges from the repository, at most once per interval."""

    def __init__(
        self,
        repository: ReviewRepository,
        gauges: BacklogGauges,
        *,
        interval_seconds: float,
        wait_seconds: float = DEFAULT_WAIT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._repository = repository
        self._gauges = gauges
        self._interval = interval_seconds
        self._wait = wait_seconds
        self._clock = clock
        self._started_at: float | None = None
        self._running: asyncio.Task[None] | None = None
        self.reads = 0  # reads started, for tests and logs

    async def refresh(self) -> None:
        """Start a read when none ran within the interval, then wait (bounded) for the
        one in flight, if any."""
        task = self._running
        if task is None:
            now = self._clock()
            if self._started_at is not None and now - self._started_at < self._interval:
                return
            # Stamped at the start, success or not: a PostgreSQL that is down is asked
            # once per interval, not by every scrape.
            self._started_at = now
            self.reads += 1
            task = self._running = asyncio.create_task(self._read(), name="hitl-queue-read")
            task.add_done_callback(self._finished)
        try:
            async with asyncio.timeout(self._wait):
                # shield: a scrape that gives up must not cancel the read others share.
                await asyncio.shield(task)
        except TimeoutError:
            log.warning("review_queue_read_slow", wait_seconds=self._wait)

    async def close(self) -> None:
        """Cancel a read still in flight (at shutdown, before the pool closes)."""
        task = self._running
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        if self._running is task:
            self._running = None

    async def _read(self) -> None:
        try:
            rows = await self._repository.queue_backlog()
        except Exception as exc:
            # The class only: a driver's message may carry the DSN.
            log.warning("review_queue_read_failed", error=type(exc).__name__)
            return
        backlog = {key: Backlog() for key in QUEUE_LABEL_SETS}
        for row in rows:
            key = (str(row["severity"]), str(row["status"]))
            if key in backlog:
                backlog[key] = Backlog(int(row["count"]), max(float(row["oldest_seconds"]), 0.0))
        self._gauges.set_review_queue(backlog)
