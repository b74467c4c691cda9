"""Review use cases: submit, read, list, decide, stats. The one place that knows the
order of things: validate, write to PostgreSQL, then count and touch the cache.

Storage is reached only through the protocols of ports.py; no SQL here."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ApvConflict, FieldError, ReviewNotFound, ValidationFailed
from .models import OPEN_STATUSES, Decision, Severity
from .ports import (
    DecisionRequest,
    Notification,
    ReviewCache,
    ReviewChange,
    ReviewEvents,
    ReviewFeed,
    ReviewRepository,
    Row,
)
from .validation import PatternResult, validate_apv


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    anomaly_threshold: float
    review_cache_ttl_seconds: int
    stats_cache_ttl_seconds: int
    stats_window_seconds: int
    notify_decisions: bool


@dataclass(frozen=True, slots=True)
class Submitted:
    review: dict[str, Any]
    created: bool


@dataclass(frozen=True, slots=True)
class Judged:
    """A decision's answer: the review, and whether it replays an earlier request."""

    review: dict[str, Any]
    replayed: bool


def _no_trace_context() -> dict[str, str]:
    return {}


class _NoFeed:
    """Nobody watches: the feed until the live updates are wired (service/live)."""

    async def publish(self, change: ReviewChange) -> None:
        pass


SUBMITTED = "review.submitted"
DECIDED = "review.decided"


