"""The export path: bounded and quiet.

A collector that is down or hung never slows a request: spans go to a bounded queue
(:class:`BoundedBatchProcessor`) drained by the SDK's background thread; what does not
fit is dropped and counted; a failing exporter is reported at most once a minute
(:class:`ReportingExporter`, with the OTLP exporters' own log lines captured by
:class:`_ExporterLogCapture`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import structlog
from opentelemetry import context as otel_context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .metrics import Metrics
from .tracing_config import TracingConfig

__all__ = [
    "BoundedBatchProcessor",
    "QueueBudget",
    "ReportingExporter",
    "exporter_log_capture",
    "otlp_exporter",
]

log = structlog.get_logger("telemetry.tracing")

# How often, at most, a failing exporter is reported.
EXPORT_FAILURE_LOG_INTERVAL_S: Final = 60.0

# ------------------------------------------------------- export: bounded and quiet


class QueueBudget:
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


class _ExporterLogCapture(logging.Handler):
    """Keeps the OTLP exporters' complaints per thread instead of printing them.

    The exporters log every retry and failure (a flood when the collector is down);
    :class:`ReportingExporter` folds the first complaint of a failed export (the
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


def exporter_log_capture() -> _ExporterLogCapture:
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


class ReportingExporter(SpanExporter):
    """Wraps the OTLP exporter: releases queue budget, counts and rate-limits failures."""

    def __init__(
        self,
        inner: SpanExporter,
        *,
        budget: QueueBudget,
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


class BoundedBatchProcessor(SpanProcessor):
    """``BatchSpanProcessor`` behind an admission budget: a full queue drops and counts."""

    def __init__(
        self,
        exporter: ReportingExporter,
        budget: QueueBudget,
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


def otlp_exporter(config: TracingConfig) -> SpanExporter:
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
