"""The export path: bounded and quiet.

A collector that is down or hung never slows a request: spans go to a bounded queue
(:class:`BoundedBatchProcessor`) drained by the SDK's background thread; what does not
fit is dropped and counted; a failing exporter is reported at most once a minute
(:class:`ReportingExporter`, with the OTLP exporters' own log lines captured by
:class:`_ExporterLogCapture`). OTLP/HTTP requests are encoded by
:mod:`telemetry.otlp_encoding` (:class:`OtlpHttpSpanExporter`), not by the SDK.
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
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._common import (
    RequestPayloadTooLargeError,
    _is_request_too_large,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as SdkHttpSpanExporter,
)
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .metrics import Metrics
from .otlp_encoding import encode_spans
from .tracing_config import TracingConfig

__all__ = [
    "BoundedBatchProcessor",
    "OtlpHttpSpanExporter",
    "QueueBudget",
    "ReportingExporter",
    "exporter_log_capture",
    "missing_sdk_members",
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


# ------------------------------------------------------- OTLP/HTTP: our encoding

# The SDK exporter's own logger, so its lines and ours are captured alike.
_http_exporter_log = logging.getLogger(SdkHttpSpanExporter.__module__)
# semconv's HTTP_RESPONSE_STATUS_CODE, as the SDK labels a failed export (semconv is
# not one of our requirements).
_HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"


# The SDK exporter's private members OtlpHttpSpanExporter.export uses, and the method
# it calls on each (None: a plain value).
_SDK_MEMBERS_USED: Final = (
    ("_client", "export"),
    ("_metrics", "export_operation"),
    ("_max_request_size", None),
    ("_shutdown", None),
)


def missing_sdk_members(exporter: SdkHttpSpanExporter) -> list[str]:
    """What of ``_SDK_MEMBERS_USED`` this SDK's exporter lacks (nothing, on 1.45.1)."""
    missing = []
    for member, method in _SDK_MEMBERS_USED:
        if not hasattr(exporter, member):
            missing.append(member)
        elif method and not callable(getattr(getattr(exporter, member), method, None)):
            missing.append(f"{member}.{method}")
    return missing


class OtlpHttpSpanExporter(SdkHttpSpanExporter):
    """The SDK's OTLP/HTTP span exporter, sending bytes from :mod:`telemetry.otlp_encoding`.

    Everything but the encoding is the SDK's: endpoint, headers, compression, timeout,
    certificates, retries with backoff, shutdown. The SDK does not factor the encoding
    out of ``export()``, so this ``export()`` is SDK 1.45.1's with one line changed
    (``encode_spans(spans)`` for ``encode_spans(spans).SerializePartialToString()``),
    using the same private members (``_SDK_MEMBERS_USED``). setup.cfg pins the 1.45
    line; ``test_otlp_encoding`` fails if that method or those members change; and an
    SDK without those members gets its own ``export()`` back (:func:`missing_sdk_members`).
    """

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if missing_sdk_members(self):  # a few getattr per batch: slower, never broken
            return super().export(spans)
        if self._shutdown:
            _http_exporter_log.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE

        with self._metrics.export_operation(len(spans)) as result:
            try:
                serialized_data = encode_spans(spans)
            except Exception as error:  # as the SDK: a bad batch fails, the thread lives
                _http_exporter_log.error("Failed to encode span batch: %s", error)
                result.error = error
                return SpanExportResult.FAILURE

            if _is_request_too_large(serialized_data, self._max_request_size):
                _http_exporter_log.warning(
                    "Dropping span batch: serialized size %d bytes exceeds "
                    "max_request_size %d bytes.",
                    len(serialized_data),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(serialized_data)} "
                    f"bytes exceeds max_request_size "
                    f"{self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE

            export_result = self._client.export(serialized_data)
            if not export_result.success:
                result.error = export_result.error
                result.error_attrs = (
                    {_HTTP_RESPONSE_STATUS_CODE: export_result.status_code}
                    if export_result.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS


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
    exporter = OtlpHttpSpanExporter(
        endpoint=config.endpoint,
        headers=dict(config.headers),
        timeout=config.timeout_s,
        compression=HttpCompression.Gzip
        if config.compression == "gzip"
        else HttpCompression.NoCompression,
        meter_provider=NoOpMeterProvider(),
    )
    if missing := missing_sdk_members(exporter):
        log.warning("otlp_http_exporter_encodes_with_sdk", missing_sdk_members=missing)
    return exporter
