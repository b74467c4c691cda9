"""The metrics middleware, GET /metrics and service_up, driven over real HTTP.

Every assertion reads /metrics through a Prometheus text parser and compares exact
values of exact series.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import subprocess
from collections.abc import AsyncIterator

import aiohttp
import aioprometheus
import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

import telemetry
from telemetry.keys import REQUEST_DURATION
from tests.conftest import require_tool

GET_REVIEW = {"method": "GET", "endpoint": "/api/reviews/{review_id}"}
AVAILABILITY = {"slo_type": "availability"}
LATENCY = {"slo_type": "latency"}


async def test_requests_are_counted_by_route_template(aiohttp_client, metrics_app, scrape):
    """Two reads of different reviews share one series, labelled with the template."""
    client = await aiohttp_client(metrics_app())
    for review_id in ("r-1", "r-2"):
        assert (await client.get(f"/api/reviews/{review_id}")).status == 200
    created = await client.post("/api/reviews", json={"apv_id": "apv-1"})
    assert created.status == 201

    exposition = await scrape(client)

    assert exposition.value("http_requests_total", **GET_REVIEW, status="200") == 2
    assert (
        exposition.value(
            "http_requests_total", method="POST", endpoint="/api/reviews", status="201"
        )
        == 1
    )
    assert exposition.value("http_request_duration_seconds_count", **GET_REVIEW) == 2
    assert exposition.value("http_request_size_bytes_count", **GET_REVIEW) == 2
    assert exposition.value("http_response_size_bytes_count", **GET_REVIEW) == 2
    assert not any("r-1" in dict(labels).get("endpoint", "") for _, labels in exposition.series())


async def test_duration_histogram_uses_otel_buckets(aiohttp_client, metrics_app, scrape):
    """The duration histogram has exactly the OTel HTTP semconv bucket bounds."""
    client = await aiohttp_client(metrics_app())
    await client.get("/api/reviews/r-1")

    exposition = await scrape(client)

    bounds = {
        dict(labels)["le"]
        for labels in exposition.series_of("http_request_duration_seconds_bucket")
        if dict(labels)["endpoint"] == GET_REVIEW["endpoint"]
    }
    expected = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]
    assert {float(b) for b in bounds} == {*map(float, expected), float("inf")}


async def test_latency_slo_splits_good_and_bad_on_the_threshold(
    aiohttp_client, metrics_app, scrape
):
    """A handler slower than the threshold is latency-bad but availability-good."""
    client = await aiohttp_client(metrics_app())
    await client.get("/api/reviews/r-1")
    await client.get("/api/reviews/r-2")
    await client.get("/api/slow")

    exposition = await scrape(client)

    assert exposition.value("slo_requests_total", **LATENCY) == 3
    assert exposition.value("slo_requests_good", **LATENCY) == 2
    assert exposition.value("slo_requests_bad", **LATENCY) == 1
    assert exposition.value("slo_requests_total", **AVAILABILITY) == 3
    assert exposition.value("slo_requests_good", **AVAILABILITY) == 3
    assert exposition.value("slo_requests_bad", **AVAILABILITY) == 0
    slow = {"method": "GET", "endpoint": "/api/slow"}
    assert exposition.value("http_request_duration_seconds_bucket", **slow, le="0.1") == 0
    assert exposition.value("http_request_duration_seconds_bucket", **slow, le="0.25") == 1


async def test_crash_is_a_500_in_red_slo_and_exceptions(aiohttp_client, metrics_app, scrape):
    """An unhandled exception is answered 500 and counted everywhere it should be."""
    client = await aiohttp_client(metrics_app())
    response = await client.get("/api/crash")
    assert response.status == 500

    exposition = await scrape(client)

    crash = {"method": "GET", "endpoint": "/api/crash"}
    assert exposition.value("http_requests_total", **crash, status="500") == 1
    assert exposition.value("app_exceptions_total", type="RuntimeError") == 1
    assert exposition.value("slo_requests_bad", **AVAILABILITY) == 1
    assert exposition.value("slo_requests_good", **AVAILABILITY) == 0


async def test_escaping_http_exception_counts_with_its_status(aiohttp_client, metrics_app, scrape):
    """A redirect raised as an exception passes the errors middleware and keeps its 302."""
    client = await aiohttp_client(metrics_app())
    response = await client.get("/api/redirect", allow_redirects=False)
    assert response.status == 302

    exposition = await scrape(client)

    redirect = {"method": "GET", "endpoint": "/api/redirect"}
    assert exposition.value("http_requests_total", **redirect, status="302") == 1
    assert exposition.value("slo_requests_good", **AVAILABILITY) == 1


async def test_cancelled_request_is_counted_as_client_closed(aiohttp_client, metrics_app, scrape):
    """A handler cancelled before answering is counted as 499, not lost and not a 5xx."""
    client = await aiohttp_client(metrics_app())
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await client.get("/api/abandoned")

    exposition = await scrape(client)

    abandoned = {"method": "GET", "endpoint": "/api/abandoned"}
    assert exposition.value("http_requests_total", **abandoned, status="499") == 1
    assert exposition.value("slo_requests_good", **AVAILABILITY) == 1
    assert exposition.value("http_request_duration_seconds_count", **abandoned) == 1


async def test_health_and_metrics_do_not_count_toward_slos(aiohttp_client, metrics_app, scrape):
    """Probes and scrapes appear in RED metrics but never in the SLO series."""
    client = await aiohttp_client(metrics_app())
    for _ in range(3):
        assert (await client.get("/api/health")).status == 200
    await scrape(client)

    exposition = await scrape(client)

    health = {"method": "GET", "endpoint": "/api/health"}
    assert exposition.value("http_requests_total", **health, status="200") == 3
    scrapes = {"method": "GET", "endpoint": "/metrics", "status": "200"}
    assert exposition.value("http_requests_total", **scrapes) == 1
    for slo in (AVAILABILITY, LATENCY):
        assert exposition.value("slo_requests_total", **slo) == 0


async def test_route_misses_share_one_endpoint_value(aiohttp_client, metrics_app, scrape):
    """404 and 405 from the router are labelled "unmatched" and stay out of the SLOs."""
    client = await aiohttp_client(metrics_app())
    assert (await client.get("/wp-login.php")).status == 404
    assert (await client.get("/api/reviews")).status == 405
    assert (await client.get("/api/items/not-a-number")).status == 404

    exposition = await scrape(client)

    unmatched = {"method": "GET", "endpoint": "unmatched"}
    assert exposition.value("http_requests_total", **unmatched, status="404") == 2
    assert exposition.value("http_requests_total", **unmatched, status="405") == 1
    assert exposition.value("slo_requests_total", **AVAILABILITY) == 0


async def test_unknown_methods_share_other(aiohttp_client, metrics_app, scrape):
    """Methods outside the standard set (WebDAV here) are labelled _OTHER."""
    client = await aiohttp_client(metrics_app())
    for method in ("PROPFIND", "MKCOL", "PURGE"):
        assert (await client.request(method, "/api/anything")).status == 200

    exposition = await scrape(client)

    other = {"method": "_OTHER", "endpoint": "/api/anything", "status": "200"}
    assert exposition.value("http_requests_total", **other) == 3


async def test_scanner_adds_no_series(aiohttp_client, metrics_app, scrape):
    """10,000 random paths and odd methods add no series after the first route miss."""
    client = await aiohttp_client(metrics_app())
    rng = random.Random(1234)

    def random_path() -> str:
        return "/" + "/".join(
            "".join(rng.choices(string.ascii_letters + string.digits, k=rng.randint(1, 12)))
            for _ in range(rng.randint(1, 4))
        )

    async def probe(method: str, path: str) -> None:
        async with client.request(method, path) as response:
            await response.read()

    methods = ("GET", "POST", "DELETE", "PROPFIND", "MKCOL", "PURGE")
    for method in methods:  # the first miss of each method creates its series
        await probe(method, random_path())
    await scrape(client)  # and the first scrape creates the /metrics series
    before = (await scrape(client)).series()

    semaphore = asyncio.Semaphore(64)

    async def limited(method: str, path: str) -> None:
        async with semaphore:
            await probe(method, path)

    await asyncio.gather(*(limited(rng.choice(methods), random_path()) for _ in range(10_000)))
    after = await scrape(client)

    assert after.series() == before
    misses = {
        dict(labels)["method"]: value
        for labels, value in after.series_of("http_requests_total").items()
        if dict(labels)["endpoint"] == "unmatched"
    }
    assert set(misses) == {"GET", "POST", "DELETE", "_OTHER"}
    assert sum(misses.values()) == 10_000 + len(methods)


async def test_request_size_from_content_length(aiohttp_client, metrics_app, scrape):
    """A JSON body is measured by its Content-Length, byte for byte."""
    client = await aiohttp_client(metrics_app())
    body = json.dumps({"apv_id": "apv-1", "patch": "x" * 777}).encode()
    response = await client.post(
        "/api/reviews", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 201

    exposition = await scrape(client)

    create = {"method": "POST", "endpoint": "/api/reviews"}
    assert exposition.value("http_request_size_bytes_sum", **create) == len(body)
    assert exposition.value("http_request_size_bytes_count", **create) == 1


async def test_request_size_of_chunked_upload(aiohttp_client, metrics_app, scrape):
    """Without Content-Length, the bytes received through the body stream are counted."""
    client = await aiohttp_client(metrics_app())
    chunks = [b"x" * 1000, b"y" * 1000, b"z" * 234]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    response = await client.post("/api/upload", data=body())
    assert response.status == 200
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    assert await response.text() == "2234"

    exposition = await scrape(client)

    assert (
        exposition.value("http_request_size_bytes_sum", method="POST", endpoint="/api/upload")
        == 2234
    )


async def test_response_size_of_plain_response(aiohttp_client, metrics_app, scrape):
    """A plain response is measured by the body the client receives."""
    client = await aiohttp_client(metrics_app())
    response = await client.get("/api/reviews/r-1")
    received = await response.read()

    exposition = await scrape(client)

    assert exposition.value("http_response_size_bytes_sum", **GET_REVIEW) == len(received)


async def test_response_size_of_streamed_response(aiohttp_client, metrics_app, scrape):
    """A chunked StreamResponse counts its body bytes, not headers or chunk framing."""
    client = await aiohttp_client(metrics_app())
    response = await client.get("/api/stream")
    assert response.headers["Transfer-Encoding"] == "chunked"
    received = await response.read()

    exposition = await scrape(client)

    streamed = {"method": "GET", "endpoint": "/api/stream"}
    assert len(received) == 2500
    assert exposition.value("http_response_size_bytes_sum", **streamed) == len(received)


async def test_head_response_counts_no_body(aiohttp_client, metrics_app, scrape):
    """A HEAD answer sends no body, so it measures 0 bytes whatever the handler built."""
    client = await aiohttp_client(metrics_app())
    response = await client.head("/api/reviews/r-1")
    assert response.status == 200
    assert int(response.headers["Content-Length"]) > 0

    exposition = await scrape(client)

    head = {"method": "HEAD", "endpoint": "/api/reviews/{review_id}"}
    assert exposition.value("http_response_size_bytes_sum", **head) == 0
    assert exposition.value("http_response_size_bytes_count", **head) == 1


async def test_route_regex_is_not_part_of_the_label(aiohttp_client, metrics_app, scrape):
    """A route declared as {item_id:\\d+} is labelled with its canonical {item_id}."""
    client = await aiohttp_client(metrics_app())
    assert (await client.get("/api/items/42")).status == 200

    exposition = await scrape(client)

    items = {"method": "GET", "endpoint": "/api/items/{item_id}", "status": "200"}
    assert exposition.value("http_requests_total", **items) == 1


async def test_duration_is_shared_with_the_request(aiohttp_client, metrics_app, scrape):
    """The duration left on the request is the very value the histogram observed."""
    app = metrics_app()
    seen: list[float] = []

    @web.middleware
    async def outermost(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        seen.append(request[REQUEST_DURATION])
        return response

    app.middlewares.insert(0, outermost)
    client = await aiohttp_client(app)
    await client.get("/api/slow")

    exposition = await scrape(client)

    slow = {"method": "GET", "endpoint": "/api/slow"}
    assert exposition.value("http_request_duration_seconds_sum", **slow) == seen[0]


async def test_service_up_follows_the_lifecycle(aiohttp_client, metrics_app, scrape, render):
    """service_up is 0 before startup, 1 while serving and 0 once shutdown begins."""
    app = metrics_app()
    metrics = app[telemetry.METRICS]
    before_start = await render(metrics)
    during_shutdown: list[float] = []

    async def observe_shutdown(app: web.Application) -> None:
        during_shutdown.append((await render(metrics)).value("service_up"))

    app.on_shutdown.append(observe_shutdown)
    client = await aiohttp_client(app)
    serving = await scrape(client)
    await client.close()

    assert before_start.value("service_up") == 0
    assert serving.value("service_up") == 1
    assert during_shutdown == [0]


async def test_each_app_has_its_own_registry(aiohttp_client, metrics_app, scrape):
    """Two apps in one process never share a count, nor touch aioprometheus' global registry."""
    first = await aiohttp_client(metrics_app())
    second = await aiohttp_client(metrics_app())
    await first.get("/api/reviews/r-1")
    await first.get("/api/reviews/r-2")
    await second.get("/api/reviews/r-3")

    assert (await scrape(first)).value("http_requests_total", **GET_REVIEW, status="200") == 2
    assert (await scrape(second)).value("http_requests_total", **GET_REVIEW, status="200") == 1
    assert aioprometheus.REGISTRY.get_all() == []


