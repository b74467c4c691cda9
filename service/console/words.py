"""The console's plain words: ages, times, a review's status, a decision's outcome.

All times are shown in UTC, the zone of the API, the logs and the dashboards, and
say so."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ..domain.models import Decision

# What each decision made of the review, in the past tense.
DONE = {
    Decision.APPROVE.value: "approved",
    Decision.REJECT.value: "rejected",
    Decision.MODIFY.value: "modified",
    Decision.ESCALATE.value: "escalated",
}


def parse_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def age(seconds: float) -> str:
    """A waiting time, coarse enough to read at a glance: "45 s", "12 min",
    "3 h 12 min", "2 d 5 h"."""
    total = max(int(seconds), 0)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def age_since(iso: str | None, now: datetime) -> str:
    when = parse_time(iso)
    return "" if when is None else age((now - when).total_seconds())


def full_time(iso: str | None) -> str:
    when = parse_time(iso)
    return "" if when is None else when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def short_time(iso: str | None, now: datetime) -> str:
    """ "14:02 UTC" today, else the date as well."""
    when = parse_time(iso)
    if when is None:
        return ""
    when = when.astimezone(UTC)
    if when.date() == now.astimezone(UTC).date():
        return when.strftime("%H:%M UTC")
    return when.strftime("%Y-%m-%d %H:%M UTC")


def latest_decision(review: dict[str, Any]) -> dict[str, Any] | None:
    decisions = review.get("decisions") or []
    return decisions[-1] if decisions else None


def status_text(review: dict[str, Any]) -> str:
    """ "pending", or "approved by alice at 2026-11-29 14:02 UTC"."""
    latest = latest_decision(review)
    if latest is None:
        return str(review["status"])
    return (
        f"{DONE.get(latest['decision'], latest['decision'])} by {latest['reviewer']}"
        f" at {full_time(latest['decided_at'])}"
    )


def conflict_text(review: dict[str, Any], now: datetime) -> str:
    """Why a decision was refused, as the review now stands: "Already approved by
    triage-bot at 14:02 UTC." """
    latest = latest_decision(review)
    if latest is None:
        return f"This review is {review['status']}; that decision is not possible now."
    done = DONE.get(latest["decision"], latest["decision"])
    return f"Already {done} by {latest['reviewer']} at {short_time(latest['decided_at'], now)}."


def outcome_text(done: str) -> str:
    """A decision that went through, from its past tense: "Approved."."""
    return done.capitalize() + "."
