"""The webhook_outbox table: leasing due rows, renewing leases, marking them delivered,
rescheduling, pruning delivered rows past their retention.

Rows are written by ``ReviewStore.decide`` in the decision's own transaction; the
delivery worker (service/outbox.py) reads and updates them only through this store.
"""

from __future__ import annotations

from collections.abc import Collection

from .db import Database, Row


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def lease_due(self, *, lease_seconds: float, batch: int) -> list[Row]:
        """Take up to ``batch`` due rows for ``lease_seconds``: each attempt is counted
        and the row hidden from other workers (``SKIP LOCKED``, then its lease) until
        the lease ends, so a worker that dies mid-delivery only delays it.

        Only the oldest undelivered row of each review is eligible: a review's later
        event waits until the earlier one is delivered, and no review ever has two
        deliveries in flight (its head row is leased or backing off)."""
        return await self._db.fetchall(
            "lease_outbox",
            """
            UPDATE webhook_outbox SET attempts = attempts + 1,
                next_attempt_at = now() + make_interval(secs => %(lease)s),
                leased_until = now() + make_interval(secs => %(lease)s)
            WHERE id IN (
                SELECT o.id FROM webhook_outbox o
                WHERE o.delivered_at IS NULL AND o.next_attempt_at <= now()
                  AND NOT EXISTS (
                    SELECT 1 FROM webhook_outbox earlier
                    WHERE earlier.review_id = o.review_id AND earlier.delivered_at IS NULL
                      AND earlier.id < o.id)
                ORDER BY o.id LIMIT %(batch)s
                FOR UPDATE SKIP LOCKED)
            RETURNING id, review_id::text AS review_id, payload, trace_context, attempts
            """,
            {"lease": lease_seconds, "batch": batch},
        )

    async def renew_leases(self, outbox_ids: Collection[int], *, lease_seconds: float) -> int:
        """Extend the lease of rows still in flight (a heartbeat); a row delivered or
        rescheduled meanwhile is left alone. Returns how many were renewed."""
        if not outbox_ids:
            return 0
        return await self._db.execute(
            "renew_outbox_leases",
            "UPDATE webhook_outbox SET next_attempt_at = now() + make_interval(secs => %s),"
            " leased_until = now() + make_interval(secs => %s)"
            " WHERE id = ANY(%s) AND delivered_at IS NULL AND leased_until IS NOT NULL",
            (lease_seconds, lease_seconds, list(outbox_ids)),
        )

    async def mark_delivered(self, outbox_id: int) -> float:
        """Mark a row delivered; returns seconds since the decision wrote it."""
        row = await self._db.fetchone(
            "mark_outbox_delivered",
            "UPDATE webhook_outbox SET delivered_at = now(), last_error = NULL,"
            " leased_until = NULL WHERE id = %s"
            " RETURNING extract(epoch FROM now() - created_at)::float8 AS lag_seconds",
            (outbox_id,),
        )
        return float(row["lag_seconds"]) if row else 0.0

    async def reschedule(self, outbox_id: int, *, delay_seconds: float, error: str) -> None:
        await self._db.execute(
            "reschedule_outbox",
            "UPDATE webhook_outbox SET next_attempt_at = now() + make_interval(secs => %s),"
            " last_error = %s, leased_until = NULL WHERE id = %s",
            (delay_seconds, error[:500], outbox_id),
        )

    async def pending_count(self) -> int:
        depth, _ = await self.backlog()
        return depth

    async def backlog(self) -> tuple[int, float]:
        """Undelivered rows, and the age in seconds of the oldest (0 when none)."""
        row = await self._db.fetchone(
            "count_outbox_pending",
            "SELECT count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            "::float8 AS oldest FROM webhook_outbox WHERE delivered_at IS NULL",
        )
        return (int(row["n"]), float(row["oldest"])) if row else (0, 0.0)

    async def prune_delivered(self, *, older_than_seconds: float, batch: int) -> int:
        """Delete up to ``batch`` rows delivered more than ``older_than_seconds`` ago, in
        one short autocommit statement; returns how many. An undelivered row is never
        deleted, whatever its age, and the decision history (review_decisions) is not
        touched. Rows another session holds locked are skipped, not waited for."""
        return await self._db.execute(
            "prune_outbox_delivered",
            "DELETE FROM webhook_outbox WHERE delivered_at IS NOT NULL AND id IN ("
            " SELECT id FROM webhook_outbox WHERE delivered_at IS NOT NULL"
            " AND delivered_at < now() - make_interval(secs => %s)"
            " LIMIT %s FOR UPDATE SKIP LOCKED)",
            (older_than_seconds, batch),
        )
