"""How each domain error looks over HTTP (RFC 9457), and how telemetry counts it.

One table, walked along the exception's MRO (as aiohttp's docs map exceptions in an
error middleware): the most specific class listed wins, so ``BodyTooLarge`` finds its
own row before its base ``BadRequest``'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import psycopg2

from telemetry import Problem, http_title

from ..domain.errors import (
    AlreadyDecided,
    ApvConflict,
    BadRequest,
    BodyReadTimeout,
    BodyTooLarge,
    Forbidden,
    IdempotencyKeyReused,
    ReviewNotFound,
    Unauthenticated,
    UnsupportedMediaType,
    ValidationFailed,
)
from ..storage.db import DatabaseBusy


def _validation_detail(exc: BaseException) -> str:
    assert isinstance(exc, ValidationFailed)
    if exc.location in ("query", "header"):
        what = "query parameters" if exc.location == "query" else "request headers"
        return f"The {what} are not valid: " + "; ".join(
            f"{e.field} {e.message}" for e in exc.errors
        )
    return "The request body does not match the schema; see errors."


def _field_errors(exc: BaseException) -> dict[str, Any]:
    assert isinstance(exc, ValidationFailed)
    return {"errors": [{"field": e.field, "message": e.message} for e in exc.errors]}


def _bad_request_detail(exc: BaseException) -> str:
    assert isinstance(exc, BadRequest)
    return exc.detail


@dataclass(frozen=True, slots=True)
class ProblemSpec:
    """How one exception class is answered and counted in ``app_errors_total``."""

    status: int
    slug: str
    error_type: str
    severity: str = "warning"
    headers: Mapping[str, str] = field(default_factory=dict)
    # None: the exception's message; a fixed string: that text, whatever was raised.
    detail: Callable[[BaseException], str] | str | None = None
    # RFC 9457 extension members beside the standard ones.
    members: Callable[[BaseException], dict[str, Any]] | None = None

    def problem(self, exc: BaseException) -> Problem:
        detail = (
            str(exc)
            if self.detail is None
            else self.detail
            if isinstance(self.detail, str)
            else self.detail(exc)
        )
        return Problem(
            status=self.status,
            title=http_title(self.status, HTTPStatus(self.status).phrase),
            slug=self.slug,
            detail=detail,
            extra=self.members(exc) if self.members is not None else {},
            error_type=self.error_type,
            severity=self.severity,
            headers=self.headers,
        )


# PostgreSQL is the source of truth: without it we answer 503, not 500, so clients
# retry and the alert says "database", not "bug".
_DATABASE_UNAVAILABLE = ProblemSpec(
    503,
    "database-unavailable",
    "database_unavailable",
    severity="critical",
    headers={"Retry-After": "5"},
    detail="The database is unavailable; retry later.",
)

_CLOSE = {"Connection": "close"}

PROBLEMS: Mapping[type[BaseException], ProblemSpec] = {
    ValidationFailed: ProblemSpec(
        422, "validation-failed", "validation", detail=_validation_detail, members=_field_errors
    ),
    BadRequest: ProblemSpec(400, "malformed-request", "bad_request", detail=_bad_request_detail),
    UnsupportedMediaType: ProblemSpec(
        415, "unsupported-media-type", "bad_request", detail=_bad_request_detail
    ),
    # The rest of the body is not read: the connection closes after the answer.
    BodyTooLarge: ProblemSpec(
        413, "body-too-large", "bad_request", headers=_CLOSE, detail=_bad_request_detail
    ),
    BodyReadTimeout: ProblemSpec(
        408, "body-read-timeout", "bad_request", headers=_CLOSE, detail=_bad_request_detail
    ),
    ReviewNotFound: ProblemSpec(404, "review-not-found", "not_found", severity="info"),
    AlreadyDecided: ProblemSpec(
        409,
        "already-decided",
        "conflict",
        members=lambda exc: {"current_status": getattr(exc, "status", None)},
    ),
    # 422 as the IETF Idempotency-Key draft says for a key reused with another payload.
    IdempotencyKeyReused: ProblemSpec(
        422,
        "idempotency-key-reused",
        "validation",
        members=lambda exc: {"review_id": getattr(exc, "review_id", None)},
    ),
    ApvConflict: ProblemSpec(
        409,
        "apv-conflict",
        "conflict",
        members=lambda exc: {"review_id": getattr(exc, "review_id", None)},
    ),
    Unauthenticated: ProblemSpec(
        401, "unauthenticated", "auth", headers={"WWW-Authenticate": 'Bearer realm="hitl"'}
    ),
    Forbidden: ProblemSpec(403, "forbidden", "auth"),
    DatabaseBusy: ProblemSpec(
        503,
        "database-busy",
        "database_pool_exhausted",
        severity="critical",
        headers={"Retry-After": "1"},
    ),
    psycopg2.OperationalError: _DATABASE_UNAVAILABLE,
    psycopg2.InterfaceError: _DATABASE_UNAVAILABLE,
}

# Every (type, severity) pair app_errors_total can carry: pre-created at 0 so error
# panels show 0, not "No data", on a healthy service.
APP_ERROR_LABELS: frozenset[tuple[str, str]] = frozenset(
    (spec.error_type, spec.severity) for spec in PROBLEMS.values()
)


def problem_for(exc: BaseException) -> Problem | None:
    """The problem for a domain error; None for anything else (a crash)."""
    for cls in type(exc).__mro__:
        spec = PROBLEMS.get(cls)
        if spec is not None:
            return spec.problem(exc)
    return None
