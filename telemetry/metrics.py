"""The generic metric catalogue of an aiohttp service and the facade that moves it.

HTTP (RED), SLO, error and resource (DB pool, query, cache) metrics, plus telemetry's
own health (span drops and export failures, named with ``metric_prefix``), live on an
aioprometheus ``Registry`` owned by one ``Metrics`` instance (one per app): nothing
is registered in aioprometheus' global ``REGISTRY``, so two apps, or two tests, never
share a count. A service defines its own business metrics on the same registry with
``counter``/``gauge``/``histogram``.
docs/metrics.md is the human-readable catalogue; keep them in step.

Callers never touch the generic collectors: they call the facade (``record_request``,
``db_query``, ``record_cache`` ...), which keeps label values bounded and the derived
series (SLO good/bad, cache_hit_ratio) consistent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import structlog
from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

from .children import Count, CounterChildren, HistogramChild, histogram_child
from .exposition import render_text
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


def metric_labels(**values: str) -> dict[str, str]:
    """A label set safe to pass to aioprometheus: values escaped for the exposition."""
    return {name: _escape(value) for name, value in values.items()}


def require_label(value: str, allowed: Sequence[str], what: str) -> None:
    # Label values of these series are a closed set (dashboards and pre-initialised
    # series depend on it); a typo must fail loudly in tests, not add a series.
    if value not in allowed:
        raise ValueError(f"{what}={value!r}: expected one of {', '.join(allowed)}")


def _collector_name(collect: Collect) -> str:
    return getattr(collect, "__qualname__", None) or repr(collect)


@dataclass(slots=True)
class _Route:
    """The children of one (method, endpoint): its histograms, and the SLO verdict."""

    duration: HistogramChild
    request_size: HistogramChild
    response_size: HistogramChild
    counts_toward_slo: bool


@dataclass(slots=True)
class _RequestSeries:
    count: Count
    route: _Route


@dataclass(slots=True)
class _SloCounts:
    total: Count
    good: Count
    bad: Count


class Metrics:
    """The generic metrics of one app on one registry, and the only way to move them."""

    def __init__(self, settings: TelemetrySettings) -> None:
        self.settings = settings
        self.registry = Registry()
        self._collectors: list[Collect] = []
        self.collector_timeout_seconds = COLLECTOR_TIMEOUT_SECONDS
        self._cache_hits = 0
        self._cache_misses = 0
        # Hot-path label children (telemetry/children.py), resolved once per label set.
        self._request_series: dict[tuple[str, str, int], _RequestSeries] = {}
        self._routes: dict[tuple[str, str], _Route] = {}
        self._query_durations: dict[str, HistogramChild] = {}
        self._define_red()
        self._define_use()
        self._define_errors_and_slo()
        self._define_telemetry_health()
        self._http_requests = CounterChildren(self.http_requests_total)
        self._cache_operations = CounterChildren(self.cache_operations_total)
        self._preinitialise()

    # -- definitions ---------------------------------------------------------------

    def counter(self, name: str, doc: str) -> Counter:
        """A counter on this app's registry (for a service's own business metrics)."""
        return Counter(name, doc, registry=self.registry)

    def gauge(self, name: str, doc: str) -> Gauge:
        """A gauge on this app's registry."""
        return Gauge(name, doc, registry=self.registry)

    def histogram(self, name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        """A histogram on this app's registry."""
        return Histogram(name, doc, registry=self.registry, buckets=buckets)

    def _define_red(self) -> None:
        self.http_requests_total = self.counter(
            "http_requests_total",
            "Total HTTP requests by method, endpoint (route template) and status.",
        )
        self.http_request_duration_seconds = self.histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, from middleware entry to handler return.",
            HTTP_DURATION_BUCKETS,
        )
        self.http_request_size_bytes = self.histogram(
            "http_request_size_bytes",
            "HTTP request body size in bytes (Content-Length, else bytes received).",
            SIZE_BUCKETS,
        )
        self.http_response_size_bytes = self.histogram(
            "http_response_size_bytes",
            "HTTP response body size in bytes (before content encoding).",
            SIZE_BUCKETS,
        )

    def _define_use(self) -> None:
        self.db_connections_active = self.gauge(
            "db_connections_active", "Database pool connections in use."
        )
        self.db_connections_idle = self.gauge(
            "db_connections_idle", "Database pool connections open and idle."
        )
        # The pool's ceiling, so "pool > 90 % used" is a ratio of two live series
        # rather than a threshold copied from the configuration into the alert.
        self.db_connections_max = self.gauge(
            "db_connections_max", "Largest number of connections the database pool may open."
        )
        self.db_query_duration_seconds = self.histogram(
            "db_query_duration_seconds",
            "Database query latency in seconds, by operation.",
            DB_QUERY_DURATION_BUCKETS,
        )
        self.db_query_errors_total = self.counter(
            "db_query_errors_total", "Database queries that raised, by exception class."
        )
        self.cache_operations_total = self.counter(
            "cache_operations_total", "Cache operations by operation and result."
        )
        self.cache_hit_ratio = self.gauge(
            "cache_hit_ratio",
            "Cache get hits over get hits plus misses since process start.",
        )
        self.cache_evictions_total = self.counter(
            "cache_evictions_total",
            "Keys the cache server evicted under memory pressure (Redis evicted_keys).",
        )

    def _define_errors_and_slo(self) -> None:
        self.app_errors_total = self.counter(
            "app_errors_total", "Handled application errors by type and severity."
        )
        self.app_exceptions_total = self.counter(
            "app_exceptions_total", "Unhandled exceptions (answered with 500) by type."
        )
        self.service_up = self.gauge(
            "service_up", "1 while the service is serving, 0 once shutdown begins."
        )
        self.slo_requests_total = self.counter(
            "slo_requests_total", "Requests counted toward an SLO, by SLO type."
        )
        self.slo_requests_good = self.counter(
            "slo_requests_good", "Requests meeting the SLO, by SLO type."
        )
        self.slo_requests_bad = self.counter(
            "slo_requests_bad", "Requests failing the SLO, by SLO type."
        )

    def _define_telemetry_health(self) -> None:
        prefix = self.settings.metric_prefix
        self.tracing_spans_dropped_total = self.counter(
            f"{prefix}tracing_spans_dropped_total",
            "Finished spans dropped before export (queue full).",
        )
        self.tracing_export_failures_total = self.counter(
            f"{prefix}tracing_export_failures_total", "Span export batches that failed."
        )

    def _preinitialise(self) -> None:
        # Series that exist from the first scrape make rate() and absent()-free alerts
        # work at once; only closed label sets are pre-created, never guessed ones.
        for counter in (
            self.cache_evictions_total,
            self.tracing_spans_dropped_total,
            self.tracing_export_failures_total,
        ):
            counter.set({}, 0)
        self.service_up.set({}, 0)
        slo = [
            CounterChildren(counter)
            for counter in (self.slo_requests_total, self.slo_requests_good, self.slo_requests_bad)
        ]
        self._slo_children = slo
        self._slo_counts = tuple(
            _SloCounts(*(children.child(slo_type, {"slo_type": slo_type}) for children in slo))
            for slo_type in SLO_TYPES
        )
        for operation, results in CACHE_RESULTS.items():
            for result in results:
                self._cache_operations.child(
                    (operation, result), {"operation": operation, "result": result}
                )
        self._fold()
        for error_type in DB_ERROR_TYPES:
            self.db_query_errors_total.set({"error_type": error_type}, 0)

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
        The label children of a (method, endpoint, status) are resolved once.
        """
        method = normalise_method(method)
        series = self._request_series.get((method, endpoint, status))
        if series is None:
            series = self._new_request_series(method, endpoint, status)
        series.count.value += 1
        route = series.route
        route.duration.observe(duration)
        route.request_size.observe(request_size if request_size > 0 else 0)
        route.response_size.observe(response_size if response_size > 0 else 0)
        if route.counts_toward_slo:
            availability, latency = self._slo_counts
            availability.total.value += 1
            (availability.good if status < 500 else availability.bad).value += 1
            latency.total.value += 1
            good = duration <= self.settings.slo_latency_threshold_seconds
            (latency.good if good else latency.bad).value += 1

    def _new_request_series(self, method: str, endpoint: str, status: int) -> _RequestSeries:
        route = self._routes.get((method, endpoint))
        if route is None:
            labels = metric_labels(method=method, endpoint=endpoint)
            route = self._routes[(method, endpoint)] = _Route(
                duration=histogram_child(self.http_request_duration_seconds, labels),
                request_size=histogram_child(self.http_request_size_bytes, labels),
                response_size=histogram_child(self.http_response_size_bytes, labels),
                counts_toward_slo=self.counts_toward_slo(endpoint),
            )
        labels = metric_labels(method=method, endpoint=endpoint, status=str(status))
        count = self._http_requests.child((method, endpoint, status), labels)
        series = self._request_series[(method, endpoint, status)] = _RequestSeries(count, route)
        return series

    def counts_toward_slo(self, endpoint: str) -> bool:
        """Whether requests to this route template count toward the SLOs.

        Health probes and scrapes are excluded by settings; route misses are excluded
        because a scanner's 404s are not the service's traffic and would only dilute
        the error budget (they still count in http_requests_total).
        """
        if endpoint == UNMATCHED_ENDPOINT:
            return False
        return not endpoint.startswith(self.settings.slo_excluded_prefixes)

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
        started = time.perf_counter()
        try:
            yield
        except GeneratorExit:
            raise  # the context manager was closed unused, not a query failure
        except BaseException as exc:
            self.db_query_errors_total.inc(metric_labels(error_type=type(exc).__name__))
            raise
        finally:
            child = self._query_durations.get(operation)
            if child is None:
                child = self._query_durations[operation] = histogram_child(
                    self.db_query_duration_seconds, metric_labels(operation=operation)
                )
            child.observe(time.perf_counter() - started)

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
        count = self._cache_operations.get((operation, result))
        if count is None:  # every valid pair was pre-created: this one is a typo
            require_label(operation, tuple(CACHE_RESULTS), "operation")
            require_label(result, CACHE_RESULTS[operation], f"result of cache {operation}")
            raise AssertionError("unreachable: a valid cache label pair was not pre-created")
        count.value += 1
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
        """Run the collectors, then the exposition body and its headers.

        ``accept_headers`` is kept for callers: every Accept value gets the text format,
        as aioprometheus' negotiation gives (Prometheus dropped the binary one).
        """
        await self.collect()
        self._fold()
        return render_text(self.registry)

    def _fold(self) -> None:
        """Write the hot-path counts into their aioprometheus counters."""
        self._http_requests.fold()
        self._cache_operations.fold()
        for children in self._slo_children:
            children.fold()

    # -- errors ----------------------------------------------------------------------

    def preinitialise_app_errors(self, labels: Iterable[tuple[str, str]]) -> None:
        """Create app_errors_total{type, severity} at 0 for every pair the caller can
        raise, so error panels and ratios read 0 on a healthy service, not "No data".
        Pairs already counted keep their value."""
        for error_type, severity in labels:
            key = metric_labels(type=error_type, severity=severity)
            if key not in self.app_errors_total.values:
                self.app_errors_total.set(key, 0)

    def record_app_error(self, *, type: str, severity: str) -> None:
        self.app_errors_total.inc(metric_labels(type=type, severity=severity))

    def record_exception(self, *, type: str) -> None:
        self.app_exceptions_total.inc(metric_labels(type=type))

    # -- service state ---------------------------------------------------------------

    def set_service_up(self, up: bool) -> None:
        self.service_up.set({}, 1 if up else 0)

    def record_spans_dropped(self, count: int) -> None:
        if count > 0:
            self.tracing_spans_dropped_total.add({}, count)

    def record_span_export_failure(self) -> None:
        self.tracing_export_failures_total.inc({})
