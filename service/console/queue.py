"""The queue page: open reviews, filtered and paged, with their ages and the counts per
severity. Reads through ReviewService.list / open_counts, as GET /api/reviews does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

from ..api import schemas
from ..api.bodies import storable
from ..domain.errors import ValidationFailed
from ..domain.models import OPEN_STATUSES, Severity, Status
from ..keys import REVIEWS
from . import words
from .sessions import CONSOLE_USER

routes = web.RouteTableDef()

# "open" is the queue proper (pending and escalated); the final states let a reader
# look back at what was decided.
OPEN: Final = "open"
STATUS_CHOICES: Final = (OPEN, *(s.value for s in Status))
ORDERS: Final = ("oldest", "newest")
SEVERITIES: Final = tuple(s.value for s in Severity)
PAGE_SIZE: Final = 25


@dataclass(frozen=True, slots=True)
class QueueFilters:
    status: str
    severity: str
    source: str
    order: str
    after: str
    limit: int

    def query(self, **changes: str) -> dict[str, str]:
        """The filters as query parameters (empty ones left out), with ``changes``."""
        values = {
            "status": self.status,
            "severity": self.severity,
            "source": self.source,
            "order": self.order,
            **({"limit": str(self.limit)} if self.limit != PAGE_SIZE else {}),
            **changes,
        }
        return {k: v for k, v in values.items() if v}


class BadFilter(web.HTTPBadRequest):
    pass


def read_filters(query: Mapping[str, str]) -> QueueFilters:
    """The queue's query, checked as GET /api/reviews checks its own: a value outside
    the choices, or text no review can hold, is a 400 page, not an empty queue."""
    problems = []

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        value = query.get(name, "") or default
        if value not in allowed:
            problems.append(f"{name} must be one of {', '.join(a for a in allowed if a)}")
            return default
        return value

    status = choice("status", STATUS_CHOICES, OPEN)
    severity = choice("severity", ("", *SEVERITIES), "")
    order = choice("order", ORDERS, "oldest")
    source = query.get("source", "").strip()
    longest = schemas.FILTER_MAX_LENGTH["source"]
    if not storable(source) or len(source) > longest:
        problems.append(f"source must be text of at most {longest} characters")
        source = ""
    raw_limit = query.get("limit", "")
    limit = PAGE_SIZE
    if raw_limit:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= schemas.MAX_PAGE:
            limit = int(raw_limit)
        else:
            problems.append(f"limit must be a whole number from 1 to {schemas.MAX_PAGE}")
    after = query.get("after", "")
    if not storable(after):
        problems.append("after is not a page of this queue")
        after = ""
    if problems:
        raise BadFilter(text="The filters are not valid: " + "; ".join(problems) + ".")
    return QueueFilters(status, severity, source, order, after, limit)


def _statuses(status: str) -> str | tuple[str, ...]:
    return tuple(s.value for s in OPEN_STATUSES) if status == OPEN else status


@routes.get("/queue", name="console_queue")
async def queue_page(request: web.Request) -> web.Response:
    filters = read_filters(request.query)
    service = request.config_dict[REVIEWS]
    try:
        items, next_cursor = await service.list(
            status=_statuses(filters.status),
            severity=filters.severity or None,
            source=filters.source or None,
            cve_id=None,
            cursor=filters.after,
            limit=filters.limit,
            oldest_first=filters.order == "oldest",
        )
    except ValidationFailed:  # the only input the domain checks here is the cursor
        raise BadFilter(
            text="The filters are not valid: after is not a page of this queue."
        ) from None
    counts = await service.open_counts()
    now = datetime.now(UTC)
    next_page = (
        str(URL("/console/queue").with_query(filters.query(after=next_cursor)))
        if next_cursor
        else None
    )
    context: dict[str, Any] = {
        "page": "queue",
        "user": request[CONSOLE_USER],
        "filters": filters,
        "status_choices": STATUS_CHOICES,
        "severities": SEVERITIES,
        "orders": ORDERS,
        "items": [_row(item, now) for item in items],
        "counts": _severity_counts(counts, filters.status),
        "counts_label": _counts_label(filters.status),
        "next_page": next_page,
        "first_page": (
            str(URL("/console/queue").with_query(filters.query())) if filters.after else None
        ),
    }
    return aiohttp_jinja2.render_template("queue.html", request, context)


def _row(item: dict[str, Any], now: datetime) -> dict[str, Any]:
    return {
        "id": item["id"],
        "cve_id": item["cve_id"],
        "package": item["package"],
        "severity": item["severity"],
        "status": item["status"],
        "source": item["source"],
        "created": words.full_time(item["created_at"]),
        "created_iso": item["created_at"],
        "age": words.age_since(item["created_at"], now),
    }


def _severity_counts(counts: dict[str, dict[str, int]], status: str) -> dict[str, int]:
    """Open reviews per severity in the states the filter shows (both open states
    for a final-state filter, whose own counts the queue does not keep)."""
    shown = [status] if status in counts else list(counts)
    return {s: sum(counts[st][s] for st in shown) for s in SEVERITIES}


def _counts_label(status: str) -> str:
    if status == Status.PENDING.value:
        return "Pending reviews by severity"
    if status == Status.ESCALATED.value:
        return "Escalated reviews by severity"
    return "Open reviews (pending and escalated) by severity"
