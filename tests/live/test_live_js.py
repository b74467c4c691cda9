"""live.js in headless Chromium, against fixture pages that carry the contract's
element ids (the real console pages are console-pages' and tests/console's): the
status text, rows leaving and joining the queue, a review page decided elsewhere,
announcements, and the 15 s refresh when Redis is down, then live again.

The server runs in this test's event loop, so every blocking WebDriver call goes
through a worker thread (``browser``)."""

from __future__ import annotations

import asyncio
import contextlib
import html
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from service.keys import LIVE_AUTHORIZE, REVIEWS
from tests.conftest import Keys, require_tool
from tests.service.conftest import ThrowawayRedis
from tests.service.helpers import submission

from .conftest import live

webdriver = pytest.importorskip("selenium.webdriver")

STATIC = Path(__file__).resolve().parents[2] / "service" / "console" / "static"
LIVE = "Live"
FALLBACK = "Live updates unavailable \u2014 refreshing every 15 s"
T = TypeVar("T")

PAGE = """<!doctype html>
<html lang="en"><head><title>fixture</title>
<script src="/console/static/live.js" defer></script></head>
<body data-page="{page}" data-review-id="{review_id}">
<p id="live-status" role="status">Connecting…</p>
<div id="announcer" aria-live="polite"></div>
<main>{main}</main></body></html>"""


QUEUE_FETCHES: web.AppKey[list[float]] = web.AppKey("queue_fetches", list)


async def queue_page(request: web.Request) -> web.Response:
    request.app[QUEUE_FETCHES].append(time.monotonic())
    items, _ = await request.app[REVIEWS].list(
        status="pending", severity=None, source=None, cve_id=None, cursor="", limit=50
    )
    rows = "".join(
        f'<tr class="queue-item" data-review-id="{r["id"]}" data-status="{r["status"]}" '
        f'data-severity="{r["severity"]}"><td><a class="review-link" '
        f'href="/console/reviews/{r["id"]}">{html.escape(r["cve_id"])}</a></td></tr>'
        for r in items
    )
    counts = f'<ul id="severity-counts"><li data-severity="high">{len(items)}</li></ul>'
    main = f'{counts}<table id="queue"><tbody>{rows}</tbody></table>'
    return page_response("queue", "", main)


async def review_page(request: web.Request) -> web.Response:
    review = await request.app[REVIEWS].get(request.match_info["id"])
    decided = review["decisions"][-1] if review["decisions"] else None
    status = review["status"] if decided is None else f"{review['status']} by {decided['reviewer']}"
    disabled = " disabled" if decided is not None and review["status"] != "escalated" else ""
    main = (
        f'<p id="review-status">{status}</p><form id="decision-form">'
        f'<fieldset id="decision-fieldset"{disabled}><textarea id="justification"></textarea>'
        "</fieldset></form>"
    )
    return page_response("review", review["id"], main)


def page_response(page: str, review_id: str, main: str) -> web.Response:
    text = PAGE.format(page=page, review_id=review_id, main=main)
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


async def live_js(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "live.js")


async def anyone(request: web.Request) -> object:
    return "fixture"


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
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="hitl-live-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-background-networking", "--disable-extensions",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    loop = asyncio.get_running_loop()
    driver = await loop.run_in_executor(
        None, lambda: webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    )
    try:
        yield Browser(driver)
    finally:
        with contextlib.suppress(Exception):
            await loop.run_in_executor(None, driver.quit)
        shutil.rmtree(profile, ignore_errors=True)


async def test_live_js_follows_the_stream_and_falls_back_to_refreshing(
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    throwaway_redis: ThrowawayRedis,
    browser: Browser,
) -> None:
    app = create_app(settings.with_changes(redis_url=throwaway_redis.url,
                                           cache_breaker_cool_down_seconds=0.5))
    app[LIVE_AUTHORIZE] = anyone
    app[QUEUE_FETCHES] = fetches = []
    app.router.add_get("/console/queue", queue_page)
    app.router.add_get("/console/reviews/{id}", review_page)
    app.router.add_get("/console/static/live.js", live_js)
    client: TestClient = await aiohttp_client(app)
    await live(client.app)
    base = f"http://127.0.0.1:{client.port}"

    async def submit() -> str:
        resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
        assert resp.status == 201
        return str((await resp.json())["id"])

    async def decide(review_id: str) -> None:
        resp = await client.post(f"/api/reviews/{review_id}/decision", json={"decision": "approve"},
                                 headers=api_keys.auth("reviewer"))
        assert resp.status == 200

    def row_count(review_id: str) -> Callable[[], Any]:
        async def count() -> int:
            return int(await browser.script(
                "return document.querySelectorAll('tr.queue-item[data-review-id=\"' + arguments[0] + '\"]').length",
                review_id))
        return count

    # -- queue: live --------------------------------------------------------------------
    await browser.get(f"{base}/console/queue")
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 10)
    await browser.script("window.__marker = 1")  # gone if the page reloads

    review_id = await submit()
    seconds = await browser.until(lambda: _is(row_count(review_id)(), 1), 5)
    assert seconds < 2.0
    await browser.until(lambda: _contains(browser.text("#announcer"), "New"), 2)
    assert (await browser.text("#severity-counts li")).strip() == "1"

    await decide(review_id)
    seconds = await browser.until(lambda: _is(row_count(review_id)(), 0), 5)
    assert seconds < 2.0  # removed at once, before any refetch
    await browser.until(lambda: _contains(browser.text("#announcer"), "approved by reviewer-bot"), 2)
    assert await browser.script("return window.__marker") == 1
    # The page, the submission's refetch, the decision's refetch (at most one a second).
    await browser.until(lambda: _true(len(fetches) == 3), 3)

    # -- Redis down: the text says so, and the page refreshes every 15 s ------------------
    throwaway_redis.kill()
    await browser.until(lambda: _eq(browser.text("#live-status"), FALLBACK), 5)
    fallback_at = time.monotonic()
    unseen = await submit()  # not published (Redis is down): only the period finds it
    await browser.until(lambda: _is(row_count(unseen)(), 1), 17)
    assert len(fetches) == 4
    assert 13 <= fetches[3] - fallback_at <= 16.5
    assert await browser.script("return window.__marker") == 1

    throwaway_redis.start()
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 8)

    # -- review page: decided elsewhere -------------------------------------------------
    await browser.get(f"{base}/console/reviews/{unseen}")
    await browser.until(lambda: _eq(browser.text("#live-status"), LIVE), 10)
    await browser.script("document.getElementById('justification').value = 'typed'")
    assert await browser.script("return document.getElementById('decision-fieldset').disabled") is False

    async def decided_live() -> bool:
        # The breaker may still refuse the first publish after the restart: retry.
        return "approved by reviewer-bot" in (await browser.text("#review-status"))

    await decide(unseen)
    await browser.until(decided_live, 5)
    assert await browser.script("return document.getElementById('decision-fieldset').disabled") is True
    assert await browser.script("return document.getElementById('justification').value") == "typed"
    await browser.until(lambda: _contains(browser.text("#announcer"), "approved by reviewer-bot"), 2)
    errors = [
        e for e in await browser.call(browser.driver.get_log, "browser")
        if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    assert errors == []


async def _true(value: bool) -> bool:
    return value


async def _eq(value: Any, expected: str) -> bool:
    return (await value) == expected


async def _is(value: Any, expected: int) -> bool:
    return (await value) == expected


async def _contains(value: Any, part: str) -> bool:
    return part in ((await value) or "")
