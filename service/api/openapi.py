"""GET /api/openapi.json: an OpenAPI 3.1 document built from the same schemas the
server validates with. A test checks that every registered route appears here."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from telemetry import http_title

from .. import __version__
from ..keys import OPENAPI_DOCUMENT
from . import schemas
from .bodies import json_response

routes = web.RouteTableDef()

EXAMPLE_PATCH = (
    "--- a/ssl/t1_lib.c\n"
    "+++ b/ssl/t1_lib.c\n"
    "@@ -1,3 +1,3 @@\n"
    " int check(size_t len) {\n"
    "-    return len > 0;\n"
    "+    return len > 0 && len < MAX_LEN;\n"
    " }\n"
)

EXAMPLE_SUBMISSION = {
    "apv_id": "apv-2025-000123",
    "apv_code": "APV-OPENSSL-0001",
    "cve_id": "CVE-2024-12345",
    "severity": "high",
    "source": "oraculo",
    "package": {"name": "openssl", "version": "3.0.7", "ecosystem": "debian"},
    "patch": EXAMPLE_PATCH,
    "confidence": 0.92,
    "anomaly_score": 0.81,
    "cvss_score": 7.5,
    "wargaming": {"verdict": "patch_effective", "details": {"exploit_blocked": True}},
}

EXAMPLE_DECISIONS = {
    "approve": {"decision": "approve"},
    "reject": {"decision": "reject", "justification": "Patch breaks TLS 1.2 renegotiation"},
    "modify": {
        "decision": "modify",
        "justification": "Bound must be inclusive",
        "modifications": {"patch": EXAMPLE_PATCH.replace("< MAX_LEN", "<= MAX_LEN")},
    },
    "escalate": {"decision": "escalate", "justification": "Needs the crypto team's review"},
}

EXAMPLE_REVIEW = {
    "id": "5f0c6d52-8a59-4c7e-9a55-0d2e4b1f6a10",
    **{k: v for k, v in EXAMPLE_SUBMISSION.items() if k != "apv_id"},
    "apv_id": "apv-2025-000123",
    "status": "pending",
    "created_at": "2025-10-13T12:00:00Z",
    "decided_at": None,
    "validation": [
        {
            "pattern_type": "cve_format",
            "result": "valid",
            "reason": "well-formed CVE identifier",
            "duration_ms": 0.01,
        },
    ],
    "decisions": [],
}

EXAMPLE_PROBLEM = {
    "type": "https://hitl.dev/problems/validation-failed",
    "title": http_title(422),
    "status": 422,
    "detail": "The request body does not match the schema; see errors.",
    "instance": "/api/reviews",
    "errors": [{"field": "/severity", "message": f"'urgent' is not one of {schemas.SEVERITIES}"}],
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _problem(
    description: str, *, headers: dict[str, Any] | None = None, example: Any = None
) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref("Problem")}
    if example is not None:
        media["example"] = example
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/problem+json": media},
    }
    if headers:
        response["headers"] = headers
    return response


AUTH_ERRORS = {
    "401": _problem(
        "Missing or unknown API key",
        headers={
            "WWW-Authenticate": {
                "description": "The scheme to authenticate with",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    "403": _problem("The API key lacks the required role"),
}
BODY_ERRORS = {
    "400": _problem(
        "Malformed JSON: not UTF-8, not RFC 8259 JSON (NaN, Infinity), nested too deeply "
        f"for the parser, or a number of magnitude 1e{schemas.MAX_INTEGER_DIGITS} or more"
    ),
    "408": _problem(
        "The body did not arrive within the read deadline (HITL_BODY_READ_TIMEOUT_SECONDS)"
    ),
    "413": _problem("Body larger than the configured limit (HITL_MAX_BODY_BYTES)"),
    "415": _problem("Content-Type is not application/json (or another +json type)"),
    "422": _problem(
        "Schema violation, with per-field errors (text with NUL or an unpaired surrogate "
        "included)",
        example=EXAMPLE_PROBLEM,
    ),
}
# Any operation: an unexpected failure is a problem body naming the request id.
SERVER_ERROR = {"500": _problem("Unexpected failure (a bug); the body names the request_id")}
# Operations that read or write PostgreSQL.
DATABASE_ERRORS = {
    "503": _problem(
        "PostgreSQL is unreachable, or every pooled connection stayed busy: nothing was "
        "written by this request; retry after Retry-After seconds",
        headers={
            "Retry-After": {
                "description": "Seconds to wait before retrying",
                "required": True,
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    ),
    **SERVER_ERROR,
}
SECURED: list[dict[str, list[str]]] = [{"apiKey": []}]
REVIEW_ID = {
    "name": "review_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
IDEMPOTENCY_KEY = {
    "name": schemas.IDEMPOTENCY_KEY_HEADER,
    "in": "header",
    "required": False,
    "schema": schemas.IDEMPOTENCY_KEY,
    "description": "Makes a retry safe: the same key (for this review and reviewer) with "
    "the same body is answered with the stored decision; with another body it is a 422 "
    "idempotency-key-reused problem. Without a key (or with one not used before), the "
    "same reviewer repeating the review's latest decision with the same body is answered "
    "the same way.",
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description + "; at most once",
    }


def _filter_text(name: str) -> dict[str, Any]:
    return {
        "type": "string",
        "maxLength": schemas.FILTER_MAX_LENGTH[name],
        "pattern": schemas.STORABLE_PATTERN,
    }


PATHS: dict[str, dict[str, Any]] = {
    "/api/reviews": {
        "post": {
            "operationId": "submit_review",
            "summary": "Submit an APV for human review (role: producer)",
            "security": SECURED,
            "requestBody": {
                "required": True,
                "content": _json(_ref("ApvSubmission"), EXAMPLE_SUBMISSION),
            },
            "responses": {
                "201": {
                    "description": "Created",
                    "headers": {"Location": {"schema": {"type": "string"}}},
                    "content": _json(_ref("Review"), EXAMPLE_REVIEW),
                },
                "200": {
                    "description": "Same apv_id and identical payload: the existing review",
                    "content": _json(_ref("Review")),
                },
                "409": _problem("Same apv_id with a different payload"),
                **AUTH_ERRORS,
                **BODY_ERRORS,
                **DATABASE_ERRORS,
            },
        },
        "get": {
            "operationId": "list_reviews",
            "summary": "List reviews, newest first, keyset-paginated (role: viewer)",
            "security": SECURED,
            "parameters": [
                _query(
                    "status",
                    {"type": "string", "enum": [*schemas.STATUSES, ""]},
                    "Only reviews in this state (empty: any)",
                ),
                _query(
                    "severity",
                    {"type": "string", "enum": [*schemas.SEVERITIES, ""]},
                    "Only this severity (empty: any)",
                ),
                _query("source", _filter_text("source"), "Only from this producer (empty: any)"),
                _query("cve_id", _filter_text("cve_id"), "Only this CVE (empty: any)"),
                _query("limit", schemas.PAGE_LIMIT, "Page size"),
                _query(
                    "cursor",
                    schemas.CURSOR,
                    "next_cursor of the previous page (empty: the first page)",
                ),
            ],
            "responses": {
                "200": {
                    "description": "A page",
                    "content": _json(
                        _ref("ReviewPage"), {"items": [EXAMPLE_REVIEW], "next_cursor": None}
                    ),
                },
                "422": _problem(
                    "Bad filter, limit or cursor, or a parameter given more than once"
                ),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/reviews/stats": {
        "get": {
            "operationId": "review_stats",
            "summary": "Queue statistics (role: viewer)",
            "description": (
                "The open reviews (counts by severity, escalated, oldest age), and the"
                " decisions of the last `window_seconds` (counts by type, time to"
                " decision median and p95)."
            ),
            "security": SECURED,
            "responses": {
                "200": {
                    "description": "Statistics",
                    "content": _json(
                        _ref("Stats"),
                        {
                            "window_seconds": 604800,
                            "pending_by_severity": {
                                "critical": 1,
                                "high": 4,
                                "medium": 2,
                                "low": 0,
                            },
                            "escalated": 1,
                            "decisions_by_type": {
                                "approve": 10,
                                "reject": 2,
                                "modify": 1,
                                "escalate": 1,
                            },
                            "time_to_decision_seconds": {"median": 420.0, "p95": 3600.0},
                            "oldest_pending_age_seconds": 7200.0,
                        },
                    ),
                },
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/reviews/{review_id}": {
        "get": {
            "operationId": "get_review",
            "summary": "A review with its validation results and decision history (role: viewer)",
            "security": SECURED,
            "parameters": [REVIEW_ID],
            "responses": {
                "200": {
                    "description": "The review",
                    "content": _json(_ref("Review"), EXAMPLE_REVIEW),
                },
                "404": _problem("No such review"),
                **AUTH_ERRORS,
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/reviews/{review_id}/decision": {
        "post": {
            "operationId": "decide_review",
            "summary": "Approve, reject, modify or escalate (role: reviewer; reviewer = key name)",
            "security": SECURED,
            "parameters": [REVIEW_ID, IDEMPOTENCY_KEY],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _ref("DecisionRequest"),
                        "examples": {k: {"value": v} for k, v in EXAMPLE_DECISIONS.items()},
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The decided review, built from the decision's own "
                    "transaction. A replay (a retry of a decision already stored: see "
                    "Idempotency-Key) is answered the same way, with Idempotent-Replayed",
                    "headers": {
                        schemas.REPLAYED_HEADER: {
                            "description": "Present on a replay: nothing was written",
                            "required": False,
                            "schema": {"type": "string", "enum": ["true"]},
                        }
                    },
                    "content": _json(_ref("Review")),
                },
                "404": _problem("No such review"),
                "409": _problem(
                    "The review is already final (or already escalated), and this is not "
                    "a retry of the decision that made it so"
                ),
                **AUTH_ERRORS,
                **BODY_ERRORS,
                "422": _problem(
                    "Schema violation with per-field errors, a malformed Idempotency-Key, "
                    "or an Idempotency-Key already used for another decision "
                    "(idempotency-key-reused)",
                    example=EXAMPLE_PROBLEM,
                ),
                **DATABASE_ERRORS,
            },
        },
    },
    "/api/apv/validate": {
        "post": {
            "operationId": "validate_apv",
            "summary": "Run the APV validation patterns without storing anything (role: producer)",
            "security": SECURED,
            "requestBody": {
                "required": True,
                "content": _json(_ref("ApvValidationRequest"), EXAMPLE_SUBMISSION),
            },
            "responses": {
                "200": {
                    "description": "One result per pattern",
                    "content": _json(
                        _ref("ValidationReport"),
                        {
                            "valid": True,
                            "results": [
                                {
                                    "pattern_type": "cve_format",
                                    "result": "valid",
                                    "reason": "well-formed CVE identifier",
                                    "duration_ms": 0.01,
                                }
                            ],
                        },
                    ),
                },
                **AUTH_ERRORS,
                **BODY_ERRORS,
                **SERVER_ERROR,
            },
        },
    },
    "/api/health": {
        "get": {
            "operationId": "health",
            "summary": "Liveness (no I/O, no key)",
            "responses": {
                "200": {"description": "Alive", "content": _json(_ref("Health"), {"status": "ok"})},
                **SERVER_ERROR,
            },
        },
    },
    "/api/health/ready": {
        "get": {
            "operationId": "ready",
            "summary": "Readiness: PostgreSQL required, Redis optional (no key)",
            "responses": {
                "200": {
                    "description": "Ready or degraded (Redis down)",
                    "content": _json(
                        _ref("Health"),
                        {
                            "status": "degraded",
                            "checks": {"postgres": "ok", "redis": "unavailable"},
                        },
                    ),
                },
                **SERVER_ERROR,
                "503": {
                    "description": "PostgreSQL unreachable, or the process is shutting down "
                    '(status "draining")',
                    "content": _json(
                        _ref("Health"),
                        {
                            "status": "unavailable",
                            "checks": {"postgres": "unavailable", "redis": "ok"},
                        },
                    ),
                },
            },
        },
    },
    "/api/openapi.json": {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": _json({"type": "object"})},
                **SERVER_ERROR,
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics (text exposition format)",
            "responses": {
                "200": {
                    "description": "Metrics",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                **SERVER_ERROR,
            },
        },
    },
}

TEST_PATHS: dict[str, dict[str, Any]] = {
    "/api/_test/fail": {
        "get": {
            "operationId": "test_fail",
            "summary": "Failure switch (only with HITL_ENABLE_TEST_ROUTES=true): always 500",
            "responses": {"500": _problem("Always")},
        },
    },
}


def build_document(*, include_test_routes: bool = False) -> dict[str, Any]:
    paths = dict(PATHS)
    if include_test_routes:
        paths.update(TEST_PATHS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "hitl — human review of APVs",
            "version": __version__,
            "description": "Humans review APVs (a CVE, the affected component and a proposed "
            "patch) and approve, reject, modify or escalate them.\n\n" + schemas.TEXT_RULES,
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "hitl_<id>_<secret> API key",
                }
            },
            "schemas": {
                "ApvSubmission": schemas.APV_SUBMISSION,
                "ApvValidationRequest": schemas.APV_VALIDATION_REQUEST,
                "DecisionRequest": schemas.DECISION_REQUEST,
                "Review": schemas.REVIEW,
                "ReviewPage": schemas.REVIEW_PAGE,
                "Stats": schemas.STATS,
                "ValidationReport": schemas.VALIDATION_REPORT,
                "Problem": schemas.PROBLEM,
                "Health": schemas.HEALTH,
                **schemas.FREE_FORM_SCHEMAS,
            },
        },
    }


@routes.get("/api/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI_DOCUMENT])
