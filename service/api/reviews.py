"""Review endpoints: submit, list, read, decide, stats."""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiohttp import web

from ..auth import require
from ..domain.errors import FieldError, ValidationFailed
from ..domain.models import Decision
from ..keys import REVIEWS
from . import schemas
from .bodies import UNSTORABLE, json_response, read_json, storable

routes = web.RouteTableDef()


@routes.post("/api/reviews", name="submit_review")
async def submit_review(request: web.Request) -> web.Response:
    require(request, "producer")
    body = await read_json(request)
    schemas.validate(schemas.SUBMISSION_VALIDATOR, body)
    outcome = await request.app[REVIEWS].submit(body)
    review = outcome.review
    location = str(request.app.router["get_review"].url_for(review_id=review["id"]))
    return json_response(
        review, status=201 if outcome.created else 200, headers={"Location": location}
    )


@routes.get("/api/reviews", name="list_reviews")
async def list_reviews(request: web.Request) -> web.Response:
    require(request, "viewer")
    query = request.query
    # Exactly what the OpenAPI document declares (schemas.py), so a request built from
    # the document is never refused, and one it does not allow never accepted.
    errors = [
        FieldError(name, "must be given at most once")
        for name in LIST_PARAMETERS
        if len(query.getall(name, [])) > 1
    ]
    status = _choice(query, "status", schemas.STATUSES, errors)
    severity = _choice(query, "severity", schemas.SEVERITIES, errors)
    source = _filter_text(query, "source", errors)
    cve_id = _filter_text(query, "cve_id", errors)
    limit = _limit(query.get("limit"), errors)
    cursor = query.get("cursor", "")
    if not storable(cursor):
        errors.append(FieldError("cursor", UNSTORABLE))
    if errors:
        raise ValidationFailed(errors, location="query")
    items, next_cursor = await request.app[REVIEWS].list(
        status=status,
        severity=severity,
        source=source,
        cve_id=cve_id,
        cursor=cursor,
        limit=limit,
    )
    return json_response({"items": items, "next_cursor": next_cursor})


# Registered before /api/reviews/{review_id} so "stats" is not taken for an id.
@routes.get("/api/reviews/stats", name="review_stats")
async def review_stats(request: web.Request) -> web.Response:
    require(request, "viewer")
    return json_response(await request.app[REVIEWS].stats())


@routes.get("/api/reviews/{review_id}", name="get_review")
async def get_review(request: web.Request) -> web.Response:
    require(request, "viewer")
    return json_response(await request.app[REVIEWS].get(request.match_info["review_id"]))


@routes.post("/api/reviews/{review_id}/decision", name="decide_review")
async def decide_review(request: web.Request) -> web.Response:
    principal = require(request, "reviewer")
    body = await read_json(request)
    schemas.validate(schemas.DECISION_VALIDATOR, body)
    judged = await request.app[REVIEWS].decide(
        request.match_info["review_id"],
        decision=Decision(body["decision"]),
        reviewer=principal.name,
        justification=body.get("justification"),
        modifications=body.get("modifications"),
        idempotency_key=_idempotency_key(request),
    )
    headers = {schemas.REPLAYED_HEADER: "true"} if judged.replayed else None
    return json_response(judged.review, headers=headers)


LIST_PARAMETERS = ("status", "severity", "source", "cve_id", "limit", "cursor")


def _choice(
    query: Mapping[str, str], name: str, allowed: list[str], errors: list[FieldError]
) -> str | None:
    """One of ``allowed``; empty or absent means no filter."""
    value = query.get(name, "")
    if value == "":
        return None
    if value not in allowed:
        errors.append(FieldError(name, f"must be one of {', '.join(allowed)}"))
        return None
    return str(value)


def _filter_text(query: Mapping[str, str], name: str, errors: list[FieldError]) -> str | None:
    """Text a stored review can hold; empty or absent means no filter."""
    value = query.get(name, "")
    longest = schemas.FILTER_MAX_LENGTH[name]
    if not storable(value):
        errors.append(FieldError(name, UNSTORABLE))
    elif len(value) > longest:
        errors.append(FieldError(name, f"must be at most {longest} characters"))
    return value or None


def _limit(raw: str | None, errors: list[FieldError]) -> int:
    if raw is None:
        return schemas.DEFAULT_PAGE
    # Decimal digits only: int() would also take " 5", "+5", "1_0" and other scripts'
    # digits, none of which is an integer as the document serialises one.
    value = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= value <= schemas.MAX_PAGE:
        errors.append(FieldError("limit", f"must be a whole number from 1 to {schemas.MAX_PAGE}"))
        return schemas.DEFAULT_PAGE
    return value


_DIGITS = re.compile(r"[0-9]{1,9}")


def _idempotency_key(request: web.Request) -> str | None:
    values = request.headers.getall(schemas.IDEMPOTENCY_KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        message = "must be sent at most once"
    elif len(values[0]) <= schemas.IDEMPOTENCY_KEY_MAX and re.search(
        schemas.IDEMPOTENCY_KEY_PATTERN, values[0]
    ):
        return str(values[0])
    else:
        message = (
            f"must be 1 to {schemas.IDEMPOTENCY_KEY_MAX} visible ASCII characters"
            " (no spaces)"
        )
    raise ValidationFailed(
        [FieldError(schemas.IDEMPOTENCY_KEY_HEADER, message)], location="header"
    )
