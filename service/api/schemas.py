"""JSON Schemas (2020-12) for request and response bodies.

Defined once: the request validator uses them, and the OpenAPI document embeds them,
so what the docs promise is what the server enforces.
"""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from ..domain.errors import FieldError, ValidationFailed
from ..domain.models import Decision, Severity, Status
from ..domain.reviews import CURSOR_PATTERN
from ..domain.validation import Result

# The domain's names, as the enums of every schema and query filter.
SEVERITIES = [s.value for s in Severity]
STATUSES = [s.value for s in Status]
DECISIONS = [d.value for d in Decision]
PATTERN_RESULTS = [r.value for r in Result]

# What PostgreSQL can store: text without NUL, declared by this pattern on every string
# and object key of a body and on the text query filters, and enforced on them
# (bodies.storable). Text must also be Unicode: an unpaired UTF-16 surrogate (a
# "\ud800" escape alone) is refused as well, as I-JSON (RFC 7493, 2.1) says; no pattern
# states that portably (ECMA-262 with the u flag and the Rust engine schemathesis
# validates with read text as Unicode scalar values, where none can occur), so the
# document says it in words (TEXT_RULES).
STORABLE_PATTERN = r"^[^\u0000]*$"
TEXT_RULES = (
    "Every string and object key in a request is Unicode text without NUL (U+0000): "
    "NUL and unpaired UTF-16 surrogates are refused with 422 (I-JSON, RFC 7493)."
)

# Every JSON number of a body lies strictly between these: integers of up to 30 digits,
# floats of the same magnitude. bodies.read_json refuses others as malformed (400)
# before anything is stored (PostgreSQL's numeric overflow must not become a 500).
MAX_INTEGER_DIGITS = 30
NUMBER_BOUND = 10**MAX_INTEGER_DIGITS
NUMBER_BOUNDS: dict[str, Any] = {
    "exclusiveMinimum": -NUMBER_BOUND,
    "exclusiveMaximum": NUMBER_BOUND,
}

# Free-form objects (wargaming.details, a decision's modifications, extra fields sent
# to /api/apv/validate) nest arrays and objects at most this deep.
FREE_FORM_DEPTH = 8

# GET /api/reviews: the handler enforces these, the OpenAPI document shows them.
DEFAULT_PAGE = 20
MAX_PAGE = 100
PAGE_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE}
# The longest source / cve_id a review can have: a longer filter is refused (422).
FILTER_MAX_LENGTH = {"source": 100, "cve_id": 64}
# next_cursor as issued, or empty for the first page: the pattern the domain decodes with.
CURSOR = {"type": "string", "pattern": CURSOR_PATTERN}

# POST /api/reviews/{review_id}/decision: the optional Idempotency-Key request header
# (scoped to the review and the reviewer) and the header that marks a replayed answer.
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_MAX = 255
IDEMPOTENCY_KEY_PATTERN = "^[!-~]+$"  # visible ASCII, no spaces
IDEMPOTENCY_KEY = {
    "type": "string",
    "minLength": 1,
    "maxLength": IDEMPOTENCY_KEY_MAX,
    "pattern": IDEMPOTENCY_KEY_PATTERN,
}
REPLAYED_HEADER = "Idempotent-Replayed"


def _text(max_length: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": STORABLE_PATTERN,
        **extra,
    }


NUMBER: dict[str, Any] = {"type": "number", **NUMBER_BOUNDS}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _free_form_name(depth: int) -> str:
    return f"StorableJson{depth}"


def _free_form(depth: int) -> dict[str, Any]:
    """Any JSON value PostgreSQL can store, arrays and objects nested at most ``depth``
    deep. One schema per depth, each referring to the next shallower one: JSON Schema
    has no depth keyword, and a recursive schema would allow any depth."""
    scalars = ["string", "number", "boolean", "null"]
    schema: dict[str, Any] = {
        "description": f"Any JSON value without NUL in its text, "
        f"numbers of magnitude < 1e{MAX_INTEGER_DIGITS}, arrays and objects nested at most "
        f"{depth} deep",
        "type": scalars,
        "pattern": STORABLE_PATTERN,
        **NUMBER_BOUNDS,
    }
    if depth > 0:
        inner = _ref(_free_form_name(depth - 1))
        schema["type"] = [*scalars, "array", "object"]
        schema["items"] = inner
        schema["propertyNames"] = {"pattern": STORABLE_PATTERN}
        schema["additionalProperties"] = inner
    return schema


