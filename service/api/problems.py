"""How each domain error looks over HTTP (RFC 9457), and how telemetry counts it."""

from __future__ import annotations

import psycopg2

from telemetry import Problem

from ..domain.errors import (
    AlreadyDecided,
    ApvConflict,
    BadRequest,
    Forbidden,
    ReviewNotFound,
    Unauthenticated,
    ValidationFailed,
)
from ..storage.db import DatabaseBusy


def problem_for(exc: BaseException) -> Problem | None:
    """The problem for a domain error; None for anything else (a crash)."""
    match exc:
        case ValidationFailed():
            return Problem(
                status=422,
                title="Unprocessable Content",
                slug="validation-failed",
                detail="The request body does not match the schema; see errors.",
                extra={"errors": [{"field": e.field, "message": e.message} for e in exc.errors]},
                error_type="validation",
            )
        case BadRequest():
            titles = {400: "Bad Request", 415: "Unsupported Media Type", 413: "Content Too Large"}
            return Problem(
                status=exc.status,
                title=titles.get(exc.status, "Bad Request"),
                slug={415: "unsupported-media-type", 413: "body-too-large"}.get(
                    exc.status, "malformed-request"
                ),
                detail=exc.detail,
                error_type="bad_request",
            )
        case ReviewNotFound():
            return Problem(
                status=404,
                title="Not Found",
                slug="review-not-found",
                detail=str(exc),
                error_type="not_found",
                severity="info",
            )
        case AlreadyDecided():
            return Problem(
                status=409,
                title="Conflict",
                slug="already-decided",
                detail=str(exc),
                extra={"current_status": exc.status},
                error_type="conflict",
            )
        case ApvConflict():
            return Problem(
                status=409,
                title="Conflict",
                slug="apv-conflict",
                detail=str(exc),
                extra={"review_id": exc.review_id},
                error_type="conflict",
            )
        case Unauthenticated():
            return Problem(
                status=401,
                title="Unauthorized",
                slug="unauthenticated",
                detail=str(exc),
                error_type="auth",
                headers={"WWW-Authenticate": 'Bearer realm="hitl"'},
            )
        case Forbidden():
            return Problem(
                status=403,
                title="Forbidden",
                slug="forbidden",
                detail=str(exc),
                error_type="auth",
            )
        case DatabaseBusy():
            return Problem(
                status=503,
                title="Service Unavailable",
                slug="database-busy",
                detail=str(exc),
                error_type="database_pool_exhausted",
                severity="critical",
                headers={"Retry-After": "1"},
            )
        case psycopg2.OperationalError() | psycopg2.InterfaceError():
            # PostgreSQL is the source of truth: without it we answer 503, not 500,
            # so clients retry and the alert says "database", not "bug".
            return Problem(
                status=503,
                title="Service Unavailable",
                slug="database-unavailable",
                detail="The database is unavailable; retry later.",
                error_type="database_unavailable",
                severity="critical",
                headers={"Retry-After": "5"},
            )
    return None
