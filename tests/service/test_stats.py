"""GET /api/reviews/stats: queue numbers a lead would look at, with ages made exact."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.conftest import MakeClient
from tests.service.helpers import decide, sql, submit

WEEK = 7 * 24 * 3600


async def stats(client: TestClient, keys: Keys) -> dict[str, object]:
    resp = await client.get("/api/reviews/stats", headers=keys.auth("viewer"))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_empty_queue(client: TestClient, api_keys: Keys) -> None:
    """No reviews: zero counts and no ages or percentiles."""
    assert await stats(client, api_keys) == {
        "window_seconds": WEEK,
        "pending_by_severity": {"critical": 0, "high": 0, "medium": 0, "low": 0},
        "escalated": 0,
        "decisions_by_type": {"approve": 0, "reject": 0, "modify": 0, "escalate": 0},
        "time_to_decision_seconds": {"median": None, "p95": None},
        "oldest_pending_age_seconds": None,
    }


async def test_stats_reflect_the_queue(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """Pending by severity, decisions by type, median/p95 time to decision and the oldest
    pending age, with created_at moved back so every number is exact."""
    producer, reviewer = api_keys.auth("producer"), api_keys.auth("reviewer")
    pending = [
        await submit(client, producer, severity="critical", cvss_score=9.5),
        await submit(client, producer, severity="critical", cvss_score=9.9),
        await submit(client, producer, severity="medium", cvss_score=5.0),
    ]
    decided = [await submit(client, producer) for _ in range(5)]
    for review, decision in zip(decided, ["approve", "approve", "reject", "modify", "approve"], strict=True):
        assert (await decide(client, review["id"], decision, reviewer)).status == 200
    # Time to decision of the five: 10, 20, 30, 40, 100 seconds.
    for review, seconds in zip(decided, [10, 20, 30, 40, 100], strict=True):
        await sql(database_url, "UPDATE reviews SET created_at = decided_at - %s * interval '1 second'"
                  " WHERE id = %s", (seconds, review["id"]))
    # The oldest pending review has waited an hour; the others less.
    for review, seconds in zip(pending, [3600, 60, 120], strict=True):
        await sql(database_url, "UPDATE reviews SET created_at = now() - %s * interval '1 second'"
                  " WHERE id = %s", (seconds, review["id"]))

    result = await stats(client, api_keys)
    assert result["pending_by_severity"] == {"critical": 2, "high": 0, "medium": 1, "low": 0}
    assert result["escalated"] == 0
    assert result["decisions_by_type"] == {"approve": 3, "reject": 1, "modify": 1, "escalate": 0}
    ttd = result["time_to_decision_seconds"]
    assert isinstance(ttd, dict)
    assert ttd["median"] == 30.0
    assert ttd["p95"] == 88.0  # linear interpolation between 40 and 100 at 0.95
    age = result["oldest_pending_age_seconds"]
    assert isinstance(age, float) and 3600 <= age < 3630


async def test_escalations_are_counted(client: TestClient, api_keys: Keys) -> None:
    """An escalation counts as a decision of its type and in the escalated total, and the
    next stats call sees it at once (the cached stats are dropped on every decision)."""
    review = await submit(client, api_keys.auth("producer"))
    before = await stats(client, api_keys)
    assert before["escalated"] == 0
    assert (await decide(client, review["id"], "escalate", api_keys.auth("reviewer"))).status == 200
    after = await stats(client, api_keys)
    assert after["escalated"] == 1
    assert after["decisions_by_type"] == {"approve": 0, "reject": 0, "modify": 0, "escalate": 1}
    assert after["time_to_decision_seconds"] == {"median": None, "p95": None}


async def test_new_submission_shows_in_stats_at_once(client: TestClient, api_keys: Keys) -> None:
    """Stats read, then a submission: the next stats call already counts it."""
    await stats(client, api_keys)
    await submit(client, api_keys.auth("producer"), severity="low", cvss_score=1.0)
    result = await stats(client, api_keys)
    assert result["pending_by_severity"] == {"critical": 0, "high": 0, "medium": 0, "low": 1}


async def age_decision(database_url: str, review_id: str, seconds: int) -> None:
    """Move a review's final decision ``seconds`` into the past: the review's times and
    its decision records (append-only, so the trigger is bypassed for this session)."""
    await sql(
        database_url,
        "SET session_replication_role = replica;"
        " UPDATE review_decisions SET decided_at = decided_at - %s * interval '1 second'"
        " WHERE review_id = %s;"
        " UPDATE reviews SET decided_at = decided_at - %s * interval '1 second',"
        " created_at = created_at - %s * interval '1 second' WHERE id = %s",
        (seconds, review_id, seconds, seconds, review_id),
    )


async def test_decisions_older_than_the_window_are_not_counted(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A decision made more than the window (7 days by default) ago counts neither in
    decisions_by_type nor in time to decision; one made inside it does."""
    producer, reviewer = api_keys.auth("producer"), api_keys.auth("reviewer")
    old, recent = await submit(client, producer), await submit(client, producer)
    assert (await decide(client, old["id"], "reject", reviewer)).status == 200
    assert (await decide(client, recent["id"], "approve", reviewer)).status == 200
    await age_decision(database_url, old["id"], WEEK + 60)
    await sql(database_url, "UPDATE reviews SET created_at = decided_at - interval '50 seconds'"
              " WHERE id = %s", (recent["id"],))

    result = await stats(client, api_keys)
    assert result["window_seconds"] == WEEK
    assert result["decisions_by_type"] == {"approve": 1, "reject": 0, "modify": 0, "escalate": 0}
    assert result["time_to_decision_seconds"] == {"median": 50.0, "p95": 50.0}