class ReviewService:
    def __init__(
        self,
        store: ReviewRepository,
        cache: ReviewCache,
        metrics: ReviewEvents,
        policy: ReviewPolicy,
        *,
        on_notification: Callable[[], None] = lambda: None,
        trace_carrier: Callable[[], dict[str, str]] = _no_trace_context,
        feed: ReviewFeed | None = None,
    ) -> None:
        """``trace_carrier`` returns the current trace context as W3C headers; stored
        with each notification so its delivery continues the decision's trace.
        ``feed`` hears of every committed submission and decision (the live console)."""
        self.on_notification = on_notification
        self.feed: ReviewFeed = feed if feed is not None else _NoFeed()
        self.store = store
        self.cache = cache
        self.metrics = metrics
        self.policy = policy
        self.trace_carrier = trace_carrier

    # -- intake ---------------------------------------------------------------------

    def validate(self, apv: dict[str, Any]) -> list[PatternResult]:
        results = validate_apv(apv, anomaly_threshold=self.policy.anomaly_threshold)
        for r in results:
            self.metrics.record_apv_validation(
                pattern_type=r.pattern_type, result=r.result.value, duration=r.duration_seconds
            )
        return results

    async def submit(self, submission: dict[str, Any]) -> Submitted:
        digest = payload_digest(submission)
        results = validate_apv(submission, anomaly_threshold=self.policy.anomaly_threshold)
        row = await self.store.insert_review(submission, digest, results)
        if row is None:
            existing = await self.store.get_by_apv_id(submission["apv_id"])
            if existing is None:  # deleted in between: cannot happen, reviews are kept
                raise ApvConflict(submission["apv_id"], "unknown")
            if existing["payload_sha256"] != digest:
                raise ApvConflict(submission["apv_id"], existing["id"])
            return Submitted(await self._detail(existing), created=False)
        # Counted only now that the transaction committed.
        self.metrics.record_review_created(severity=row["severity"], source=row["source"])
        for r in results:
            self.metrics.record_apv_validation(
                pattern_type=r.pattern_type, result=r.result.value, duration=r.duration_seconds
            )
        await self.cache.delete(self._stats_key())
        review = review_json(row, [r.as_json() for r in results], [])
        # Last: announced once committed and the cache no longer holds older stats.
        await self.feed.publish(change_of(SUBMITTED, row, None))
        return Submitted(review, created=True)

    # -- reading --------------------------------------------------------------------

    async def get(self, review_id: str) -> dict[str, Any]:
        check_uuid(review_id)
        key = self._review_key(review_id)
        cached = await self.cache.get_json(key)
        if cached is not None:
            return dict(cached)
        row = await self.store.get_review(review_id)
        if row is None:
            raise ReviewNotFound(review_id)
        review = await self._detail(row)
        # Only if absent: a decision committed while we were reading has already
        # written the newer state, which must win.
        await self.cache.set_json(
            key, review, self.policy.review_cache_ttl_seconds, only_if_absent=True
        )
        return review

    async def list(
        self,
        *,
        status: str | Collection[str] | None,
        severity: str | None,
        source: str | None,
        cve_id: str | None,
        cursor: str,
        limit: int,
        oldest_first: bool = False,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of reviews and the cursor of the next one (None on the last).
        ``status``: one state, several (the console's queue: both open states), or
        None for all. A cursor continues the order it was issued in."""
        after = decode_cursor(cursor)
        statuses = (status,) if isinstance(status, str) else status
        rows = await self.store.list_reviews(
            statuses=None if statuses is None else tuple(statuses),
            severity=severity,
            source=source,
            cve_id=cve_id,
            after=after,
            limit=limit + 1,
            oldest_first=oldest_first,
        )
        page, more = rows[:limit], len(rows) > limit
        validation = await self.store.validation_results([r["id"] for r in page])
        items = [review_json(r, validation.get(r["id"], []), None) for r in page]
        next_cursor = encode_cursor(page[-1]["created_at"], page[-1]["id"]) if more else None
        return items, next_cursor

    async def open_counts(self) -> dict[str, dict[str, int]]:
        """Open reviews by state then severity, every pair present (0 when none):
        the counts migration 0008's trigger keeps, so the cost is eight rows."""
        counts = {s.value: {v.value: 0 for v in Severity} for s in OPEN_STATUSES}
        for row in await self.store.queue_backlog():
            status, severity = str(row["status"]), str(row["severity"])
            if status in counts and severity in counts[status]:
                counts[status][severity] = int(row["count"])
        return counts

    async def stats(self) -> dict[str, Any]:
        key = self._stats_key()
        cached = await self.cache.get_json(key)
        if cached is not None:
            return dict(cached)
        window = self.policy.stats_window_seconds
        row = await self.store.stats(window_seconds=window)
        stats = {
            "window_seconds": window,
            "pending_by_severity": {
                s.value: int(row["pending_by_severity"].get(s.value, 0)) for s in Severity
            },
            "escalated": int(row["escalated"]),
            "decisions_by_type": {
                d.value: int(row["decisions_by_type"].get(d.value, 0)) for d in Decision
            },
            "time_to_decision_seconds": {
                "median": _float_or_none(row["ttd_median"]),
                "p95": _float_or_none(row["ttd_p95"]),
            },
            "oldest_pending_age_seconds": _float_or_none(row["oldest_pending_age"]),
        }
        await self.cache.set_json(key, stats, self.policy.stats_cache_ttl_seconds)
        return stats

    # -- deciding -------------------------------------------------------------------

    async def decide(
        self,
        review_id: str,
        *,
        decision: Decision,
        reviewer: str,
        justification: str | None,
        modifications: dict[str, Any] | None,
        idempotency_key: str | None = None,
    ) -> Judged:
        check_uuid(review_id)
        request = DecisionRequest(decision, reviewer, justification, modifications, idempotency_key)
        notifies = self.policy.notify_decisions and decision.target.is_final
        # Raises ReviewNotFound, IdempotencyKeyReused or AlreadyDecided when refused.
        decided = await self.store.decide(
            review_id, request, notify=self._notification if notifies else None
        )
        # Everything below is built from what the transaction returned: no query after
        # the commit, so losing PostgreSQL now cannot answer a won decision with a 503.
        review = review_json(decided.review, decided.validation, decided.history)
        if not decided.replayed:
            # After commit: a rolled-back decision is neither counted nor notified, and
            # a replay wrote nothing, so it is counted and notified once, by the original.
            if notifies:
                self.on_notification()
            waited = decided.record["decided_at"] - decided.review["created_at"]
            self.metrics.record_review_decision(
                decision=decision.value,
                severity=decided.review["severity"],
                duration=waited.total_seconds(),
            )
        if decided.replayed:
            # The original's cache write may have been lost with its response; a
            # replay only drops the entry (the next read refills it from PostgreSQL),
            # since what it read may be older than a decision committed since.
            await self.cache.delete(self._review_key(review_id), self._stats_key())
        else:
            # Write-through, not just delete: a concurrent read that loaded the review
            # before this commit fills the cache only if the key is absent (below), so
            # it can no longer put the old state back after this decision.
            await self.cache.set_json(
                self._review_key(review_id), review, self.policy.review_cache_ttl_seconds
            )
            await self.cache.delete(self._stats_key())
            # Last: a console that reloads the review on this news must read the new
            # state, which the cache holds only now. A replay announces nothing: the
            # original did.
            await self.feed.publish(change_of(DECIDED, decided.review, decided.record))
        return Judged(review, replayed=decided.replayed)

    # -- helpers --------------------------------------------------------------------

    def _notification(self, row: Row, record: Row) -> Notification:
        # Called inside the decision's transaction, while the request's span is current.
        return Notification(notification(row, record), self.trace_carrier())

    async def _detail(self, row: Row) -> dict[str, Any]:
        validation = await self.store.validation_results([row["id"]])
        decisions = await self.store.decisions(row["id"])
        return review_json(row, validation.get(row["id"], []), decisions)

    def _review_key(self, review_id: str) -> str:
        return self.cache.key("review", review_id)

    def _stats_key(self) -> str:
        return self.cache.key("stats")


def payload_digest(submission: dict[str, Any]) -> str:
    canonical = json.dumps(submission, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def review_json(
    row: Row, validation: list[dict[str, Any]] | list[Row], decisions: list[Row] | None
) -> dict[str, Any]:
    review: dict[str, Any] = {
        "id": row["id"],
        "apv_id": row["apv_id"],
        "apv_code": row["apv_code"],
        "cve_id": row["cve_id"],
        "severity": row["severity"],
        "source": row["source"],
        "package": {
            "name": row["package_name"],
            "version": row["package_version"],
            "ecosystem": row["package_ecosystem"],
        },
        "patch": row["patch"],
        "confidence": row["confidence"],
        "anomaly_score": row["anomaly_score"],
        "cvss_score": row["cvss_score"],
        "wargaming": row["wargaming"],
        "status": row["status"],
        "created_at": _iso(row["created_at"]),
        "decided_at": _iso(row["decided_at"]),
        # One order everywhere (submit, read, list): by pattern name.
        "validation": sorted((dict(v) for v in validation), key=lambda v: v["pattern_type"]),
    }
    if decisions is not None:
        review["decisions"] = [{**d, "decided_at": _iso(d["decided_at"])} for d in decisions]
        for d in review["decisions"]:
            d.pop("id", None)
    return review


def notification(row: Row, record: Row) -> dict[str, Any]:
    return {
        "event": "review.decided",
        "review_id": row["id"],
        "apv_id": row["apv_id"],
        "cve_id": row["cve_id"],
        "severity": row["severity"],
        "decision": record["decision"],
        "status": record["to_status"],
        "reviewer": record["reviewer"],
        "justification": record["justification"],
        "modifications": record["modifications"],
        "decided_at": _iso(record["decided_at"]),
    }


def change_of(kind: str, row: Row, record: Row | None) -> ReviewChange:
    """What the live console is told of a committed submission (``record`` None) or
    decision (``record`` the decision record appended)."""
    return ReviewChange(
        type=kind,
        review_id=str(row["id"]),
        status=str(row["status"]),
        severity=str(row["severity"]),
        source=str(row["source"]),
        cve_id=str(row["cve_id"]),
        package=str(row["package_name"]),
        decision=None if record is None else str(record["decision"]),
        decided_by=None if record is None else str(record["reviewer"]),
        decided_at=None if record is None else record["decided_at"],
        at=datetime.now(UTC),
    )


def check_uuid(review_id: str) -> None:
    try:
        uuid.UUID(review_id)
    except ValueError:
        raise ReviewNotFound(review_id) from None


# A page position: the last review's created_at in microseconds since the epoch, and
# its id; empty for the first page. Plain text with a pattern the OpenAPI document
# states, so every string a client can build from it is a position this API accepts
# (16 digits reach the year 2286), and anything else is refused.
CURSOR_PATTERN = r"^(?:([0-9]{1,16})_([0-9a-f]{32}))?$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, review_id: str) -> str:
    return f"{(created_at - _EPOCH) // _MICROSECOND}_{uuid.UUID(review_id).hex}"


def decode_cursor(cursor: str) -> tuple[datetime, str] | None:
    """The position a cursor names; None for the first page."""
    # re.search, as JSON Schema applies a "pattern" (the document's is this one).
    match = re.search(CURSOR_PATTERN, cursor)
    if match is None:
        raise ValidationFailed(
            [FieldError("cursor", "is not a cursor this API issued")], location="query"
        )
    if match[1] is None:
        return None
    return _EPOCH + int(match[1]) * _MICROSECOND, str(uuid.UUID(match[2]))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _float_or_none(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)
