"""live.js in headless Chromium on the real console pages, signed in through the
form: the status text, rows joining and leaving the queue without a reload, a review
page decided elsewhere, announcements, and the 15 s refresh while Redis is down, then
live again. (tests/console covers the pages themselves.)

The server runs in this test's event loop, so every blocking WebDriver call goes
through a worker thread (``browser``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import pytest
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys, require_tool
from tests.console.served import chromium
from tests.service.conftest import ThrowawayRedis
from tests.service.helpers import submission

from .conftest import live

LIVE = "Live"
FALLBACK = "Live updates unavailable \u2014 refreshing every 15 s"
T = TypeVar("T")

# The page's own fetches of its URL (live.js' refetches), from the browser's timeline.
REFETCHES = """return performance.getEntriesByType('resource')
    .filter(function (e) { return e.initiatorType === 'fetch' && e.name === location.href; })
    .map(function (e) { return e.startTime; });"""


class Browser:
    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def get(self, url: str) -> None:
        await self.call(self.driver.get, url)

    async def text(self, selector: str) -> str:
        return str(await self.call(self.driver.execute_script,
            "var e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            selector))

    async def script(self, source: str, *args: Any) -> Any:
        return await self.call(self.driver.execute_script, source, *args)

    async def until(self, check: Callable[[], Any], within: float) -> float:
        started = time.monotonic()
        while not await check():
            assert time.monotonic() - started < within, f"not within {within}s"
            await asyncio.sleep(0.05)
        return time.monotonic() - started


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """The browser tests' headless Chromium (tests/console/served.py: Debian's chromium
    through its chromedriver, a fresh profile), started off the event loop."""
    session = chromium(require_tool("chromium"), require_tool("chromedriver"))
    loop = asyncio.get_running_loop()
    driver = await loop.run_in_executor(None, session.__enter__)
    try:
        yield Browser(driver)
    finally:
        await loop.run_in_executor(None, session.__exit__, None, None, None)


async def test_live_js_follows_the_stream_and_falls_back_to_refreshing(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    throwaway_redis: ThrowawayRedis,
    browser: Browser,
) -> None:
    app = create_app(settings.with_changes(redis_url=throwaway_redis.url,
                                           cache_breaker_cool_down_seconds=0.5))
    client: TestClient = await aiohttp_client(app)
    await live(client.app)
    base = f"http://127.0.0.1:{client.port}"

    async def submit() -> dict[str, Any]:
        resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
        assert resp.status == 201
        return dict(await resp.json())

    async def decide(review_id: str) -> None:
        resp = await client.post(f"/api/reviews/{review_id}/decision", json={"decision": "approve"},
                                 headers=api_keys.auth("admin"))
        assert resp.status == 200

    def row_count(review_id: str) -> Callable[[], Any]:
        async def count() -> int:
            return int(await browser.script(
                "return document.querySelectorAll('tr.queue-item[data-review-id=\"' + arguments[0] + '\"]').length",
                review_id))
        return count

    async def refetches() -> list[float]:
        return list(await browser.script(REFETCHES))

    # -- sign in; the queue is live -------------------------------------------------------
    await browser.get(f"{base}/console/sign-in")
    await browser.script(
        "document.getElementById('api-key').value = arguments[0];"
        "document.getElementById('sign-in-form').submit();", api_keys.reviewer)
    await browser.until(lambda: _eq(browser.script("return document.body.dataset.page"), "queue"), 10)
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 10)
    await browser.script("window.__marker = 1")  # gone if the page reloads

    review = await submit()
    seconds = await browser.until(lambda: _is(row_count(review["id"])(), 1), 5)
    assert seconds < 2.0
    await browser.until(lambda: _contains(browser.text("#announcer"), review["cve_id"]), 2)
    counted = f"#severity-counts [data-severity={review['severity']}]"
    assert (await browser.text(counted)).strip() == "1"

    await decide(review["id"])
    seconds = await browser.until(lambda: _is(row_count(review["id"])(), 0), 5)
    assert seconds < 2.0  # removed at once, before any refetch
    await browser.until(lambda: _contains(browser.text("#announcer"), "approved by alice"), 2)
    await browser.until(lambda: _eq(browser.text(counted), "0"), 3)
    assert await browser.script("return window.__marker") == 1
    # The submission's refetch and the decision's (at most one a second), no more.
    await browser.until(lambda: _true_async(refetches(), lambda r: len(r) == 2), 3)

    # -- Redis down: the text says so, and the page refreshes every 15 s ------------------
    throwaway_redis.kill()
    await browser.until(lambda: _eq(browser.text("#live-status"), FALLBACK), 5)
    fallback_at = await browser.script("return performance.now()")
    unseen = await submit()  # not published (Redis is down): only the period finds it
    await browser.until(lambda: _is(row_count(unseen["id"])(), 1), 17)
    times = await refetches()
    assert len(times) == 3
    assert 13_000 <= times[2] - fallback_at <= 16_500
    assert await browser.script("return window.__marker") == 1

    throwaway_redis.start()
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 8)

    # -- review page: decided elsewhere -------------------------------------------------
    await browser.get(f"{base}/console/reviews/{unseen['id']}")
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 10)
    await browser.script("document.getElementById('justification').value = 'typed'")
    assert await browser.script("return document.getElementById('decision-fieldset').disabled") is False

    await decide(unseen["id"])
    await browser.until(lambda: _contains(browser.text("#review-status"), "approved by alice"), 5)
    assert await browser.script("return document.getElementById('decision-fieldset').disabled") is True
    assert await browser.script("return document.getElementById('justification').value") == "typed"
    await browser.until(lambda: _contains(browser.text("#announcer"), "approved by alice"), 2)
    errors = [
        e for e in await browser.call(browser.driver.get_log, "browser")
        if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    assert errors == []


async def _true_async(value: Any, check: Callable[[Any], bool]) -> bool:
    return check(await value)


async def _eq(value: Any, expected: str) -> bool:
    return str(await value).strip() == expected


async def _is(value: Any, expected: int) -> bool:
    return (await value) == expected


async def _contains(value: Any, part: str) -> bool:
    return part in ((await value) or "")
