"""The queue page: filters, order, keyset pagination, ages and counts per severity,
read through the same domain listing as GET /api/reviews."""

from __future__ import annotations

import re

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import sql, submit

from .conftest import SignedIn, element_text


def rows(page: str) -> list[dict[str, str]]:
    """Each queue row's data attributes and link."""
    found = []
    for match in re.finditer(
        r'<tr class="queue-item" data-review-id="([^"]+)" data-status="([^"]+)"'
        r' data-severity="([^"]+)">(.*?)</tr>',
        page,
        re.S,
    ):
        body = match.group(4)
        link = re.search(r'<a class="review-link" href="([^"]+)">', body)
        age = re.search(r'<td class="age"><time [^>]*>([^<]*)</time>', body)
        assert link and age
        found.append(
            {
                "id": match.group(1),
                "status": match.group(2),
                "severity": match.group(3),
                "href": link.group(1),
                "age": age.group(1),
            }
        )
    return found


def counts(page: str) -> dict[str, int]:
    section = re.search(r'<ul id="severity-counts".*?</ul>', page, re.S)
    assert section
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r'data-severity="(\w+)">(\d+)<', section.group(0))
    }


def next_page(page: str) -> str | None:
    match = re.search(r'<a id="next-page" href="([^"]+)"', page)
    return match.group(1).replace("&amp;", "&") if match else None


async def decide(client: TestClient, keys: Keys, review_id: str, decision: str) -> None:
    body = {"decision": decision}
    if decision != "approve":
        body["justification"] = "checked"
    resp = await client.post(
        f"/api/reviews/{review_id}/decision", json=body, headers=keys.auth("reviewer")
    )
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def seeded(client: TestClient, api_keys: Keys, database_url: str) -> list[dict[str, object]]:
    """Seven reviews, a minute apart (oldest first): severities and sources mixed; one
    escalated, one approved."""
    made = []
    plan = [
        ("critical", "oraculo"), ("high", "oraculo"), ("low", "scanner"), ("high", "scanner"),
        ("medium", "oraculo"), ("critical", "scanner"), ("low", "oraculo"),
    ]  # fmt: skip
    for severity, source in plan:
        made.append(
            await submit(client, api_keys.auth("producer"), severity=severity, source=source)
        )
    for minutes, review in zip(range(len(made), 0, -1), made, strict=True):
        await sql(
            database_url,
            "UPDATE reviews SET created_at = now() - %s * interval '1 minute' WHERE id = %s",
            (minutes * 60 + 5, review["id"]),
        )
    await decide(client, api_keys, str(made[1]["id"]), "escalate")
    await decide(client, api_keys, str(made[2]["id"]), "approve")
    return made


async def test_default_queue_is_open_reviews_oldest_first_with_ages(
    signed_in: SignedIn, api_keys: Keys, seeded: list[dict[str, object]]
) -> None:
    """Without filters: pending and escalated reviews, oldest first, each with its age."""
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get("/console/queue")).text()
    shown = rows(page)
    open_ids = [r["id"] for r in seeded if r["id"] != seeded[2]["id"]]
    assert [r["id"] for r in shown] == open_ids
    assert shown[0]["href"] == f"/console/reviews/{seeded[0]['id']}"
    assert shown[1]["status"] == "escalated"
    # Submitted 7 h 5 min ... 1 h 5 min ago (the seeding moved created_at back).
    assert shown[0]["age"] == "7 h 5 min"
    assert shown[-1]["age"] == "1 h 5 min"
    assert "queue-empty" not in page


async def test_counts_per_severity_follow_the_status_filter(
    signed_in: SignedIn, api_keys: Keys, seeded: list[dict[str, object]]
) -> None:
    """The counts per severity are those of the states the filter shows."""
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get("/console/queue")).text()
    assert counts(page) == {"critical": 2, "high": 2, "medium": 1, "low": 1}
    page = await (await viewer.get("/console/queue?status=escalated")).text()
    assert counts(page) == {"critical": 0, "high": 1, "medium": 0, "low": 0}
    assert [r["status"] for r in rows(page)] == ["escalated"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("severity=critical", [0, 5]),
        ("source=scanner", [3, 5]),
        ("severity=high&source=oraculo", [1]),
        ("status=pending&severity=high", [3]),
        ("status=approved", [2]),
        ("order=newest&severity=low", [6]),
        ("order=newest&source=oraculo", [6, 4, 1, 0]),
    ],
)
async def test_filters(
    signed_in: SignedIn,
    api_keys: Keys,
    seeded: list[dict[str, object]],
    query: str,
    expected: list[int],
) -> None:
    """Status, severity and source filters and the order select exactly the matching reviews."""
    viewer = await signed_in(api_keys.viewer)
    resp = await viewer.get(f"/console/queue?{query}")
    assert resp.status == 200
    assert [r["id"] for r in rows(await resp.text())] == [seeded[i]["id"] for i in expected]


async def test_keyset_pagination_walks_every_open_review_once(
    signed_in: SignedIn, api_keys: Keys, seeded: list[dict[str, object]]
) -> None:
    """Following next-page links visits every review once, in either order, keeping the filters."""
    viewer = await signed_in(api_keys.viewer)
    for order, ids in (
        ("oldest", [0, 1, 3, 4, 5, 6]),
        ("newest", [6, 5, 4, 3, 1, 0]),
    ):
        url: str | None = f"/console/queue?order={order}&limit=2"
        seen: list[str] = []
        pages = 0
        while url is not None:
            page = await (await viewer.get(url)).text()
            seen += [r["id"] for r in rows(page)]
            url = next_page(page)
            pages += 1
            if url is not None:
                assert "after=" in url and "limit=2" in url and f"order={order}" in url
        assert seen == [seeded[i]["id"] for i in ids], order
        assert pages == 3


async def test_empty_queue_says_so(signed_in: SignedIn, api_keys: Keys) -> None:
    """A filter that matches nothing says so in words and offers no next page."""
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get("/console/queue?source=nobody")).text()
    assert element_text(page, "queue-empty") == "No reviews match these filters."
    assert 'id="next-page"' not in page


@pytest.mark.parametrize(
    "query",
    [
        "status=done",
        "severity=urgent",
        "order=random",
        "limit=0",
        "limit=101",
        "after=xyz",
        "source=" + "s" * 101,
    ],
)
async def test_bad_filters_are_a_400_page(signed_in: SignedIn, api_keys: Keys, query: str) -> None:
    """A filter value outside its choices is a 400 page, not an empty queue."""
    viewer = await signed_in(api_keys.viewer)
    resp = await viewer.get(f"/console/queue?{query}")
    assert resp.status == 400
    assert resp.content_type == "text/html"
    assert "not valid" in element_text(await resp.text(), "error-message")


async def test_filter_form_is_labelled(signed_in: SignedIn, api_keys: Keys) -> None:
    """Every filter control has a label and keeps the chosen value."""
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get("/console/queue?severity=high&order=newest")).text()
    assert '<form id="queue-filters" method="get" action="/console/queue"' in page
    for control in ("status", "severity", "source", "order"):
        assert f'<label for="filter-{control}">' in page
        assert re.search(rf'id="filter-{control}" name="{control}"', page)
    assert '<option value="high" selected>' in page
    assert '<option value="newest" selected>' in page
    assert 'id="apply-filters"' in page
