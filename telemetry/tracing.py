"""OpenTelemetry tracing for one aiohttp app: configuration, export and per-app state.

Wiring is explicit and per app — nothing is monkeypatched and nothing depends on
import order. This module is what the others build on: :class:`TracingConfig` (read
from the OTEL_* variables), the bounded, quiet export path, the per-app
:class:`Tracing` stored under :data:`TRACING` with the ``cleanup_ctx`` that owns its
``TracerProvider``, and trace propagation (:func:`context_carrier`,
:func:`continue_trace`, :func:`traceparent_header`). The server middleware and
``setup_tracing`` live in :mod:`telemetry.server_spans`; PostgreSQL, Redis and
aiohttp client spans in :mod:`telemetry.instrumentation`. Both import this module,
never the other way round.

Configuration comes from ``TelemetrySettings.otel_env`` (the raw OTEL_* variables), not
``os.environ``, so each app (and each test) can be configured on its own. Process-wide
state we cannot avoid, all forced by OpenTelemetry itself: the global propagator
(W3C tracecontext + baggage, used to extract/inject), the semantic-convention
opt-in mode (``OTEL_SEMCONV_STABILITY_OPT_IN``, read once by the instrumentations)
and the exporter loggers, which we route into :class:`_ExporterLogCapture` so a dead
collector produces one line a minute instead of a flood.

A collector that is down or hung never slows a request: spans go to a bounded queue
(:class:`_BoundedBatchProcessor`) drained by the SDK's background thread; what does
not fit is dropped and counted; shutdown is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import unquote

import structlog
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation import aiohttp_server as _server_helpers
from opentelemetry.instrumentation._semconv import (
    _get_schema_url,
    _OpenTelemetrySemanticConventionStability,
    _OpenTelemetryStabilitySignalType,
    _StabilityMode,
)
from opentelemetry.instrumentation.aiohttp_server.version import __version__ as _server_version
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as _sdk_version
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from .logging import REDACTED, is_sensitive_key
from .metrics import Metrics
from .settings import TelemetrySettings, TelemetrySettingsError, positive_float_env

__all__ = [
    "TRACER_PROVIDER",
    "TRACING",
    "Tracing",
    "TracingConfig",
    "app_tracing",
    "context_carrier",
    "continue_trace",
    "redact_query",
    "traceparent_header",
    "tracer_provider_ctx",
    "untraced",
]

log = structlog.get_logger("telemetry.tracing")


# How often, at most, a failing exporter is reported.
EXPORT_FAILURE_LOG_INTERVAL_S: Final = 60.0
# Default bound on the whole shutdown (flush + provider shutdown).
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 5.0

_DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318/v1/traces"
_DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
_SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
# Attributes that carry a URL or query string, whose sensitive parameters we redact.


# --------------------------------------------------------------------------- config


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise TelemetrySettingsError(f"{name}={raw!r}: expected a positive integer, e.g. {default}")
    return value


def _parse_headers(raw: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (values URL-encoded), as OTEL_EXPORTER_OTLP_HEADERS is defined."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TelemetrySettingsError(
                "OTEL_EXPORTER_OTLP_HEADERS: expected comma-separated key=value pairs, "
                "e.g. 'api-key=abc,tenant=hitl'"
            )
        headers[unquote(name).strip().lower()] = unquote(value).strip()
    return headers


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            attributes[unquote(name).strip()] = unquote(value).strip()
    return attributes


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        raise TelemetrySettingsError(
            f"OTEL_TRACES_SAMPLER={name!r}: expected one of {', '.join(_SAMPLERS)}"
        )
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TelemetrySettingsError(
                f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio between 0 and 1, e.g. 0.25"
            )
    root: Sampler
    if name.endswith("always_on"):
        root = ALWAYS_ON
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root


def _endpoint(env: Mapping[str, str], protocol: str) -> str:
    if traces := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return base or _DEFAULT_GRPC_ENDPOINT
    # The generic endpoint is a base URL: the signal path is appended (OTLP spec).
    return f"{base.rstrip('/')}/v1/traces" if base else _DEFAULT_HTTP_ENDPOINT


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the OTEL_* variables ask for, validated once at setup."""

    enabled: bool = True
    exporter: str = "otlp"  # "otlp" or "none" (spans still made: logs keep trace ids)
    protocol: str = "http/protobuf"  # or "grpc"
    endpoint: str = _DEFAULT_HTTP_ENDPOINT
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds, as the Python SDK reads OTEL_EXPORTER_OTLP_TIMEOUT (the spec says ms).
    timeout_s: float = 10.0
    compression: str | None = None  # "gzip" or None
    insecure: bool | None = None  # gRPC only; None = from the endpoint's scheme
    sampler: Sampler = field(default_factory=lambda: ParentBased(ALWAYS_ON))
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_ms: int = 5000
    export_timeout_ms: int = 30000
    excluded_urls: str = ""
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        enabled = not _truthy(env.get("OTEL_SDK_DISABLED"))
        exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
        if exporter not in {"otlp", "none"}:
            raise TelemetrySettingsError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: expected otlp or none"
            )
        protocol = (
            (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            .strip()
            .lower()
        )
        if protocol not in {"http/protobuf", "grpc"}:
            raise TelemetrySettingsError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected http/protobuf or grpc"
            )
        compression = (
            (
                env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
                or "none"
            )
            .strip()
            .lower()
        )
        if compression not in {"none", "gzip"}:
            raise TelemetrySettingsError(
                f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: expected gzip or none"
            )
        insecure_raw = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or env.get(
            "OTEL_EXPORTER_OTLP_INSECURE"
        )
        max_queue = _int_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        max_batch = _int_env(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        if max_batch > max_queue:
            raise TelemetrySettingsError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={max_batch}: must not exceed "
                f"OTEL_BSP_MAX_QUEUE_SIZE={max_queue}"
            )
        resource_attributes = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        return cls(
            enabled=enabled,
            exporter=exporter,
            protocol=protocol,
            endpoint=_endpoint(env, protocol),
            headers=_parse_headers(
                env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
            ),
            timeout_s=positive_float_env(
                env, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10.0
            ),
            compression=None if compression == "none" else compression,
            insecure=None if insecure_raw is None else _truthy(insecure_raw),
            sampler=_sampler(env),
            max_queue_size=max_queue,
            max_export_batch_size=max_batch,
            schedule_delay_ms=_int_env(env, "OTEL_BSP_SCHEDULE_DELAY", 5000),
            export_timeout_ms=_int_env(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
            excluded_urls=env.get(
                "OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", env.get("OTEL_PYTHON_EXCLUDED_URLS", "")
            ),
            resource_attributes=resource_attributes,
        )


def build_resource(settings: TelemetrySettings, config: TracingConfig) -> Resource:
    """service.name: OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES > settings (spec order)."""
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version,
        "service.name": settings.service_name,
        "service.version": settings.service_version,
        "service.instance.id": settings.instance_id,
        # The brief's key and the current semconv key, so either kind of backend finds it.
        "deployment.environment": settings.environment,
        "deployment.environment.name": settings.environment,
    }
    attributes.update(config.resource_attributes)
    if name := settings.otel_env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = name
    return Resource(attributes)


