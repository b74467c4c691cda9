"""The service moves the seed's metrics for real reasons: scripted traffic, then exact
values read back from /metrics with a real Prometheus text parser."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys, free_port, require_tool
from tests.prom import Exposition, parse_exposition
from tests.service.helpers import submission

REVIEW = "/api/reviews/{review_id}"
DECISION = "/api/reviews/{review_id}/decision"


async def scrape(client: Any) -> Exposition:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse_exposition(await resp.text())


async def create(client: Any, keys: Keys, **changes: Any) -> dict[str, Any]:
    resp = await client.post(
        "/api/reviews", json=submission(**changes), headers=keys.auth("producer")
    )
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def decide(client: Any, keys: Keys, review_id: str, body: dict[str, Any]) -> int:
    resp = await client.post(
        f"/api/reviews/{review_id}/decision", json=body, headers=keys.auth("reviewer")
    )
    await resp.read()
    return int(resp.status)


async def test_scripted_traffic_moves_exact_series(client: Any, api_keys: Keys) -> None:
    """Creates, reads, each kind of decision, validations, a 404, a 409, a 422 and a
    crash each land in exactly the series they should, with exactly the counts."""
    high_a = await create(client, api_keys, severity="high", source="oraculo", cvss_score=7.5)
    high_b = await create(client, api_keys, severity="high", source="oraculo", cvss_score=8.0)
    critical = await create(client, api_keys, severity="critical", source="scanner", cvss_score=9.8)
    low = await create(client, api_keys, severity="low", source="scanner", cvss_score=2.0)

    # identical resubmission: 200, not a new review
    again = {k: v for k, v in high_a.items() if k in submission()}
    again["package"] = high_a["package"]
    resp = await client.post("/api/reviews", json=again, headers=api_keys.auth("producer"))
    assert resp.status == 200

    for _ in range(2):  # miss, then hit
        resp = await client.get(f"/api/reviews/{high_a['id']}", headers=api_keys.auth("viewer"))
        assert resp.status == 200

    assert await decide(client, api_keys, high_a["id"], {"decision": "approve"}) == 200
    assert (
        await decide(client, api_keys, high_b["id"], {"decision": "reject", "justification": "no"})
        == 200
    )
    assert (
        await decide(
            client,
            api_keys,
            critical["id"],
            {"decision": "modify", "justification": "tighten", "modifications": {"patch": "x"}},
        )
        == 200
    )
    assert (
        await decide(client, api_keys, low["id"], {"decision": "escalate", "justification": "?"})
        == 200
    )
    assert (
        await decide(
            client, api_keys, high_a["id"], {"decision": "reject", "justification": "late"}
        )
        == 409
    )

    resp = await client.post(
        "/api/apv/validate", json=submission(), headers=api_keys.auth("producer")
    )
    assert resp.status == 200
    resp = await client.get(f"/api/reviews/{uuid.uuid4()}", headers=api_keys.auth("viewer"))
    assert resp.status == 404
    resp = await client.post(
        "/api/reviews", json={"apv_id": "x"}, headers=api_keys.auth("producer")
    )
    assert resp.status == 422
    resp = await client.get("/api/_test/fail")
    assert resp.status == 500
    resp = await client.get("/api/health")
    assert resp.status == 200

    m = await scrape(client)

    assert m.value("review_created_total", severity="high", source="oraculo") == 2
    assert m.value("review_created_total", severity="critical", source="scanner") == 1
    assert m.value("review_created_total", severity="low", source="scanner") == 1
    for decision, severity in [
        ("approve", "high"),
        ("reject", "high"),
        ("modify", "critical"),
        ("escalate", "low"),
    ]:
        assert m.value("review_decision_total", decision=decision, severity=severity) == 1
        assert (
            m.value("review_decision_duration_seconds_count", decision=decision, severity=severity)
            == 1
        )
    assert not m.has("review_decision_total", decision="reject", severity="low")

    # four stored submissions + one on-demand validation; the replay validates nothing new
    assert m.value("apv_validation_total", pattern_type="cve_format", result="valid") == 5
    assert m.value("apv_validation_duration_seconds_count", pattern_type="patch_format") == 5

    assert m.value("http_requests_total", method="POST", endpoint="/api/reviews", status="201") == 4
    assert m.value("http_requests_total", method="POST", endpoint="/api/reviews", status="200") == 1
    assert m.value("http_requests_total", method="POST", endpoint="/api/reviews", status="422") == 1
    assert m.value("http_requests_total", method="GET", endpoint=REVIEW, status="200") == 2
    assert m.value("http_requests_total", method="GET", endpoint=REVIEW, status="404") == 1
    assert m.value("http_requests_total", method="POST", endpoint=DECISION, status="200") == 4
    assert m.value("http_requests_total", method="POST", endpoint=DECISION, status="409") == 1
    assert (
        m.value("http_requests_total", method="GET", endpoint="/api/_test/fail", status="500") == 1
    )
    assert m.value("http_request_duration_seconds_count", method="POST", endpoint=DECISION) == 5

    assert m.value("app_exceptions_total", type="InjectedFailure") == 1
    assert m.value("app_errors_total", type="not_found", severity="info") == 1
    assert m.value("app_errors_total", type="conflict", severity="warning") == 1
    assert m.value("app_errors_total", type="validation", severity="warning") == 1

    # the first read misses, the second hits; the unknown id (404) misses too
    assert m.value("cache_operations_total", operation="get", result="miss") == 2
    assert m.value("cache_operations_total", operation="get", result="hit") == 1
    assert m.value("cache_hit_ratio") == pytest.approx(1 / 3)
    # each of the 4 successful decisions writes the review through and drops the stats
    # entry; each of the 4 submissions drops the stats entry too
    assert m.value("cache_operations_total", operation="delete", result="ok") == 4 + 4
    # the first read's fill, and the 4 decisions' write-through
    assert m.value("cache_operations_total", operation="set", result="ok") == 1 + 4

    # one attempted insert per submission, the replay included
    assert m.value("db_query_duration_seconds_count", operation="insert_review") == 5
    assert m.value("db_query_duration_seconds_count", operation="insert_decision") == 4
    assert m.value("db_connections_max") == 10
    assert m.value("db_connections_active") + m.value("db_connections_idle") >= 1

    # SLOs: every request above but health and /metrics; the crash is the one bad one
    counted = 4 + 1 + 2 + 5 + 1 + 1 + 1 + 1
    assert m.value("slo_requests_total", slo_type="availability") == counted
    assert m.value("slo_requests_bad", slo_type="availability") == 1
    assert m.value("slo_requests_good", slo_type="availability") == counted - 1
    assert m.value("service_up") == 1
    ((build_labels, build_value),) = m.series_of("hitl_build_info").items()
    assert dict(build_labels)["version"] == "test" and build_value == 1


async def test_database_errors_are_counted_by_type(client: Any, api_keys: Keys, app: Any) -> None:
    """A statement PostgreSQL rejects lands in db_query_errors_total by its error class."""
    from service.keys import DB

    with pytest.raises(Exception, match="division by zero"):
        await app[DB].fetchone("divide", "SELECT 1 / 0")
    m = await scrape(client)
    assert m.value("db_query_errors_total", error_type="DivisionByZero") == 1
    assert m.value("db_query_duration_seconds_count", operation="divide") == 1


async def test_redis_outage_is_counted_and_served(
    aiohttp_client: Any, settings: Settings, api_keys: Keys
) -> None:
    """With Redis unreachable, reads still succeed from PostgreSQL and the outage shows
    as cache errors and app_errors_total{type="cache_unavailable"}."""
    down = settings.with_changes(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_app(down))
    review = await create(client, api_keys)
    resp = await client.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    m = await scrape(client)
    assert m.value("cache_operations_total", operation="get", result="error") == 1
    assert m.value("cache_operations_total", operation="set", result="error") == 1
    # the submission's stats invalidation failed too
    assert m.value("cache_operations_total", operation="delete", result="error") == 1
    assert m.value("app_errors_total", type="cache_unavailable", severity="warning") == 3
    assert m.value("slo_requests_bad", slo_type="availability") == 0


@pytest.fixture
async def throwaway_redis() -> AsyncIterator[str]:
    """A private redis-server on a free port, so its counters are ours alone."""
    port = free_port()
    proc = subprocess.Popen(
        [
            require_tool("redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--hz",
            "50",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = aioredis.from_url(url)
    try:
        for _ in range(100):
            try:
                await client.ping()
                break
            except Exception:
                await asyncio.sleep(0.05)
        yield url
    finally:
        await client.aclose()
        proc.kill()
        proc.wait()


async def test_cache_evictions_follow_redis_evictions(
    aiohttp_client: Any, settings: Settings, throwaway_redis: str
) -> None:
    """cache_evictions_total grows by exactly the keys Redis evicted under maxmemory,
    and TTL expiry does not count."""
    client = await aiohttp_client(create_app(settings.with_changes(redis_url=throwaway_redis)))
    redis = aioredis.from_url(throwaway_redis)
    try:
        await redis.config_set("maxmemory", "2mb")
        await redis.config_set("maxmemory-policy", "allkeys-lru")
        await asyncio.sleep(0.3)  # let the poller read its baseline
        for i in range(3):
            await redis.set(f"hitl-test:expiring:{i}", "x", px=20)
        for i in range(60):
            await redis.set(f"hitl-test:big:{i}", "x" * 100_000)
        evicted = int((await redis.info("stats"))["evicted_keys"])
        assert evicted > 0
        for _ in range(60):
            m = await scrape(client)
            if m.value("cache_evictions_total") >= evicted:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # expiries, if wrongly counted, would show by now
        m = await scrape(client)
    finally:
        await redis.aclose()
    assert m.value("cache_evictions_total") == evicted