async def test_collectors_refresh_gauges_before_each_scrape(aiohttp_client, metrics_app, scrape):
    """Collectors run on every scrape; a failing or hanging one does not break /metrics."""
    app = metrics_app()
    metrics = app[telemetry.METRICS]
    metrics.collector_timeout_seconds = 0.05
    pool = {"active": 3, "idle": 7}

    async def broken() -> None:
        raise ConnectionError("pool gone")

    async def hanging() -> None:
        await asyncio.sleep(10)

    async def pool_stats() -> None:
        metrics.set_db_pool(active=pool["active"], idle=pool["idle"])

    for collect in (broken, hanging, pool_stats):
        metrics.add_collector(collect)
    client = await aiohttp_client(app)

    first = await scrape(client)
    pool.update(active=5, idle=1)
    second = await scrape(client)

    assert (first.value("db_connections_active"), first.value("db_connections_idle")) == (3, 7)
    assert (second.value("db_connections_active"), second.value("db_connections_idle")) == (5, 1)


async def test_every_metric_has_its_catalogue_type(aiohttp_client, metrics_app, scrape):
    """/metrics declares exactly the generic catalogue's metric names, each with its
    type: no business metric of any service (hitl's are tests/service/test_review_metrics.py)."""
    client = await aiohttp_client(metrics_app())

    exposition = await scrape(client)

    assert exposition.types == CATALOGUE


