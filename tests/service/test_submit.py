"""POST /api/reviews: creation, stored validation results, idempotency and bad input."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.conftest import MakeClient
from tests.service.helpers import (
    assert_problem,
    count_rows,
    error_fields,
    sql,
    submission,
)

PATTERNS = {"cve_format", "severity_consistency", "anomaly_score", "patch_format"}


def results_by_pattern(review: dict[str, Any]) -> dict[str, str]:
    return {v["pattern_type"]: v["result"] for v in review["validation"]}


async def test_submit_creates_review_with_location(client: TestClient, api_keys: Keys) -> None:
    """A valid submission answers 201 with the pending review and a Location that serves it."""
    body = submission()
    resp = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    review = await resp.json()
    assert resp.headers["Location"] == f"/api/reviews/{review['id']}"
    assert review["status"] == "pending"
    assert review["decided_at"] is None
    for field in ("apv_id", "apv_code", "cve_id", "severity", "source", "package", "patch",
                  "confidence", "anomaly_score", "cvss_score", "wargaming"):
        assert review[field] == body[field], field
    got = await client.get(resp.headers["Location"], headers=api_keys.auth("viewer"))
    assert got.status == 200
    fetched = await got.json()
    assert fetched["id"] == review["id"]
    assert fetched["decisions"] == []


async def test_submit_stores_all_four_validation_results(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A clean APV gets one stored 'valid' result per pattern, visible on GET and in the DB."""
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    review = await resp.json()
    assert results_by_pattern(review) == dict.fromkeys(PATTERNS, "valid")
    for result in review["validation"]:
        assert result["reason"]
        assert result["duration_ms"] >= 0
    got = await (await client.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))).json()
    assert sorted(got["validation"], key=str) == sorted(review["validation"], key=str)
    rows = await sql(
        database_url,
        "SELECT pattern_type, result FROM validation_results WHERE review_id = %s",
        (review["id"],),
    )
    assert dict(rows) == dict.fromkeys(PATTERNS, "valid")


@pytest.mark.parametrize(
    ("changes", "pattern", "reason_part"),
    [
        ({"cve_id": "CVE-24-1234"}, "cve_format", "CVE-YYYY-NNNN"),
        ({"cve_id": "cve-2024-12345"}, "cve_format", "CVE-YYYY-NNNN"),
        ({"cve_id": "CVE-2024-123"}, "cve_format", "CVE-YYYY-NNNN"),
        ({"cve_id": "CVE-1998-12345"}, "cve_format", "1999"),
        ({"severity": "high", "cvss_score": 9.8}, "severity_consistency", "outside"),
        ({"severity": "low", "cvss_score": 0.0}, "severity_consistency", "outside"),
        ({"severity": "critical", "cvss_score": 6.0}, "severity_consistency", "outside"),
        ({"anomaly_score": 0.2}, "anomaly_score", "below"),
        ({"anomaly_score": 1.5}, "anomaly_score", "outside"),
        ({"anomaly_score": -0.1}, "anomaly_score", "outside"),
        ({"patch": "just some text, not a diff"}, "patch_format", "header"),
        ({"patch": "--- a/x\n+++ b/x\n"}, "patch_format", "hunk"),
        ({"patch": "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n"}, "patch_format", "counts"),
        ({"patch": "@@ -1 +1 @@\n-a\n+b\n"}, "patch_format", "before"),
        ({"patch": "--- a/x\n@@ -1 +1 @@\n-a\n+b\n"}, "patch_format", "+++"),
        ({"patch": "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n*b\n"}, "patch_format", "unexpected"),
    ],
)
async def test_submit_stores_invalid_pattern_result(
    client: TestClient, api_keys: Keys, changes: dict[str, Any], pattern: str, reason_part: str
) -> None:
    """An APV failing one pattern is still accepted (201) and that pattern is stored as invalid."""
    resp = await client.post(
        "/api/reviews", json=submission(**changes), headers=api_keys.auth("producer")
    )
    assert resp.status == 201, await resp.text()
    review = await resp.json()
    results = results_by_pattern(review)
    assert results[pattern] == "invalid"
    assert all(results[p] == "valid" for p in PATTERNS - {pattern}), results
    reason = next(v["reason"] for v in review["validation"] if v["pattern_type"] == pattern)
    assert reason_part in reason


@pytest.mark.parametrize(
    "changes",
    [
        {"severity": "critical", "cvss_score": 9.0},
        {"severity": "critical", "cvss_score": 10.0},
        {"severity": "high", "cvss_score": 7.0},
        {"severity": "medium", "cvss_score": 6.9},
        {"severity": "low", "cvss_score": 0.1},
        {"anomaly_score": 0.5},
        {"anomaly_score": 1.0},
        {"cve_id": "CVE-1999-0001"},
        {"cve_id": "CVE-2024-1234567"},
        {"patch": "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n\\ No newline at end of file\n"},
        {"patch": "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n c\n--- a/y\n+++ b/y\n@@ -3 +3,2 @@\n c\n+d\n"},
    ],
)
async def test_submit_boundary_values_are_valid(
    client: TestClient, api_keys: Keys, changes: dict[str, Any]
) -> None:
    """Band edges, the anomaly threshold itself and multi-file diffs all count as valid."""
    resp = await client.post(
        "/api/reviews", json=submission(**changes), headers=api_keys.auth("producer")
    )
    assert resp.status == 201, await resp.text()
    assert results_by_pattern(await resp.json()) == dict.fromkeys(PATTERNS, "valid")


