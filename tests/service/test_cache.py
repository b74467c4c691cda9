"""Review detail cached in Redis under the run's prefix, and replaced on every decision."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.keys import CACHE, REVIEWS
from service.storage.breaker import BreakerPolicy, CircuitBreaker, CircuitState
from tests.conftest import REDIS_URL, RUN_ID, Keys
from tests.prom import parse_exposition
from tests.service.helpers import decide, sql, submit


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(REDIS_URL)
    yield client
    await client.aclose()


def review_key(review_id: str) -> str:
    return f"hitl-test:{RUN_ID}:review:{review_id}"


async def test_second_read_is_served_from_redis(
    client: TestClient, api_keys: Keys, database_url: str, redis_client: aioredis.Redis
) -> None:
    """The first GET fills the run's Redis key (with a TTL); a change made behind the
    service's back in PostgreSQL is not seen while the cached copy lives."""
    review = await submit(client, api_keys.auth("producer"))
    rid = review["id"]
    assert await redis_client.exists(review_key(rid)) == 0
    first = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    cached = await redis_client.get(review_key(rid))
    assert cached is not None and json.loads(cached) == first
    assert 0 < await redis_client.ttl(review_key(rid)) <= 300

    await sql(database_url, "UPDATE reviews SET apv_code = 'CHANGED-IN-DB' WHERE id = %s", (rid,))
    second = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert second == first
    assert second["apv_code"] == review["apv_code"]


async def test_decision_invalidates_the_cached_review(
    client: TestClient, api_keys: Keys, database_url: str, redis_client: aioredis.Redis
) -> None:
    """After a decision the cached copy is replaced by the committed state, so the next
    GET shows the new state (and anything else PostgreSQL now holds)."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert await redis_client.exists(review_key(rid)) == 1
    await sql(database_url, "UPDATE reviews SET apv_code = 'CHANGED-IN-DB' WHERE id = %s", (rid,))

    assert (await decide(client, rid, "escalate", api_keys.auth("reviewer"))).status == 200
    cached = json.loads(await redis_client.get(review_key(rid)))
    assert (cached["status"], cached["apv_code"]) == ("escalated", "CHANGED-IN-DB")
    fresh = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert fresh["status"] == "escalated"
    assert fresh["apv_code"] == "CHANGED-IN-DB"
    assert [d["decision"] for d in fresh["decisions"]] == ["escalate"]

    assert (await decide(client, rid, "approve", api_keys.auth("reviewer"))).status == 200
    final = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert final["status"] == "approved"
    assert [d["decision"] for d in final["decisions"]] == ["escalate", "approve"]


async def test_failed_decision_keeps_serving_correct_state(
    client: TestClient, api_keys: Keys, redis_client: aioredis.Redis
) -> None:
    """A rejected (409) decision leaves the cached review valid: it still shows the truth."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    await decide(client, rid, "approve", api_keys.auth("reviewer"))
    await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert (await decide(client, rid, "reject", api_keys.auth("reviewer"))).status == 409
    got = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert got["status"] == "approved"


async def test_keys_stay_under_the_run_prefix(
    client: TestClient, api_keys: Keys, redis_client: aioredis.Redis
) -> None:
    """Everything the service writes to Redis lives under its configured prefix."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    await client.get("/api/reviews/stats", headers=api_keys.auth("viewer"))
    keys = {k.decode() async for k in redis_client.scan_iter(match=f"*{rid}*")}
    assert keys == {review_key(rid)}
    assert await redis_client.exists(f"hitl-test:{RUN_ID}:stats") == 1


async def test_read_racing_a_decision_cannot_cache_the_old_state(
    client: TestClient, app: web.Application, api_keys: Keys, redis_client: aioredis.Redis
) -> None:
    """A GET that loaded the pending review just before a decision committed must not
    put 'pending' back into the cache after the decision wrote the new state."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    store = app[REVIEWS].store
    loaded, release = asyncio.Event(), asyncio.Event()
    real_get_review = store.get_review

    async def get_review_then_pause(review_id: str) -> Any:
        row = await real_get_review(review_id)  # the real read, from PostgreSQL
        loaded.set()
        await release.wait()
        return row

    store.get_review = get_review_then_pause  # type: ignore[method-assign]
    slow_read = asyncio.ensure_future(
        client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    )
    await asyncio.wait_for(loaded.wait(), 5)
    assert (await decide(client, rid, "approve", api_keys.auth("reviewer"))).status == 200
    release.set()
    stale = await (await slow_read).json()
    store.get_review = real_get_review  # type: ignore[method-assign]

    assert stale["status"] == "pending"  # that response was already on its way
    cached = json.loads(await redis_client.get(review_key(rid)))
    assert cached["status"] == "approved"
    fresh = await (await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))).json()
    assert fresh["status"] == "approved"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker_with_clock(
    threshold: int = 3, cool_down: float = 5.0
) -> tuple[CircuitBreaker, FakeClock, list[CircuitState]]:
    clock = FakeClock()
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(
        BreakerPolicy(failure_threshold=threshold, cool_down_seconds=cool_down),
        on_change=changes.append,
        clock=clock,
    )
    return breaker, clock, changes