# Referenced as #/components/schemas/StorableJson<n>: the OpenAPI document lists them
# among its components, and each request validator below is rooted beside them.
FREE_FORM_SCHEMAS = {_free_form_name(d): _free_form(d) for d in range(FREE_FORM_DEPTH + 1)}


def _free_form_object(**extra: Any) -> dict[str, Any]:
    """A JSON object of free-form members: itself the first level of nesting."""
    return {
        "type": "object",
        "propertyNames": {"pattern": STORABLE_PATTERN},
        "additionalProperties": _ref(_free_form_name(FREE_FORM_DEPTH - 1)),
        **extra,
    }


PACKAGE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "version", "ecosystem"],
    "properties": {
        "name": _text(200, examples=["openssl"]),
        "version": _text(100, examples=["3.0.7"]),
        "ecosystem": _text(50, examples=["debian"]),
    },
}

WARGAMING = {
    "type": "object",
    "additionalProperties": False,
    "required": ["verdict"],
    "properties": {
        "verdict": _text(50, description="Outcome of the exploit simulation, e.g. patch_effective"),
        "details": _free_form_object(),
    },
}

APV_SUBMISSION: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "apv_id",
        "apv_code",
        "cve_id",
        "severity",
        "source",
        "package",
        "patch",
        "confidence",
        "anomaly_score",
    ],
    "properties": {
        "apv_id": _text(200, description="Producer's id for this APV; the idempotency key"),
        "apv_code": _text(200),
        "cve_id": _text(64, description="Checked by the cve_format pattern, not rejected here"),
        "severity": {"enum": SEVERITIES},
        "source": _text(100, description="Who produced the APV"),
        "package": PACKAGE,
        "patch": _text(512 * 1024, description="Proposed patch as a unified diff"),
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "anomaly_score": NUMBER,
        "cvss_score": {"type": "number", "minimum": 0, "maximum": 10},
        "wargaming": WARGAMING,
    },
}

# The validate endpoint judges payloads that may be incomplete: every pattern reports
# on what it finds, so only the shape of each present field is enforced.
APV_VALIDATION_REQUEST = {
    "type": "object",
    "properties": dict(APV_SUBMISSION["properties"]),
    # Other fields are ignored, but must still be JSON the service can hold.
    "propertyNames": {"pattern": STORABLE_PATTERN},
    "additionalProperties": _ref(_free_form_name(FREE_FORM_DEPTH)),
}

DECISION_REQUEST = {
    "type": "object",
    "additionalProperties": False,
    "required": ["decision"],
    "properties": {
        "decision": {"enum": DECISIONS},
        "justification": _text(10_000),
        "modifications": _free_form_object(
            minProperties=1, description="What the reviewer changed, e.g. a revised patch"
        ),
    },
    # The rule of models.Decision.needs_justification / needs_modifications.
    "allOf": [
        {
            "if": {
                "properties": {
                    "decision": {"enum": [d.value for d in Decision if d.needs_justification]}
                }
            },
            "then": {"required": ["justification"]},
        },
        {
            "if": {
                "properties": {
                    "decision": {"enum": [d.value for d in Decision if d.needs_modifications]}
                }
            },
            "then": {"required": ["modifications"]},
        },
    ],
}

VALIDATION_RESULT = {
    "type": "object",
    "required": ["pattern_type", "result", "reason"],
    "properties": {
        "pattern_type": {"type": "string"},
        "result": {"enum": PATTERN_RESULTS},
        "reason": {"type": "string"},
        "duration_ms": {"type": "number"},
    },
}

DECISION_RECORD = {
    "type": "object",
    "required": ["decision", "reviewer", "from_status", "to_status", "decided_at"],
    "properties": {
        "decision": {"enum": DECISIONS},
        "reviewer": {"type": "string"},
        "justification": {"type": ["string", "null"]},
        "modifications": {"type": ["object", "null"]},
        "from_status": {"enum": STATUSES},
        "to_status": {"enum": STATUSES},
        "decided_at": {"type": "string", "format": "date-time"},
    },
}

