"""GET /api/reviews: filters, newest-first order, limits and keyset pagination."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import assert_problem, decide, error_fields, sql, submit


async def page(client: TestClient, keys: Keys, query: str = "") -> dict[str, Any]:
    resp = await client.get(f"/api/reviews{query}", headers=keys.auth("viewer"))
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def create_many(client: TestClient, keys: Keys, count: int, **changes: Any) -> list[str]:
    reviews = await asyncio.gather(
        *(submit(client, keys.auth("producer"), **changes) for _ in range(count))
    )
    return [r["id"] for r in reviews]


async def test_empty_list(client: TestClient, api_keys: Keys) -> None:
    """No reviews: an empty page without a cursor."""
    assert await page(client, api_keys) == {"items": [], "next_cursor": None}


async def test_newest_first(client: TestClient, api_keys: Keys, database_url: str) -> None:
    """Reviews come newest first by created_at, whatever order they were inserted in."""
    ids = await create_many(client, api_keys, 3)
    ages = {ids[0]: 10, ids[1]: 30, ids[2]: 20}
    for rid, minutes in ages.items():
        await sql(database_url, "UPDATE reviews SET created_at = now() - %s * interval '1 minute'"
                  " WHERE id = %s", (minutes, rid))
    items = (await page(client, api_keys))["items"]
    assert [i["id"] for i in items] == [ids[0], ids[2], ids[1]]
    assert all("validation" in i and len(i["validation"]) == 4 for i in items)


async def test_filters(client: TestClient, api_keys: Keys) -> None:
    """status, severity, source and cve_id each narrow the list, alone and combined."""
    producer = api_keys.auth("producer")
    a = await submit(client, producer, severity="critical", cvss_score=9.8, source="oraculo", cve_id="CVE-2024-0001")
    b = await submit(client, producer, severity="low", cvss_score=2.0, source="eureka", cve_id="CVE-2024-0002")
    c = await submit(client, producer, severity="critical", cvss_score=9.1, source="eureka", cve_id="CVE-2024-0001")
    assert (await decide(client, b["id"], "approve", api_keys.auth("reviewer"))).status == 200
    assert (await decide(client, c["id"], "escalate", api_keys.auth("reviewer"))).status == 200

    async def ids(query: str) -> set[str]:
        return {i["id"] for i in (await page(client, api_keys, query))["items"]}

    assert await ids("?status=pending") == {a["id"]}
    assert await ids("?status=approved") == {b["id"]}
    assert await ids("?status=escalated") == {c["id"]}
    assert await ids("?status=rejected") == set()
    assert await ids("?severity=critical") == {a["id"], c["id"]}
    assert await ids("?severity=low") == {b["id"]}
    assert await ids("?source=eureka") == {b["id"], c["id"]}
    assert await ids("?source=nobody") == set()
    assert await ids("?cve_id=CVE-2024-0001") == {a["id"], c["id"]}
    assert await ids("?cve_id=CVE-2024-0001&source=eureka") == {c["id"]}
    assert await ids("?severity=critical&status=pending") == {a["id"]}
    assert await ids("?status=&severity=") == {a["id"], b["id"], c["id"]}


async def test_default_limit_is_20_and_max_100(client: TestClient, api_keys: Keys) -> None:
    """Without limit a page holds 20; limit=100 is allowed; more reviews mean a cursor."""
    await create_many(client, api_keys, 25)
    first = await page(client, api_keys)
    assert len(first["items"]) == 20
    assert first["next_cursor"]
    everything = await page(client, api_keys, "?limit=100")
    assert len(everything["items"]) == 25
    assert everything["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("?limit=101", "limit"),
        ("?limit=0", "limit"),
        ("?limit=-5", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=2.5", "limit"),
        ("?status=open", "status"),
        ("?severity=urgent", "severity"),
        ("?cursor=not-a-cursor", "cursor"),
        ("?cursor=" + base64.urlsafe_b64encode(b'"just a string"').decode(), "cursor"),
        ("?cursor=" + base64.urlsafe_b64encode(b'["2025-01-01T00:00:00+00:00", "nope"]').decode(), "cursor"),
        ("?cursor=" + base64.urlsafe_b64encode(b'["yesterday", "5f0c6d52-8a59-4c7e-9a55-0d2e4b1f6a10"]').decode(), "cursor"),
    ],
)
async def test_bad_query_is_422(client: TestClient, api_keys: Keys, query: str, field: str) -> None:
    """A bad limit, filter value or cursor is a 422 problem naming the parameter."""
    resp = await client.get(f"/api/reviews{query}", headers=api_keys.auth("viewer"))
    problem = await assert_problem(resp, 422, "validation-failed")
    assert field in error_fields(problem)


async def test_crafted_cursor_is_422(client: TestClient, api_keys: Keys) -> None:
    """A base64 JSON cursor whose id is not a string is rejected like any bad cursor."""
    cursor = base64.urlsafe_b64encode(b"[1, 2]").decode().rstrip("=")
    resp = await client.get(f"/api/reviews?cursor={cursor}", headers=api_keys.auth("viewer"))
    problem = await assert_problem(resp, 422, "validation-failed")
    assert "cursor" in error_fields(problem)


async def test_pagination_has_no_duplicates_or_gaps(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """45 reviews, several sharing a created_at, read 10 at a time: 5 pages, each strictly
    newest-first, together exactly the 45 ids, the last page without a cursor."""
    ids = await create_many(client, api_keys, 45)
    # Groups of 5 share one timestamp, so the id tie-breaker is exercised on every page.
    for n, rid in enumerate(ids):
        await sql(database_url, "UPDATE reviews SET created_at = timestamptz '2025-01-01 00:00Z'"
                  " + %s * interval '1 minute' WHERE id = %s", (n // 5, rid))
    seen: list[str] = []
    keys: list[tuple[str, str]] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = "?limit=10" + (f"&cursor={cursor}" if cursor else "")
        body = await page(client, api_keys, query)
        pages += 1
        seen += [i["id"] for i in body["items"]]
        keys += [(i["created_at"], i["id"]) for i in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            assert len(body["items"]) == 5
            break
        assert len(body["items"]) == 10
        assert pages < 10, "pagination does not terminate"
    assert pages == 5
    assert len(seen) == len(set(seen)) == 45
    assert set(seen) == set(ids)
    assert keys == sorted(keys, reverse=True)


async def test_pagination_with_filter_and_exact_multiple(client: TestClient, api_keys: Keys) -> None:
    """A filtered listing pages only through matching reviews; when the count is an exact
    multiple of the limit the last full page carries no cursor."""
    high = await create_many(client, api_keys, 6, severity="high")
    await create_many(client, api_keys, 4, severity="low", cvss_score=1.0)
    first = await page(client, api_keys, "?severity=high&limit=3")
    second = await page(client, api_keys, f"?severity=high&limit=3&cursor={first['next_cursor']}")
    assert second["next_cursor"] is None
    got = [i["id"] for i in first["items"] + second["items"]]
    assert sorted(got) == sorted(high)
    assert all(i["severity"] == "high" for i in first["items"] + second["items"])
