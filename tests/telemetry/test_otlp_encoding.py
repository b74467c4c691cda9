"""The hand-written OTLP encoder says exactly what the SDK's says, and the OTLP/HTTP
exporter sends it: real SDK spans of every shape, both encoders, the requests compared
after parsing and byte for byte; the SDK internals the exporter relies on are pinned."""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common._internal.trace_encoder import (
    encode_spans as sdk_encode_spans,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from telemetry import otlp_encoding
from telemetry.export import OtlpHttpSpanExporter, missing_sdk_members, otlp_exporter
from telemetry.otlp_encoding import encode_spans
from telemetry.tracing_config import TracingConfig
from tests.otlp_receiver import OtlpHttpReceiver

# -- spans of every shape, made by the SDK -------------------------------------------

EVERY_VALUE: dict[str, Any] = {
    "str": "value",
    "str.empty": "",
    "str.unicode": "ünïcödé ✓ 漢字",
    "str.long": "x" * 200,  # lengths of two varint bytes
    "str.huge": "y" * 20_000,  # three
    "bool.true": True,
    "bool.false": False,
    "int.zero": 0,
    "int.small": 127,
    "int.two_bytes": 128,
    "int.port": 40_123,
    "int.negative": -1,
    "int.min": -(2**63),
    "int.max": 2**63 - 1,
    "float": 1.5,
    "float.zero": 0.0,
    "float.negative_zero": -0.0,
    "float.negative": -2.25,
    "float.huge": 1e300,
    "float.inf": float("inf"),
    "bytes": b"\x00\xff\x10",
    "bytes.empty": b"",
    "seq.str": ["a", "", "ü"],
    "seq.bool": (True, False),
    "seq.int": [0, -5, 2**40],
    "seq.float": (0.5, -1.0),
    "seq.bytes": [b"x", b""],
    "seq.empty": [],
    # What the SDK's extended attributes also let through; its encoder handles them.
    "none": None,
    "seq.mixed": ["a", 1, 2.5, True, None],
    "seq.nested": [[1, 2], ["b"]],
    "map": {"k": "v", "n": 3, "inner": {"deep": [True]}},
}

REMOTE_PARENT = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C,
    span_id=0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "opaque"), ("other", "x1")]),
)
LINKED = SpanContext(
    trace_id=0x1,
    span_id=0xFFFFFFFFFFFFFFFF,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("linked", "state")]),
)


class _Collect(SpanExporter):
    """SimpleSpanProcessor's sink: the ended spans, in the order they ended."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def _provider(collect: _Collect, resource: Resource, limits: SpanLimits | None = None) -> Any:
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(collect))
    return provider


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    """One batch: two resources (plus a third, distinct object equal to the first),
    three scopes, every kind, value type, status, parent and limit case, interleaved."""
    collect = _Collect()
    service = Resource(
        {"service.name": "encoder-test", "service.instance.id": "i-1", "k8s.pod.uid": 7},
        schema_url="https://opentelemetry.io/schemas/1.21.0",
    )
    worker = Resource({"service.name": "worker", "host.tags": ("a", "b")})
    same_as_service = Resource(dict(service.attributes), schema_url=service.schema_url)
    main = _provider(collect, service)
    limited = _provider(
        collect,
        worker,
        SpanLimits(
            max_span_attributes=2,
            max_events=1,
            max_links=1,
            max_event_attributes=1,
            max_link_attributes=1,
        ),
    )
    twin = _provider(collect, same_as_service)

    server = main.get_tracer(
        "telemetry.server",
        "1.2.3",
        schema_url="https://opentelemetry.io/schemas/1.11.0",
        attributes={"scope.attr": "s", "scope.n": 2},
    )
    db = main.get_tracer("telemetry.db")  # no version, no schema
    jobs = limited.get_tracer("jobs", "0.1")
    twin_tracer = twin.get_tracer("telemetry.server", "1.2.3")

    remote = trace.set_span_in_context(NonRecordingSpan(REMOTE_PARENT))
    with server.start_as_current_span(
        "GET /api/reviews/{review_id}", context=remote, kind=SpanKind.SERVER
    ) as root:
        root.set_attributes(EVERY_VALUE)
        root.add_event("exception", {"exception.type": "ValueError", "n": 1, "ok": False})
        root.add_event("bare", timestamp=1_700_000_000_000_000_001)
        root.set_status(Status(StatusCode.ERROR, "ValueError: bad input"))
        for kind in SpanKind:
            with db.start_as_current_span(f"child {kind.name}", kind=kind) as child:
                child.set_attribute("db.statement", "SELECT 1")
                if kind is SpanKind.CLIENT:
                    child.set_status(Status(StatusCode.OK))
                if kind is SpanKind.PRODUCER:
                    child.set_status(Status(StatusCode.ERROR))  # no description
            with jobs.start_as_current_span("job", kind=kind) as job:  # interleaved
                job.set_attribute("job.kind", kind.name)
        with db.start_as_current_span(
            "linked",
            links=[
                Link(LINKED, {"link.reason": "retry", "attempt": 2}),
                Link(root.get_span_context()),
            ],
        ):
            pass
        with twin_tracer.start_as_current_span("from an equal resource"):
            pass
    with jobs.start_as_current_span(
        "over the limits", links=[Link(REMOTE_PARENT), Link(LINKED, {"a": 1, "b": 2})]
    ) as over:
        over.set_attributes({"one": 1, "two": 2, "three": 3, "four": 4})
        over.add_event("first", {"z": "z"})
        over.add_event("second", {"x": 1, "y": 2})  # the newest are kept
    with server.start_as_current_span("", kind=SpanKind.INTERNAL):  # no name: not written
        pass
    return collect.spans


def _both(spans: Sequence[ReadableSpan]) -> tuple[bytes, bytes]:
    return encode_spans(spans), sdk_encode_spans(spans).SerializeToString()


@pytest.fixture(params=["span storage", "public properties"])
def storage(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both ways the encoder reads a span: the SDK's storage (fast) and the fallback."""
    if request.param == "public properties":
        monkeypatch.setattr(otlp_encoding, "_READ_SPAN_STORAGE", False)
    yield request.param


