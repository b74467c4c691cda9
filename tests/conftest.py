"""Shared fixtures: a real PostgreSQL database and Redis key space per test run.

Each run creates its own database (dropped at the end) and uses its own Redis key
prefix; between tests the tables are truncated and the run's keys deleted, so tests
never see each other's data and never touch anyone else's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from opentelemetry import trace

from service.app import create_app
from service.auth import append_key, new_key
from service.config import Settings, telemetry_settings
from service.storage.migrate import apply_migrations, create_database, drop_database
from telemetry.logging import reset_logging

# Fixtures shared by several test packages, registered once here.
pytest_plugins = ["tests.service.downstream"]

PG_BASE = os.environ.get("HITL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("HITL_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]

TABLES = "webhook_outbox, validation_results, review_decisions, reviews"


def require_tool(name: str) -> str:
    """Path of a command-line tool. Under CI a missing tool is a failure, not a skip:
    the project's scripts install every tool the tests need."""
    # /usr/bin too: Debian puts some tools there while PATH may not include it.
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        message = f"{name} is not installed (make test installs it via ops/local/install-tools.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def serve_environment(**settings: str) -> dict[str, str]:
    """The environment of a ``python -m service serve`` child of a test: the caller's
    without any HITL_* or OTEL_* variable (a stray one in the shell must not change what
    a test sees), on loopback, JSON logs, tracing off; ``settings`` (HITL_*/OTEL_*
    names) on top."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("HITL_", "OTEL_"))},
        "HITL_HOST": "127.0.0.1",
        "HITL_REDIS_URL": REDIS_URL,
        "HITL_LOG_FORMAT": "json",
        "OTEL_SDK_DISABLED": "true",
        **settings,
    }


def http_get(url: str, timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return bytes(response.read())


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    """Poll ``url`` until it answers 2xx; fail with the end of ``log`` when ``process``
    exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: process exited {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            http_get(url, timeout=1)
            return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(autouse=True)
def reset_telemetry_state() -> Iterator[None]:
    """Each test starts and ends with default structlog, no handler of ours, no span.

    Tracer providers are per app and never global: assert nobody set a global one.
    """
    reset_logging()
    assert not trace.get_current_span().get_span_context().is_valid
    yield
    reset_logging()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = f"{PG_BASE}/hitl_test_{RUN_ID}"
    asyncio.run(create_database(url))
    asyncio.run(apply_migrations(url))
    yield url
    asyncio.run(drop_database(url))
    asyncio.run(delete_run_keys())


@pytest.fixture
async def clean_state(database_url: str) -> AsyncIterator[None]:
    """Empty tables and no cached keys of this run before each test that uses them."""
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        # The decision history is append-only by trigger; tests may still start afresh.
        await cur.execute("ALTER TABLE review_decisions DISABLE TRIGGER USER")
        await cur.execute(f"TRUNCATE {TABLES}")
        await cur.execute("ALTER TABLE review_decisions ENABLE TRIGGER USER")
    await delete_run_keys()
    yield


async def delete_run_keys() -> None:
    """Delete every Redis key of this test run (and no one else's)."""
    await delete_keys(f"hitl-test:{RUN_ID}:")


async def delete_keys(prefix: str) -> None:
    """Delete every Redis key under ``prefix``."""
    client = aioredis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@dataclass(frozen=True)
class Keys:
    producer: str
    reviewer: str
    viewer: str
    admin: str
    file: Path

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {getattr(self, role)}"}


@pytest.fixture(scope="session")
def api_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    path = tmp_path_factory.mktemp("keys") / "api-keys.json"
    made = {}
    for name, roles in {
        "producer": ["producer"],
        "reviewer": ["reviewer"],
        "viewer": ["viewer"],
        "admin": ["producer", "reviewer", "viewer"],
    }.items():
        key, entry = new_key(f"{name}-bot" if name != "admin" else "alice", roles)
        append_key(path, entry)
        made[name] = key
    return Keys(file=path, **made)


@pytest.fixture
def settings(database_url: str, api_keys: Keys, clean_state: None) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=REDIS_URL,
        redis_key_prefix=f"hitl-test:{RUN_ID}:",
        api_keys_file=api_keys.file,
        db_connect_deadline_seconds=5,
        enable_test_routes=True,
        webhook_base_backoff_seconds=0.05,
        webhook_poll_seconds=0.05,
        cache_stats_interval_seconds=0.2,
        telemetry=telemetry_settings(
            service_version="test",
            log_format="json",
            otel_env={"OTEL_SDK_DISABLED": "true"},
        ),
    )


@pytest.fixture
def app(settings: Settings) -> web.Application:
    return create_app(settings)


@pytest.fixture
async def client(aiohttp_client, app: web.Application) -> TestClient:  # type: ignore[no-untyped-def]
    return await aiohttp_client(app)
