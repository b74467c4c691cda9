"""hitl's business metrics (service/metrics.py) on the telemetry registry, and the
seed's whole catalogue as the running service exposes it.

Moved from tests/telemetry when the business metrics moved out of the generic
telemetry package (issue 9); the assertions are the ones they had there.
"""

from __future__ import annotations

import platform
import subprocess
from typing import Any

import pytest

import telemetry
from service.config import telemetry_settings
from service.metrics import ReviewMetrics
from tests.conftest import require_tool
from tests.prom import Exposition, parse_exposition
from tests.telemetry.test_metrics_http import CATALOGUE as GENERIC_CATALOGUE


def make_metrics(**overrides: Any) -> tuple[telemetry.Metrics, ReviewMetrics]:
    settings = telemetry_settings(**overrides)
    metrics = telemetry.Metrics(settings)
    return metrics, ReviewMetrics(metrics, settings)


async def render(metrics: telemetry.Metrics) -> Exposition:
    body, _ = await metrics.render([])
    return parse_exposition(body.decode())


async def test_closed_label_sets_exist_from_the_first_scrape() -> None:
    """Webhook delivery results start at 0 so rate() and alerts work at once."""
    metrics, _ = make_metrics()
    exposition = await render(metrics)
    for result in ("delivered", "failed"):
        assert exposition.value("hitl_webhook_deliveries_total", result=result) == 0
    for name in ("hitl_tracing_spans_dropped_total", "hitl_tracing_export_failures_total"):
        assert exposition.value(name) == 0


async def test_outbox_depth_is_absent_until_measured() -> None:
    """No invented values: the outbox gauge appears once measured."""
    metrics, _ = make_metrics()
    exposition = await render(metrics)
    assert exposition.series_of("hitl_webhook_outbox_depth") == {}
    assert exposition.types["hitl_webhook_outbox_depth"] == "gauge"


async def test_build_info_names_the_running_build() -> None:
    """hitl_build_info is 1 with version, commit and Python version labels."""
    metrics, _ = make_metrics(service_version="2.0.1", build_commit="deadbee")
    exposition = await render(metrics)

    assert exposition.series_of("hitl_build_info") == {
        frozenset(
            {("version", "2.0.1"), ("commit", "deadbee"), ("python", platform.python_version())}
        ): 1
    }


async def test_review_events_are_counted() -> None:
    """Creations and decisions count by their labels; decision time lands in its bucket."""
    metrics, reviews = make_metrics()
    reviews.record_review_created(severity="critical", source="scanner")
    reviews.record_review_created(severity="critical", source="scanner")
    reviews.record_review_decision(decision="approved", severity="critical", duration=30.0)
    reviews.record_review_decision(decision="approved", severity="critical", duration=90.0)
    reviews.record_review_decision(decision="rejected", severity="low", duration=3 * 86400.0)

    exposition = await render(metrics)

    assert exposition.value("review_created_total", severity="critical", source="scanner") == 2
    approved = {"decision": "approved", "severity": "critical"}
    assert exposition.value("review_decision_total", **approved) == 2
    assert exposition.value("review_decision_total", decision="rejected", severity="low") == 1
    assert exposition.value("review_decision_duration_seconds_bucket", **approved, le="60.0") == 1
    assert exposition.value("review_decision_duration_seconds_bucket", **approved, le="120.0") == 2
    assert exposition.value("review_decision_duration_seconds_sum", **approved) == 120.0
    rejected = {"decision": "rejected", "severity": "low"}
    assert exposition.value("review_decision_duration_seconds_bucket", **rejected, le="172800.0") == 0
    assert exposition.value("review_decision_duration_seconds_bucket", **rejected, le="604800.0") == 1


async def test_negative_decision_time_is_clamped() -> None:
    """Clock skew cannot make the histogram's _sum go down."""
    metrics, reviews = make_metrics()
    reviews.record_review_decision(decision="modified", severity="high", duration=-2.0)

    exposition = await render(metrics)

    modified = {"decision": "modified", "severity": "high"}
    assert exposition.value("review_decision_duration_seconds_sum", **modified) == 0.0
    assert exposition.value("review_decision_duration_seconds_count", **modified) == 1


