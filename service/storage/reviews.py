"""SQL for reviews, decisions, validation results and the webhook outbox.

``ReviewStore`` is what the domain's ``ReviewRepository`` protocol (domain/ports.py)
asks for; each method that writes opens and ends its own transaction."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg2.extras

from ..domain.errors import AlreadyDecided, IdempotencyKeyReused, ReviewNotFound
from ..domain.models import Decision
from ..domain.ports import Decided, DecisionRequest, Notify
from ..domain.validation import PatternResult
from .db import Database, Executor, Row

_REVIEW_COLUMNS = """
    id::text AS id, apv_id, apv_code, cve_id, severity, source, package_name,
    package_version, package_ecosystem, patch, confidence, anomaly_score, cvss_score,
    wargaming, payload_sha256, status, created_at, decided_at
"""

_RECORD_COLUMNS = (
    "id, decision, reviewer, justification, modifications, from_status, to_status, decided_at"
)


# Every subquery reads one index of 0005_stats_indexes.sql: the open reviews' partial
# index, or the decision-time indexes from the window's start (%(window)s seconds ago),
# so nothing here reads the decided history before the window.
STATS_SQL = """
WITH open_counts AS MATERIALIZED (
  -- Maintained by a trigger on reviews (0008): eight rows, whatever the backlog.
  SELECT status, severity, n FROM review_queue_counts WHERE n > 0
), ttd AS (
  SELECT extract(epoch FROM r.decided_at - r.created_at) AS seconds
  FROM reviews r
  WHERE r.decided_at IS NOT NULL
    AND r.decided_at >= now() - %(window)s * interval '1 second'
)
SELECT
  (SELECT coalesce(jsonb_object_agg(severity, n), '{}'::jsonb) FROM (
     SELECT severity, sum(n) AS n FROM open_counts GROUP BY severity) s
  ) AS pending_by_severity,
  (SELECT coalesce(sum(n), 0) FROM open_counts
   WHERE status = 'escalated') AS escalated,
  (SELECT coalesce(jsonb_object_agg(decision, n), '{}'::jsonb) FROM (
     SELECT decision, count(*) AS n FROM review_decisions
     WHERE decided_at >= now() - %(window)s * interval '1 second'
     GROUP BY decision) d
  ) AS decisions_by_type,
  ttd_percentiles[1] AS ttd_median,
  ttd_percentiles[2] AS ttd_p95,
  (SELECT extract(epoch FROM now() - min(created_at)) FROM reviews
   WHERE status IN ('pending', 'escalated')) AS oldest_pending_age
-- Both percentiles from one sort of the window's times to decision.
FROM (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY seconds)
      AS ttd_percentiles FROM ttd) p
"""


# A page of reviews, keyset-paginated on (created_at, id) in either direction. The
# console's queue (the open states, oldest or newest first) reads
# reviews_open_created_idx (0005), so its cost follows the backlog, not the decided
# history: 0.1 ms for a page of 26 with 5,000 open among 300,000 reviews, both orders,
# with or without a severity filter (EXPLAIN ANALYZE).
_PAGE_SQL = f"""
    SELECT {_REVIEW_COLUMNS} FROM reviews
    WHERE (%(statuses)s::text[] IS NULL OR status = ANY(%(statuses)s::text[]))
      AND (%(severity)s::text IS NULL OR severity = %(severity)s)
      AND (%(source)s::text IS NULL OR source = %(source)s)
      AND (%(cve_id)s::text IS NULL OR cve_id = %(cve_id)s)
      AND (%(after_ts)s::timestamptz IS NULL
           OR (created_at, id) {{after}} (%(after_ts)s::timestamptz, %(after_id)s::uuid))
    ORDER BY created_at {{direction}}, id {{direction}}
    LIMIT %(limit)s
