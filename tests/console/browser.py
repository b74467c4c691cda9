"""Fixtures for the browser tests: one real server per test module, fresh headless
Chromium sessions per test (two at once when a test needs a second pair of eyes).

A plugin module imported by tests/console/test_browser.py (not a conftest, which the
console-pages tests own). The server is `python -m service serve` against the test
run's database (tests/conftest.py `database_url`) and Redis key prefix; each test
starts from empty tables (`clean_state`), so the module-wide server is shared without
tests seeing each other's reviews.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.conftest import REDIS_URL, RUN_ID, free_port, require_tool
from tests.console.served import (
    ConsoleKeys,
    Served,
    chromium,
    make_keys,
    start_service,
)

# Sessions one test may hold at once: the live test needs two; more is a mistake
# that would slow the suite down on a two-core machine.
MAX_BROWSERS_PER_TEST = 2


@pytest.fixture(scope="module")
def console_service(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The real service, started once per module and stopped with SIGTERM."""
    directory = tmp_path_factory.mktemp("console")
    keys: ConsoleKeys = make_keys(directory)
    port = free_port()
    served = start_service(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=f"hitl-test:{RUN_ID}:",
        keys=keys,
        log=directory / f"serve-{port}.log",
        port=port,
    )
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture
def console(console_service: Served, clean_state: None) -> Served:
    """The module's server, with no reviews in the database (nor cached in Redis)."""
    if console_service.process.poll() is not None:
        pytest.fail(f"the served console died: {console_service.log_tail()}")
    return console_service


@pytest.fixture
def open_browser() -> Iterator[Callable[[], WebDriver]]:
    """Start a headless Chromium session (each with its own profile, so its own
    cookies); every one started is quit when the test ends."""
    # Under CI a missing browser or driver is a failure, not a skip.
    binary, driver_path = require_tool("chromium"), require_tool("chromedriver")
    with contextlib.ExitStack() as stack:
        opened: list[WebDriver] = []

        def open_one() -> WebDriver:
            assert len(opened) < MAX_BROWSERS_PER_TEST, "one test, at most two browsers"
            driver = stack.enter_context(chromium(binary, driver_path))
            opened.append(driver)
            return driver

        yield open_one


@pytest.fixture
def browser(open_browser: Callable[[], WebDriver]) -> WebDriver:
    """One headless Chromium session for this test."""
    return open_browser()
