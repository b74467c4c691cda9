"""The Metrics facade: USE, error and telemetry-health series, read back rendered."""

from __future__ import annotations

import asyncio

import pytest


async def test_closed_label_sets_exist_from_the_first_scrape(make_metrics, render):
    """Counters with known label values start at 0 so rate() and alerts work at once."""
    exposition = await render(make_metrics())

    for slo_type in ("availability", "latency"):
        for name in ("slo_requests_total", "slo_requests_good", "slo_requests_bad"):
            assert exposition.value(name, slo_type=slo_type) == 0
    cache_pairs = {
        (dict(labels)["operation"], dict(labels)["result"]): value
        for labels, value in exposition.series_of("cache_operations_total").items()
    }
    assert cache_pairs == {
        ("get", "hit"): 0, ("get", "miss"): 0, ("get", "error"): 0,
        ("set", "ok"): 0, ("set", "error"): 0, ("delete", "ok"): 0, ("delete", "error"): 0,
    }
    for name in (
        "cache_evictions_total",
        "telemetry_tracing_spans_dropped_total",
        "telemetry_tracing_export_failures_total",
        "service_up",
    ):
        assert exposition.value(name) == 0


async def test_gauges_without_a_reading_are_absent(make_metrics, render):
    """No invented values: pool, outbox and hit-ratio gauges appear once measured."""
    exposition = await render(make_metrics())

    for name in (
        "db_connections_active",
        "db_connections_idle",
        "cache_hit_ratio",
    ):
        assert exposition.series_of(name) == {}
        assert exposition.types[name] == "gauge"


async def test_db_query_times_successes_and_failures(make_metrics, render):
    """Every query is timed; one that raises is counted by class and re-raised."""
    metrics = make_metrics()
    async with metrics.db_query("select_review"):
        pass
    with pytest.raises(ConnectionResetError):
        async with metrics.db_query("insert_decision"):
            raise ConnectionResetError("server closed the connection")

    exposition = await render(metrics)

    assert exposition.value("db_query_duration_seconds_count", operation="select_review") == 1
    assert exposition.value("db_query_duration_seconds_count", operation="insert_decision") == 1
    errors = exposition.series_of("db_query_errors_total")
    assert {labels: value for labels, value in errors.items() if value} == {
        frozenset({("error_type", "ConnectionResetError")}): 1
    }


async def test_db_query_abandoned_by_a_timeout_is_a_cancellation(make_metrics, render):
    """asyncio.timeout around a query shows up inside it as CancelledError, time included."""
    metrics = make_metrics()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.03):
            async with metrics.db_query("select_pending"):
                await asyncio.sleep(5)

    exposition = await render(metrics)

    assert exposition.value("db_query_errors_total", error_type="CancelledError") == 1
    pending = {"operation": "select_pending"}
    assert exposition.value("db_query_duration_seconds_bucket", **pending, le="0.025") == 0
    assert exposition.value("db_query_duration_seconds_count", **pending) == 1


async def test_db_driver_timeout_is_a_timeout(make_metrics, render):
    """A driver-side timeout (aiopg raises TimeoutError) is labelled TimeoutError."""
    metrics = make_metrics()
    with pytest.raises(TimeoutError):
        async with metrics.db_query("select_review"):
            raise TimeoutError

    exposition = await render(metrics)

    assert exposition.value("db_query_errors_total", error_type="TimeoutError") == 1


async def test_cache_operations_and_hit_ratio(make_metrics, render):
    """Gets count hits and misses and drive the ratio; errors, sets, deletes do not."""
    metrics = make_metrics()
    for result in ("hit", "hit", "miss", "error"):
        metrics.record_cache("get", result)
    metrics.record_cache("set", "ok")
    metrics.record_cache("set", "error")
    metrics.record_cache("delete", "ok")

    exposition = await render(metrics)

    def ops(operation: str, result: str) -> float:
        return exposition.value("cache_operations_total", operation=operation, result=result)

    assert (ops("get", "hit"), ops("get", "miss"), ops("get", "error")) == (2, 1, 1)
    assert (ops("set", "ok"), ops("set", "error"), ops("delete", "ok")) == (1, 1, 1)
    assert exposition.value("cache_hit_ratio") == pytest.approx(2 / 3)


