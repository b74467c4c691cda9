"""Faults: Redis unreachable or killed (served from PostgreSQL), PostgreSQL stopped (503,
never 500), and shutdown while the eviction poller talks to Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.keys import DB
from service.storage.migrate import create_database
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.conftest import (
    MakeClient,
    ThrowawayPostgres,
    ThrowawayRedis,
    closed_port,
)
from tests.service.helpers import assert_problem, decide, submission


async def exercise_every_endpoint(client: TestClient, keys: Keys) -> None:
    """Submit, read (twice), list, decide, stats and validate all succeed."""
    resp = await client.post("/api/reviews", json=submission(), headers=keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    for _ in range(2):
        resp = await client.get(f"/api/reviews/{rid}", headers=keys.auth("viewer"))
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["status"] == "pending"
    resp = await client.get("/api/reviews", headers=keys.auth("viewer"))
    assert rid in [i["id"] for i in (await resp.json())["items"]]
    resp = await decide(client, rid, "approve", keys.auth("reviewer"))
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/api/reviews/{rid}", headers=keys.auth("viewer"))
    assert (await resp.json())["status"] == "approved"
    resp = await client.get("/api/reviews/stats", headers=keys.auth("viewer"))
    assert (await resp.json())["decisions_by_type"]["approve"] == 1
    resp = await client.post("/api/apv/validate", json=submission(), headers=keys.auth("producer"))
    assert resp.status == 200


async def test_redis_unreachable_serves_from_postgres(
    make_client: MakeClient, api_keys: Keys
) -> None:
    """With Redis at a closed port every endpoint works from PostgreSQL, quickly, and
    readiness says 200 'degraded'; the failed calls have opened the cache's circuit."""
    client = await make_client(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    started = time.monotonic()
    await exercise_every_endpoint(client, api_keys)
    assert time.monotonic() - started < 5
    resp = await client.get("/api/health/ready")
    assert resp.status == 200
    assert await resp.json() == {
        "status": "degraded",
        "checks": {"postgres": "ok", "redis": "circuit-open"},
    }


async def test_redis_killed_mid_test(
    make_client: MakeClient, api_keys: Keys, throwaway_redis: ThrowawayRedis
) -> None:
    """A Redis that dies after caching a review: reads and decisions keep succeeding and
    show the truth from PostgreSQL; readiness turns 'degraded'."""
    client = await make_client(redis_url=throwaway_redis.url)
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    rid = (await resp.json())["id"]
    assert (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).status == 200
    assert (await (await client.get("/api/health/ready")).json())["status"] == "ready"

    throwaway_redis.kill()

    resp = await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    resp = await decide(client, rid, "reject", api_keys.auth("reviewer"))
    assert resp.status == 200, await resp.text()
    resp = await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert (await resp.json())["status"] == "rejected"
    await exercise_every_endpoint(client, api_keys)
    ready = await client.get("/api/health/ready")
    assert ready.status == 200
    assert (await ready.json())["status"] == "degraded"


async def test_postgres_stopped_is_503_not_500(
    aiohttp_client,
    settings: Settings,
    api_keys: Keys,
    throwaway_postgres: ThrowawayPostgres,  # type: ignore[no-untyped-def]
) -> None:
    """An app on its own PostgreSQL: ready and working; after PostgreSQL stops, readiness is
    503 'unavailable' and API calls are 503 database-unavailable problems, never 500."""
    await create_database(throwaway_postgres.url)
    app = create_app(
        settings.with_changes(database_url=throwaway_postgres.url, db_timeout_seconds=2.0)
    )
    client: TestClient = await aiohttp_client(app)
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    rid = (await resp.json())["id"]
    assert (await client.get("/api/health/ready")).status == 200

    throwaway_postgres.stop()

    started = time.monotonic()
    ready = await client.get("/api/health/ready")
    assert ready.status == 503
    assert await ready.json() == {
        "status": "unavailable",
        "checks": {"postgres": "unavailable", "redis": "ok"},
    }
    calls = [
        ("GET", "/api/reviews", None, "viewer"),
        ("GET", "/api/reviews/stats", None, "viewer"),
        ("POST", "/api/reviews", submission(), "producer"),
        ("POST", f"/api/reviews/{rid}/decision", {"decision": "approve"}, "reviewer"),
        ("GET", "/api/reviews/00000000-0000-4000-8000-000000000000", None, "viewer"),
    ]
    for method, path, body, role in calls:
        resp = await client.request(method, path, json=body, headers=api_keys.auth(role))
        problem = await assert_problem(resp, 503, "database-unavailable")
        assert resp.headers["Retry-After"] == "5"
        assert "psycopg2" not in str(problem)
    assert (await client.get("/api/health")).status == 200
    assert time.monotonic() - started < 15


async def test_shutdown_completes_while_eviction_poller_talks_to_redis(settings: Settings) -> None:
    """Starting and stopping the app (up to 40 times) with a busy eviction poller never hangs."""
    hung = 0
    for _ in range(40):
        runner = web.AppRunner(
            create_app(settings.with_changes(cache_stats_interval_seconds=0.0005))
        )
        await runner.setup()
        await asyncio.sleep(0.01)
        cleanup = asyncio.ensure_future(runner.cleanup())
        done, _ = await asyncio.wait({cleanup}, timeout=1)
        if not done:
            hung += 1
            cleanup.cancel()
            break
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "hitl-cache-evictions"]
    assert hung == 0, "app cleanup hung"


async def test_exhausted_pool_is_503_not_a_crash(
    aiohttp_client: Any, settings: Settings, api_keys: Keys
) -> None:
    """With every pooled connection busy past the pool timeout, a request gets a 503
    problem with Retry-After, counted as an app error, not as an unhandled exception."""
    app = create_app(settings.with_changes(db_pool_min=1, db_pool_max=1, db_timeout_seconds=0.3))
    client = await aiohttp_client(app)
    held = await app[DB].pool.acquire()
    try:
        resp = await client.get("/api/reviews", headers=api_keys.auth("viewer"))
        problem = await assert_problem(resp, 503, "database-busy")
        assert resp.headers["Retry-After"] == "1"
        assert "0.3s" in problem["detail"]
    finally:
        await app[DB].pool.release(held)
    assert (await client.get("/api/reviews", headers=api_keys.auth("viewer"))).status == 200
    m = parse_exposition(await (await client.get("/metrics")).text())
    assert m.value("app_errors_total", type="database_pool_exhausted", severity="critical") == 1
    assert not m.series_of("app_exceptions_total") or all(
        v == 0 for v in m.series_of("app_exceptions_total").values()
    )
