"""`make screenshots`: PNGs of the reviewer console for the README.

Starts the real service (`python -m service serve`) on a free loopback port against a
throwaway database it creates, migrates and drops, with its own Redis key prefix
(deleted afterwards) and its own keys file; submits a handful of APVs across
severities through the JSON API; signs in headless Chromium as a reviewer at a
1280x900 viewport and writes

    docs/images/console-queue.png     the queue (open reviews, counts per severity)
    docs/images/console-review.png    a review with its unified diff
    docs/images/console-decision.png  the decision form, scrolled into view

Usage: python -m tests.console.screenshots [--out DIR]. Needs the local PostgreSQL and
Redis (`make services`) and Debian's chromium + chromedriver (`make tools`).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path

import aiopg
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from service.storage.migrate import apply_migrations, create_database, drop_database
from tests.conftest import PG_BASE, REDIS_URL, delete_keys, free_port
from tests.console.samples import samples
from tests.console.served import (
    REPO,
    WINDOW,
    Served,
    chromium,
    make_keys,
    sign_in,
    start_service,
    wait,
)

# How long ago each sample arrived (minutes), in the order of samples(): a queue
# where everything is "0 min" old would not show what the age column is for.
AGES_MINUTES = [12, 47, 95, 190, 320, 26 * 60 + 5]
# The review shown with its diff (the two-file OpenSSL patch) and the one escalated by
# a colleague, so the queue shows both open statuses.
REVIEW_SHOWN = 1
ESCALATED = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    run = secrets.token_hex(5)
    database_url = f"{PG_BASE}/hitl_screens_{run}"
    prefix = f"hitl-screens:{run}:"
    asyncio.run(create_database(database_url))
    try:
        asyncio.run(apply_migrations(database_url))
        with tempfile.TemporaryDirectory(prefix="hitl-screens-") as tmp:
            directory = Path(tmp)
            served = start_service(
                database_url=database_url,
                redis_url=REDIS_URL,
                redis_key_prefix=prefix,
                keys=make_keys(directory),
                log=directory / "serve.log",
                port=free_port(),
            )
            try:
                shown = seed(served, database_url, prefix)
                for path in take(served, shown, args.out):
                    print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
            except BaseException:
                sys.stderr.write(served.log_tail())
                raise
            finally:
                served.stop()
    finally:
        asyncio.run(drop_database(database_url))
        asyncio.run(delete_keys(prefix))


def seed(served: Served, database_url: str, prefix: str) -> str:
    """Submit the samples, escalate one, age them; the id of the review to show."""
    ids = [served.submit(apv)["id"] for apv in samples()]
    escalation = {
        "decision": "escalate",
        "justification": "Still reachable with HEADERS+CONTINUATION floods; "
        "needs the web team's eyes on the stream limit.",
    }
    assert served.decide(ids[ESCALATED], served.keys.other_reviewer, escalation) == 200
    asyncio.run(_age(database_url, dict(zip(ids, AGES_MINUTES, strict=True))))
    # The service caches reviews in Redis as submitted; drop them so pages read the
    # aged rows.
    asyncio.run(delete_keys(prefix))
    return ids[REVIEW_SHOWN]


async def _age(database_url: str, minutes_by_id: dict[str, int]) -> None:
    """Backdate the throwaway database's reviews (and their decisions with them)."""
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        for review_id, minutes in minutes_by_id.items():
            shift = f"{minutes} minutes"
            await cur.execute(
                "UPDATE reviews SET created_at = created_at - %s::interval WHERE id = %s",
                (shift, review_id),
            )


def take(served: Served, review_id: str, out: Path) -> list[Path]:
    written = []
    with chromium() as driver:
        # Exactly WINDOW, whatever the headless window's own frame takes.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
        )
        sign_in(driver, served, served.keys.reviewer)
        wait(driver).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.queue-item")) >= 5)
        settle(driver)
        written.append(shot(driver, out / "console-queue.png"))

        driver.get(f"{served.url}/console/reviews/{review_id}")
        wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table#diff tr.diff-line"))
        scroll_to(driver, "table#diff", above=160)
        settle(driver)
        written.append(shot(driver, out / "console-review.png"))

        driver.find_element(By.ID, "decision-approve").click()
        driver.find_element(By.ID, "justification").send_keys(
            "Length check matches upstream commit; the zero-length MAC case is covered "
            "by the new test."
        )
        scroll_to(driver, "form#decision-form", above=24)
        settle(driver)
        written.append(shot(driver, out / "console-decision.png"))
    return written


def scroll_to(driver: WebDriver, css: str, above: int) -> None:
    """Scroll so the element's top sits ``above`` pixels below the viewport's top."""
    driver.execute_script(
        "const el = document.querySelector(arguments[0]);"
        "window.scrollTo(0, el.getBoundingClientRect().top + window.scrollY - arguments[1]);",
        css,
        above,
    )


def settle(driver: WebDriver) -> None:
    """Wait for web fonts and the live status to settle, so the picture is stable."""
    wait(driver).until(lambda d: d.execute_script("return document.fonts.status") == "loaded")
    if driver.find_elements(By.ID, "live-status"):
        wait(driver).until(lambda d: d.find_element(By.ID, "live-status").text.strip() != "")


def shot(driver: WebDriver, path: Path) -> Path:
    driver.execute_script("document.activeElement && document.activeElement.blur()")
    if not driver.save_screenshot(str(path)):
        raise RuntimeError(f"could not write {path}")
    return path


if __name__ == "__main__":
    main()