def test_cache_rejects_unknown_operations_and_results(make_metrics):
    """A typo in a cache wrapper fails loudly instead of adding a series."""
    metrics = make_metrics()
    with pytest.raises(ValueError, match="operation='flush'"):
        metrics.record_cache("flush", "ok")
    with pytest.raises(ValueError, match="result of cache get='ok'"):
        metrics.record_cache("get", "ok")


async def test_cache_evictions_only_go_up(make_metrics, render):
    """Eviction deltas add up; zero and negative deltas (Redis restart) are ignored."""
    metrics = make_metrics()
    for delta in (5, 0, -3, 2):
        metrics.record_cache_evictions(delta)

    exposition = await render(metrics)

    assert exposition.value("cache_evictions_total") == 7


async def test_errors_and_exceptions_by_type(make_metrics, render):
    """Handled errors count by type and severity, unhandled exceptions by type."""
    metrics = make_metrics()
    metrics.record_app_error(type="validation", severity="warning")
    metrics.record_app_error(type="validation", severity="warning")
    metrics.record_app_error(type="dependency", severity="critical")
    metrics.record_exception(type="KeyError")

    exposition = await render(metrics)

    assert exposition.value("app_errors_total", type="validation", severity="warning") == 2
    assert exposition.value("app_errors_total", type="dependency", severity="critical") == 1
    assert exposition.value("app_exceptions_total", type="KeyError") == 1


async def test_label_values_are_escaped(make_metrics, render):
    """Quotes, backslashes and newlines in a label value survive the text format."""
    metrics = make_metrics()
    awkward = 'C:\\temp "quoted"\nnext line'
    metrics.record_app_error(type=awkward, severity="warning")

    exposition = await render(metrics)

    assert exposition.value("app_errors_total", type=awkward, severity="warning") == 1


async def test_tracing_internals(make_metrics, render):
    """The span exporter has its own series, named with the metric prefix."""
    metrics = make_metrics()
    metrics.record_spans_dropped(3)
    metrics.record_spans_dropped(0)
    metrics.record_span_export_failure()

    exposition = await render(metrics)

    assert exposition.value("telemetry_tracing_spans_dropped_total") == 3
    assert exposition.value("telemetry_tracing_export_failures_total") == 1


async def test_record_request_bounds_labels_and_applies_slo_rules(make_metrics, render):
    """Called directly, record_request still normalises methods and honours SLO settings."""
    metrics = make_metrics(slo_latency_threshold_seconds=0.5, slo_excluded_prefixes=("/internal",))
    common = {"request_size": 0, "response_size": 10}
    metrics.record_request(method="get", endpoint="/api/health", status=200, duration=0.5, **common)
    metrics.record_request(method="GET", endpoint="/internal/x", status=503, duration=9, **common)
    metrics.record_request(method="GET", endpoint="unmatched", status=404, duration=9, **common)
    metrics.record_request(method="POST", endpoint="/api/x", status=502, duration=0.6, **common)

    exposition = await render(metrics)

    assert exposition.value(
        "http_requests_total", method="_OTHER", endpoint="/api/health", status="200"
    ) == 1
    assert exposition.value("slo_requests_total", slo_type="availability") == 2
    assert exposition.value("slo_requests_bad", slo_type="availability") == 1
    # 0.5 s is exactly the threshold: within it, so good.
    assert exposition.value("slo_requests_good", slo_type="latency") == 1
    assert exposition.value("slo_requests_bad", slo_type="latency") == 1


async def test_service_up_is_set_by_the_facade(make_metrics, render):
    """set_service_up flips the gauge both ways."""
    metrics = make_metrics()
    metrics.set_service_up(True)
    up = await render(metrics)
    metrics.set_service_up(False)
    down = await render(metrics)

    assert (up.value("service_up"), down.value("service_up")) == (1, 0)