# ------------------------------------------------------- export: bounded and quiet


class _QueueBudget:
    """Spans handed to the batch processor and not yet given to the exporter.

    The SDK's queue silently evicts the oldest span when full and offers no public
    count; admitting spans against our own budget lets us drop *and count*.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._used >= self.capacity:
                return False
            self._used += 1
            return True

    def release(self, count: int) -> None:
        with self._lock:
            self._used = max(0, self._used - count)

    @property
    def used(self) -> int:
        return self._used


class _ExporterLogCapture(logging.Handler):
    """Keeps the OTLP exporters' complaints per thread instead of printing them.

    The exporters log every retry and failure (a flood when the collector is down);
    :class:`_ReportingExporter` folds the first complaint of a failed export (the
    cause, e.g. "Connection refused", rather than the generic "Failed to export")
    into its once-a-minute line. Keyed by thread because each batch processor
    exports on its own thread.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self._pending: dict[int, list[str]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            messages = self._pending.setdefault(record.thread or 0, [])
            if len(messages) < 3:
                messages.append(record.getMessage()[:500])

    def pop(self) -> str | None:
        messages = self._pending.pop(threading.get_ident(), None)
        return messages[0] if messages else None


def _exporter_log_capture() -> _ExporterLogCapture:
    """Install (once per process) the capture on the exporters' parent logger."""
    parent = logging.getLogger("opentelemetry.exporter")
    for handler in parent.handlers:
        if isinstance(handler, _ExporterLogCapture):
            return handler
    capture = _ExporterLogCapture()
    parent.addHandler(capture)
    # The exporters' loggers are module globals (OTel's choice); not propagating
    # is what keeps their per-retry lines off stdout/stderr.
    parent.propagate = False
    return capture


class _ReportingExporter(SpanExporter):
    """Wraps the OTLP exporter: releases queue budget, counts and rate-limits failures."""

    def __init__(
        self,
        inner: SpanExporter,
        *,
        budget: _QueueBudget,
        metrics: Metrics,
        capture: _ExporterLogCapture,
        endpoint: str,
        protocol: str,
        interval_s: float = EXPORT_FAILURE_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._budget = budget
        self._metrics = metrics
        self._capture = capture
        self._endpoint = endpoint
        self._protocol = protocol
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_report: float | None = None
        self._failed_batches = 0
        self._failed_spans = 0
        self.dropped_spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # The batch has left the processor's queue: make room for new spans.
        self._budget.release(len(spans))
        reason: str | None = None
        try:
            result = self._inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the export thread
            result, reason = SpanExportResult.FAILURE, f"{type(exc).__name__}: {exc}"
        captured = self._capture.pop()
        if result is not SpanExportResult.SUCCESS:
            self._report_failure(len(spans), reason or captured or "export failed")
        return result

    def note_dropped(self) -> None:
        with self._lock:
            self.dropped_spans += 1

    def _report_failure(self, span_count: int, reason: str) -> None:
        self._metrics.record_span_export_failure()
        with self._lock:
            self._failed_batches += 1
            self._failed_spans += span_count
            now = self._clock()
            if self._last_report is not None and now - self._last_report < self._interval_s:
                return
            self._last_report = now
            batches, spans, dropped = self._failed_batches, self._failed_spans, self.dropped_spans
            self._failed_batches = self._failed_spans = self.dropped_spans = 0
        log.warning(
            "span_export_failed",
            endpoint=self._endpoint,
            protocol=self._protocol,
            failed_batches=batches,
            failed_spans=spans,
            dropped_spans=dropped,
            reason=reason,
            next_report_in_s=self._interval_s,
        )

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class _BoundedBatchProcessor(SpanProcessor):
    """``BatchSpanProcessor`` behind an admission budget: a full queue drops and counts."""

    def __init__(
        self,
        exporter: _ReportingExporter,
        budget: _QueueBudget,
        config: TracingConfig,
        metrics: Metrics,
    ) -> None:
        self._exporter = exporter
        self._budget = budget
        self._metrics = metrics
        # Our budget is never larger than the SDK queue, so the SDK never evicts
        # behind our back; the extra batch of room covers a batch being popped.
        self._batch = BatchSpanProcessor(
            exporter,
            max_queue_size=config.max_queue_size + config.max_export_batch_size,
            schedule_delay_millis=config.schedule_delay_ms,
            max_export_batch_size=config.max_export_batch_size,
            export_timeout_millis=config.export_timeout_ms,
            meter_provider=NoOpMeterProvider(),
        )

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled):
            return
        if not self._budget.try_acquire():
            self._exporter.note_dropped()
            self._metrics.record_spans_dropped(1)
            return
        self._batch.on_end(span)

    def shutdown(self) -> None:
        self._batch.shutdown()  # type: ignore[no-untyped-call]  # SDK method lacks hints

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._batch.force_flush(timeout_millis)


def _otlp_exporter(config: TracingConfig) -> SpanExporter:
    # Explicit arguments everywhere, so the exporters' own os.environ fallbacks only
    # matter for what we do not forward (TLS certificate files).
    if config.protocol == "grpc":
        from grpc import Compression as GrpcCompression
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter(
            endpoint=config.endpoint,
            insecure=config.insecure,
            headers=dict(config.headers) or None,
            timeout=config.timeout_s,
            compression=GrpcCompression.Gzip
            if config.compression == "gzip"
            else GrpcCompression.NoCompression,
            meter_provider=NoOpMeterProvider(),
        )
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(
        endpoint=config.endpoint,
        headers=dict(config.headers),
        timeout=config.timeout_s,
        compression=HttpCompression.Gzip
        if config.compression == "gzip"
        else HttpCompression.NoCompression,
        meter_provider=NoOpMeterProvider(),
    )


# --------------------------------------------------------------- per-app state


async def _run_bounded(fn: Callable[[], object], timeout_s: float, name: str) -> bool:
    """Run a blocking call on a daemon thread; give up waiting after ``timeout_s``.

    Not ``asyncio.to_thread``: the default executor is joined when the loop closes,
    which would make a hung collector hold the process's shutdown hostage.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bool] = loop.create_future()

    def resolve(ok: bool) -> None:
        if not done.done():
            done.set_result(ok)

    def run() -> None:
        ok = True
        try:
            fn()
        except Exception:
            ok = False
        # The loop may be gone when a hung call finally returns; nothing to tell then.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(resolve, ok)

    threading.Thread(target=run, name=f"otel-{name}", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), max(timeout_s, 0.0))
    except TimeoutError:
        return False


class Tracing:
    """One app's tracing: config, provider lifecycle, the tracers the helpers use."""

    def __init__(
        self,
        settings: TelemetrySettings,
        metrics: Metrics,
        config: TracingConfig,
        *,
        shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.config = config
        self.shutdown_timeout_s = shutdown_timeout_s
        self.excluded: ExcludeList = parse_excluded_urls(config.excluded_urls)
        # The instrumentations read the opt-in once per process; we follow the same
        # mode so server, client and DB spans speak the same semconv dialect.
        _OpenTelemetrySemanticConventionStability._initialize()  # type: ignore[no-untyped-call]  # untyped in OTel
        self.http_semconv: _StabilityMode = (
            _OpenTelemetrySemanticConventionStability._get_opentelemetry_stability_opt_in_mode(
                _OpenTelemetryStabilitySignalType.HTTP
            )
        )
        self._sdk_provider: SdkTracerProvider | None = None
        self._processor: _BoundedBatchProcessor | None = None
        self._server_tracer: trace.Tracer | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.config.enabled and not self._closed

    @property
    def provider(self) -> trace.TracerProvider:
        """The app's provider, started on first use (a no-op one when disabled)."""
        if not self.config.enabled:
            return trace.NoOpTracerProvider()
        if self._sdk_provider is None:
            self._sdk_provider = self._start()
        return self._sdk_provider

    def _start(self) -> SdkTracerProvider:
        provider = SdkTracerProvider(
            sampler=self.config.sampler,
            resource=build_resource(self.settings, self.config),
            # We shut down in the app's cleanup, bounded; an atexit hook per app
            # would keep every test app alive until the interpreter exits.
            shutdown_on_exit=False,
        )
        if self.config.exporter == "otlp":
            budget = _QueueBudget(self.config.max_queue_size)
            exporter = _ReportingExporter(
                _otlp_exporter(self.config),
                budget=budget,
                metrics=self.metrics,
                capture=_exporter_log_capture(),
                endpoint=self.config.endpoint,
                protocol=self.config.protocol,
            )
            self._processor = _BoundedBatchProcessor(exporter, budget, self.config, self.metrics)
            provider.add_span_processor(self._processor)
        return provider

    @property
    def server_tracer(self) -> trace.Tracer:
        if self._server_tracer is None:
            self._server_tracer = self.provider.get_tracer(
                _server_helpers.__name__,
                _server_version,
                schema_url=_get_schema_url(self.http_semconv),
            )
        return self._server_tracer

    def tracer(self, name: str = "telemetry.tracing") -> trace.Tracer:
        return self.provider.get_tracer(name)

    async def shutdown(self) -> None:
        """Flush then shut down, the whole of it within ``shutdown_timeout_s``."""
        provider, self._sdk_provider = self._sdk_provider, None
        self._closed = True
        if provider is None:
            return
        deadline = time.monotonic() + self.shutdown_timeout_s
        flushed = await _run_bounded(
            lambda: provider.force_flush(int(self.shutdown_timeout_s * 1000)),
            self.shutdown_timeout_s,
            "flush",
        )
        stopped = await _run_bounded(provider.shutdown, deadline - time.monotonic(), "shutdown")
        if not (flushed and stopped):
            log.warning(
                "tracing_shutdown_incomplete",
                flushed=flushed,
                stopped=stopped,
                timeout_s=self.shutdown_timeout_s,
                endpoint=self.config.endpoint,
            )


# Typed keys. TRACING holds the per-app state (set by setup_tracing); TRACER_PROVIDER
# is published by the cleanup context once the provider runs.
TRACING: Final = web.AppKey("telemetry_tracing", Tracing)
TRACER_PROVIDER: Final = web.AppKey("telemetry_tracer_provider", trace.TracerProvider)


def app_tracing(app: web.Application) -> Tracing | None:
    """This app's tracing, None when ``setup_tracing`` was not called for it."""
    return app.get(TRACING)


async def tracer_provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the provider at startup; flush and shut it down, bounded, at cleanup."""
    tracing = app[TRACING]
    app[TRACER_PROVIDER] = tracing.provider
    yield
    await tracing.shutdown()


# ----------------------------------------- redaction shared by server and client spans


def redact_query(value: str) -> str:
    """Replace the values of sensitive query parameters (``?token=...``)."""
    head, sep, query = value.partition("?")
    if not sep:
        head, query = "", value  # url.query carries the bare query string
    parts = []
    for pair in query.split("&"):
        name, eq, _ = pair.partition("=")
        parts.append(f"{name}={REDACTED}" if eq and is_sensitive_key(unquote(name)) else pair)
    redacted = "&".join(parts)
    return f"{head}?{redacted}" if sep else redacted


# ------------------------------------------------------------------ propagation


def traceparent_header(span: trace.Span) -> str | None:
    """The W3C ``traceparent`` value naming ``span``, or None for an invalid span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


def context_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (traceparent/tracestate), to store."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run the block without spans: no server, SQL, Redis or HTTP client span starts.

    For machine chatter (an idle poll of a background loop, a health probe, a
    scrape): work that repeats every few seconds and would otherwise start a
    parentless trace each time, drowning real traces and skewing sampling.
    """
    with suppress_instrumentation():
        yield


@contextlib.contextmanager
def continue_trace(
    app: web.Application,
    carrier: Mapping[str, str],
    span_name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[trace.Span]:
    """Run the block in a new span whose parent is the stored ``carrier`` context.

    Client calls made inside (with
    :func:`telemetry.instrumentation.client_trace_configs`) join that trace, and so
    does every log line written inside. With tracing off, the stored context itself
    is made current, so those log lines still name the original trace.
    """
    parent = propagate.extract(dict(carrier))
    tracing = app_tracing(app)
    if tracing is None or not tracing.enabled:
        token = otel_context.attach(parent)
        try:
            yield trace.get_current_span(parent)
        finally:
            otel_context.detach(token)
        return
    with tracing.tracer().start_as_current_span(
        span_name, context=parent, kind=kind, attributes=dict(attributes or {})
    ) as span:
        yield span