async def test_submit_without_cvss_or_wargaming(client: TestClient, api_keys: Keys) -> None:
    """The optional fields may be left out: stored as null, severity_consistency has nothing to compare."""
    body = submission()
    del body["cvss_score"], body["wargaming"]
    resp = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    review = await resp.json()
    assert review["cvss_score"] is None and review["wargaming"] is None
    consistency = next(v for v in review["validation"] if v["pattern_type"] == "severity_consistency")
    assert consistency["result"] == "valid" and "no CVSS" in consistency["reason"]


async def test_identical_resubmission_returns_existing(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """The same apv_id with the same payload (in any key order) is 200 with the same review."""
    body = submission()
    first = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    assert first.status == 201
    created = await first.json()
    reordered = dict(reversed(list(body.items())))
    again = await client.post(
        "/api/reviews", data=json.dumps(reordered),
        headers={**api_keys.auth("producer"), "Content-Type": "application/json"},
    )
    assert again.status == 200, await again.text()
    existing = await again.json()
    assert existing["id"] == created["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert results_by_pattern(existing) == results_by_pattern(created)
    assert (await count_rows(database_url))["reviews"] == 1


async def test_resubmission_after_decision_shows_current_state(client: TestClient, api_keys: Keys) -> None:
    """An idempotent resubmission returns the review as it is now, decisions included."""
    body = submission()
    created = await (await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))).json()
    await client.post(
        f"/api/reviews/{created['id']}/decision", json={"decision": "approve"},
        headers=api_keys.auth("reviewer"),
    )
    again = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    assert again.status == 200
    review = await again.json()
    assert review["status"] == "approved"
    assert [d["decision"] for d in review["decisions"]] == ["approve"]


async def test_different_payload_same_apv_id_conflicts(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """The same apv_id with a different payload is a 409 problem naming the existing review."""
    body = submission()
    created = await (await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))).json()
    changed = {**body, "confidence": 0.5}
    resp = await client.post("/api/reviews", json=changed, headers=api_keys.auth("producer"))
    problem = await assert_problem(resp, 409, "apv-conflict")
    assert problem["review_id"] == created["id"]
    assert body["apv_id"] in problem["detail"]
    rows = await sql(database_url, "SELECT confidence FROM reviews WHERE apv_id = %s", (body["apv_id"],))
    assert rows == [(body["confidence"],)]


async def test_concurrent_identical_submissions_create_one_review(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """Ten simultaneous identical submissions: one 201, nine 200, all the same id, one row."""
    body = submission()
    responses = await asyncio.gather(
        *(client.post("/api/reviews", json=body, headers=api_keys.auth("producer")) for _ in range(10))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 9 + [201]
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    counts = await count_rows(database_url)
    assert counts["reviews"] == 1
    assert counts["validation_results"] == 4


# -- schema violations ----------------------------------------------------------------


def _without(field: str) -> dict[str, Any]:
    body = submission()
    del body[field]
    return body


def _package_without_version() -> dict[str, Any]:
    body = submission()
    body["package"] = {"name": "openssl", "ecosystem": "debian"}
    return body


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_without("apv_id"), "/apv_id"),
        (_without("cve_id"), "/cve_id"),
        (_without("severity"), "/severity"),
        (_without("patch"), "/patch"),
        (_without("package"), "/package"),
        (_without("confidence"), "/confidence"),
        (_without("anomaly_score"), "/anomaly_score"),
        (_package_without_version(), "/package/version"),
        (submission(confidence="high"), "/confidence"),
        (submission(anomaly_score=True), "/anomaly_score"),
        (submission(apv_id=123), "/apv_id"),
        (submission(package="openssl"), "/package"),
        (submission(severity="urgent"), "/severity"),
        (submission(severity="HIGH"), "/severity"),
        (submission(confidence=1.01), "/confidence"),
        (submission(confidence=-0.01), "/confidence"),
        (submission(cvss_score=10.5), "/cvss_score"),
        (submission(apv_id=""), "/apv_id"),
        (submission(apv_id="x" * 201), "/apv_id"),
        (submission(wargaming={"details": {}}), "/wargaming/verdict"),
    ],
)
async def test_schema_violation_is_422_with_field(
    client: TestClient, api_keys: Keys, database_url: str, body: dict[str, Any], field: str
) -> None:
    """Each schema violation is a 422 problem naming the offending field; nothing is stored."""
    resp = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    problem = await assert_problem(resp, 422, "validation-failed")
    assert field in error_fields(problem), problem["errors"]
    assert all(e["message"] for e in problem["errors"])
    assert (await count_rows(database_url))["reviews"] == 0


