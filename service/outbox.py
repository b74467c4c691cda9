"""Decision webhook: at-least-once delivery from the webhook_outbox table.

A decision and its notification are written in one transaction (see
ReviewStore.decide). This worker leases due rows and delivers up to ``concurrency``
of them at once, never two of one review and never a review's later event before
an earlier one (OutboxStore.lease_due leases only each review's oldest undelivered
row). Each POST runs inside a span whose parent is the decision request's stored
trace context; a 2xx marks the row delivered, anything else schedules the next
attempt with exponential backoff and equal jitter.

A lease is short (``lease_seconds``) and renewed every third of it while the
delivery runs, so a slow downstream does not lose its lease, and the rows of a
worker that was killed mid-delivery are leased again within ``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
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


@dataclass(frozen=True, slots=True)
class OutboxPolicy:
    url: str
    timeout_seconds: float
    base_backoff_seconds: float
    max_backoff_seconds: float
    poll_seconds: float
    concurrency: int = 8
    lease_seconds: float = 10.0

    @property
    def renew_every_seconds(self) -> float:
        # Three renewals per lease: one slow or failed renewal does not lose it.
        return self.lease_seconds / 3


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
        self._in_flight: dict[int, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """Look for due rows now instead of at the next poll."""
        self._wakeup.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def run(self, stopping: Stopping) -> None:
        renewer = asyncio.create_task(self._renew_leases(stopping), name="hitl-outbox-leases")
        try:
            while not stopping.is_set:
                # Cleared before looking, so a wake-up (new decision, finished
                # delivery) that comes while we look is not lost.
                self._wakeup.clear()
                free = self.policy.concurrency - len(self._in_flight)
                if free > 0 and await self._start_due(free) == free:
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.policy.poll_seconds)
        finally:
            tasks = [renewer, *self._in_flight.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _start_due(self, free: int) -> int:
        """Lease up to ``free`` due rows and start delivering each; how many started."""
        try:
            # An idle poll (every poll_seconds, forever) must not start a trace; the
            # work a lease returns is traced under each decision's own trace instead.
            with untraced():
                rows = await self._store.lease_due(
                    lease_seconds=self.policy.lease_seconds, batch=free
                )
        except Exception as exc:  # a database hiccup must not end the worker
            log.warning("outbox_poll_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return 0
        for row in rows:
            task = asyncio.create_task(self._deliver(row), name=f"hitl-outbox-{row['id']}")
            self._in_flight[row["id"]] = task
            task.add_done_callback(functools.partial(self._finished, row))
        return len(rows)

    def _finished(self, row: Row, task: asyncio.Task[None]) -> None:
        self._in_flight.pop(row["id"], None)
        self._wakeup.set()
        if not task.cancelled() and task.exception() is not None:
            # Typically PostgreSQL went away between the POST and the bookkeeping: the
            # lease is no longer renewed, so the row is tried again when it ends.
            log.warning(
                "webhook_delivery_not_recorded",
                outbox_id=row["id"],
                review_id=row["review_id"],
                error=type(task.exception()).__name__,
            )

    async def _renew_leases(self, stopping: Stopping) -> None:
        with untraced():
            while not stopping.is_set:
                await stopping.sleep(self.policy.renew_every_seconds)
                if not self._in_flight:
                    continue
                try:
                    await self._store.renew_leases(
                        tuple(self._in_flight), lease_seconds=self.policy.lease_seconds
                    )
                except Exception as exc:
                    log.warning(
                        "outbox_lease_renewal_failed",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                    )

    async def backlog(self) -> tuple[int, float]:
        """Undelivered rows and the age of the oldest, in seconds."""
        return await self._store.backlog()

    async def _deliver(self, row: Row) -> None:
        """POST one row and record the outcome, all inside the decision's trace: its
        spans and every log line about this delivery name the decision's trace id."""
        carrier: dict[str, Any] = row["trace_context"] or {}
        with self._continue_trace(carrier, "webhook deliver"):
            await self._deliver_in_trace(row)

    async def _deliver_in_trace(self, row: Row) -> None:
        error = await self._post(row)
        if error is None:
            lag = await self._store.mark_delivered(row["id"])
            self._metrics.record_webhook_delivery(result="delivered", lag_seconds=lag)
            log.info(
                "webhook_delivered",
                outbox_id=row["id"],
                review_id=row["review_id"],
                attempts=row["attempts"],
                lag_seconds=round(lag, 3),
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
