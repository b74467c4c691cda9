"""Fixtures for the tracing and logging tests (imported by those modules).

A tiny aiohttp app wired with ``telemetry.setup`` — not the service, which is built
concurrently — whose routes run a real aiopg query (``create_aiopg_pool``), a real
redis.asyncio command (``instrument_redis``) and an aiohttp client call
(``client_trace_configs``) to a test downstream. PostgreSQL gets a scratch database
per run (dropped at the end); Redis keys live under a per-run prefix.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import aiopg
import psycopg2
import pytest
import redis.asyncio as aioredis
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import telemetry
from telemetry import TelemetrySettings
from telemetry.instrumentation import (
    client_trace_configs,
    create_aiopg_pool,
    instrument_redis,
)
from telemetry.tracing import context_carrier

PG_BASE = os.environ.get("HITL_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("HITL_TEST_REDIS", "redis://127.0.0.1:6379/0")
RUN_ID = uuid.uuid4().hex[:10]
REDIS_PREFIX = f"hitl-tracing-test:{RUN_ID}:"
# A value the handlers pass as a SQL parameter and a Redis argument: it must never
# appear in any exported span attribute.
SECRET_PARAM = "s3cr3t-param-value-4242"

POOL = web.AppKey("test_pool", aiopg.Pool)
REDIS = web.AppKey("test_redis", aioredis.Redis)
SESSION = web.AppKey("test_session", aiohttp.ClientSession)
DOWNSTREAM_URL = web.AppKey("test_downstream_url", str)
CARRIERS = web.AppKey("test_carriers", list)
PG_DSN = web.AppKey("test_pg_dsn", str)

log = structlog.get_logger("tests.tracing")


# ------------------------------------------------------------------ PostgreSQL


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A scratch database for this run with one table, dropped at the end."""
    name = f"hitl_tracing_{RUN_ID}"
    admin = psycopg2.connect(f"{PG_BASE}/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{PG_BASE}/{name}"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE reviews (id text PRIMARY KEY, title text NOT NULL, note text)")
        cur.execute("INSERT INTO reviews VALUES ('r1', 'CVE-2024-0001 in openssl', NULL)")
    conn.close()
    try:
        yield dsn
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# ------------------------------------------------------------------ downstream


@dataclass
class Downstream:
    """A test webhook receiver: records each request's headers and body."""

    url: str
    received: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
async def downstream() -> AsyncIterator[Downstream]:
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append({"headers": dict(request.headers), "body": await request.text()})
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Downstream(url=str(server.make_url("/hook")), received=received)
    finally:
        await server.close()


# ------------------------------------------------------------------ the tiny app


async def _resources(app: web.Application) -> AsyncIterator[None]:
    pool = await create_aiopg_pool(app, app[PG_DSN], minsize=0, maxsize=2)
    client = aioredis.from_url(REDIS_URL)
    instrument_redis(app, client)
    session = aiohttp.ClientSession(trace_configs=client_trace_configs(app))
    app[POOL], app[REDIS], app[SESSION] = pool, client, session
    yield
    await session.close()
    keys = [key async for key in client.scan_iter(match=f"{REDIS_PREFIX}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    pool.close()
    await pool.wait_closed()


async def get_review(request: web.Request) -> web.Response:
    review_id = request.match_info["review_id"]
    async with request.app[POOL].acquire() as conn, conn.cursor() as cur:
        # The secret travels as a parameter; only the placeholder may reach the span.
        await cur.execute(
            "SELECT id, title FROM reviews WHERE id = %s AND coalesce(note, '') <> %s",
            (review_id, SECRET_PARAM),
        )
        row = await cur.fetchone()
    cached = await request.app[REDIS].get(f"{REDIS_PREFIX}{review_id}")
    log.info("review_loaded", review_id=review_id, cached=cached is not None)
    if row is None:
        raise web.HTTPNotFound()
    return web.json_response({"id": row[0], "title": row[1]})


async def decide(request: web.Request) -> web.Response:
    review_id = request.match_info["review_id"]
    await request.app[REDIS].set(f"{REDIS_PREFIX}{review_id}", SECRET_PARAM, ex=60)
    request.app[CARRIERS].append(context_carrier())
    url = request.app[DOWNSTREAM_URL]
    async with request.app[SESSION].post(url, json={"review_id": review_id}) as resp:
        status = resp.status
    log.info("decision_recorded", review_id=review_id, webhook_status=status)
    return web.json_response({"review_id": review_id, "webhook": status})


async def inline_literal(request: web.Request) -> web.Response:
    async with request.app[POOL].acquire() as conn, conn.cursor() as cur:
        await cur.execute(f"SELECT count(*) FROM reviews WHERE title <> '{SECRET_PARAM}' LIMIT 5")
        (count,) = await cur.fetchone()
    return web.json_response({"count": count})


async def crash(request: web.Request) -> web.Response:
    password = "hunter2-local"  # noqa: F841 - a local a traceback must not print
    log.info("about_to_crash")
    raise ZeroDivisionError("boom")


async def ok(request: web.Request) -> web.Response:
    log.info("ok_handler", authorization="Bearer should-not-appear")
    return web.json_response({"ok": True})


async def teapot(request: web.Request) -> web.Response:
    raise web.HTTPConflict(text="already decided")


def build_app(
    otel_env: Mapping[str, str],
    *,
    pg_dsn: str | None = None,
    downstream_url: str = "http://127.0.0.1:9/unused",
    **settings: Any,
) -> web.Application:
    app = web.Application()
    telemetry.setup(
        app,
        TelemetrySettings(
            service_name=settings.pop("service_name", "hitl-test"),
            service_version="1.2.3",
            environment="test",
            instance_id="test-instance-1",
            log_format=settings.pop("log_format", "json"),
            otel_env=dict(otel_env),
            **settings,
        ),
    )
    app[DOWNSTREAM_URL] = downstream_url
    app[CARRIERS] = []
    if pg_dsn is not None:
        app[PG_DSN] = pg_dsn
        app.cleanup_ctx.append(_resources)
        app.router.add_get("/api/reviews/{review_id}", get_review)
        app.router.add_post("/api/reviews/{review_id}/decision", decide)
        app.router.add_get("/api/inline", inline_literal)
    app.router.add_get("/api/crash", crash)
    app.router.add_get("/api/ok", ok)
    app.router.add_post("/api/conflict", teapot)
    return app


ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
def start(aiohttp_client: Any) -> ClientFactory:
    """Start an app as the service runs it: aiohttp's own access log off."""

    async def factory(app: web.Application) -> TestClient[web.Request, web.Application]:
        # TestServer drops constructor kwargs; runner options go to start_server.
        server = TestServer(app, host="127.0.0.1")
        await server.start_server(access_log=None)
        client: TestClient[web.Request, web.Application] = await aiohttp_client(server)
        return client

    return factory


def json_lines(out: str) -> list[dict[str, Any]]:
    """Every non-empty stdout line, parsed: fails loudly if one is not JSON."""
    lines = []
    for raw in out.splitlines():
        if raw.strip():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError as exc:  # pragma: no cover - the failure message
                raise AssertionError(f"not a JSON log line: {raw!r}") from exc
    return lines


def trace_id_of(traceparent: str) -> str:
    return traceparent.split("-")[1]