async def test_apv_validations_are_counted_and_timed() -> None:
    """Each validation counts by pattern and result, and is timed by pattern."""
    metrics, reviews = make_metrics()
    reviews.record_apv_validation(pattern_type="cve_format", result="valid", duration=0.002)
    reviews.record_apv_validation(pattern_type="cve_format", result="invalid", duration=0.003)

    exposition = await render(metrics)

    assert exposition.value("apv_validation_total", pattern_type="cve_format", result="valid") == 1
    assert exposition.value("apv_validation_total", pattern_type="cve_format", result="invalid") == 1
    assert exposition.value("apv_validation_duration_seconds_count", pattern_type="cve_format") == 2
    assert exposition.value(
        "apv_validation_duration_seconds_sum", pattern_type="cve_format"
    ) == pytest.approx(0.005)


async def test_outbox_webhooks() -> None:
    """The outbox worker has its own series; an unknown result is refused."""
    metrics, reviews = make_metrics()
    reviews.set_outbox_depth(4)
    reviews.record_webhook_delivery(result="delivered")
    reviews.record_webhook_delivery(result="delivered")
    reviews.record_webhook_delivery(result="failed")

    exposition = await render(metrics)

    assert exposition.value("hitl_webhook_outbox_depth") == 4
    assert exposition.value("hitl_webhook_deliveries_total", result="delivered") == 2
    assert exposition.value("hitl_webhook_deliveries_total", result="failed") == 1
    with pytest.raises(ValueError, match="result='bounced'"):
        reviews.record_webhook_delivery(result="bounced")


# The seed's catalogue as hitl exposes it: telemetry's generic series (its health
# series under hitl's prefix) plus the service's own.
CATALOGUE = {
    **{
        name.replace("telemetry_", "hitl_", 1): kind
        for name, kind in GENERIC_CATALOGUE.items()
    },
    "review_created_total": "counter",
    "review_decision_total": "counter",
    "review_decision_duration_seconds": "histogram",
    "apv_validation_total": "counter",
    "apv_validation_duration_seconds": "histogram",
    "hitl_build_info": "gauge",
    "hitl_webhook_outbox_depth": "gauge",
    "hitl_webhook_deliveries_total": "counter",
    "hitl_api_keys_reload_total": "counter",
    "hitl_api_keys_loaded": "gauge",
    "hitl_http_connections_open": "gauge",
    "hitl_http_connections_refused_total": "counter",
    "hitl_http_requests_unparsable_total": "counter",
    "hitl_webhook_outbox_oldest_pending_seconds": "gauge",
    "hitl_webhook_delivery_lag_seconds": "histogram",
    "hitl_webhook_outbox_pruned_total": "counter",
    "hitl_cache_circuit_state": "gauge",
    "hitl_cache_circuit_opened_total": "counter",
    "review_queue_pending": "gauge",
    "review_queue_oldest_pending_seconds": "gauge",
    "hitl_live_connections_open": "gauge",
    "hitl_live_events_published_total": "counter",
    "hitl_live_events_delivered_total": "counter",
}


async def test_the_service_exposes_the_whole_catalogue(client: Any) -> None:
    """The running service's /metrics declares exactly the catalogue, each with its type."""
    exposition = parse_exposition(await (await client.get("/metrics")).text())
    assert exposition.types == CATALOGUE


async def test_promtool_finds_only_the_seed_naming_deviation() -> None:
    """promtool's lint over every family of the service, each with a sample, reports
    only the seed's two counters without "_total" (the names are the contract)."""
    promtool = require_tool("promtool")
    metrics, reviews = make_metrics()
    reviews.record_review_created(severity="high", source="scanner")
    reviews.record_review_decision(decision="approved", severity="high", duration=42.0)
    reviews.record_apv_validation(pattern_type="cve_format", result="valid", duration=0.002)
    reviews.set_outbox_depth(3)
    reviews.record_webhook_delivery(result="delivered")
    metrics.record_request(
        method="GET", endpoint="/api/reviews", status=200, duration=0.01,
        request_size=0, response_size=10,
    )
    metrics.set_db_pool(active=1, idle=4, maximum=10)
    async with metrics.db_query("select_review"):
        pass
    metrics.record_cache("get", "hit")
    metrics.record_cache_evictions(2)
    metrics.record_app_error(type="validation", severity="warning")
    metrics.record_exception(type="RuntimeError")
    metrics.record_spans_dropped(1)
    metrics.record_span_export_failure()
    body, _ = await metrics.render([])

    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )

    findings = {line.strip() for line in result.stderr.decode().splitlines() if line.strip()}
    assert findings == {
        'slo_requests_good counter metrics should have "_total" suffix',
        'slo_requests_bad counter metrics should have "_total" suffix',
    }
