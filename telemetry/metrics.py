"""The metric catalogue and the facade that moves it.

Every metric of the seed's "Prometheus Metrics" section is defined here, once, on an
aioprometheus ``Registry`` owned by one ``Metrics`` instance (one per app): nothing is
registered in aioprometheus' global ``REGISTRY``, so two apps, or two tests, never
share a count. docs/metrics.md is the human-readable catalogue; keep them in step.

Callers never touch the collectors: they call the facade (``record_request``,
``record_review_decision``, ``db_query``, ``record_cache`` ...), which keeps label
values bounded and the derived series (SLO good/bad, cache_hit_ratio) consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Final

import structlog
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry
from aioprometheus.renderer import render as render_registry

from .settings import TelemetrySettings

log = structlog.get_logger("telemetry.metrics")

Collect = Callable[[], Awaitable[None]]

# OpenTelemetry HTTP semantic conventions, http.server.request.duration advisory buckets.
HTTP_DURATION_BUCKETS: Final = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
# Powers of 4 from 64 B to 16 MiB: an empty GET body, JSON documents and unified-diff
# patches all land in different buckets, and aiohttp's 1 MiB default body limit is one.
SIZE_BUCKETS: Final = tuple(float(64 * 4**i) for i in range(10))
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
# A loopback PostgreSQL answers in well under a millisecond; a locked row can take seconds.
DB_QUERY_DURATION_BUCKETS: Final = (
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
    10.0,
)

# The HTTP methods of RFC 9110 (+ PATCH); anything else is one label value, as the OTel
# semantic conventions say, so a client inventing methods cannot create series.
KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD: Final = "_OTHER"
# The one endpoint label value shared by every request that matched no route.
UNMATCHED_ENDPOINT: Final = "unmatched"

SLO_TYPES: Final = ("availability", "latency")
CACHE_RESULTS: Final[Mapping[str, tuple[str, ...]]] = {
    "get": ("hit", "miss", "error"),
    "set": ("ok", "error"),
    "delete": ("ok", "error"),
}
WEBHOOK_RESULTS: Final = ("delivered", "failed")
# db_query_errors_total{error_type} values known before any query fails: the DB-API
# (PEP 249) exception classes, and the two ways an awaited query is abandoned. Driver
# subclasses (psycopg2's UniqueViolation, say) still get their own series when raised.
DB_ERROR_TYPES: Final = (
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
    "TimeoutError",
    "CancelledError",
)

# A collector runs inside the scrape: one that hangs must not hold /metrics past
# Prometheus' default 10 s scrape timeout.
COLLECTOR_TIMEOUT_SECONDS: Final = 2.0


def normalise_method(method: str) -> str:
    """The method label: the method itself when standard, else ``_OTHER``.

    Case-sensitive, as HTTP methods are (RFC 9110) and as the OTel conventions say.
    """
    return method if method in KNOWN_METHODS else OTHER_METHOD


def _escape(value: str) -> str:
    # aioprometheus writes label values verbatim; a route template such as
    # "/items/{id:\d+}" would otherwise make the exposition unparsable.
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _labels(**values: str) -> dict[str, str]:
    return {name: _escape(value) for name, value in values.items()}


def _require(value: str, allowed: Sequence[str], what: str) -> None:
    # Label values of these series are a closed set (dashboards and pre-initialised
    # series depend on it); a typo must fail loudly in tests, not add a series.
    if value not in allowed:
        raise ValueError(f"{what}={value!r}: expected one of {', '.join(allowed)}")


def _collector_name(collect: Collect) -> str:
    return getattr(collect, "__qualname__", None) or repr(collect)


class Metrics:
    """Every metric of the service on one registry, and the only way to move them."""

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.registry = Registry()
        self._collectors: list[Collect] = []
        self.collector_timeout_seconds = COLLECTOR_TIMEOUT_SECONDS
        self._cache_hits = 0
        self._cache_misses = 0
        self._define_red()
        self._define_business()
        self._define_use()
        self._define_errors_and_slo()
        self._define_service_internals()
        self._preinitialise()

    # -- definitions ---------------------------------------------------------------

    def _counter(self, name: str, doc: str) -> Counter:
        return Counter(name, doc, registry=self.registry)

    def _gauge(self, name: str, doc: str) -> Gauge:
        return Gauge(name, doc, registry=self.registry)

    def _histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, registry=self.registry, buckets=buckets)

    def _define_red(self) -> None:
        self.http_requests_total = self._counter(
            "http_requests_total",
            "Total HTTP requests by method, endpoint (route template) and status.",
        )
        self.http_request_duration_seconds = self._histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, from middleware entry to handler return.",
            HTTP_DURATION_BUCKETS,
        )
        self.http_request_size_bytes = self._histogram(
            "http_request_size_bytes",
            "HTTP request body size in bytes (Content-Length, else bytes received).",
            SIZE_BUCKETS,
        )
        self.http_response_size_bytes = self._histogram(
            "http_response_size_bytes",
            "HTTP response body size in bytes (before content encoding).",
            SIZE_BUCKETS,
        )

    def _define_business(self) -> None:
        self.review_created_total = self._counter(
            "review_created_total", "Reviews created by APV severity and source."
        )
        self.review_decision_total = self._counter(
            "review_decision_total", "Review decisions committed, by decision and severity."
        )
        self.review_decision_duration_seconds = self._histogram(
            "review_decision_duration_seconds",
            "Time from review submission to decision in seconds.",
            DECISION_DURATION_BUCKETS,
        )
        self.apv_validation_total = self._counter(
            "apv_validation_total", "APV validations by pattern type and result."
        )
        self.apv_validation_duration_seconds = self._histogram(
            "apv_validation_duration_seconds",
            "APV validation duration in seconds, by pattern type.",
            VALIDATION_DURATION_BUCKETS,
        )

    def _define_use(self) -> None:
        self.db_connections_active = self._gauge(
            "db_connections_active", "Database pool connections in use."
        )
        self.db_connections_idle = self._gauge(
            "db_connections_idle", "Database pool connections open and idle."
        )
        # The pool's ceiling, so "pool > 90 % used" is a ratio of two live series
        # rather than a threshold copied from the configuration into the alert.
        self.db_connections_max = self._gauge(
            "db_connections_max", "Largest number of connections the database pool may open."
        )
        self.db_query_duration_seconds = self._histogram(
            "db_query_duration_seconds",
            "Database query latency in seconds, by operation.",
            DB_QUERY_DURATION_BUCKETS,
        )
        self.db_query_errors_total = self._counter(
            "db_query_errors_total", "Database queries that raised, by exception class."
        )
        self.cache_operations_total = self._counter(
            "cache_operations_total", "Cache operations by operation and result."
        )
        self.cache_hit_ratio = self._gauge(
            "cache_hit_ratio",
            "Cache get hits over get hits plus misses since process start.",
        )
        self.cache_evictions_total = self._counter(
            "cache_evictions_total",
            "Keys the cache server evicted under memory pressure (Redis evicted_keys).",
        )

    def _define_errors_and_slo(self) -> None:
        self.app_errors_total = self._counter(
            "app_errors_total", "Handled application errors by type and severity."
        )
        self.app_exceptions_total = self._counter(
            "app_exceptions_total", "Unhandled exceptions (answered with 500) by type."
        )
        self.service_up = self._gauge(
            "service_up", "1 while the service is serving, 0 once shutdown begins."
        )
        self.slo_requests_total = self._counter(
            "slo_requests_total", "Requests counted toward an SLO, by SLO type."
        )
        self.slo_requests_good = self._counter(
            "slo_requests_good", "Requests meeting the SLO, by SLO type."
        )
        self.slo_requests_bad = self._counter(
            "slo_requests_bad", "Requests failing the SLO, by SLO type."
        )

    def _define_service_internals(self) -> None:
        self.hitl_build_info = self._gauge(
            "hitl_build_info", "Always 1; labels name the running build."
        )
        self.hitl_webhook_outbox_depth = self._gauge(
            "hitl_webhook_outbox_depth", "Decision webhooks waiting in the outbox."
        )
        self.hitl_webhook_deliveries_total = self._counter(
            "hitl_webhook_deliveries_total", "Decision webhook delivery attempts by result."
        )
        self.hitl_tracing_spans_dropped_total = self._counter(
            "hitl_tracing_spans_dropped_total",
            "Finished spans dropped before export (queue full).",
        )
        self.hitl_tracing_export_failures_total = self._counter(
            "hitl_tracing_export_failures_total", "Span export batches that failed."
        )

    def _preinitialise(self) -> None:
        # Series that exist from the first scrape make rate() and absent()-free alerts
        # work at once; only closed label sets are pre-created, never guessed ones.
        for counter in (
            self.cache_evictions_total,
            self.hitl_tracing_spans_dropped_total,
            self.hitl_tracing_export_failures_total,
        ):
            counter.set({}, 0)
        self.service_up.set({}, 0)
        for slo_type in SLO_TYPES:
            for counter in (self.slo_requests_total, self.slo_requests_good, self.slo_requests_bad):
                counter.set({"slo_type": slo_type}, 0)
        for operation, results in CACHE_RESULTS.items():
            for result in results:
                self.cache_operations_total.set({"operation": operation, "result": result}, 0)
        for result in WEBHOOK_RESULTS:
            self.hitl_webhook_deliveries_total.set({"result": result}, 0)
        for error_type in DB_ERROR_TYPES:
            self.db_query_errors_total.set({"error_type": error_type}, 0)
        self.hitl_build_info.set(
            _labels(
                version=self.settings.service_version,
                commit=self.settings.build_commit,
                python=platform.python_version(),
            ),
            1,
        )

    # -- RED and SLO -----------------------------------------------------------------

    def record_request(
        self,
        *,
        method: str,
        endpoint: str,
        status: int,
        duration: float,
        request_size: int,
        response_size: int,
    ) -> None:
        """Count one finished HTTP request in the RED series and, unless excluded, the SLOs.

        ``endpoint`` must be a route template (or ``UNMATCHED_ENDPOINT``), never a raw
        path; ``method`` is normalised here so no caller can add unbounded series.
        """
        route = _labels(method=normalise_method(method), endpoint=endpoint)
        self.http_requests_total.inc({**route, "status": str(status)})
        self.http_request_duration_seconds.observe(route, float(duration))
        self.http_request_size_bytes.observe(route, float(max(request_size, 0)))
        self.http_response_size_bytes.observe(route, float(max(response_size, 0)))
        if self.counts_toward_slo(endpoint):
            self._record_slo("availability", good=status < 500)
            threshold = self.settings.slo_latency_threshold_seconds
            self._record_slo("latency", good=duration <= threshold)

    def counts_toward_slo(self, endpoint: str) -> bool:
        """Whether requests to this route template count toward the SLOs.

        Health probes and scrapes are excluded by settings; route misses are excluded
        because a scanner's 404s are not the service's traffic and would only dilute
        the error budget (they still count in http_requests_total).
        """
        if endpoint == UNMATCHED_ENDPOINT:
            return False
        return not endpoint.startswith(self.settings.slo_excluded_prefixes)

    def _record_slo(self, slo_type: str, *, good: bool) -> None:
        labels = {"slo_type": slo_type}
        self.slo_requests_total.inc(labels)
        (self.slo_requests_good if good else self.slo_requests_bad).inc(labels)

    # -- business ------------------------------------------------------------------

    def record_review_created(self, *, severity: str, source: str) -> None:
        self.review_created_total.inc(_labels(severity=severity, source=source))

    def record_review_decision(self, *, decision: str, severity: str, duration: float) -> None:
        """Count a committed decision; ``duration`` is seconds since the review was created."""
        labels = _labels(decision=decision, severity=severity)
        self.review_decision_total.inc(labels)
        # Clock skew between the DB's created_at and this host must not make the
        # histogram's _sum decrease (it is read with rate()).
        self.review_decision_duration_seconds.observe(labels, max(float(duration), 0.0))

    def record_apv_validation(self, *, pattern_type: str, result: str, duration: float) -> None:
        self.apv_validation_total.inc(_labels(pattern_type=pattern_type, result=result))
        self.apv_validation_duration_seconds.observe(
            _labels(pattern_type=pattern_type), max(float(duration), 0.0)
        )

    # -- USE: database -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def db_query(self, operation: str) -> AsyncIterator[None]:
        """Time the block into db_query_duration_seconds{operation}; count what it raises.

        Every exit is timed, including failures: a query that timed out spent its time
        waiting on the database, and hiding it would make a slow database look fast.
        A cancellation is counted as ``CancelledError``: an ``asyncio.timeout`` around
        the query surfaces *inside* the block as CancelledError (it only becomes
        TimeoutError outside), so alerts can tell abandoned queries from failed ones.
        """
        labels = _labels(operation=operation)
        started = time.perf_counter()
        try:
            yield
        except GeneratorExit:
            raise  # the context manager was closed unused, not a query failure
        except BaseException as exc:
            self.db_query_errors_total.inc(_labels(error_type=type(exc).__name__))
            raise
        finally:
            self.db_query_duration_seconds.observe(labels, time.perf_counter() - started)

    def set_db_pool(self, *, active: int, idle: int, maximum: int | None = None) -> None:
        self.db_connections_active.set({}, active)
        self.db_connections_idle.set({}, idle)
        if maximum is not None:
            self.db_connections_max.set({}, maximum)

    # -- USE: cache ----------------------------------------------------------------

    def record_cache(self, operation: str, result: str) -> None:
        """Count one cache call; a get hit or miss also refreshes cache_hit_ratio.

        ``operation``/``result``: get hit|miss|error, set ok|error, delete ok|error.
        A get that errored is neither a hit nor a miss, so it leaves the ratio alone.
        """
        _require(operation, tuple(CACHE_RESULTS), "operation")
        _require(result, CACHE_RESULTS[operation], f"result of cache {operation}")
        self.cache_operations_total.inc({"operation": operation, "result": result})
        if operation == "get" and result != "error":
            self._update_hit_ratio(hit=result == "hit")

    def _update_hit_ratio(self, *, hit: bool) -> None:
        # The gauge stays absent until the first lookup: 0 would claim "every lookup
        # missed" and fire LowCacheHitRatio on an idle instance; 0/0 has no value.
        if hit:
            self._cache_hits += 1
        else:
            self._cache_misses += 1
        self.cache_hit_ratio.set({}, self._cache_hits / (self._cache_hits + self._cache_misses))

    def record_cache_evictions(self, count: int) -> None:
        """Add keys the cache server evicted or expired since the previous poll.

        Non-positive deltas are ignored: Redis resets its INFO counters on restart, and
        a counter must never go down.
        """
        if count > 0:
            self.cache_evictions_total.add({}, count)

    # -- collectors and rendering --------------------------------------------------

    def add_collector(self, collect: Collect) -> None:
        """Await ``collect()`` before every render, e.g. to refresh pool gauges."""
        self._collectors.append(collect)

    async def collect(self) -> None:
        """Run every collector; one that fails or hangs is logged and skipped."""
        for collect in tuple(self._collectors):
            await self._run_collector(collect)

    async def _run_collector(self, collect: Collect) -> None:
        try:
            async with asyncio.timeout(self.collector_timeout_seconds):
                await collect()
        except Exception:
            # A broken collector must not take /metrics (and every other series) down.
            log.exception("metrics_collector_failed", collector=_collector_name(collect))

    async def render(self, accept_headers: Sequence[str]) -> tuple[bytes, dict[str, str]]:
        """Run the collectors, then the exposition body and headers for these Accept values."""
        await self.collect()
        body, headers = render_registry(self.registry, list(accept_headers))
        return body, {str(name): str(value) for name, value in headers.items()}

    # -- errors ----------------------------------------------------------------------

    def preinitialise_app_errors(self, labels: Iterable[tuple[str, str]]) -> None:
        """Create app_errors_total{type, severity} at 0 for every pair the caller can
        raise, so error panels and ratios read 0 on a healthy service, not "No data".
        Pairs already counted keep their value."""
        for error_type, severity in labels:
            key = _labels(type=error_type, severity=severity)
            if key not in self.app_errors_total.values:
                self.app_errors_total.set(key, 0)

    def record_app_error(self, *, type: str, severity: str) -> None:
        self.app_errors_total.inc(_labels(type=type, severity=severity))

    def record_exception(self, *, type: str) -> None:
        self.app_exceptions_total.inc(_labels(type=type))

    # -- service state ---------------------------------------------------------------

    def set_service_up(self, up: bool) -> None:
        self.service_up.set({}, 1 if up else 0)

    def set_outbox_depth(self, depth: int) -> None:
        self.hitl_webhook_outbox_depth.set({}, depth)

    def record_webhook_delivery(self, *, result: str) -> None:
        _require(result, WEBHOOK_RESULTS, "result")
        self.hitl_webhook_deliveries_total.inc({"result": result})

    def record_spans_dropped(self, count: int) -> None:
        if count > 0:
            self.hitl_tracing_spans_dropped_total.add({}, count)

    def record_span_export_failure(self) -> None:
        self.hitl_tracing_export_failures_total.inc({})
