"""The review page and its decision form.

The form is turned into the body POST /api/reviews/{id}/decision takes, checked with
the API's own schema (schemas.DECISION_VALIDATOR: which decisions need a
justification or modifications) and handed to the same ReviewService.decide. The
console adds no rule of its own; it only says the outcome in words.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp_jinja2
import structlog
from aiohttp import web
from yarl import URL

from ..api import schemas
from ..api.bodies import unstorable_text
from ..domain.errors import AlreadyDecided, FieldError, IdempotencyKeyReused, ValidationFailed
from ..domain.models import Decision, Status
from ..keys import REVIEWS, SETTINGS
from . import words
from .diff import render_diff
from .sessions import CONSOLE_USER, ConsoleUser

log = structlog.get_logger("hitl.console")

routes = web.RouteTableDef()

# The outcome shown after the redirect that follows a decision: a fixed code in the
# query, never text taken from it.
RESULT_PARAMETER: Final = "result"
VIEWER_NOTE: Final = "Viewers can read reviews but not decide."

DECISION_LABELS: Final = {
    Decision.APPROVE.value: "Approve",
    Decision.REJECT.value: "Reject",
    Decision.MODIFY.value: "Modify (use the edited patch below)",
    Decision.ESCALATE.value: "Escalate to a senior reviewer",
}


def _review_id(request: web.Request) -> str:
    raw = request.match_info["review_id"]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise web.HTTPBadRequest(text="That is not a review id (a UUID is expected).") from None


@routes.get("/reviews/{review_id}", name="console_review")
async def review_page(request: web.Request) -> web.Response:
    review_id = _review_id(request)
    review = await request.config_dict[REVIEWS].get(review_id)
    result = request.query.get(RESULT_PARAMETER, "")
    message = words.outcome_text(result) if result in words.DONE.values() else None
    return _render(request, review, result_message=message)


@routes.post("/reviews/{review_id}/decision", name="console_decide")
async def decide(request: web.Request) -> web.StreamResponse:
    user = request[CONSOLE_USER]
    review_id = _review_id(request)
    service = request.config_dict[REVIEWS]
    if not user.can_decide:
        log.info("console_decision_refused", reason="viewer", user=user.name)
        raise web.HTTPForbidden(text=VIEWER_NOTE)
    form = await request.post()
    decision = _field(form, "decision")
    justification = _field(form, "justification").strip()
    patch = _field(form, "patch")
    body: dict[str, Any] = {"decision": decision}
    if justification:
        body["justification"] = justification
    if decision == Decision.MODIFY.value:
        body["modifications"] = {"patch": patch}
    try:
        errors = list(unstorable_text(body))
        if errors:
            raise ValidationFailed(errors)
        schemas.validate(schemas.DECISION_VALIDATOR, body)
        judged = await service.decide(
            review_id,
            decision=Decision(decision),
            reviewer=user.name,
            justification=body.get("justification"),
            modifications=body.get("modifications"),
            idempotency_key=_idempotency_key(form),
        )
    except ValidationFailed as exc:
        review = await service.get(review_id)
        return _render(
            request,
            review,
            form_errors=[_plain(e, decision) for e in exc.errors],
            form={"decision": decision, "justification": justification, "patch": patch},
            status=422,
        )
    except (AlreadyDecided, IdempotencyKeyReused):
        review = await service.get(review_id)
        return _render(
            request,
            review,
            result_message=words.conflict_text(review, datetime.now(UTC)),
            conflict=True,
            status=409,
        )
    log.info(
        "console_decision",
        review_id=review_id,
        decision=decision,
        user=user.name,
        replayed=judged.replayed,
    )
    target = URL(f"/console/reviews/{review_id}").with_query(
        {RESULT_PARAMETER: words.DONE[Decision(decision).value]}
    )
    raise web.HTTPSeeOther(str(target))


def _field(form: Any, name: str) -> str:
    value = form.get(name, "")
    # Browsers send a textarea's line breaks as CRLF; a patch is stored with LF.
    return value.replace("\r\n", "\n") if isinstance(value, str) else ""


def _idempotency_key(form: Any) -> str | None:
    """The form's one-time key: sending the same form twice (a double click, a
    reload) replays the first decision instead of reporting a conflict with itself."""
    value = form.get("form_id", "")
    try:
        return str(uuid.UUID(value)) if isinstance(value, str) and value else None
    except ValueError:
        return None


def _plain(error: FieldError, decision: str) -> str:
    """A validation error of the decision body in the form's words."""
    field = error.field.strip("/")
    if field == "decision":
        return "Choose a decision: approve, reject, modify or escalate."
    message = _without_value(error.message)
    if field == "justification" and message == "is required":
        return f"A justification is required to {decision or 'decide'}."
    if field == "justification":
        return f"The justification {message}."
    if field.startswith("modifications"):
        return f"The edited patch {message}."
    return f"{field or 'The form'} {message}."


def _without_value(message: str) -> str:
    """jsonschema's message without the value it quotes ("'xxx' is too long"): the
    form keeps what was typed; the message need not repeat it (cut at 200 characters,
    which only a value too long for its field reaches)."""
    if not message.startswith("'"):
        return message
    if message.endswith("..."):
        return "is too long"
    return message.rsplit("' ", 1)[-1]


def _render(
    request: web.Request,
    review: dict[str, Any],
    *,
    result_message: str | None = None,
    conflict: bool = False,
    form_errors: list[str] | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    user: ConsoleUser = request[CONSOLE_USER]
    now = datetime.now(UTC)
    settings = request.config_dict[SETTINGS]
    current = Status(review["status"])
    allowed = {d.value: current in d.allowed_from for d in Decision}
    form = form or {"decision": "", "justification": "", "patch": review["patch"]}
    context = {
        "page": "review",
        "user": user,
        "review": review,
        "status_text": words.status_text(review),
        "decided": current.is_final,
        "created": words.full_time(review["created_at"]),
        "decided_at": words.full_time(review["decided_at"]),
        "age": words.age_since(review["created_at"], now),
        "wargaming": _pretty(review.get("wargaming")),
        "anomaly_threshold": settings.anomaly_threshold,
        "diff": render_diff(review["patch"]),
        "history": [_history_entry(d) for d in review.get("decisions") or []],
        "decisions": [(d.value, DECISION_LABELS[d.value], allowed[d.value]) for d in Decision],
        "any_allowed": any(allowed.values()),
        "result_message": result_message,
        "conflict": conflict,
        "form_errors": form_errors or [],
        "form": form,
        "form_id": str(uuid.uuid4()),
        "viewer_note": VIEWER_NOTE,
    }
    return aiohttp_jinja2.render_template("review.html", request, context, status=status)


def _history_entry(record: dict[str, Any]) -> dict[str, Any]:
    modifications = record.get("modifications")
    patch = modifications.get("patch") if isinstance(modifications, dict) else None
    others = (
        {k: v for k, v in modifications.items() if k != "patch"}
        if isinstance(modifications, dict)
        else None
    )
    return {
        "reviewer": record["reviewer"],
        "decision": record["decision"],
        "done": words.DONE.get(record["decision"], record["decision"]),
        "when": words.full_time(record["decided_at"]),
        "when_iso": record["decided_at"],
        "justification": record.get("justification"),
        "from_status": record.get("from_status"),
        "to_status": record.get("to_status"),
        "patch_diff": render_diff(patch) if isinstance(patch, str) else None,
        "other_modifications": _pretty(others) if others else None,
    }


def _pretty(value: Any) -> str | None:
    return (
        None if value is None else json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)
    )
