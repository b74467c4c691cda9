"""POST /api/apv/validate: the four patterns on demand, on full and partial payloads."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.domain.validation import Result, validate_apv
from tests.conftest import Keys
from tests.service.helpers import assert_problem, count_rows, error_fields, submission

PATTERNS = ["cve_format", "severity_consistency", "anomaly_score", "patch_format"]


async def validate(client: TestClient, keys: Keys, body: Any) -> dict[str, Any]:
    resp = await client.post("/api/apv/validate", json=body, headers=keys.auth("producer"))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


def by_pattern(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["pattern_type"]: r for r in report["results"]}


async def test_valid_payload_has_no_invalid_or_error(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A clean APV: valid=true, one 'valid' result per pattern, each with a reason; nothing stored."""
    report = await validate(client, api_keys, submission())
    assert report["valid"] is True
    assert [r["pattern_type"] for r in report["results"]] == PATTERNS
    for result in report["results"]:
        assert result["result"] == "valid"
        assert result["reason"]
        assert result["duration_ms"] >= 0
    assert (await count_rows(database_url))["reviews"] == 0


@pytest.mark.parametrize(
    ("changes", "pattern", "result", "reason_part"),
    [
        ({"cve_id": "CVE-2024-12345"}, "cve_format", "valid", "well-formed"),
        ({"cve_id": "CVE-2024-1"}, "cve_format", "invalid", "CVE-YYYY-NNNN"),
        ({"cve_id": "GHSA-xxxx-yyyy"}, "cve_format", "invalid", "CVE-YYYY-NNNN"),
        ({"cve_id": "CVE-1990-1234"}, "cve_format", "invalid", "1999"),
        ({"severity": "high", "cvss_score": 7.5}, "severity_consistency", "valid", "high band"),
        ({"severity": "medium", "cvss_score": 9.1}, "severity_consistency", "invalid", "outside the medium band"),
        ({"severity": "critical", "cvss_score": 8.9}, "severity_consistency", "invalid", "outside"),
        ({"anomaly_score": 0.9}, "anomaly_score", "valid", ">= review threshold"),
        ({"anomaly_score": 0.49}, "anomaly_score", "invalid", "below the review threshold"),
        ({"anomaly_score": 3}, "anomaly_score", "invalid", "outside 0..1"),
        ({"patch": "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-x\n+y\n"}, "patch_format", "valid", "unified diff"),
        ({"patch": "rm -rf /"}, "patch_format", "invalid", "header"),
        ({"patch": "   "}, "patch_format", "invalid", "empty"),
    ],
)
async def test_each_pattern_judges_its_field(
    client: TestClient,
    api_keys: Keys,
    changes: dict[str, Any],
    pattern: str,
    result: str,
    reason_part: str,
) -> None:
    """Each pattern answers valid/invalid for its own field with a reason that says why."""
    report = await validate(client, api_keys, submission(**changes))
    judged = by_pattern(report)[pattern]
    assert judged["result"] == result, judged
    assert reason_part in judged["reason"]
    assert report["valid"] is (result == "valid")


async def test_empty_payload_reports_every_pattern(client: TestClient, api_keys: Keys) -> None:
    """An empty object is judged, not rejected: missing fields are invalid, nothing errors."""
    report = await validate(client, api_keys, {})
    results = by_pattern(report)
    assert report["valid"] is False
    assert results["cve_format"]["result"] == "invalid"
    assert "missing" in results["cve_format"]["reason"]
    assert results["severity_consistency"]["result"] == "valid"  # no score: nothing to compare
    assert results["anomaly_score"]["result"] == "invalid"
    assert results["patch_format"]["result"] == "invalid"
    assert all(r["result"] != "error" for r in report["results"])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"cve_id": "CVE-2023-44487"}, {"cve_format": "valid", "anomaly_score": "invalid"}),
        ({"cvss_score": 5.0}, {"severity_consistency": "invalid"}),  # score without a severity
        ({"severity": "low", "cvss_score": 2.0}, {"severity_consistency": "valid"}),
        ({"anomaly_score": 0.7, "patch": "--- a\n+++ b\n@@ -0,0 +1 @@\n+new\n"},
         {"anomaly_score": "valid", "patch_format": "valid", "cve_format": "invalid"}),
    ],
)
async def test_partial_payloads(
    client: TestClient, api_keys: Keys, body: dict[str, Any], expected: dict[str, str]
) -> None:
    """Partial payloads get a verdict per pattern from whatever fields are present."""
    results = by_pattern(await validate(client, api_keys, body))
    assert set(results) == set(PATTERNS)
    for pattern, result in expected.items():
        assert results[pattern]["result"] == result, results[pattern]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"cvss_score": "high"}, "/cvss_score"),
        ({"cvss_score": 11}, "/cvss_score"),
        ({"severity": "urgent"}, "/severity"),
        ({"package": {"name": "x"}}, "/package/version"),
        ({"anomaly_score": "0.9"}, "/anomaly_score"),
        ([], "/"),
    ],
)
async def test_wrongly_typed_fields_are_422(
    client: TestClient, api_keys: Keys, body: Any, field: str
) -> None:
    """A field that is present must have the right shape: 422 naming it."""
    resp = await client.post("/api/apv/validate", json=body, headers=api_keys.auth("producer"))
    problem = await assert_problem(resp, 422, "validation-failed")
    assert field in error_fields(problem)


async def test_validate_and_submit_agree(client: TestClient, api_keys: Keys) -> None:
    """The results stored on intake are the ones /api/apv/validate gives for the same APV."""
    body = submission(cve_id="CVE-24-1", anomaly_score=0.1)
    report = await validate(client, api_keys, body)
    resp = await client.post("/api/reviews", json=body, headers=api_keys.auth("producer"))
    stored = {v["pattern_type"]: (v["result"], v["reason"]) for v in (await resp.json())["validation"]}
    assert stored == {r["pattern_type"]: (r["result"], r["reason"]) for r in report["results"]}


def test_broken_pattern_reports_error_not_crash() -> None:
    """A pattern that raises yields 'error' with the exception's type; the others still run."""
    apv = dict(submission(), cvss_score="not-a-number")  # only reachable below the API's schema
    results = {r.pattern_type: r for r in validate_apv(apv, anomaly_threshold=0.5)}
    assert results["severity_consistency"].result is Result.ERROR
    assert "ValueError" in results["severity_consistency"].reason
    assert results["cve_format"].result is Result.VALID
    assert results["patch_format"].result is Result.VALID
