"""Fixtures for the metrics tests: a tiny app wired with telemetry.setup, and a real
Prometheus text parser over its /metrics output.

The app is deliberately not the service (built concurrently elsewhere): a handful of
routes that exercise each path of the middleware — JSON, streamed, crash, slow, health.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import telemetry
from telemetry import TelemetrySettings
from tests.prom import Exposition, parse_exposition

# Small enough that a 0.15 s handler is latency-bad, large enough that a JSON handler on
# a loaded CI machine is still latency-good.
SLO_LATENCY_THRESHOLD = 0.1
SLOW_HANDLER_SECONDS = 0.15
STREAM_CHUNKS = (b"a" * 1000, b"b" * 1000, b"c" * 500)

# -- the test app ------------------------------------------------------------------


async def get_review(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["review_id"], "status": "pending"})


async def create_review(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"id": "r-1", "apv_id": body.get("apv_id")}, status=201)


async def upload(request: web.Request) -> web.Response:
    data = await request.read()
    return web.Response(text=str(len(data)))


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for chunk in STREAM_CHUNKS:
        await response.write(chunk)
    await response.write_eof()
    return response


async def crash(request: web.Request) -> web.Response:
    raise RuntimeError("boom")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(SLOW_HANDLER_SECONDS)
    return web.Response(text="slow")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/api/health")


async def item(request: web.Request) -> web.Response:
    return web.Response(text=request.match_info["item_id"])


async def abandoned(request: web.Request) -> web.Response:
    # What a client disconnect (with handler_cancellation=True) or a server-side
    # cancellation looks like to the middlewares: CancelledError out of the handler.
    task = asyncio.current_task()
    assert task is not None
    task.cancel()
    await asyncio.sleep(0)
    raise AssertionError("unreachable: the task was cancelled")


async def anything(request: web.Request) -> web.Response:
    return web.Response(text=request.method)


def build_settings(**overrides: object) -> TelemetrySettings:
    values: dict[str, object] = {
        "service_version": "1.2.3",
        "build_commit": "abc1234",
        "slo_latency_threshold_seconds": SLO_LATENCY_THRESHOLD,
        "log_format": "json",
        # These tests are about metrics: no tracer provider, no exporter to wait for.
        "otel_env": {"OTEL_SDK_DISABLED": "true"},
        # The test app's probe routes (telemetry's defaults know only /metrics).
        "probe_prefixes": ("/api/health", "/metrics"),
        "slo_excluded_prefixes": ("/api/health", "/metrics"),
    }
    values.update(overrides)
    return TelemetrySettings(**values)  # type: ignore[arg-type]


def build_app(**setting_overrides: object) -> web.Application:
    """The test app; keyword arguments override TelemetrySettings fields."""
    app = web.Application()
    telemetry.setup(app, build_settings(**setting_overrides))
    router = app.router
    router.add_get("/api/reviews/{review_id}", get_review)
    router.add_post("/api/reviews", create_review)
    router.add_post("/api/upload", upload)
    router.add_get("/api/stream", stream)
    router.add_get("/api/crash", crash)
    router.add_get("/api/slow", slow)
    router.add_get("/api/health", health)
    router.add_get("/api/redirect", redirect)
    router.add_get(r"/api/items/{item_id:\d+}", item)
    router.add_route("*", "/api/anything", anything)
    router.add_get("/api/abandoned", abandoned)
    return app


@pytest.fixture
def metrics_app() -> Callable[..., web.Application]:
    return build_app


@pytest.fixture
def make_metrics() -> Callable[..., telemetry.Metrics]:
    """A bare Metrics (no app); keyword arguments override TelemetrySettings fields."""

    def build(**setting_overrides: object) -> telemetry.Metrics:
        return telemetry.Metrics(build_settings(**setting_overrides))

    return build


Client = TestClient[web.Request, web.Application]


@pytest.fixture
def scrape() -> Callable[[Client], Awaitable[Exposition]]:
    async def scrape_metrics(client: Client) -> Exposition:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse_exposition(await response.text())

    return scrape_metrics


@pytest.fixture
def parse() -> Callable[[str], Exposition]:
    return parse_exposition


@pytest.fixture
def render() -> Callable[[telemetry.Metrics], Awaitable[Exposition]]:
    async def render_metrics(metrics: telemetry.Metrics) -> Exposition:
        body, _ = await metrics.render([])
        return parse_exposition(body.decode())

    return render_metrics
