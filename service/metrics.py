"""hitl's business metrics, defined on the app's telemetry registry.

The generic HTTP/SLO/error/resource metrics belong to ``telemetry.Metrics``; what only
this service knows — reviews, APV validation, the decision webhook, the build — is
defined here on the same registry, so one ``/metrics`` exposes both. Names, labels and
buckets are the seed's contract (docs/metrics.md).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from typing import Final

from telemetry import Metrics, TelemetrySettings, metric_labels, require_label

from .domain.queue import QUEUE_LABEL_SETS, Backlog, QueueKey

# A human decides: seconds (a quick approve) to a week (an escalation left over a
# weekend). 60 s is a bound because the SlowReviewDecisions alert is "P95 > 60s".
DECISION_DURATION_BUCKETS: Final = (
    1.0,
    5.0,
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    7200.0,
    14400.0,
    28800.0,
    86400.0,
    172800.0,
    604800.0,
)
# Validation patterns are CPU-bound checks on one APV: sub-millisecond to seconds.
VALIDATION_DURATION_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
WEBHOOK_RESULTS: Final = ("delivered", "failed")
API_KEYS_RELOAD_RESULTS: Final = ("ok", "error")
CONNECTION_CAPS: Final = ("total", "per_client")
# From decision commit to the downstream's 2xx: tens of milliseconds when healthy, up
# to the 300 s backoff ceiling (and beyond) while the downstream is down.
DELIVERY_LAG_BUCKETS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


class ReviewMetrics:
    """Reviews, validation, webhook delivery and build info; the only way to move them."""

    def __init__(self, metrics: Metrics, settings: TelemetrySettings) -> None:
        self.review_created_total = metrics.counter(
            "review_created_total", "Reviews created by APV severity and source."
        )
        self.review_decision_total = metrics.counter(
            "review_decision_total", "Review decisions committed, by decision and severity."
        )
        self.review_decision_duration_seconds = metrics.histogram(
            "review_decision_duration_seconds",
            "Time from review submission to decision in seconds.",
            DECISION_DURATION_BUCKETS,
        )
        self.apv_validation_total = metrics.counter(
            "apv_validation_total", "APV validations by pattern type and result."
        )
        self.apv_validation_duration_seconds = metrics.histogram(
            "apv_validation_duration_seconds",
            "APV validation duration in seconds, by pattern type.",
            VALIDATION_DURATION_BUCKETS,
        )
        self.hitl_build_info = metrics.gauge(
            "hitl_build_info", "Always 1; labels name the running build."
        )
        self.hitl_webhook_outbox_depth = metrics.gauge(
            "hitl_webhook_outbox_depth", "Decision webhooks waiting in the outbox."
        )
        self.hitl_webhook_deliveries_total = metrics.counter(
            "hitl_webhook_deliveries_total", "Decision webhook delivery attempts by result."
        )
        self.hitl_api_keys_reload_total = metrics.counter(
            "hitl_api_keys_reload_total",
            "Reloads of the API keys file (on change or SIGHUP) by result; on error the "
            "last good keys stay in use.",
        )
        self.hitl_api_keys_loaded = metrics.gauge(
            "hitl_api_keys_loaded", "API keys the service accepts now (loaded, not expired)."
        )
        self.hitl_webhook_outbox_oldest_pending_seconds = metrics.gauge(
            "hitl_webhook_outbox_oldest_pending_seconds",
            "Age of the oldest undelivered decision webhook in seconds (0 when none).",
        )
        self.hitl_webhook_delivery_lag_seconds = metrics.histogram(
            "hitl_webhook_delivery_lag_seconds",
            "Seconds from a decision's commit to its webhook's successful delivery.",
            DELIVERY_LAG_BUCKETS,
        )
        self.hitl_cache_circuit_state = metrics.gauge(
            "hitl_cache_circuit_state",
            "Redis cache circuit breaker: 0 closed, 1 open (cache skipped), 2 half-open.",
        )
        self.hitl_cache_circuit_opened_total = metrics.counter(
            "hitl_cache_circuit_opened_total",
            "Times the Redis cache circuit breaker opened after repeated failures.",
        )
        self.hitl_http_connections_open = metrics.gauge(
            "hitl_http_connections_open", "Client connections open now (the caps count these)."
        )
        self.hitl_http_connections_refused_total = metrics.counter(
            "hitl_http_connections_refused_total",
            "Connections refused at accept time (503) because a cap was reached, by cap.",
        )
        self.hitl_http_requests_unparsable_total = metrics.counter(
            "hitl_http_requests_unparsable_total",
            "Requests aiohttp's HTTP parser refused before any handler ran (4xx problem).",
        )
        self.hitl_webhook_outbox_pruned_total = metrics.counter(
            "hitl_webhook_outbox_pruned_total",
            "Delivered decision webhooks deleted from the outbox after their retention.",
        )
        # The shared queue, read from PostgreSQL: every replica reports the same
        # values, so dashboards and alerts aggregate these with max, never sum.
        self.review_queue_pending = metrics.gauge(
            "review_queue_pending",
            "Reviews waiting for a human, by severity and open status (pending, escalated).",
        )
        self.review_queue_oldest_pending_seconds = metrics.gauge(
            "review_queue_oldest_pending_seconds",
            "Age in seconds of the oldest review waiting, by severity and open status "
            "(0 when none waits).",
        )
        self.set_review_queue({key: Backlog() for key in QUEUE_LABEL_SETS})
        # Closed label sets exist from the first scrape, so rate() works at once.
        for cap in CONNECTION_CAPS:
            self.hitl_http_connections_refused_total.set({"cap": cap}, 0)
        self.hitl_http_requests_unparsable_total.set({}, 0)
        for result in WEBHOOK_RESULTS:
            self.hitl_webhook_deliveries_total.set({"result": result}, 0)
        for result in API_KEYS_RELOAD_RESULTS:
            self.hitl_api_keys_reload_total.set({"result": result}, 0)
        self.hitl_cache_circuit_state.set({}, 0)
        self.hitl_cache_circuit_opened_total.set({}, 0)
        self.hitl_webhook_outbox_pruned_total.set({}, 0)
        self.hitl_build_info.set(
            metric_labels(
                version=settings.service_version,
                commit=settings.build_commit,
                python=platform.python_version(),
            ),
            1,
        )

    def record_review_created(self, *, severity: str, source: str) -> None:
        self.review_created_total.inc(metric_labels(severity=severity, source=source))

    def record_review_decision(self, *, decision: str, severity: str, duration: float) -> None:
        """Count a committed decision; ``duration`` is seconds since the review was created."""
        labels = metric_labels(decision=decision, severity=severity)
        self.review_decision_total.inc(labels)
        # Clock skew between the DB's created_at and this host must not make the
        # histogram's _sum decrease (it is read with rate()).
        self.review_decision_duration_seconds.observe(labels, max(float(duration), 0.0))

    def record_apv_validation(self, *, pattern_type: str, result: str, duration: float) -> None:
        self.apv_validation_total.inc(metric_labels(pattern_type=pattern_type, result=result))
        self.apv_validation_duration_seconds.observe(
            metric_labels(pattern_type=pattern_type), max(float(duration), 0.0)
        )

    def set_outbox_depth(self, depth: int) -> None:
        self.hitl_webhook_outbox_depth.set({}, depth)

    def record_webhook_delivery(self, *, result: str, lag_seconds: float | None = None) -> None:
        """Count one attempt; a delivered one also observes its lag since the commit."""
        require_label(result, WEBHOOK_RESULTS, "result")
        self.hitl_webhook_deliveries_total.inc({"result": result})
        if lag_seconds is not None:
            self.hitl_webhook_delivery_lag_seconds.observe({}, max(float(lag_seconds), 0.0))

    def record_outbox_pruned(self, rows: int) -> None:
        self.hitl_webhook_outbox_pruned_total.add({}, rows)

    def record_api_keys_reload(self, *, result: str) -> None:
        require_label(result, API_KEYS_RELOAD_RESULTS, "result")
        self.hitl_api_keys_reload_total.inc({"result": result})

    def record_connection_refused(self, *, cap: str) -> None:
        require_label(cap, CONNECTION_CAPS, "cap")
        self.hitl_http_connections_refused_total.inc({"cap": cap})

    def record_request_unparsable(self) -> None:
        self.hitl_http_requests_unparsable_total.inc({})

    def set_connections_open(self, count: int) -> None:
        self.hitl_http_connections_open.set({}, count)

    def set_api_keys_loaded(self, count: int) -> None:
        self.hitl_api_keys_loaded.set({}, count)

    def set_outbox_oldest_pending(self, seconds: float) -> None:
        self.hitl_webhook_outbox_oldest_pending_seconds.set({}, max(float(seconds), 0.0))

    def set_review_queue(self, backlog: Mapping[QueueKey, Backlog]) -> None:
        """Publish the backlog of every (severity, status) the mapping holds."""
        for (severity, status), entry in backlog.items():
            labels = metric_labels(severity=severity, status=status)
            self.review_queue_pending.set(labels, entry.count)
            self.review_queue_oldest_pending_seconds.set(labels, max(entry.oldest_seconds, 0.0))

    def set_cache_circuit_state(self, state: int, *, opened: bool) -> None:
        """``state``: 0 closed, 1 open, 2 half-open; ``opened`` counts a transition to open."""
        self.hitl_cache_circuit_state.set({}, state)
        if opened:
            self.hitl_cache_circuit_opened_total.inc({})