def test_breaker_opens_after_failures_in_a_row_only() -> None:
    """Two failures, a success, two failures: still closed; the third in a row opens it
    and calls are turned away until the cool-down ends."""
    breaker, clock, changes = breaker_with_clock(threshold=3)
    for outcome in ("fail", "fail", "ok", "fail", "fail"):
        assert breaker.allow()
        breaker.record_failure() if outcome == "fail" else breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and changes == [CircuitState.OPEN]
    clock.now += 4.9
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    """After the cool-down exactly one call probes; the others are turned away until
    it answers; its success closes the breaker for everyone."""
    breaker, clock, changes = breaker_with_clock(threshold=1)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert all(breaker.allow() for _ in range(10))
    assert changes == [CircuitState.OPEN, CircuitState.HALF_OPEN, CircuitState.CLOSED]


def test_failed_probe_reopens_for_another_cool_down() -> None:
    """A failed probe opens the breaker again, counted as a new opening."""
    breaker, clock, changes = breaker_with_clock(threshold=2)
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is CircuitState.OPEN
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()
    assert changes.count(CircuitState.OPEN) == 2


def test_a_probe_that_never_answers_does_not_stick() -> None:
    """A probe cancelled mid-call never reports; another may go a cool-down later."""
    breaker, clock, _ = breaker_with_clock(threshold=1)
    breaker.record_failure()
    clock.now += 5.0
    assert breaker.allow()
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


async def test_open_breaker_skips_redis_and_readiness_says_so(
    make_client: Any, api_keys: Keys
) -> None:
    """An open breaker: reads are served from PostgreSQL without a cache call (no new
    cache errors), the gauge is 1, the opening is counted, readiness is 200
    'degraded' with redis 'circuit-open' — and a closed breaker goes back to Redis."""
    client: TestClient = await make_client(cache_breaker_cool_down_seconds=60.0)
    cache = client.app[CACHE]
    review = await submit(client, api_keys.auth("producer"))
    for _ in range(cache.breaker.policy.failure_threshold):
        cache.breaker.record_failure()
    before = parse_exposition(await (await client.get("/metrics")).text())
    resp = await client.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    after = parse_exposition(await (await client.get("/metrics")).text())
    assert after.value("hitl_cache_circuit_state") == 1
    assert after.value("hitl_cache_circuit_opened_total") == 1
    for result in ("hit", "miss", "error"):
        assert after.value("cache_operations_total", operation="get", result=result) == (
            before.value("cache_operations_total", operation="get", result=result)
        )
    ready = await client.get("/api/health/ready")
    assert ready.status == 200
    assert await ready.json() == {
        "status": "degraded",
        "checks": {"postgres": "ok", "redis": "circuit-open"},
    }
    cache.breaker.record_success()
    resp = await client.get(f"/api/reviews/{review['id']}", headers=api_keys.auth("viewer"))
    closed = parse_exposition(await (await client.get("/metrics")).text())
    assert closed.value("hitl_cache_circuit_state") == 0
    assert closed.value("cache_operations_total", operation="get", result="miss") == (
        after.value("cache_operations_total", operation="get", result="miss") + 1
    )
    assert (await (await client.get("/api/health/ready")).json())["status"] == "ready"
