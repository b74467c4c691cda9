"""Review detail cached in Redis under the run's prefix, and dropped on every decision."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from tests.conftest import REDIS_URL, RUN_ID, Keys
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
    """After a decision the cached copy is gone and the next GET shows the new state (and
    anything else PostgreSQL now holds)."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert await redis_client.exists(review_key(rid)) == 1
    await sql(database_url, "UPDATE reviews SET apv_code = 'CHANGED-IN-DB' WHERE id = %s", (rid,))

    assert (await decide(client, rid, "escalate", api_keys.auth("reviewer"))).status == 200
    assert await redis_client.exists(review_key(rid)) == 0
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
