"""Server spans made from the SDK's own parts, without ``Tracer.start_span``'s generic
path: the same span, for a third of the cost.

A request's server span is the costliest thing telemetry does for it when it is
sampled (docs/benchmarks.md): ``Tracer.start_span`` asks for the current span twice,
builds a ``SamplingResult`` and two ``TraceFlags``, constructs the span through
keyword arguments and validates each attribute under a lock, and ``Span.end`` copies
the span into a second ``ReadableSpan`` for the processors. For the common case —
a root span (no trace context came with the request), the provider's stock
samplers, id generator and limits, no SDK self-metrics — :class:`LeanServerTracer`
does the same steps directly:

* the sampling decision of ``ParentBased``/``TraceIdRatioBased``/``ALWAYS_ON``/
  ``ALWAYS_OFF`` for a root span, read from the sampler objects the provider holds
  (so ``OTEL_TRACES_SAMPLER``/``_ARG`` still decide);
* ids from the provider's id generator, trace flags as the SDK sets them;
* a :class:`LeanSpan` — a subclass of the SDK's ``Span``, so everything that reads
  or writes a span (the processors, our OTLP encoder, ``record_exception``) sees the
  SDK's type and methods — whose attributes, computed by telemetry itself (strings
  and ints, fewer than the limit), go into its ``BoundedAttributes`` without a
  per-value validation, and which hands *itself* to the processors at ``end``: the
  SDK's copy shares the attributes, events and links anyway, and every setter of an
  ended span is a no-op, so the copy protects nothing.

Anything else — a parent span, another sampler, an id generator that is not random,
attribute value limits, the SDK's internal metrics — goes through the SDK's
``start_span`` unchanged. tests/telemetry/test_lean_spans.py holds the two paths to
the same spans and pins the SDK sources this module mirrors, so an SDK upgrade that
changes them fails a test instead of drifting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from time import time_ns
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.trace.status import Status, StatusCode

__all__ = ["AttributesFor", "LeanServerTracer", "LeanSpan"]

AttributesFor = Callable[[], Mapping[str, str | int]]
# Span.end's warnings come from the SDK's logger; ours too.
_sdk_log = logging.getLogger(SdkSpan.__module__)

_UNSET: Final = Status(StatusCode.UNSET)
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_NOT_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.DEFAULT | TraceFlags.RANDOM_TRACE_ID)
# TraceIdRatioBased decides on the low 64 bits of the trace id.
_TRACE_ID_LIMIT: Final = TraceIdRatioBased.TRACE_ID_LIMIT
# SpanContext is a tuple: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid).
_new_span_context: Final = tuple.__new__


class LeanSpan(SdkSpan):
    """The SDK's ``Span``, filled in by :meth:`LeanServerTracer.start` rather than by
    its keyword constructor, and handed to the processors as itself when it ends."""

    def set_known_attribute(self, key: str, value: str | int) -> None:
        """Set an attribute whose value telemetry computed (a str or an int, so there
        is nothing to clean), as ``set_attribute`` would store it."""
        attributes = self._bounded_attributes
        with self._lock:
            if self._end_time is not None:
                return
            values = attributes._dict  # see the module docstring
            if key in values:
                del values[key]
            if attributes.maxlen is None or len(values) < attributes.maxlen:
                values[key] = value
                return
        self.set_attribute(key, value)  # full: the SDK drops the oldest and counts

    @property
    def _bounded_attributes(self) -> BoundedAttributes:
        # Span.__init__ (and LeanServerTracer) always store a BoundedAttributes; the
        # SDK's annotation says Attributes.
        return self._attributes  # type: ignore[return-value]

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._end_time is not None:
                _sdk_log.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._bounded_attributes._immutable = True  # as Span.end does
        processor = self._span_processor
        processor._on_ending(self)  # as Span.end does
        processor.on_end(self)


def _root_decision(sampler: Sampler) -> int | bool | None:
    """How ``sampler`` decides for a root span: True/False always, an int bound on the
    trace id's low 64 bits, or None when it is not one of the stock samplers."""
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        # A root span has no parent: only the root sampler decides.
        sampler = sampler._root  # type: ignore[attr-defined]
    if sampler is ALWAYS_ON:
        return True
    if sampler is ALWAYS_OFF:
        return False
    if type(sampler) is TraceIdRatioBased:
        return sampler.bound
    return None