"""  # noqa: S608 - the f-string only inserts the fixed column list
_PAGE_NEWEST_FIRST = _PAGE_SQL.format(after="<", direction="DESC")
_PAGE_OLDEST_FIRST = _PAGE_SQL.format(after=">", direction="ASC")


class ReviewStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def insert_review(
        self,
        submission: dict[str, Any],
        payload_sha256: str,
        validation: Sequence[PatternResult],
    ) -> Row | None:
        """Insert a review and its validation results in one transaction; None when
        apv_id exists."""
        async with self.db.transaction() as tx:
            return await self._insert_review(tx, submission, payload_sha256, validation)

    async def _insert_review(
        self,
        tx: Executor,
        submission: dict[str, Any],
        payload_sha256: str,
        validation: Sequence[PatternResult],
    ) -> Row | None:
        package = submission["package"]
        row = await tx.fetchone(
            "insert_review",
            f"""
            INSERT INTO reviews (id, apv_id, apv_code, cve_id, severity, source,
                package_name, package_version, package_ecosystem, patch, confidence,
                anomaly_score, cvss_score, wargaming, payload_sha256)
            VALUES (%(id)s, %(apv_id)s, %(apv_code)s, %(cve_id)s, %(severity)s, %(source)s,
                %(package_name)s, %(package_version)s, %(package_ecosystem)s, %(patch)s,
                %(confidence)s, %(anomaly_score)s, %(cvss_score)s, %(wargaming)s,
                %(payload_sha256)s)
            ON CONFLICT (apv_id) DO NOTHING
            RETURNING {_REVIEW_COLUMNS}
            """,  # noqa: S608 - the f-string only inserts the fixed column list
            {
                "id": str(uuid.uuid4()),
                "apv_id": submission["apv_id"],
                "apv_code": submission["apv_code"],
                "cve_id": submission["cve_id"],
                "severity": submission["severity"],
                "source": submission["source"],
                "package_name": package["name"],
                "package_version": package["version"],
                "package_ecosystem": package["ecosystem"],
                "patch": submission["patch"],
                "confidence": submission["confidence"],
                "anomaly_score": submission["anomaly_score"],
                "cvss_score": submission.get("cvss_score"),
                "wargaming": _jsonb(submission.get("wargaming")),
                "payload_sha256": payload_sha256,
            },
        )
        if row is None:
            return None
        # One statement for all patterns: one round trip instead of one per pattern.
        await tx.execute(
            "insert_validation_results",
            "INSERT INTO validation_results"
            " (review_id, pattern_type, result, reason, duration_ms)"
            " SELECT %s::uuid, p, r, why, ms"
            " FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS v(p, r, why, ms)",
            (
                row["id"],
                [r.pattern_type for r in validation],
                [r.result.value for r in validation],
                [r.reason for r in validation],
                [round(r.duration_seconds * 1000, 3) for r in validation],
            ),
        )
        return row

    async def get_by_apv_id(self, apv_id: str) -> Row | None:
        return await self.db.fetchone(
            "select_review_by_apv",
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE apv_id = %s",  # noqa: S608 - fixed columns
            (apv_id,),
        )

    async def get_review(self, review_id: str) -> Row | None:
        return await self.db.fetchone(
            "select_review",
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE id = %s",  # noqa: S608 - fixed columns
            (review_id,),
        )

    async def validation_results(self, review_ids: Sequence[str]) -> dict[str, list[Row]]:
        async with self.db.connection() as ex:
            return await self._validation_results(ex, review_ids)

    async def _validation_results(
        self, ex: Executor, review_ids: Sequence[str]
    ) -> dict[str, list[Row]]:
        if not review_ids:
            return {}
        rows = await ex.fetchall(
            "select_validation_results",
            "SELECT review_id::text AS review_id, pattern_type, result, reason, duration_ms"
            " FROM validation_results WHERE review_id = ANY(%s::uuid[])"
            " ORDER BY review_id, pattern_type",
            (list(review_ids),),
        )
        grouped: dict[str, list[Row]] = {rid: [] for rid in review_ids}
        for row in rows:
            grouped[row.pop("review_id")].append(row)
        return grouped

    async def decisions(self, review_id: str) -> list[Row]:
        async with self.db.connection() as ex:
            return await self._decisions(ex, review_id)

    async def _decisions(self, ex: Executor, review_id: str) -> list[Row]:
        return await ex.fetchall(
            "select_decisions",
            "SELECT decision, reviewer, justification, modifications, from_status, to_status,"
            " decided_at FROM review_decisions WHERE review_id = %s ORDER BY id",
            (review_id,),
        )

    async def list_reviews(
        self,
        *,
        statuses: Sequence[str] | None,
        severity: str | None,
        source: str | None,
        cve_id: str | None,
        after: tuple[datetime, str] | None,
        limit: int,
        oldest_first: bool = False,
    ) -> list[Row]:
        # Each filter is "parameter IS NULL OR column = parameter": one fixed statement
        # per order, so nothing is ever concatenated from input.
        return await self.db.fetchall(
            "select_reviews_page_oldest" if oldest_first else "select_reviews_page",
            _PAGE_OLDEST_FIRST if oldest_first else _PAGE_NEWEST_FIRST,
            {
                "statuses": None if statuses is None else list(statuses),
                "severity": severity,
                "source": source,
                "cve_id": cve_id,
                "after_ts": after[0] if after else None,
                "after_id": after[1] if after else None,
                "limit": limit,
            },
        )

    async def decide(
        self, review_id: str, request: DecisionRequest, *, notify: Notify | None
    ) -> Decided:
        """Apply the decision, append its record, with ``notify`` queue its
        notification, and read what the response shows, all in one transaction: once
        COMMIT returns, the answer is built without another round trip, so a database
        lost after the commit cannot turn a decision that won into an error.

        A request the review's state refuses is answered as a replay when it repeats a
        stored decision; else ReviewNotFound, IdempotencyKeyReused or AlreadyDecided
        (rolled back: nothing written)."""
        async with self.db.transaction() as tx:
            moved = await self._move_review(tx, review_id, request.decision)
            if moved is None:
                return await self._replay_or_refuse(tx, review_id, request)
            if request.idempotency_key is not None and await self._record_with_key(
                tx, review_id, request
            ):
                # The row lock is ours, so every earlier decision on this review is
                # visible. A stored record with this key is never this very request: a
                # decision's target state never allows the same decision again (see
                # models.Decision.allowed_from), so the key now names something else.
                raise IdempotencyKeyReused(review_id)
            record = await self._append_record(tx, review_id, request, moved["from_status"])
            decided = Decided(
                review=moved,
                record=record,
                validation=(await self._validation_results(tx, [review_id]))[review_id],
                history=await self._decisions(tx, review_id),
            )
            if notify is not None:
                await self._enqueue_notification(tx, review_id, decided, notify)
        return decided

    async def _move_review(self, tx: Executor, review_id: str, decision: Decision) -> Row | None:
        """Move the review to the decision's state if, and only if, its current state
        allows it. The conditional UPDATE takes the row lock, so of two concurrent
        decisions exactly one matches. None when it did not match."""
        target = decision.target
        return await tx.fetchone(
            "update_review_status",
            f"""
            WITH previous AS (
                SELECT id, status FROM reviews WHERE id = %(id)s FOR UPDATE
            )
            UPDATE reviews r SET status = %(target)s,
                decided_at = CASE WHEN %(final)s THEN now() ELSE NULL END
            FROM previous
            WHERE r.id = previous.id AND previous.status = ANY(%(allowed)s)
            RETURNING previous.status AS from_status, {_prefixed_columns("r")}
            """,  # noqa: S608 - the f-string only inserts the fixed column list
            {
                "id": review_id,
                "target": target.value,
                "final": target.is_final,
                "allowed": [s.value for s in decision.allowed_from],
            },
        )

    async def _append_record(
        self, tx: Executor, review_id: str, request: DecisionRequest, from_status: str
    ) -> Row:
        record = await tx.fetchone(
            "insert_decision",
            "INSERT INTO review_decisions"  # noqa: S608 - only the fixed column list
            " (review_id, decision, reviewer, justification, modifications,"
            "  from_status, to_status, idempotency_key)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            f" RETURNING {_RECORD_COLUMNS}",
            (
                review_id,
                request.decision.value,
                request.reviewer,
                request.justification,
                _jsonb(request.modifications),
                from_status,
                request.decision.target.value,
                request.idempotency_key,
            ),
        )
        assert record is not None
        return record

    async def _replay_or_refuse(
        self, tx: Executor, review_id: str, request: DecisionRequest
    ) -> Decided:
        """The review's state refused the decision (the UPDATE waited for any decision
        holding the row lock, so the winner's record is visible now). A replay when
        the request repeats what is stored; otherwise the reason it is refused."""
        review = await tx.fetchone(
            "select_review",
            f"SELECT {_REVIEW_COLUMNS} FROM reviews WHERE id = %s",  # noqa: S608 - fixed columns
            (review_id,),
        )
        if review is None:
            raise ReviewNotFound(review_id)
        # The record the request's key names, wherever it is in the history; else the
        # latest: a decision that another one has since followed is no longer what the
        # review shows, so without a key it cannot be replayed.
        stored = None
        if request.idempotency_key is not None:
            stored = await self._record_with_key(tx, review_id, request)
            if stored is not None and not request.repeats(stored):
                raise IdempotencyKeyReused(review_id)
        if stored is None:
            stored = await tx.fetchone(
                "select_latest_decision",
                f"SELECT {_RECORD_COLUMNS} FROM review_decisions"  # noqa: S608 - fixed columns
                " WHERE review_id = %s ORDER BY id DESC LIMIT 1",
                (review_id,),
            )
        if stored is None or not request.repeats(stored):
            raise AlreadyDecided(review_id, review["status"], request.decision.value)
        return Decided(
            review=review,
            record=stored,
            validation=(await self._validation_results(tx, [review_id]))[review_id],
            history=await self._decisions(tx, review_id),
            replayed=True,
        )

    async def _record_with_key(
        self, tx: Executor, review_id: str, request: DecisionRequest
    ) -> Row | None:
        return await tx.fetchone(
            "select_decision_by_key",
            f"SELECT {_RECORD_COLUMNS} FROM review_decisions"  # noqa: S608 - fixed columns
            " WHERE review_id = %s AND reviewer = %s AND idempotency_key = %s",
            (review_id, request.reviewer, request.idempotency_key),
        )

    async def _enqueue_notification(
        self, tx: Executor, review_id: str, decided: Decided, notify: Notify
    ) -> None:
        notification = notify(decided.review, decided.record)
        await tx.execute(
            "insert_outbox",
            "INSERT INTO webhook_outbox (review_id, decision_id, payload, trace_context)"
            " VALUES (%s, %s, %s, %s)",
            (
                review_id,
                decided.record["id"],
                _jsonb(notification.payload),
                _jsonb(notification.trace_context),
            ),
        )

    async def stats(self, *, window_seconds: int) -> Row:
        row = await self.db.fetchone(
            "select_stats",
            STATS_SQL,
            {"window": window_seconds},
        )
        assert row is not None
        return row


    async def queue_backlog(self) -> list[Row]:
        # At most 4 severities x 2 states: the counts kept by the trigger of 0008, and
        # each label set's oldest review as the first entry of reviews_open_queue_idx
        # (0006) — neither the backlog nor the decided history is scanned.
        return await self.db.fetchall(
            "select_queue_backlog",
            """
            SELECT c.severity, c.status, c.n AS count,
                   extract(epoch FROM now() - o.oldest)::float8 AS oldest_seconds
            FROM review_queue_counts c
            CROSS JOIN LATERAL (
              SELECT min(r.created_at) AS oldest FROM reviews r
              WHERE r.status = c.status AND r.severity = c.severity
            ) o
            WHERE c.n > 0
            """,
        )


def _prefixed_columns(alias: str) -> str:
    columns = [c.strip() for c in _REVIEW_COLUMNS.replace("\n", " ").split(",")]
    out = []
    for column in columns:
        if column.startswith("id::text"):
            out.append(f"{alias}.id::text AS id")
        else:
            out.append(f"{alias}.{column}")
    return ", ".join(out)


def _jsonb(value: Any) -> psycopg2.extras.Json | None:
    return None if value is None else psycopg2.extras.Json(value, dumps=json.dumps)