async def test_extra_field_is_422_naming_it(client: TestClient, api_keys: Keys) -> None:
    """An unknown top-level field is rejected with a 422 whose error names the field."""
    resp = await client.post(
        "/api/reviews", json=submission(priority="p1"), headers=api_keys.auth("producer")
    )
    problem = await assert_problem(resp, 422, "validation-failed")
    assert any("priority" in e["field"] + e["message"] for e in problem["errors"]), problem


async def test_extra_field_error_points_at_the_field(client: TestClient, api_keys: Keys) -> None:
    """The per-field error for an unknown field carries that field's own JSON pointer."""
    resp = await client.post(
        "/api/reviews", json=submission(priority="p1"), headers=api_keys.auth("producer")
    )
    problem = await assert_problem(resp, 422, "validation-failed")
    assert "/priority" in error_fields(problem)


async def test_many_violations_reported_together(client: TestClient, api_keys: Keys) -> None:
    """One 422 lists every violation at once, so a producer can fix them in one go."""
    body = submission(severity="urgent", confidence=2)
    del body["cve_id"]
    resp = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    problem = await assert_problem(resp, 422, "validation-failed")
    assert {"/severity", "/confidence", "/cve_id"} <= error_fields(problem)


@pytest.mark.parametrize("raw", ["[]", "null", '"text"', "42"])
async def test_non_object_body_is_422(client: TestClient, api_keys: Keys, raw: str) -> None:
    """A JSON body that is not an object is a schema violation at the root."""
    resp = await client.post(
        "/api/reviews", data=raw,
        headers={**api_keys.auth("producer"), "Content-Type": "application/json"},
    )
    problem = await assert_problem(resp, 422, "validation-failed")
    assert "/" in error_fields(problem)


@pytest.mark.parametrize("raw", ['{"apv_id": ', "{'single': 'quotes'}", "", "{}}", b"\xff\xfe{}"])
async def test_malformed_json_is_400(client: TestClient, api_keys: Keys, raw: str | bytes) -> None:
    """A body that is not JSON (or not UTF-8) is a 400 problem."""
    resp = await client.post(
        "/api/reviews", data=raw,
        headers={**api_keys.auth("producer"), "Content-Type": "application/json"},
    )
    problem = await assert_problem(resp, 400, "malformed-request")
    assert problem["detail"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_wrong_content_type_is_415(client: TestClient, api_keys: Keys, content_type: str) -> None:
    """A body declared as anything but JSON is a 415 problem, even if it holds JSON."""
    resp = await client.post(
        "/api/reviews", data=json.dumps(submission()),
        headers={**api_keys.auth("producer"), "Content-Type": content_type},
    )
    problem = await assert_problem(resp, 415, "unsupported-media-type")
    assert content_type in problem["detail"]


async def test_problem_json_content_type_is_accepted(client: TestClient, api_keys: Keys) -> None:
    """Any +json media type counts as JSON."""
    resp = await client.post(
        "/api/reviews", data=json.dumps(submission()),
        headers={**api_keys.auth("producer"), "Content-Type": "application/vnd.hitl+json"},
    )
    assert resp.status == 201, await resp.text()


async def test_body_over_default_limit_is_413(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A body over the default 1 MiB limit is a 413 problem and stores nothing."""
    body = submission(wargaming={"verdict": "x", "details": {"blob": "a" * (1024 * 1024 + 10)}})
    resp = await client.post(
        "/api/reviews", data=io.BytesIO(json.dumps(body).encode()),
        headers={**api_keys.auth("producer"), "Content-Type": "application/json"},
    )
    await assert_problem(resp, 413, "body-too-large")
    assert (await count_rows(database_url))["reviews"] == 0


async def test_body_over_configured_limit_is_413(
    make_client: MakeClient, api_keys: Keys, database_url: str
) -> None:
    """With max_body_bytes=2048 a 3 KiB submission is 413 on every body-reading endpoint,
    while a small one still passes."""
    client = await make_client(max_body_bytes=2048)
    big = submission(patch=submission()["patch"] + " " * 3000)
    resp = await client.post("/api/reviews", json=big, headers=api_keys.auth("producer"))
    problem = await assert_problem(resp, 413, "body-too-large")
    assert "2048" in problem["detail"]
    resp = await client.post("/api/apv/validate", json=big, headers=api_keys.auth("producer"))
    await assert_problem(resp, 413, "body-too-large")
    resp = await client.post(
        "/api/reviews/00000000-0000-4000-8000-000000000000/decision",
        json={"decision": "reject", "justification": "x" * 3000},
        headers=api_keys.auth("reviewer"),
    )
    await assert_problem(resp, 413, "body-too-large")
    assert (await count_rows(database_url))["reviews"] == 0
    small = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    assert small.status == 201
