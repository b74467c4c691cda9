"""Bad input of every kind: never a 500, never a change to stored data."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import assert_problem, count_rows, sql, submission

JSON = {"Content-Type": "application/json"}


async def test_bad_requests_change_nothing_and_never_500(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A barrage of malformed, mistyped, unauthorised and conflicting requests (plus a
    validate call) leaves every table exactly as it was, and none is answered with a 5xx."""
    producer, reviewer, viewer = (api_keys.auth(r) for r in ("producer", "reviewer", "viewer"))
    existing = submission()
    created = await (await client.post("/api/reviews", json=existing, headers=producer)).json()
    rid = created["id"]
    before = await count_rows(database_url)

    decision_url = f"/api/reviews/{rid}/decision"
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/api/reviews", {"data": "{not json", "headers": {**producer, **JSON}}),
        ("POST", "/api/reviews", {"data": "[]", "headers": {**producer, **JSON}}),
        ("POST", "/api/reviews", {"data": json.dumps(submission()), "headers": {**producer, "Content-Type": "text/plain"}}),
        ("POST", "/api/reviews", {"json": submission(severity="urgent"), "headers": producer}),
        ("POST", "/api/reviews", {"json": submission(confidence=7), "headers": producer}),
        ("POST", "/api/reviews", {"json": submission(extra=1), "headers": producer}),
        ("POST", "/api/reviews", {"json": {**existing, "source": "someone-else"}, "headers": producer}),
        ("POST", "/api/reviews", {"json": submission(), "headers": viewer}),
        ("POST", "/api/reviews", {"json": submission(), "headers": {}}),
        ("POST", "/api/reviews", {"data": io.BytesIO(b"{" + b" " * (1024 * 1024 + 1) + b"}"), "headers": {**producer, **JSON}}),
        ("POST", "/api/apv/validate", {"json": submission(), "headers": producer}),
        ("POST", "/api/apv/validate", {"data": "nope", "headers": {**producer, **JSON}}),
        ("POST", decision_url, {"json": {"decision": "reject"}, "headers": reviewer}),
        ("POST", decision_url, {"json": {"decision": "modify", "justification": "x"}, "headers": reviewer}),
        ("POST", decision_url, {"json": {"decision": "approve", "reviewer": "mallory"}, "headers": reviewer}),
        ("POST", decision_url, {"json": {"decision": "maybe"}, "headers": reviewer}),
        ("POST", decision_url, {"data": "{", "headers": {**reviewer, **JSON}}),
        ("POST", decision_url, {"data": "decision=approve", "headers": {**reviewer, "Content-Type": "application/x-www-form-urlencoded"}}),
        ("POST", decision_url, {"json": {"decision": "approve"}, "headers": producer}),
        ("POST", decision_url, {"json": {"decision": "approve"}, "headers": {"Authorization": "Bearer hitl_00000000_nope"}}),
        ("POST", "/api/reviews/not-a-uuid/decision", {"json": {"decision": "approve"}, "headers": reviewer}),
        ("POST", "/api/reviews/00000000-0000-4000-8000-000000000000/decision", {"json": {"decision": "approve"}, "headers": reviewer}),
        ("GET", "/api/reviews?limit=0", {"headers": viewer}),
        ("GET", "/api/reviews?limit=101", {"headers": viewer}),
        ("GET", "/api/reviews?status=done", {"headers": viewer}),
        ("GET", "/api/reviews?cursor=%%%", {"headers": viewer}),
        ("GET", "/api/reviews/00000000-0000-4000-8000-000000000000", {"headers": viewer}),
    ]
    for method, url, kwargs in attempts:
        resp = await client.request(method, url, **kwargs)
        text = await resp.text()
        assert resp.status < 500, (method, url, resp.status, text)
        if url != "/api/apv/validate" or resp.status != 200:  # validate stores nothing anyway
            assert resp.status >= 400, (method, url, resp.status)
            assert resp.content_type == "application/problem+json", (url, text)

    assert await count_rows(database_url) == before
    rows = await sql(database_url, "SELECT status, source FROM reviews WHERE id = %s", (rid,))
    assert rows == [("pending", existing["source"])]


# -- bugs: bad input that still reaches a 500 (or stores non-JSON numbers) ----------------

BAD_JSON_BODIES = {
    "nesting-100k-deep": "[" * 100_000 + "]" * 100_000,
    "5000-digit-integer": json.dumps(submission()).replace('"confidence": 0.92', '"confidence": 1' + "0" * 5000),
    "NaN-literal": json.dumps(submission(confidence=float("nan"))),
    "Infinity-literal": json.dumps(submission(anomaly_score=float("inf"))),
}


@pytest.mark.parametrize("raw", list(BAD_JSON_BODIES.values()), ids=list(BAD_JSON_BODIES))
async def test_non_standard_json_is_400(
    client: TestClient, api_keys: Keys, database_url: str, raw: str
) -> None:
    """Bodies that are not RFC 8259 JSON, or that the parser cannot hold, are a 400 problem."""
    resp = await client.post("/api/reviews", data=raw, headers={**api_keys.auth("producer"), **JSON})
    await assert_problem(resp, 400, "malformed-request")
    assert (await count_rows(database_url))["reviews"] == 0


UNSTORABLE_TEXT = {
    "NUL-in-apv_code": {"apv_code": "APV\u0000X"},
    "NUL-in-wargaming-key": {"wargaming": {"verdict": "x", "details": {"a\u0000": 1}}},
    "lone-surrogate": {"apv_code": "\ud800"},
}


@pytest.mark.parametrize("changes", list(UNSTORABLE_TEXT.values()), ids=list(UNSTORABLE_TEXT))
async def test_unstorable_text_is_422(
    client: TestClient, api_keys: Keys, changes: dict[str, Any]
) -> None:
    """Strings PostgreSQL cannot store are a 422 problem, not a crash."""
    raw = json.dumps(submission(**changes))
    resp = await client.post("/api/reviews", data=raw, headers={**api_keys.auth("producer"), **JSON})
    await assert_problem(resp, 422, "validation-failed")


async def test_nul_in_list_filter_is_not_500(client: TestClient, api_keys: Keys) -> None:
    """A NUL byte in a list filter is a client error, not a crash."""
    resp = await client.get("/api/reviews?cve_id=%00", headers=api_keys.auth("viewer"))
    assert resp.status < 500, await resp.text()


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("limit=05", 200),
        ("limit=%205", 422),  # " 5": int() would take it
        ("limit=%2B5", 422),  # "+5"
        ("limit=1_0", 422),
        ("limit=%D9%A3", 422),  # an Arabic-Indic digit three
        ("limit=", 422),
        ("limit=5&limit=6", 422),
        ("status=pending&status=approved", 422),
        ("status=&severity=", 200),  # empty: no filter, as documented
        ("source=" + "s" * 100, 200),
        ("source=" + "s" * 101, 422),
        ("cve_id=" + "C" * 64, 200),
        ("cve_id=" + "C" * 65, 422),
        ("source=a%00b", 422),
    ],
)
async def test_list_parameters_are_exactly_the_documented_ones(
    client: TestClient, api_keys: Keys, query: str, status: int
) -> None:
    """limit takes decimal digits only; a filter longer than any stored value, with a NUL,
    or given twice is a 422 naming it, as the document declares."""
    resp = await client.get(f"/api/reviews?{query}", headers=api_keys.auth("viewer"))
    if status == 200:
        assert resp.status == 200, await resp.text()
    else:
        problem = await assert_problem(resp, 422, "validation-failed")
        assert query.split("=")[0] in problem["detail"]