class LeanServerTracer:
    """Starts server spans like ``tracer.start_span(name, context, kind=SERVER)``
    followed by ``set_attributes`` — through the lean path when it applies."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        self._lean = False
        if not isinstance(tracer, SdkTracer):
            return  # a no-op tracer: nothing to make lean
        limits = tracer._span_limits
        decision = _root_decision(tracer.sampler)
        self._lean = (
            decision is not None
            and type(tracer.id_generator) is RandomIdGenerator
            and isinstance(tracer._tracer_metrics, NoOpTracerMetrics)
            and limits.max_span_attribute_length is None
        )
        self._decision = decision
        self._config = tracer._tracer_config  # may be disabled later
        self._ids = tracer.id_generator
        self._sampler = tracer.sampler
        self._processor = tracer.span_processor
        self._resource = tracer.resource
        self._limits = limits
        self._scope = tracer._instrumentation_scope
        self._info = tracer.instrumentation_info

    @property
    def lean(self) -> bool:
        """Whether root spans take the lean path (False: always the SDK's)."""
        return self._lean

    def start(
        self,
        name: str,
        context: otel_context.Context | None,
        attributes_for: AttributesFor | None = None,
    ) -> trace.Span:
        """A started SERVER span; ``attributes_for()`` gives its attributes (str and
        int values), called only if the span is recording (sampled)."""
        if (
            self._lean
            and self._config.is_enabled
            and not trace.get_current_span(context).get_span_context().is_valid
        ):
            return self._start_root(name, context, attributes_for)
        span = self._tracer.start_span(name, context=context, kind=SpanKind.SERVER)
        if attributes_for is not None and span.is_recording():
            span.set_attributes(attributes_for())
        return span

    def _start_root(
        self, name: str, context: otel_context.Context | None, attributes_for: AttributesFor | None
    ) -> trace.Span:
        trace_id = self._ids.generate_trace_id()
        decision = self._decision
        if isinstance(decision, bool):
            sampled = decision
        else:
            assert decision is not None  # self._lean says so
            sampled = trace_id & _TRACE_ID_LIMIT < decision
        # SpanContext(trace_id, span_id, is_remote=False, trace_flags=...), without its
        # keyword call and range checks: the random generator's ids are never 0 and
        # always fit (RandomIdGenerator), so the context is valid.
        span_context = _new_span_context(
            SpanContext,
            (
                trace_id,
                self._ids.generate_span_id(),
                False,
                _SAMPLED_RANDOM if sampled else _NOT_SAMPLED_RANDOM,
                DEFAULT_TRACE_STATE,
                True,
            ),
        )
        if not sampled:
            return trace.NonRecordingSpan(span_context)
        limits = self._limits
        span: LeanSpan = object.__new__(LeanSpan)  # Span.__new__ only refuses Span itself
        # ReadableSpan.__init__'s fields, then Span.__init__'s, in their order.
        span._name = name
        span._context = span_context
        span._kind = SpanKind.SERVER
        span._instrumentation_info = self._info
        span._instrumentation_scope = self._scope
        span._parent = None
        span._start_time = None
        span._end_time = None
        span._resource = self._resource
        span._status = _UNSET
        span._sampler = self._sampler
        span._trace_config = None
        span._record_exception = True
        span._set_status_on_exception = True
        span._span_processor = self._processor
        span._limits = limits
        span._lock = threading.Lock()
        attributes = BoundedAttributes(limits.max_span_attributes, None, immutable=False)
        if attributes_for is not None:
            values = attributes_for()
            if limits.max_span_attributes is None or len(values) <= limits.max_span_attributes:
                attributes._dict.update(values)  # our own str/int values
            else:
                attributes._set_items(values)
        span._attributes = attributes
        span._events = BoundedList(limits.max_events)
        span._links = BoundedList(limits.max_links)
        span._record_end_metrics = None
        # Span.start, without its lock: nobody else holds this span yet.
        span._start_time = time_ns()
        self._processor.on_start(span, parent_context=context)
        return span
