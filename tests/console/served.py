"""The real service as a separate process, and headless Chromium to look at it.

Plain functions (no pytest) so that both the browser tests (tests/console/browser.py)
and `make screenshots` (tests/console/screenshots.py) drive the same thing: `python -m
service serve` on a free loopback port, Debian's /usr/bin/chromium through Debian's
/usr/bin/chromedriver. Selenium is given both paths, so selenium-manager (which would
try to download a driver or a browser) never runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from service.auth import append_key, new_key
from tests.conftest import serve_environment, wait_until_ready

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Headless, and nothing that reaches past loopback: no QUIC probes, no component or
# safe-browsing updates, no sync, no first-run pages. --no-sandbox: CI runs as root.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-default-browser-check",
    # The console scrolls smoothly unless the user prefers reduced motion; a click
    # that scrolls its target into view would land while the page is still moving.
    "--force-prefers-reduced-motion",
)
WINDOW = (1280, 900)

# How long a page may take to show what a test waits for. Generous: the machine is
# shared and slow; a poll returns as soon as the condition holds.
PAGE_WAIT = 10.0


@dataclass(frozen=True)
class ConsoleKeys:
    """API keys of one served instance: a producer to seed reviews through the JSON
    API, two reviewers (one signs in, the other decides behind their back) and a
    viewer. Names are what the console shows in #whoami and the history."""

    file: Path
    producer: str
    reviewer: str
    other_reviewer: str
    viewer: str

    REVIEWER_NAME = "alice"
    OTHER_REVIEWER_NAME = "triage-bot"
    VIEWER_NAME = "victor"


def make_keys(directory: Path) -> ConsoleKeys:
    path = directory / "api-keys.json"
    made: dict[str, str] = {}
    for field, name, roles in (
        ("producer", "seed-bot", ["producer"]),
        ("reviewer", ConsoleKeys.REVIEWER_NAME, ["reviewer", "viewer"]),
        ("other_reviewer", ConsoleKeys.OTHER_REVIEWER_NAME, ["reviewer", "viewer"]),
        ("viewer", ConsoleKeys.VIEWER_NAME, ["viewer"]),
    ):
        key, entry = new_key(name, roles)
        append_key(path, entry)
        made[field] = key
    return ConsoleKeys(file=path, **made)


@dataclass
class Served:
    """One `python -m service serve` process."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path
    keys: ConsoleKeys

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    # -- the JSON API, for seeding and for checking what the console did ------------

    def api(
        self, method: str, path: str, key: str, body: Any = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON body or None) of one API request."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                status, headers, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, headers, raw = exc.code, dict(exc.headers), exc.read()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return status, headers, parsed

    def submit(self, apv: dict[str, Any]) -> dict[str, Any]:
        status, _, body = self.api("POST", "/api/reviews", self.keys.producer, apv)
        assert status == 201, (status, body)
        return dict(body)

    def review(self, review_id: str) -> dict[str, Any]:
        status, _, body = self.api("GET", f"/api/reviews/{review_id}", self.keys.viewer)
        assert status == 200, (status, body)
        return dict(body)

    def decide(self, review_id: str, key: str, decision: dict[str, Any]) -> int:
        status, _, _ = self.api("POST", f"/api/reviews/{review_id}/decision", key, decision)
        return status

    def stop(self) -> None:
        """SIGTERM (the server drains and closes live connections), then kill."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_service(
    *,
    database_url: str,
    redis_url: str,
    redis_key_prefix: str,
    keys: ConsoleKeys,
    log: Path,
    port: int,
    extra_env: dict[str, str] | None = None,
    ready_seconds: float = 30.0,
) -> Served:
    environ = serve_environment(
        **{
            "HITL_PORT": str(port),
            "HITL_DATABASE_URL": database_url,
            "HITL_REDIS_URL": redis_url,
            "HITL_REDIS_KEY_PREFIX": redis_key_prefix,
            "HITL_API_KEYS_FILE": str(keys.file),
            # Stop quickly: nobody else is sending when the fixture ends the process.
            "HITL_SHUTDOWN_DRAIN_SECONDS": "0",
            "HITL_SHUTDOWN_GRACE_SECONDS": "2",
            **(extra_env or {}),  # the caller's settings win
        }
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve"],
            env=environ, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    served = Served(process, port, log, keys)
    try:
        wait_until_ready(f"{served.url}/api/health/ready", process, log, ready_seconds)
    except BaseException:
        served.stop()
        raise
    return served


# -- the browser ---------------------------------------------------------------------


@contextlib.contextmanager
def chromium(
    binary: str = CHROMIUM, driver_path: str = CHROMEDRIVER, window: tuple[int, int] = WINDOW
) -> Iterator[WebDriver]:
    """A fresh headless Chromium (own profile directory, removed afterwards) whose
    console messages (CSP violations among them) `driver.get_log("browser")` returns."""
    profile = tempfile.mkdtemp(prefix="hitl-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        service=ChromeService(executable_path=driver_path), options=options
    )
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        with contextlib.suppress(Exception):
            driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver: WebDriver, seconds: float = PAGE_WAIT) -> WebDriverWait[WebDriver]:
    """Poll until a condition holds. An element missing, or replaced while it was read
    (live.js swaps parts of the page), is "not yet", not an error."""
    return WebDriverWait(
        driver, seconds, poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )


def sign_in(driver: WebDriver, served: Served, key: str) -> None:
    """Sign in through the form; returns on the queue page."""
    driver.get(f"{served.url}/console/sign-in")
    field = wait(driver).until(lambda d: d.find_element(By.ID, "api-key"))
    field.send_keys(key)
    driver.find_element(By.ID, "sign-in").click()
    wait(driver).until(lambda d: _path(d.current_url) == "/console/queue")
    wait(driver).until(lambda d: d.find_elements(By.ID, "whoami"))


def _path(url: str) -> str:
    return urlsplit(url).path
