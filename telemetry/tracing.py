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
(:class:`BoundedBatchProcessor`) drained by the SDK's background thread; what does
not fit is dropped and counted; shutdown is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Final
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
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import ExcludeList, parse_excluded_urls

from .export import (
    BoundedBatchProcessor,
    QueueBudget,
    ReportingExporter,
    exporter_log_capture,
    otlp_exporter,
)
from .keys import TRACING
from .logging import REDACTED, is_sensitive_key
from .metrics import Metrics
from .settings import TelemetrySettings
from .trace_ids import hex_ids
from .tracing_config import TracingConfig, build_resource

__all__ = [
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
        self._processor: BoundedBatchProcessor | None = None
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
            budget = QueueBudget(self.config.max_queue_size)
            exporter = ReportingExporter(
                otlp_exporter(self.config),
                budget=budget,
                metrics=self.metrics,
                capture=exporter_log_capture(),
                endpoint=self.config.endpoint,
                protocol=self.config.protocol,
            )
            self._processor = BoundedBatchProcessor(exporter, budget, self.config, self.metrics)
            provider.add_span_processor(self._processor)
        return provider

    def start(self) -> None:
        """Start the provider now (at app startup) rather than at the first span."""
        if self.config.enabled and self._sdk_provider is None:
            self._sdk_provider = self._start()

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


def app_tracing(app: web.Application) -> Tracing | None:
    """This app's tracing, None when ``setup_tracing`` was not called for it."""
    return app.get(TRACING)


async def tracer_provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """Start the provider at startup; flush and shut it down, bounded, at cleanup."""
    tracing = app[TRACING]
    tracing.start()
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
    trace_id, span_id, flags = hex_ids(ctx)
    return f"00-{trace_id}-{span_id}-{flags}"


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
