"""Decision webhook: at-least-once delivery from the webhook_outbox table.

A decision and its notification are written in one transaction (see
ReviewStore.decide). This worker leases due rows (so a crash mid-delivery only
delays a row until its lease runs out), POSTs each one inside a span whose parent is
the decision request's stored trace context, marks it delivered on 2xx, and otherwise
schedules the next attempt with exponential backoff and equal jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from telemetry import untraced

from .background import Stopping
from .metrics import ReviewMetrics
from .storage.db import Row
from .storage.outbox import OutboxStore

log = structlog.get_logger("hitl.outbox")

LEASE_SECONDS = 60
BATCH = 20


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    url: str
    timeout_seconds: float
    base_backoff_seconds: float
    max_backoff_seconds: float
    poll_seconds: float


# Runs a block in a span whose parent is a stored trace context (carrier, span name):
# telemetry.continue_trace bound to the app.
ContinueTrace = Callable[[Mapping[str, str], str], AbstractContextManager[Any]]


class OutboxWorker:
    def __init__(
        self,
        store: OutboxStore,
        session: aiohttp.ClientSession,
        metrics: ReviewMetrics,
        policy: OutboxPolicy,
        continue_trace: ContinueTrace,
    ) -> None:
        self._continue_trace = continue_trace
        self._store = store
        self._session = session
        self._metrics = metrics
        self.policy = policy
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Look for due rows now instead of at the next poll."""
        self._wakeup.set()

    async def run(self, stopping: Stopping) -> None:
        while not stopping.is_set:
            try:
                delivered_any = await self.deliver_due()
            except Exception as exc:  # a database hiccup must not end the worker
                log.warning("outbox_poll_failed", error=type(exc).__name__, detail=str(exc)[:200])
                delivered_any = False
            if delivered_any:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.policy.poll_seconds)
            self._wakeup.clear()

    async def deliver_due(self) -> bool:
        # An idle poll (every poll_seconds, forever) must not start a trace; the work
        # a lease returns is traced under each decision's own trace instead.
        with untraced():
            rows = await self._lease_due()
        for row in rows:
            await self._deliver(row)
        return bool(rows)

    async def pending_count(self) -> int:
        return await self._store.pending_count()

    async def _lease_due(self) -> list[Row]:
        return await self._store.lease_due(lease_seconds=LEASE_SECONDS, batch=BATCH)

    async def _deliver(self, row: Row) -> None:
        """POST one row and record the outcome, all inside the decision's trace: its
        spans and every log line about this delivery name the decision's trace id."""
        carrier: dict[str, Any] = row["trace_context"] or {}
        with self._continue_trace(carrier, "webhook deliver"):
            await self._deliver_in_trace(row)

    async def _deliver_in_trace(self, row: Row) -> None:
        error = await self._post(row)
        if error is None:
            await self._store.mark_delivered(row["id"])
            self._metrics.record_webhook_delivery(result="delivered")
            log.info(
                "webhook_delivered",
                outbox_id=row["id"],
                review_id=row["review_id"],
                attempts=row["attempts"],
            )
            return
        delay = self.backoff(row["attempts"])
        await self._store.reschedule(row["id"], delay_seconds=delay, error=error)
        self._metrics.record_webhook_delivery(result="failed")
        log.warning(
            "webhook_delivery_failed",
            outbox_id=row["id"],
            review_id=row["review_id"],
            attempts=row["attempts"],
            retry_in_seconds=round(delay, 2),
            error=error,
        )

    async def _post(self, row: Row) -> str | None:
        """None on success, else what went wrong."""
        headers = {"X-Hitl-Delivery-Id": str(row["id"]), "Idempotency-Key": f"outbox-{row['id']}"}
        try:
            timeout = aiohttp.ClientTimeout(total=self.policy.timeout_seconds)
            async with self._session.post(
                self.policy.url, json=row["payload"], headers=headers, timeout=timeout
            ) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return None
                return f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"[:300]

    def backoff(self, attempts: int) -> float:
        ceiling = min(
            self.policy.max_backoff_seconds,
            self.policy.base_backoff_seconds * 2 ** max(attempts - 1, 0),
        )
        # "Equal jitter": at least half the backoff, so a dead downstream is not hammered,
        # yet many rows failing together spread their retries apart.
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - not cryptographic
