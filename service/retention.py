"""Retention of the webhook outbox: delivered rows are kept for ``retention_seconds``
(HITL_OUTBOX_RETENTION_SECONDS, default 7 days), then deleted by a background task.

The task runs once shortly after start and then every ``interval_seconds``. Each run
deletes in batches of ``batch`` rows, each its own short statement, with a pause
between batches, until a batch comes back short: the table is never locked for long
and deliveries go on meanwhile. Undelivered rows are never pruned, whatever their
age, and the decision history (review_decisions, append-only) is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from telemetry import untraced

from .background import Stopping
from .metrics import ReviewMetrics
from .storage.outbox import OutboxStore

log = structlog.get_logger("hitl.retention")


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    retention_seconds: float
    interval_seconds: float
    batch: int = 500
    pause_seconds: float = 0.05
    # The first run waits this long (or the interval, if shorter), so start-up is not
    # slowed and a crash loop does not prune on every restart.
    first_run_after_seconds: float = 30.0

    @property
    def first_run_delay(self) -> float:
        return min(self.first_run_after_seconds, self.interval_seconds)


class OutboxPruner:
    def __init__(self, store: OutboxStore, metrics: ReviewMetrics, policy: RetentionPolicy) -> None:
        self._store = store
        self._metrics = metrics
        self.policy = policy

    async def prune_once(self, stopping: Stopping | None = None) -> int:
        """Delete every delivered row past the retention, batch by batch; how many.
        Stops between batches when ``stopping`` is set."""
        stopping = stopping or Stopping()
        total = batches = 0
        while True:
            deleted = await self._store.prune_delivered(
                older_than_seconds=self.policy.retention_seconds, batch=self.policy.batch
            )
            batches += 1
            if deleted:
                total += deleted
                self._metrics.record_outbox_pruned(deleted)
            if deleted < self.policy.batch or stopping.is_set:
                break
            await stopping.sleep(self.policy.pause_seconds)
            if stopping.is_set:
                break
        if total:
            log.info(
                "webhook_outbox_pruned",
                rows=total,
                batches=batches,
                retention_seconds=self.policy.retention_seconds,
            )
        return total

    async def run(self, stopping: Stopping) -> None:
        # A poll every hour, forever: machine chatter, so no trace of its own; the
        # counter and the log line of a run that deleted rows are its record.
        with untraced():
            await stopping.sleep(self.policy.first_run_delay)
            while not stopping.is_set:
                try:
                    await self.prune_once(stopping)
                except Exception as exc:  # a database hiccup must not end the task
                    log.warning(
                        "webhook_outbox_prune_failed",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                    )
                await stopping.sleep(self.policy.interval_seconds)
