"""telemetry/lean_spans.py: the lean path makes the span the SDK's path makes, decides
sampling as the SDK's samplers do, steps aside whenever it would differ, and is
pinned to the SDK sources it mirrors."""

from __future__ import annotations

import hashlib
import inspect
import random
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanLimits, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from telemetry.lean_spans import LeanServerTracer, LeanSpan
from telemetry.trace_ids import hex_ids

ATTRIBUTES = {
    "http.method": "GET",
    "http.scheme": "http",
    "net.host.port": 8080,
    "http.target": "/api/x?q=1",
    "http.route": "/api/x",
}


class Provider:
    def __init__(self, sampler: Sampler = ALWAYS_ON, **kwargs: object) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler, shutdown_on_exit=False, **kwargs)  # type: ignore[arg-type]
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("telemetry.test", "1.0")

    def finished(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()


@pytest.fixture
def stock() -> Iterator[Provider]:
    provider = Provider()
    yield provider
    provider.provider.shutdown()


def _shape(span: ReadableSpan) -> dict[str, object]:
    """Everything an exporter reads of a span, except ids and times."""
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind,
        "parent": span.parent,
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {})) for e in span.events],
        "links": list(span.links),
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "flags": span.context.trace_flags,
        "remote": span.context.is_remote,
        "trace_state": span.context.trace_state,
        "valid": span.context.is_valid,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def _exercise(span: trace.Span) -> None:
    """What the request middleware and error responder do to a server span."""
    span.set_attribute("http.status_code", 500)
    span.set_status(trace.Status(trace.StatusCode.ERROR, "RuntimeError"))
    span.record_exception(RuntimeError("boom"))
    span.end()


def test_the_lean_span_is_the_sdks_span(stock: Provider) -> None:
    lean = LeanServerTracer(stock.tracer)
    assert lean.lean
    span = lean.start("GET /api/x", None, lambda: ATTRIBUTES)
    assert isinstance(span, LeanSpan) and isinstance(span, Span)
    _exercise(span)
    sdk_span = stock.tracer.start_span("GET /api/x", kind=SpanKind.SERVER)
    sdk_span.set_attributes(ATTRIBUTES)
    _exercise(sdk_span)
    ours, theirs = stock.finished()
    assert ours is span  # handed to the processors as itself, not copied
    assert _shape(ours) == _shape(theirs)
    assert ours.start_time is not None and ours.end_time is not None
    assert ours.start_time <= ours.end_time
    assert ours.context is not None and ours.context == SpanContext(
        ours.context.trace_id,
        ours.context.span_id,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID),
    )


def test_an_ended_lean_span_changes_no_more(stock: Provider) -> None:
    span = LeanServerTracer(stock.tracer).start("GET /x", None, lambda: ATTRIBUTES)
    assert isinstance(span, LeanSpan)
    span.end()
    span.set_known_attribute("http.status_code", 200)
    span.set_attribute("late", 1)
    span.end()
    (finished,) = stock.finished()
    assert "http.status_code" not in (finished.attributes or {})
    assert "late" not in (finished.attributes or {})


def test_known_attributes_respect_the_attribute_limit() -> None:
    limited = Provider(span_limits=SpanLimits(max_span_attributes=3))
    span = LeanServerTracer(limited.tracer).start("GET /x", None, lambda: {"a": 1, "b": 2})
    assert isinstance(span, LeanSpan)
    span.set_known_attribute("c", 3)
    span.set_known_attribute("d", 4)  # full: the oldest goes, counted, as the SDK does
    span.end()
    (finished,) = limited.finished()
    assert dict(finished.attributes or {}) == {"b": 2, "c": 3, "d": 4}
    assert finished.dropped_attributes == 1


@pytest.mark.parametrize(
    "sampler",
    [
        ParentBased(TraceIdRatioBased(0.1)),
        ParentBasedTraceIdRatio(0.5),
        TraceIdRatioBased(0.25),
        ParentBased(ALWAYS_OFF),
        ALWAYS_OFF,
        ALWAYS_ON,
    ],
    ids=lambda s: s.get_description(),
)
def test_sampling_decisions_are_the_samplers(sampler: Sampler) -> None:
    """For 2,000 trace ids, the lean path samples exactly the traces the SDK's sampler
    samples, and an unsampled span is a valid, non-recording one."""
    provider = Provider(sampler)
    lean = LeanServerTracer(provider.tracer)
    assert lean.lean
    ids = random.Random(7)
    trace_ids = [ids.getrandbits(128) or 1 for _ in range(2000)]
    fixed = iter(trace_ids)
    lean._ids.generate_trace_id = lambda: next(fixed)  # type: ignore[method-assign]
    sampled = 0
    for trace_id in trace_ids:
        span = lean.start("GET /x", None, lambda: ATTRIBUTES)
        ctx = span.get_span_context()
        assert ctx.trace_id == trace_id and ctx.is_valid and not ctx.is_remote
        decision = sampler.should_sample(None, trace_id, "GET /x").decision.is_sampled()
        assert span.is_recording() is decision
        assert ctx.trace_flags.sampled is decision and ctx.trace_flags.random_trace_id
        if decision:
            sampled += 1
        else:
            assert isinstance(span, NonRecordingSpan)
        span.end()
    assert len(provider.finished()) == sampled


