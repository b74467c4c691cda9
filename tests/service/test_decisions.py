"""GET /api/reviews/{id} and POST /api/reviews/{id}/decision: the state machine, the
audit history, required fields, the reviewer's identity and the race for a decision."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import (
    assert_problem,
    decide,
    decision_body,
    error_fields,
    sql,
    submit,
)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
FINAL = {"approve": "approved", "reject": "rejected", "modify": "modified"}
DECISIONS = ["approve", "reject", "modify", "escalate"]


async def new_review(client: TestClient, keys: Keys) -> str:
    return str((await submit(client, keys.auth("producer")))["id"])


async def decision_rows(database_url: str, review_id: str) -> list[tuple[Any, ...]]:
    return await sql(
        database_url,
        "SELECT decision, reviewer, from_status, to_status FROM review_decisions"
        " WHERE review_id = %s ORDER BY id",
        (review_id,),
    )


# -- reading ------------------------------------------------------------------------------


async def test_get_returns_review_with_history(client: TestClient, api_keys: Keys) -> None:
    """GET shows the full review: fields, validation results and its decision history."""
    rid = await new_review(client, api_keys)
    await decide(client, rid, "escalate", api_keys.auth("reviewer"))
    resp = await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    review = await resp.json()
    assert review["id"] == rid
    assert review["status"] == "escalated"
    assert len(review["validation"]) == 4
    [record] = review["decisions"]
    assert record["decision"] == "escalate"
    assert record["reviewer"] == "reviewer-bot"
    assert record["justification"] == "because escalate"
    assert (record["from_status"], record["to_status"]) == ("pending", "escalated")
    assert record["decided_at"].endswith("Z")


@pytest.mark.parametrize("review_id", [UNKNOWN_ID, "not-a-uuid", "12345", "stats-ish"])
async def test_get_unknown_is_404(client: TestClient, api_keys: Keys, review_id: str) -> None:
    """An unknown uuid, or an id that is no uuid at all, is a 404 problem."""
    resp = await client.get(f"/api/reviews/{review_id}", headers=api_keys.auth("viewer"))
    problem = await assert_problem(resp, 404, "review-not-found")
    assert review_id in problem["detail"]


@pytest.mark.parametrize("review_id", [UNKNOWN_ID, "not-a-uuid"])
async def test_decide_unknown_is_404(
    client: TestClient, api_keys: Keys, database_url: str, review_id: str
) -> None:
    """Deciding on a review that does not exist is a 404 problem and stores nothing."""
    resp = await decide(client, review_id, "approve", api_keys.auth("reviewer"))
    await assert_problem(resp, 404, "review-not-found")
    assert await sql(database_url, "SELECT count(*) FROM review_decisions") == [(0,)]


# -- allowed transitions ------------------------------------------------------------------


@pytest.mark.parametrize("decision", DECISIONS)
async def test_pending_allows_every_decision(
    client: TestClient, api_keys: Keys, database_url: str, decision: str
) -> None:
    """From pending, each decision moves the review to its state and records it."""
    rid = await new_review(client, api_keys)
    resp = await decide(client, rid, decision, api_keys.auth("reviewer"))
    assert resp.status == 200, await resp.text()
    review = await resp.json()
    target = FINAL.get(decision, "escalated")
    assert review["status"] == target
    assert (review["decided_at"] is None) == (decision == "escalate")
    [record] = review["decisions"]
    assert record["decision"] == decision
    assert record["justification"] == decision_body(decision).get("justification")
    assert record["modifications"] == decision_body(decision).get("modifications")
    assert await decision_rows(database_url, rid) == [(decision, "reviewer-bot", "pending", target)]
    rows = await sql(database_url, "SELECT status FROM reviews WHERE id = %s", (rid,))
    assert rows == [(target,)]


@pytest.mark.parametrize("decision", ["approve", "reject", "modify"])
async def test_escalated_allows_final_decisions(
    client: TestClient, api_keys: Keys, database_url: str, decision: str
) -> None:
    """An escalated review can then be approved, rejected or modified; history keeps both."""
    rid = await new_review(client, api_keys)
    assert (await decide(client, rid, "escalate", api_keys.auth("reviewer"))).status == 200
    resp = await decide(client, rid, decision, api_keys.auth("admin"))
    assert resp.status == 200, await resp.text()
    review = await resp.json()
    assert review["status"] == FINAL[decision]
    assert review["decided_at"] is not None
    assert [(d["decision"], d["reviewer"], d["from_status"], d["to_status"]) for d in review["decisions"]] == [
        ("escalate", "reviewer-bot", "pending", "escalated"),
        (decision, "alice", "escalated", FINAL[decision]),
    ]
    assert len(await decision_rows(database_url, rid)) == 2


# -- forbidden transitions ----------------------------------------------------------------


@pytest.mark.parametrize("first", ["approve", "reject", "modify"])
@pytest.mark.parametrize("second", DECISIONS)
async def test_final_state_never_changes(
    client: TestClient, api_keys: Keys, database_url: str, first: str, second: str
) -> None:
    """Once approved/rejected/modified, any further decision by another reviewer is a
    409 and changes nothing (the same reviewer repeating the same body is a replay:
    see the idempotency tests below)."""
    rid = await new_review(client, api_keys)
    assert (await decide(client, rid, first, api_keys.auth("reviewer"))).status == 200
    resp = await decide(client, rid, second, api_keys.auth("admin"))
    problem = await assert_problem(resp, 409, "already-decided")
    assert problem["current_status"] == FINAL[first]
    assert second in problem["detail"]
    got = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert got["status"] == FINAL[first]
    assert len(got["decisions"]) == 1
    assert len(await decision_rows(database_url, rid)) == 1


async def test_escalated_cannot_be_escalated_again(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """Escalation happens once: escalating an escalated review again, by another reviewer
    or with another justification, is a 409."""
    rid = await new_review(client, api_keys)
    assert (await decide(client, rid, "escalate", api_keys.auth("reviewer"))).status == 200
    resp = await decide(client, rid, "escalate", api_keys.auth("admin"))
    problem = await assert_problem(resp, 409, "already-decided")
    assert problem["current_status"] == "escalated"
    resp = await client.post(
        f"/api/reviews/{rid}/decision",
        json={"decision": "escalate", "justification": "a second opinion"},
        headers=api_keys.auth("reviewer"),
    )
    await assert_problem(resp, 409, "already-decided")
    assert len(await decision_rows(database_url, rid)) == 1


# -- required fields and the reviewer -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "reject"}, "/justification"),
        ({"decision": "escalate"}, "/justification"),
        ({"decision": "modify", "modifications": {"patch": "x"}}, "/justification"),
        ({"decision": "modify", "justification": "why"}, "/modifications"),
        ({"decision": "modify", "justification": "why", "modifications": {}}, "/modifications"),
        ({"decision": "reject", "justification": ""}, "/justification"),
        ({"decision": "approve", "justification": 42}, "/justification"),
        ({"decision": "approve", "modifications": "patch"}, "/modifications"),
        ({"decision": "accept"}, "/decision"),
        ({}, "/decision"),
    ],
)
async def test_decision_body_violations_are_422(
    client: TestClient, api_keys: Keys, database_url: str, body: dict[str, Any], field: str
) -> None:
    """Missing justification/modifications, bad types and unknown decisions are 422 problems
    naming the field; the review stays pending."""
    rid = await new_review(client, api_keys)
    resp = await client.post(
        f"/api/reviews/{rid}/decision", json=body, headers=api_keys.auth("reviewer")
    )
    problem = await assert_problem(resp, 422, "validation-failed")
    assert field in error_fields(problem), problem["errors"]
    assert await sql(database_url, "SELECT status FROM reviews WHERE id = %s", (rid,)) == [("pending",)]
    assert await decision_rows(database_url, rid) == []


async def test_approve_needs_no_justification_but_keeps_one(client: TestClient, api_keys: Keys) -> None:
    """approve works without a justification, and records one when given."""
    rid = await new_review(client, api_keys)
    resp = await client.post(
        f"/api/reviews/{rid}/decision", json={"decision": "approve", "justification": "LGTM"},
        headers=api_keys.auth("reviewer"),
    )
    assert resp.status == 200
    assert (await resp.json())["decisions"][0]["justification"] == "LGTM"


async def test_reviewer_comes_from_the_key_not_the_body(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A 'reviewer' field in the body is rejected as an extra field; the stored reviewer is
    always the key's name."""
    rid = await new_review(client, api_keys)
    resp = await client.post(
        f"/api/reviews/{rid}/decision", json={"decision": "approve", "reviewer": "mallory"},
        headers=api_keys.auth("reviewer"),
    )
    problem = await assert_problem(resp, 422, "validation-failed")
    assert any("reviewer" in e["field"] + e["message"] for e in problem["errors"])
    resp = await decide(client, rid, "approve", api_keys.auth("admin"))
    assert (await resp.json())["decisions"][0]["reviewer"] == "alice"
    assert await decision_rows(database_url, rid) == [("approve", "alice", "pending", "approved")]