# -- exactness ---------------------------------------------------------------------


def test_the_request_equals_the_sdks(spans: list[ReadableSpan], storage: str) -> None:
    """Every field, value type, kind, status, parent, link, event, dropped count,
    resource and scope: ours parses to the same ExportTraceServiceRequest as the SDK's,
    and (both writing fields in number order) is the very same bytes."""
    ours, theirs = _both(spans)
    assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(
        theirs
    )
    assert ours == theirs


def test_the_batch_covers_what_it_claims(spans: list[ReadableSpan]) -> None:
    """The fixture really has what the equality test is trusted to cover."""
    request = ExportTraceServiceRequest.FromString(encode_spans(spans))
    assert len(request.resource_spans) == 2  # the equal resource joined the first group
    scopes = [
        [(s.scope.name, s.schema_url) for s in rs.scope_spans] for rs in request.resource_spans
    ]
    assert scopes == [  # in order of first appearance; a scope's schema sets it apart
        [
            ("telemetry.db", ""),
            ("telemetry.server", ""),
            ("telemetry.server", "https://opentelemetry.io/schemas/1.11.0"),
        ],
        [("jobs", "")],
    ]
    flat = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert {s.kind for s in flat} == {1, 2, 3, 4, 5}
    assert {s.status.code for s in flat} == {0, 1, 2}
    assert {s.flags for s in flat} == {0x100, 0x300}  # local and remote parents
    root = next(s for s in flat if s.name == "GET /api/reviews/{review_id}")
    assert root.trace_state == "vendor=opaque,other=x1"
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in root.attributes}
    assert set(kinds.values()) == {
        "string_value",
        "bool_value",
        "int_value",
        "double_value",
        "bytes_value",
        "array_value",
        "kvlist_value",
        None,
    }
    over = next(s for s in flat if s.name == "over the limits")
    assert (over.dropped_attributes_count, over.dropped_events_count) == (2, 1)
    assert over.dropped_links_count == 1
    assert over.events[0].dropped_attributes_count == 1
    assert over.links[0].dropped_attributes_count == 1


def test_nan_and_one_span_batches_are_the_same_bytes(storage: str) -> None:
    """NaN (never equal to itself, so only bytes can compare it), and each span of a
    small batch alone: the same bytes as the SDK's."""
    collect = _Collect()
    tracer = _provider(collect, Resource({})).get_tracer("t")
    with tracer.start_as_current_span("nan", attributes={"nan": float("nan")}):
        pass
    with tracer.start_as_current_span("plain"):
        pass
    for span in collect.spans:
        ours, theirs = _both([span])
        assert ours == theirs
    assert _both([]) == (b"", b"")


