"""Review endpoints: submit, list, read, decide, stats."""

from __future__ import annotations

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
    errors: list[FieldError] = []
    status = _choice(query, "status", schemas.STATUSES, errors)
    severity = _choice(query, "severity", schemas.SEVERITIES, errors)
    limit = _limit(query.get("limit"), errors)
    for name in ("source", "cve_id", "cursor"):
        if not storable(query.get(name, "")):
            errors.append(FieldError(name, UNSTORABLE))
    if errors:
        raise ValidationFailed(errors, location="query")
    items, next_cursor = await request.app[REVIEWS].list(
        status=status,
        severity=severity,
        source=query.get("source") or None,
        cve_id=query.get("cve_id") or None,
        cursor=query.get("cursor") or None,
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


def _idempotency_key(request: web.Request) -> str | None:
    values = request.headers.getall(schemas.IDEMPOTENCY_KEY_HEADER, [])
    if not values:
        return None
    if len(values) > 1:
        message = "must be sent at most once"
    elif schemas.IDEMPOTENCY_KEY_PATTERN.fullmatch(values[0]):
        return str(values[0])
    else:
        message = (
            f"must be 1 to {schemas.IDEMPOTENCY_KEY_MAX} visible ASCII characters"
            " (no spaces)"
        )
    raise ValidationFailed(
        [FieldError(schemas.IDEMPOTENCY_KEY_HEADER, message)], location="header"
    )


def _choice(
    query: Mapping[str, str], name: str, allowed: list[str], errors: list[FieldError]
) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        errors.append(FieldError(name, f"must be one of {', '.join(allowed)}"))
        return None
    return str(value)


def _limit(raw: str | None, errors: list[FieldError]) -> int:
    if raw is None or raw == "":
        return schemas.DEFAULT_PAGE
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= schemas.MAX_PAGE:
        errors.append(FieldError("limit", f"must be a whole number from 1 to {schemas.MAX_PAGE}"))
        return schemas.DEFAULT_PAGE
    return value