async def test_history_is_append_only(client: TestClient, api_keys: Keys, database_url: str) -> None:
    """The database itself refuses to change or delete a recorded decision."""
    rid = await new_review(client, api_keys)
    await decide(client, rid, "approve", api_keys.auth("reviewer"))
    for statement in ("UPDATE review_decisions SET reviewer = 'mallory'", "DELETE FROM review_decisions"):
        with pytest.raises(Exception, match="append-only"):
            await sql(database_url, statement)
    assert await decision_rows(database_url, rid) == [("approve", "reviewer-bot", "pending", "approved")]


# -- the race -----------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["pending", "escalated"])
async def test_concurrent_decisions_one_winner(
    client: TestClient, api_keys: Keys, database_url: str, start: str
) -> None:
    """20 simultaneous, different final decisions on one review: exactly one 200,
    nineteen 409, and exactly one final decision stored."""
    rid = await new_review(client, api_keys)
    if start == "escalated":
        assert (await decide(client, rid, "escalate", api_keys.auth("reviewer"))).status == 200
    choices = ["approve", "reject", "modify"]
    # Each body differs (its justification), so none is a replay of the winner.
    responses = await asyncio.gather(
        *(
            client.post(
                f"/api/reviews/{rid}/decision",
                json={**decision_body(choices[n % 3]), "justification": f"reason {n}"},
                headers=api_keys.auth("reviewer"),
            )
            for n in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] + [409] * 19, statuses
    winner = next(r for r in responses if r.status == 200)
    final = (await winner.json())["status"]
    for loser in (r for r in responses if r.status == 409):
        assert (await loser.json())["current_status"] == final
    rows = await sql(
        database_url,
        "SELECT count(*) FROM review_decisions WHERE review_id = %s"
        " AND to_status IN ('approved', 'rejected', 'modified')",
        (rid,),
    )
    assert rows == [(1,)]
    assert await sql(database_url, "SELECT status FROM reviews WHERE id = %s", (rid,)) == [(final,)]
