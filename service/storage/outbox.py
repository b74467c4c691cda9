"""The webhook_outbox table: leasing due rows, marking them delivered, rescheduling.

Rows are written by ``ReviewStore.decide`` in the decision's own transaction; the
delivery worker (service/outbox.py) reads and updates them only through this store.
"""

from __future__ import annotations

from .db import Database, Row


class OutboxStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def lease_due(self, *, lease_seconds: float, batch: int) -> list[Row]:
        """Take up to ``batch`` due rows for ``lease_seconds``: each attempt is counted
        and the row hidden from other workers (``SKIP LOCKED``) until the lease ends,
        so a worker that dies mid-delivery only delays it."""
        return await self._db.fetchall(
            "lease_outbox",
            """
            UPDATE webhook_outbox SET attempts = attempts + 1,
                next_attempt_at = now() + make_interval(secs => %(lease)s)
            WHERE id IN (
                SELECT id FROM webhook_outbox
                WHERE delivered_at IS NULL AND next_attempt_at <= now()
                ORDER BY id LIMIT %(batch)s
                FOR UPDATE SKIP LOCKED)
            RETURNING id, review_id::text AS review_id, payload, trace_context, attempts
            """,
            {"lease": lease_seconds, "batch": batch},
        )

    async def mark_delivered(self, outbox_id: int) -> None:
        await self._db.execute(
            "mark_outbox_delivered",
            "UPDATE webhook_outbox SET delivered_at = now(), last_error = NULL WHERE id = %s",
            (outbox_id,),
        )

    async def reschedule(self, outbox_id: int, *, delay_seconds: float, error: str) -> None:
        await self._db.execute(
            "reschedule_outbox",
            "UPDATE webhook_outbox SET next_attempt_at = now() + make_interval(secs => %s),"
            " last_error = %s WHERE id = %s",
            (delay_seconds, error[:500], outbox_id),
        )

    async def pending_count(self) -> int:
        row = await self._db.fetchone(
            "count_outbox_pending",
            "SELECT count(*) AS n FROM webhook_outbox WHERE delivered_at IS NULL",
        )
        return int(row["n"]) if row else 0
