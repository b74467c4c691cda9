"""What the review domain needs from storage, stated by the domain.

The domain imports no storage module: ``storage.reviews.ReviewStore`` and
``storage.cache.Cache`` satisfy these protocols structurally, and the app factory hands
them in. Dependencies point one way, storage -> domain: storage uses the domain's
models, validation results and errors (it raises ReviewNotFound and AlreadyDecided
itself, inside the transaction it rolls back); the domain never names a table, a
statement or a driver.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .models import Decision
from .validation import PatternResult

# One stored record as column -> value: a review, a decision record, a validation result.
Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Notification:
    """A decision's webhook message, queued in the decision's transaction, and the
    trace context its delivery continues."""

    payload: dict[str, Any]
    trace_context: dict[str, str]


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """What a reviewer asked for. Two requests are the same decision when every field
    but ``idempotency_key`` is equal: a client's retry repeats its body unchanged."""

    decision: Decision
    reviewer: str
    justification: str | None = None
    modifications: dict[str, Any] | None = None
    # The client's Idempotency-Key header, scoped to (review, reviewer); stored with
    # the decision record.
    idempotency_key: str | None = None

    def repeats(self, record: Row) -> bool:
        """True when ``record`` (a stored decision) is this request, made before."""
        return bool(
            record["decision"] == self.decision.value
            and record["reviewer"] == self.reviewer
            and record["justification"] == self.justification
            and record["modifications"] == self.modifications
        )


@dataclass(frozen=True, slots=True)
class Decided:
    """The outcome of a decision, read inside its own transaction so the response
    needs no query after the commit: the review as it now is, the decision record
    (the appended one, or the earlier one a replay repeats), the review's validation
    results and its whole decision history.

    ``replayed``: nothing was written; the request repeats a decision already stored
    (same reviewer, same body, or the same Idempotency-Key), so its retry is answered
    as the original was, and no metric, notification or cache entry counts it twice.
    """

    review: Row
    record: Row
    validation: list[Row]
    history: list[Row]
    replayed: bool = False


# Builds the notification of an applied decision from (review, record); called inside
# the decision's transaction, so the message is queued if and only if the decision is.
Notify = Callable[[Row, Row], Notification]


class ReviewRepository(Protocol):
    async def insert_review(
        self, submission: dict[str, Any], payload_sha256: str, validation: Sequence[PatternResult]
    ) -> Row | None:
        """Store a review and its validation results in one transaction; None when a
        review with the submission's apv_id already exists."""
        ...

    async def get_by_apv_id(self, apv_id: str) -> Row | None: ...

    async def get_review(self, review_id: str) -> Row | None: ...

    async def validation_results(self, review_ids: Sequence[str]) -> dict[str, list[Row]]: ...

    async def decisions(self, review_id: str) -> list[Row]: ...

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
        """Reviews in one of ``statuses`` (any when None), newest first (or oldest
        first), strictly after the (created_at, id) keyset ``after`` in that order."""
        ...

    async def decide(
        self, review_id: str, request: DecisionRequest, *, notify: Notify | None
    ) -> Decided:
        """In one transaction: move the review to ``request.decision.target`` if, and
        only if, its current state is in ``decision.allowed_from`` (of concurrent
        decisions exactly one wins), append the decision record, when ``notify`` is
        given queue its notification, and read what the response shows (``Decided``).

        When the state refuses the decision but the request repeats a stored one
        (``DecisionRequest.repeats`` the review's latest record, or the record with the
        same Idempotency-Key), returns it with ``replayed=True`` and writes nothing.
        Otherwise raises ReviewNotFound, IdempotencyKeyReused (the key was used for a
        different request) or AlreadyDecided; then nothing is written."""
        ...

    async def stats(self, *, window_seconds: int) -> Row:
        """pending_by_severity, escalated and oldest_pending_age of the open reviews;
        decisions_by_type, ttd_median and ttd_p95 of the decisions made in the last
        ``window_seconds``. Its cost follows the open reviews and the window, not the
        history."""
        ...

    async def queue_backlog(self) -> list[Row]:
        """One row per (severity, status) with reviews in an open state (pending,
        escalated): severity, status, count, oldest_seconds (age of the oldest). Reads
        only open reviews, through their index: the cost follows the backlog, not the
        history."""
        ...


class ReviewCache(Protocol):
    """A cache that may fail: reads then answer None and writes do nothing."""

    def key(self, *parts: str) -> str: ...

    async def get_json(self, key: str) -> Any | None: ...

    async def set_json(
        self, key: str, value: Any, ttl_seconds: int, *, only_if_absent: bool = False
    ) -> None: ...

    async def delete(self, *keys: str) -> None: ...


class ReviewEvents(Protocol):
    """Where the domain reports what happened, once it is committed (the business
    metrics: ``service.metrics.ReviewMetrics`` satisfies it)."""

    def record_review_created(self, *, severity: str, source: str) -> None: ...

    def record_review_decision(self, *, decision: str, severity: str, duration: float) -> None: ...

    def record_apv_validation(self, *, pattern_type: str, result: str, duration: float) -> None: ...


@dataclass(frozen=True, slots=True)
class ReviewChange:
    """A committed change to a review, as the live console shows it: a submission
    (``decision``, ``decided_by``, ``decided_at`` None) or a decision. ``at`` is when
    it was reported."""

    type: str  # "review.submitted" | "review.decided"
    review_id: str
    status: str
    severity: str
    source: str
    cve_id: str
    package: str
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    at: datetime


class ReviewFeed(Protocol):
    """Where the domain announces committed changes to whoever watches the queue
    (``service.live.publisher.RedisFeed`` satisfies it). Called after the commit and
    after the cache holds the new state, so a watcher that reloads on the news reads
    it; must never raise nor wait long: the change is committed whatever happens here."""

    async def publish(self, change: ReviewChange) -> None: ...