class _SequentialIds(IdGenerator):
    def __init__(self) -> None:
        self._next = 0

    def generate_span_id(self) -> int:
        self._next += 1
        return self._next

    def generate_trace_id(self) -> int:
        self._next += 1
        return self._next


class _EveryOther(Sampler):
    def __init__(self) -> None:
        self._n = 0

    def should_sample(self, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        self._n += 1
        return ALWAYS_ON.should_sample(*args, **kwargs) if self._n % 2 else ALWAYS_OFF.should_sample(*args, **kwargs)  # type: ignore[arg-type]

    def get_description(self) -> str:
        return "every other"


@pytest.mark.parametrize(
    "provider",
    [
        lambda: Provider(_EveryOther()),
        lambda: Provider(id_generator=_SequentialIds()),
        lambda: Provider(span_limits=SpanLimits(max_span_attribute_length=4)),
    ],
    ids=["custom sampler", "custom id generator", "attribute length limit"],
)
def test_anything_unusual_takes_the_sdks_path(provider) -> None:  # type: ignore[no-untyped-def]
    made: Provider = provider()
    lean = LeanServerTracer(made.tracer)
    assert not lean.lean
    span = lean.start("GET /x", None, lambda: ATTRIBUTES)
    assert not isinstance(span, LeanSpan)
    span.end()


def test_a_span_with_a_parent_takes_the_sdks_path(stock: Provider) -> None:
    lean = LeanServerTracer(stock.tracer)
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    span = lean.start("GET /x", context, lambda: ATTRIBUTES)
    assert not isinstance(span, LeanSpan) and span.is_recording()
    span.end()
    (finished,) = stock.finished()
    assert finished.parent == parent and finished.context is not None
    assert finished.context.trace_id == 0xABC
    assert dict(finished.attributes or {}) == ATTRIBUTES


def test_a_no_op_tracer_is_left_alone() -> None:
    lean = LeanServerTracer(trace.NoOpTracer())
    assert not lean.lean
    assert not lean.start("GET /x", None, lambda: ATTRIBUTES).is_recording()


def test_hex_ids_are_the_w3c_text() -> None:
    for trace_id, span_id, flags in [(1, 1, 0), ((1 << 128) - 1, (1 << 64) - 1, 3), (0xABC, 0xDEF, 1)]:
        ctx = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))
        expected = (format(trace_id, "032x"), format(span_id, "016x"), format(flags, "02x"))
        assert hex_ids(ctx) == expected
        assert hex_ids(ctx) == expected  # the cached answer


# The SDK code lean_spans.py mirrors (Tracer.start_span's steps, Span's constructor and
# end, the samplers' root decisions, SpanContext's layout), as of opentelemetry-sdk
# 1.45.1. A change here means re-reading lean_spans.py against the new SDK, then
# updating the digest.
_MIRRORED = {
    Tracer.start_span: "3cd55e4a9e148e4117820b4da05af6cfc6dcff6f8d8e9809ccce5c85a5aea2d0",
    Span.__init__: "5687a97d122be23d5af51e75b1bf62daf31c47b15d26a92e42afc0aafb86edb4",
    Span.start: "42c19e6de8fe528e4edaf8d29ba470bc7188e96ad8552da4c2e9c0c9c20d1168",
    Span.end: "88aca2e904b83031224af2b5de537d975f0481f64b087aaff5f15212b57db154",
    Span.set_attribute: "1ed35e3cad63f66fd7ac6f6bae9083fa65df3ed5127df6a097903c3967b9a6a4",
    ReadableSpan.__init__: "9fd2a50ea3546706293d58954ebb2381d81d76f2bb94b9bbf1a674b2dd095d4e",
    ParentBased.should_sample: "2f4e7c936dc7616e244252aa433ebb79e132cdc16c3d0807f0d7990833d7bfde",
    TraceIdRatioBased.should_sample: "f8786d237e5eab435af5c96bb82e7a9d67a77792fc52dbd9b0e961b83eb17b82",
    SpanContext.__new__: "ba12f8f39fd146249acb03bb4e4c682424635b54ba66841268cbb56b8ff43111",
}


@pytest.mark.parametrize("function", list(_MIRRORED), ids=lambda f: f.__qualname__)
def test_the_mirrored_sdk_code_is_unchanged(function) -> None:  # type: ignore[no-untyped-def]
    digest = hashlib.sha256(inspect.getsource(function).encode()).hexdigest()
    assert digest == _MIRRORED[function], (
        f"{function.__qualname__} changed in this opentelemetry-sdk: check "
        "telemetry/lean_spans.py still builds the same span, then update the digest"
    )