REVIEW = {
    "type": "object",
    "required": [
        "id",
        *APV_SUBMISSION["required"],
        "status",
        "created_at",
        "decided_at",
        "validation",
    ],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "apv_id": {"type": "string"},
        "apv_code": {"type": "string"},
        "cve_id": {"type": "string"},
        "severity": {"enum": SEVERITIES},
        "source": {"type": "string"},
        "package": PACKAGE,
        "patch": {"type": "string"},
        "confidence": {"type": "number"},
        "anomaly_score": {"type": "number"},
        "cvss_score": {"type": ["number", "null"]},
        "wargaming": {"oneOf": [WARGAMING, {"type": "null"}]},
        "status": {"enum": STATUSES},
        "created_at": {"type": "string", "format": "date-time"},
        "decided_at": {"type": ["string", "null"], "format": "date-time"},
        "validation": {"type": "array", "items": VALIDATION_RESULT},
        "decisions": {"type": "array", "items": DECISION_RECORD},
    },
}

REVIEW_PAGE = {
    "type": "object",
    "required": ["items", "next_cursor"],
    "properties": {
        "items": {"type": "array", "items": REVIEW},
        "next_cursor": {"type": ["string", "null"]},
    },
}

STATS = {
    "type": "object",
    "required": [
        "window_seconds",
        "pending_by_severity",
        "escalated",
        "decisions_by_type",
        "time_to_decision_seconds",
        "oldest_pending_age_seconds",
    ],
    "properties": {
        "window_seconds": {
            "type": "integer",
            "minimum": 1,
            "description": (
                "decisions_by_type and time_to_decision_seconds cover the decisions of"
                " this many seconds before now (HITL_STATS_WINDOW_SECONDS)"
            ),
        },
        "pending_by_severity": {
            "type": "object",
            "description": "open reviews (pending and escalated) by severity, all of them",
            "properties": {s: {"type": "integer"} for s in SEVERITIES},
        },
        "escalated": {"type": "integer"},
        "decisions_by_type": {
            "type": "object",
            "description": "decisions made within the window, by type",
            "properties": {d: {"type": "integer"} for d in DECISIONS},
        },
        "time_to_decision_seconds": {
            "type": "object",
            "description": "submission to final decision, of reviews decided in the window",
            "properties": {
                "median": {"type": ["number", "null"]},
                "p95": {"type": ["number", "null"]},
            },
        },
        "oldest_pending_age_seconds": {"type": ["number", "null"]},
    },
}

VALIDATION_REPORT = {
    "type": "object",
    "required": ["valid", "results"],
    "properties": {
        "valid": {"type": "boolean", "description": "true when every pattern says valid"},
        "results": {"type": "array", "items": VALIDATION_RESULT},
    },
}

PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}

HEALTH = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["ok", "ready", "degraded", "unavailable", "draining"]},
        "checks": {"type": "object"},
    },
}



def _validator(schema: dict[str, Any]) -> Draft202012Validator:
    # Rooted beside the components its references name, as in the OpenAPI document.
    return Draft202012Validator({**schema, "components": {"schemas": FREE_FORM_SCHEMAS}})


SUBMISSION_VALIDATOR = _validator(APV_SUBMISSION)
APV_VALIDATION_VALIDATOR = _validator(APV_VALIDATION_REQUEST)
DECISION_VALIDATOR = _validator(DECISION_REQUEST)


def validate(validator: Draft202012Validator, instance: Any) -> None:
    """Raise ValidationFailed with one FieldError per problem found."""
    errors: list[FieldError] = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path)):
        pointer = "".join(f"/{p}" for p in error.absolute_path)
        if error.validator == "required":
            missing = re.match(r"^'([^']*)' is a required property", error.message)
            name = missing.group(1) if missing else ""
            errors.append(FieldError(f"{pointer}/{name}", "is required"))
        elif error.validator == "additionalProperties":
            allowed = error.schema.get("properties", {})
            for extra in sorted(k for k in error.instance if k not in allowed):
                errors.append(FieldError(f"{pointer}/{extra}", "is not an allowed field"))
        else:
            errors.append(FieldError(pointer or "/", _short_message(error.message)))
    if errors:
        raise ValidationFailed(errors)


def _short_message(message: str) -> str:
    # jsonschema echoes the whole offending value; a 500 KiB patch must not come back.
    return message if len(message) <= 200 else message[:197] + "..."