async def test_window_setting_is_honoured(
    make_client: MakeClient, api_keys: Keys, database_url: str
) -> None:
    """HITL_STATS_WINDOW_SECONDS=3600: a decision two hours old is outside the window,
    one ten minutes old inside, and the response says the window."""
    app_client = await make_client(stats_window_seconds=3600)
    producer, reviewer = api_keys.auth("producer"), api_keys.auth("reviewer")
    two_hours, ten_minutes = await submit(app_client, producer), await submit(app_client, producer)
    assert (await decide(app_client, two_hours["id"], "modify", reviewer)).status == 200
    assert (await decide(app_client, ten_minutes["id"], "escalate", reviewer)).status == 200
    await age_decision(database_url, two_hours["id"], 7200)
    await age_decision(database_url, ten_minutes["id"], 600)

    result = await stats(app_client, api_keys)
    assert result["window_seconds"] == 3600
    assert result["decisions_by_type"] == {"approve": 0, "reject": 0, "modify": 0, "escalate": 1}
    assert result["time_to_decision_seconds"] == {"median": None, "p95": None}
    # The open reviews are counted whatever their age: the escalated one is still open.
    assert result["escalated"] == 1
    assert result["pending_by_severity"] == {"critical": 0, "high": 1, "medium": 0, "low": 0}


async def _counted(database_url: str) -> dict[tuple[str, str], int]:
    rows = await sql(database_url, "SELECT status, severity, n FROM review_queue_counts")
    return {(status, severity): int(n) for status, severity, n in rows}


async def _actual(database_url: str) -> dict[tuple[str, str], int]:
    rows = await sql(
        database_url,
        "SELECT s.status, v.severity, count(r.id)"
        " FROM (VALUES ('pending'), ('escalated')) s (status)"
        " CROSS JOIN (VALUES ('critical'), ('high'), ('medium'), ('low')) v (severity)"
        " LEFT JOIN reviews r ON r.status = s.status AND r.severity = v.severity"
        " GROUP BY 1, 2",
    )
    return {(status, severity): int(n) for status, severity, n in rows}


async def test_open_counts_follow_every_change(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """The counts stats reads (review_queue_counts, kept by a trigger) equal a count of
    the reviews after submissions, escalations, final decisions, a conflicting decision
    that changes nothing, a direct delete, and a truncate."""
    producer, reviewer = api_keys.auth("producer"), api_keys.auth("reviewer")
    ids = [
        str((await submit(client, producer, severity=severity))["id"])
        for severity in ("critical", "critical", "high", "medium", "low", "low")
    ]
    assert await _counted(database_url) == await _actual(database_url)
    assert (await _counted(database_url))[("pending", "critical")] == 2
    assert (await decide(client, ids[0], "escalate", reviewer)).status == 200
    assert (await decide(client, ids[1], "approve", reviewer)).status == 200
    assert (await decide(client, ids[0], "reject", reviewer)).status == 200
    assert (await decide(client, ids[2], "escalate", reviewer)).status == 200
    assert (await decide(client, ids[1], "reject", reviewer)).status == 409  # nothing changes
    counted = await _counted(database_url)
    assert counted == await _actual(database_url)
    assert counted[("pending", "critical")] == 0 and counted[("escalated", "high")] == 1
    body = await stats(client, api_keys)
    assert body["pending_by_severity"] == {"critical": 0, "high": 1, "medium": 1, "low": 2}
    assert body["escalated"] == 1
    await sql(database_url, "DELETE FROM validation_results WHERE review_id = %s", (ids[5],))
    await sql(database_url, "DELETE FROM reviews WHERE id = %s", (ids[5],))
    assert await _counted(database_url) == await _actual(database_url)
    await sql(database_url, "TRUNCATE webhook_outbox, validation_results, review_decisions, reviews")
    assert set((await _counted(database_url)).values()) == {0}