async def test_promtool_finds_only_the_seed_naming_deviation(aiohttp_client, metrics_app, scrape):
    """promtool lints the full exposition; its only findings are the seed-mandated names.

    The seed names two counters without the "_total" suffix (slo_requests_good,
    slo_requests_bad); the names are the contract, so those two lints are expected.
    Anything else promtool reports fails this test.
    """
    promtool = require_tool("promtool")
    app = metrics_app()
    move_every_metric(app[telemetry.METRICS])
    client = await aiohttp_client(app)
    for path in ("/api/reviews/r-1", "/api/stream", "/api/crash", "/api/items/7", "/nope"):
        await client.get(path)

    exposition = await scrape(client)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.text.encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )

    findings = {line.strip() for line in result.stderr.decode().splitlines() if line.strip()}
    assert findings == {
        'slo_requests_good counter metrics should have "_total" suffix',
        'slo_requests_bad counter metrics should have "_total" suffix',
    }


def move_every_metric(metrics: telemetry.Metrics) -> None:
    """Give every family at least one sample, so promtool sees each of them."""
    metrics.set_db_pool(active=1, idle=4)
    metrics.record_cache("get", "hit")
    metrics.record_cache_evictions(2)
    metrics.record_app_error(type="validation", severity="warning")
    metrics.record_spans_dropped(1)
    metrics.record_span_export_failure()


CATALOGUE = {
    "http_requests_total": "counter",
    "http_request_duration_seconds": "histogram",
    "http_request_size_bytes": "histogram",
    "http_response_size_bytes": "histogram",
    "db_connections_active": "gauge",
    "db_connections_idle": "gauge",
    "db_connections_max": "gauge",
    "db_query_duration_seconds": "histogram",
    "db_query_errors_total": "counter",
    "cache_operations_total": "counter",
    "cache_hit_ratio": "gauge",
    "cache_evictions_total": "counter",
    "app_errors_total": "counter",
    "app_exceptions_total": "counter",
    "service_up": "gauge",
    "slo_requests_total": "counter",
    "slo_requests_good": "counter",
    "slo_requests_bad": "counter",
    "telemetry_tracing_spans_dropped_total": "counter",
    "telemetry_tracing_export_failures_total": "counter",
}