def test_values_neither_can_encode_are_left_out_alike(
    storage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An int beyond int64 or a lone surrogate costs its own attribute, logged; the
    rest of the span is exported, as with the SDK."""
    collect = _Collect()
    tracer = _provider(collect, Resource({})).get_tracer("t")
    with tracer.start_as_current_span(
        "odd", attributes={"big": 2**64, "ok": 1, "surrogate": "\ud800", "seq": [2**70]}
    ):
        pass
    with caplog.at_level(logging.ERROR, "opentelemetry.exporter.otlp.proto.common._internal"):
        ours, theirs = _both(collect.spans)
    assert ours == theirs
    (span,) = ExportTraceServiceRequest.FromString(ours).resource_spans[0].scope_spans[0].spans
    assert [kv.key for kv in span.attributes] == ["ok"]
    assert sum("Failed to encode key" in r.getMessage() for r in caplog.records) == 6  # 3 each


# Every tag constant of telemetry.otlp_encoding: the message and field it names.
TAGS = {
    "_REQUEST_RESOURCE_SPANS": (ExportTraceServiceRequest, "resource_spans"),
    "_RS_RESOURCE": (trace_pb2.ResourceSpans, "resource"),
    "_RS_SCOPE_SPANS": (trace_pb2.ResourceSpans, "scope_spans"),
    "_RS_SCHEMA_URL": (trace_pb2.ResourceSpans, "schema_url"),
    "_RESOURCE_ATTRIBUTES": (resource_pb2.Resource, "attributes"),
    "_SS_SCOPE": (trace_pb2.ScopeSpans, "scope"),
    "_SS_SPANS": (trace_pb2.ScopeSpans, "spans"),
    "_SS_SCHEMA_URL": (trace_pb2.ScopeSpans, "schema_url"),
    "_SCOPE_NAME": (common_pb2.InstrumentationScope, "name"),
    "_SCOPE_VERSION": (common_pb2.InstrumentationScope, "version"),
    "_SCOPE_ATTRIBUTES": (common_pb2.InstrumentationScope, "attributes"),
    "_SPAN_TRACE_ID": (trace_pb2.Span, "trace_id"),
    "_SPAN_SPAN_ID": (trace_pb2.Span, "span_id"),
    "_SPAN_TRACE_STATE": (trace_pb2.Span, "trace_state"),
    "_SPAN_PARENT_SPAN_ID": (trace_pb2.Span, "parent_span_id"),
    "_SPAN_NAME": (trace_pb2.Span, "name"),
    "_SPAN_KIND": (trace_pb2.Span, "kind"),
    "_SPAN_START_TIME": (trace_pb2.Span, "start_time_unix_nano"),
    "_SPAN_END_TIME": (trace_pb2.Span, "end_time_unix_nano"),
    "_SPAN_ATTRIBUTES": (trace_pb2.Span, "attributes"),
    "_SPAN_DROPPED_ATTRIBUTES": (trace_pb2.Span, "dropped_attributes_count"),
    "_SPAN_EVENTS": (trace_pb2.Span, "events"),
    "_SPAN_DROPPED_EVENTS": (trace_pb2.Span, "dropped_events_count"),
    "_SPAN_LINKS": (trace_pb2.Span, "links"),
    "_SPAN_DROPPED_LINKS": (trace_pb2.Span, "dropped_links_count"),
    "_SPAN_STATUS": (trace_pb2.Span, "status"),
    "_SPAN_FLAGS": (trace_pb2.Span, "flags"),
    "_EVENT_TIME": (trace_pb2.Span.Event, "time_unix_nano"),
    "_EVENT_NAME": (trace_pb2.Span.Event, "name"),
    "_EVENT_ATTRIBUTES": (trace_pb2.Span.Event, "attributes"),
    "_EVENT_DROPPED_ATTRIBUTES": (trace_pb2.Span.Event, "dropped_attributes_count"),
    "_LINK_TRACE_ID": (trace_pb2.Span.Link, "trace_id"),
    "_LINK_SPAN_ID": (trace_pb2.Span.Link, "span_id"),
    "_LINK_ATTRIBUTES": (trace_pb2.Span.Link, "attributes"),
    "_LINK_DROPPED_ATTRIBUTES": (trace_pb2.Span.Link, "dropped_attributes_count"),
    "_LINK_FLAGS": (trace_pb2.Span.Link, "flags"),
    "_STATUS_MESSAGE": (trace_pb2.Status, "message"),
    "_STATUS_CODE": (trace_pb2.Status, "code"),
    "_KV_KEY": (common_pb2.KeyValue, "key"),
    "_KV_VALUE": (common_pb2.KeyValue, "value"),
    "_LIST_VALUES": (common_pb2.ArrayValue, "values"),
    "_ANY_STRING": (common_pb2.AnyValue, "string_value"),
    "_ANY_BOOL": (common_pb2.AnyValue, "bool_value"),
    "_ANY_INT": (common_pb2.AnyValue, "int_value"),
    "_ANY_DOUBLE": (common_pb2.AnyValue, "double_value"),
    "_ANY_ARRAY": (common_pb2.AnyValue, "array_value"),
    "_ANY_KVLIST": (common_pb2.AnyValue, "kvlist_value"),
    "_ANY_BYTES": (common_pb2.AnyValue, "bytes_value"),
}
FIXED_LENGTH = {"_SPAN_TRACE_ID": 16, "_LINK_TRACE_ID": 16}  # the rest with a length: 8
WIRE_TYPES = {
    FieldDescriptor.TYPE_DOUBLE: 1,
    FieldDescriptor.TYPE_FIXED64: 1,
    FieldDescriptor.TYPE_STRING: 2,
    FieldDescriptor.TYPE_BYTES: 2,
    FieldDescriptor.TYPE_MESSAGE: 2,
    FieldDescriptor.TYPE_FIXED32: 5,
}


def _tag(message: Any, field: str) -> bytes:
    descriptor = message.DESCRIPTOR.fields_by_name[field]
    value = descriptor.number << 3 | WIRE_TYPES.get(descriptor.type, 0)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


def test_every_tag_is_the_proto_definitions() -> None:
    """Each tag constant is field number and wire type of the field it is named for,
    read from opentelemetry-proto's descriptors; none is left unchecked."""
    assert common_pb2.KeyValueList.DESCRIPTOR.fields_by_name["values"].number == 1
    constants = {
        name
        for name, value in vars(otlp_encoding).items()
        if name.startswith(("_REQUEST_", "_RS_", "_RESOURCE_", "_SS_", "_SCOPE_", "_SPAN_"))
        or name.startswith(("_EVENT_", "_LINK_", "_STATUS_", "_KV_", "_LIST_", "_ANY_"))
        if isinstance(value, bytes)
    }
    derived = {"_SPAN_LOCAL_PARENT", "_SPAN_REMOTE_PARENT", "_LINK_LOCAL", "_LINK_REMOTE"}
    assert constants - derived == set(TAGS)
    for name, (message, field) in TAGS.items():
        constant = getattr(otlp_encoding, name)
        tag = _tag(message, field)
        if constant != tag:  # a tag followed by its fixed length (ids)
            assert constant == tag + bytes([FIXED_LENGTH.get(name, 8)]), name


# -- the exporter --------------------------------------------------------------------


def test_sdk_internals_the_exporter_and_encoder_rely_on_are_unchanged() -> None:
    """Fails when an SDK upgrade changes what OtlpHttpSpanExporter.export copies or
    uses, or where spans keep their data: re-read the SDK and update both, then this."""
    source = inspect.getsource(OTLPSpanExporter.export)
    assert hashlib.sha256(source.encode()).hexdigest() == (
        "0968825cd72fb0bde91a72f0607e4e71d622816a087107f6a7053d679aa02f8e"
    ), "OTLPSpanExporter.export changed: compare it with OtlpHttpSpanExporter.export"
    assert "encode_spans(spans).SerializePartialToString()" in source
    exporter = OtlpHttpSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert missing_sdk_members(exporter) == []
        assert "data" in inspect.signature(exporter._client.export).parameters
        del exporter._client
        assert missing_sdk_members(exporter) == ["_client"]
    finally:
        exporter._shutdown = True
    assert otlp_encoding._READ_SPAN_STORAGE, "spans keep their data elsewhere now"


def test_http_protobuf_uses_our_exporter_and_grpc_the_sdks() -> None:
    """The default protocol sends our bytes; gRPC is left as it was."""
    http = otlp_exporter(TracingConfig())
    grpc = otlp_exporter(TracingConfig(protocol="grpc", endpoint="http://127.0.0.1:4317"))
    try:
        assert type(http) is OtlpHttpSpanExporter
        assert not isinstance(grpc, OTLPSpanExporter)
    finally:
        http.shutdown()
        grpc.shutdown()


def test_exporter_sends_our_bytes_gzipped_and_reports_a_refusal(
    spans: list[ReadableSpan],
) -> None:
    """Through the SDK's client (compression, headers, status handling), a collector
    receives every span; a collector answering 500 makes the export a failure."""
    with OtlpHttpReceiver() as receiver:
        exporter = OtlpHttpSpanExporter(
            endpoint=receiver.endpoint,
            headers={"x-tenant": "t1"},
            compression=Compression.Gzip,
            timeout=5,
        )
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert len(receiver.spans) == len(spans)
        (headers,) = receiver.headers
        assert headers["content-encoding"] == "gzip"
        assert headers["x-tenant"] == "t1"
        receiver.status = 500
        assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
        exporter.shutdown()
        assert exporter.export(spans[:1]) is SpanExportResult.FAILURE
