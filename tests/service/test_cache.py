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

from service.keys import REVIEWS
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
