"""ReadableSpans straight to OTLP ``ExportTraceServiceRequest`` bytes.

The SDK's encoder (``opentelemetry.exporter.otlp.proto.common.trace_encoder``) builds
a protobuf message object per span, per attribute and per value, and hashes each
span's Resource (a JSON dump of its attributes) to group them; at 100 % sampling that
was ~18 % of the process's CPU, on the export thread but holding the GIL. This module
writes the same protobuf wire format by hand. The bytes mean exactly what
``encode_spans(spans).SerializeToString()`` means (the same grouping, the same fields
written and left out, the same value mapping) and, fields being written in number
order as protobuf does, are in practice the same bytes.

Field numbers come from opentelemetry-proto's ``trace.proto``, ``common.proto`` and
``resource.proto``; ``tests/telemetry/test_otlp_encoding.py`` checks each tag below
against the generated descriptors, and the output against the SDK's. Nothing here
imports ``opentelemetry.proto``: not building its objects is the point.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind

__all__ = ["encode_spans"]

# The SDK encoder's own logger: an attribute it cannot encode is reported where the
# SDK reports it, so exporter_log_capture keeps the line as quiet as the SDK's.
_logger = logging.getLogger("opentelemetry.exporter.otlp.proto.common._internal")

_BYTE: Final = tuple(bytes((i,)) for i in range(0x80))  # one-byte varints
_pack_fixed64: Final = struct.Struct("<Q").pack
_pack_fixed32: Final = struct.Struct("<I").pack
_pack_double: Final = struct.Struct("<d").pack
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64: Final = (1 << 64) - 1

# Tags: field_number << 3 | wire type (0 varint, 1 fixed64, 2 length-delimited,
# 5 fixed32). The field number is on the right.
_REQUEST_RESOURCE_SPANS: Final = b"\x0a"  # ExportTraceServiceRequest.resource_spans 1
_RS_RESOURCE: Final = b"\x0a"  # ResourceSpans.resource 1
_RS_SCOPE_SPANS: Final = b"\x12"  # ResourceSpans.scope_spans 2
_RS_SCHEMA_URL: Final = b"\x1a"  # ResourceSpans.schema_url 3
_RESOURCE_ATTRIBUTES: Final = b"\x0a"  # Resource.attributes 1
_SS_SCOPE: Final = b"\x0a"  # ScopeSpans.scope 1
_SS_SPANS: Final = b"\x12"  # ScopeSpans.spans 2
_SS_SCHEMA_URL: Final = b"\x1a"  # ScopeSpans.schema_url 3
_SCOPE_NAME: Final = b"\x0a"  # InstrumentationScope.name 1
_SCOPE_VERSION: Final = b"\x12"  # InstrumentationScope.version 2
_SCOPE_ATTRIBUTES: Final = b"\x1a"  # InstrumentationScope.attributes 3
_SPAN_TRACE_ID: Final = b"\x0a\x10"  # Span.trace_id 1, and its length: 16
_SPAN_SPAN_ID: Final = b"\x12\x08"  # Span.span_id 2, 8 bytes
_SPAN_TRACE_STATE: Final = b"\x1a"  # Span.trace_state 3
_SPAN_PARENT_SPAN_ID: Final = b"\x22\x08"  # Span.parent_span_id 4, 8 bytes
_SPAN_NAME: Final = b"\x2a"  # Span.name 5
_SPAN_KIND: Final = b"\x30"  # Span.kind 6
_SPAN_START_TIME: Final = b"\x39"  # Span.start_time_unix_nano 7, fixed64
_SPAN_END_TIME: Final = b"\x41"  # Span.end_time_unix_nano 8, fixed64
_SPAN_ATTRIBUTES: Final = b"\x4a"  # Span.attributes 9
_SPAN_DROPPED_ATTRIBUTES: Final = b"\x50"  # Span.dropped_attributes_count 10
_SPAN_EVENTS: Final = b"\x5a"  # Span.events 11
_SPAN_DROPPED_EVENTS: Final = b"\x60"  # Span.dropped_events_count 12
_SPAN_LINKS: Final = b"\x6a"  # Span.links 13
_SPAN_DROPPED_LINKS: Final = b"\x70"  # Span.dropped_links_count 14
_SPAN_STATUS: Final = b"\x7a"  # Span.status 15
_SPAN_FLAGS: Final = b"\x85\x01"  # Span.flags 16, fixed32 (tag 133: two varint bytes)
_EVENT_TIME: Final = b"\x09"  # Span.Event.time_unix_nano 1, fixed64
_EVENT_NAME: Final = b"\x12"  # Span.Event.name 2
_EVENT_ATTRIBUTES: Final = b"\x1a"  # Span.Event.attributes 3
_EVENT_DROPPED_ATTRIBUTES: Final = b"\x20"  # Span.Event.dropped_attributes_count 4
_LINK_TRACE_ID: Final = b"\x0a\x10"  # Span.Link.trace_id 1, 16 bytes
_LINK_SPAN_ID: Final = b"\x12\x08"  # Span.Link.span_id 2, 8 bytes
# Span.Link.trace_state (3) is never written: the SDK encoder leaves it out.
_LINK_ATTRIBUTES: Final = b"\x22"  # Span.Link.attributes 4
_LINK_DROPPED_ATTRIBUTES: Final = b"\x28"  # Span.Link.dropped_attributes_count 5
_LINK_FLAGS: Final = b"\x35"  # Span.Link.flags 6, fixed32
_STATUS_MESSAGE: Final = b"\x12"  # Status.message 2
_STATUS_CODE: Final = b"\x18"  # Status.code 3
_KV_KEY: Final = b"\x0a"  # KeyValue.key 1
_KV_VALUE: Final = b"\x12"  # KeyValue.value 2
_LIST_VALUES: Final = b"\x0a"  # ArrayValue.values 1, KeyValueList.values 1
# AnyValue is a oneof: unlike a plain proto3 field, a zero value is still written.
_ANY_STRING: Final = b"\x0a"  # AnyValue.string_value 1
_ANY_BOOL: Final = b"\x10"  # AnyValue.bool_value 2
_ANY_INT: Final = b"\x18"  # AnyValue.int_value 3
_ANY_DOUBLE: Final = b"\x21"  # AnyValue.double_value 4, fixed64
_ANY_ARRAY: Final = b"\x2a"  # AnyValue.array_value 5
_ANY_KVLIST: Final = b"\x32"  # AnyValue.kvlist_value 6
_ANY_BYTES: Final = b"\x3a"  # AnyValue.bytes_value 7

# SpanFlags, as the SDK's _span_flags sets them: it always says whether the parent (or
# the linked span) is remote, never the W3C trace flags.
_FLAG_HAS_IS_REMOTE: Final = 0x100
_FLAG_IS_REMOTE: Final = 0x200
_SPAN_LOCAL_PARENT: Final = _SPAN_FLAGS + _pack_fixed32(_FLAG_HAS_IS_REMOTE)
_SPAN_REMOTE_PARENT: Final = _SPAN_FLAGS + _pack_fixed32(_FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE)
_LINK_LOCAL: Final = _LINK_FLAGS + _pack_fixed32(_FLAG_HAS_IS_REMOTE)
_LINK_REMOTE: Final = _LINK_FLAGS + _pack_fixed32(_FLAG_HAS_IS_REMOTE | _FLAG_IS_REMOTE)

# Span.kind is the API's kind + 1 (0 is SPAN_KIND_UNSPECIFIED). Keyed by the member's
# _value_: an Enum's __hash__ and .value are Python-level calls, once per span.
_KINDS: Final = {kind._value_: _SPAN_KIND + _BYTE[kind._value_ + 1] for kind in SpanKind}
# The SDK always writes Status, empty or not; without a message it is one of three
# (by StatusCode._value_; UNSET is code 0, the default, so not written).
_STATUS_WITHOUT_MESSAGE: Final = {
    0: _SPAN_STATUS + b"\x00",
    1: _SPAN_STATUS + b"\x02" + _STATUS_CODE + b"\x01",
    2: _SPAN_STATUS + b"\x02" + _STATUS_CODE + b"\x02",
}


def _span_storage_readable() -> bool:
    """Whether spans keep attributes, events and links where SDK 1.45 keeps them.

    ``ReadableSpan``'s public properties copy under a lock: ``attributes`` wraps the
    ``BoundedAttributes`` in a MappingProxyType whose ``items()`` is a Python generator
    calling a Python ``__getitem__`` per key; ``events`` and ``links`` copy a locked
    ``BoundedList``. For server spans of ~15 attributes that was a quarter of this
    encoder's time. An ended span's storage is never written again (the SDK ignores
    writes after ``end()``), so reading it without the lock is safe. Checked once: if
    a later SDK moves its storage, the encoder falls back to the public properties
    (and ``test_otlp_encoding`` fails, to have this looked at).
    """
    try:
        attributes = BoundedAttributes(attributes={"key": "value"})
        event = Event("probe")
        events: BoundedList[Event] = BoundedList.from_seq(None, (event,))
        links: BoundedList[Link] = BoundedList.from_seq(None, ())
        span = ReadableSpan("probe", attributes=attributes, events=events, links=links)
        return (
            span._attributes is attributes
            and attributes._dict == {"key": "value"}
            and span._events is events
            and span._links is links
            and list(events._dq) == [event]  # type: ignore[attr-defined]  # unannotated in the SDK
            and not links._dq  # type: ignore[attr-defined]
        )
    except Exception:
        return False


_READ_SPAN_STORAGE: Final = _span_storage_readable()


def _varint(value: int) -> bytes:
    """An unsigned varint (callers inline the one-byte case where it is hot)."""
    if value < 0x80:
        return _BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _int64(value: int) -> bytes:
    """An int64 varint: a negative number is its 64-bit two's complement (10 bytes)."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        # What protobuf raises for the SDK's message: the attribute is left out.
        raise ValueError(f"Value out of range: {value}")
    return _varint(value & _UINT64)


def _delimited(tag: bytes, body: bytes) -> bytes:
    size = len(body)
    return tag + (_BYTE[size] if size < 0x80 else _varint(size)) + body


def _any_value(value: Any) -> bytes:
    """An AnyValue's body, mapping types exactly as the SDK's ``_encode_value`` does:
    the same isinstance ladder in the same order (bool before int), None as an empty
    AnyValue, an unknown type as an error."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return _ANY_BOOL + _BYTE[value]
    if isinstance(value, str):
        return _delimited(_ANY_STRING, value.encode())
    if isinstance(value, int):
        return _ANY_INT + _int64(value)
    if isinstance(value, float):
        return _ANY_DOUBLE + _pack_double(value)
    if isinstance(value, bytes):
        return _delimited(_ANY_BYTES, value)
    if isinstance(value, Sequence):
        return _delimited(
            _ANY_ARRAY, b"".join([_delimited(_LIST_VALUES, _any_value(v)) for v in value])
        )
    if isinstance(value, Mapping):
        pairs = [_delimited(_LIST_VALUES, _key_value(str(k), v)) for k, v in value.items()]
        return _delimited(_ANY_KVLIST, b"".join(pairs))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_head(key: str) -> bytes:
    """KeyValue.key and the tag of KeyValue.value: the bytes all values of a key share."""
    return (_delimited(_KV_KEY, key.encode()) if key else b"") + _KV_VALUE


def _key_value(key: str, value: Any) -> bytes:
    return _key_head(key) + _delimited(b"", _any_value(value))


class _Batch:
    """What one call works out once and reuses for every span: per attribute key, the
    bytes of ``KeyValue.key`` and the tag of its value; per span name, its field; per
    (tag, key, value) of a str or int attribute, the whole field — most attributes of
    a batch's server spans (method, scheme, host, route, user agent, status) repeat."""

    __slots__ = ("fields", "heads", "names")

    def __init__(self) -> None:
        self.heads: dict[str, tuple[bytes, int]] = {}
        self.names: dict[str, bytes] = {}
        # Keyed by the value's class too: True == 1 and hash(True) == hash(1), but a
        # bool and an int are encoded differently.
        self.fields: dict[tuple[bytes, str, type, object], bytes] = {}

    def attributes(self, tag: bytes, attributes: Mapping[str, Any], out: list[bytes]) -> None:
        """Append one ``tag`` field (a KeyValue) per attribute to ``out``.

        As in the SDK, an attribute that cannot be encoded (an int outside int64, a
        string with a lone surrogate) is logged and left out, the others kept.
        """
        fields = self.fields
        for key, value in attributes.items():
            cls = value.__class__
            if cls is str or cls is int:
                cached = fields.get((tag, key, cls, value))
                if cached is None:
                    start = len(out)
                    self._field(tag, key, value, cls, out)
                    cached = fields[(tag, key, cls, value)] = b"".join(out[start:])
                    del out[start:]
                if cached:  # empty: the value could not be encoded (logged once)
                    out.append(cached)
            else:
                self._field(tag, key, value, cls, out)

    def _field(self, tag: bytes, key: str, value: Any, cls: type, out: list[bytes]) -> None:
        heads = self.heads
        try:
            entry = heads.get(key)
            if entry is None:
                head = _key_head(key)
                entry = heads[key] = (head, len(head))
            head, head_size = entry
            if cls is str:
                raw = value.encode()
                size = len(raw)
                if head_size + size < 0x7D:  # most values: every length is one byte
                    out += (
                        tag,
                        _BYTE[head_size + size + 3],
                        head,
                        _BYTE[size + 2],
                        _ANY_STRING,
                        _BYTE[size],
                        raw,
                    )
                    return
                any_value = _ANY_STRING + _varint(size) + raw
            elif cls is int:
                any_value = _ANY_INT + (_BYTE[value] if 0 <= value < 0x80 else _int64(value))
            elif cls is float:
                any_value = _ANY_DOUBLE + _pack_double(value)
            else:
                any_value = _any_value(value)
            size = len(any_value)
            any_size = _BYTE[size] if size < 0x80 else _varint(size)
            size += head_size + len(any_size)
            out += (
                tag,
                _BYTE[size] if size < 0x80 else _varint(size),
                head,
                any_size,
                any_value,
            )
        except Exception as error:
            _logger.exception("Failed to encode key %s: %s", key, error)


def _span(span: ReadableSpan, batch: _Batch) -> bytes:
    """One Span message, fields in number order, each written when the SDK's is."""
    context = span.get_span_context()
    assert context is not None  # an SDK span always has one (the SDK's encoder fails too)
    parts = [
        _SPAN_TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _SPAN_SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    trace_state = context.trace_state
    if trace_state:
        # The SDK's rendering, not TraceState.to_header() (which it does not use).
        rendered = ",".join([f"{key}={value}" for key, value in trace_state.items()])
        parts.append(_delimited(_SPAN_TRACE_STATE, rendered.encode()))
    parent = span.parent
    if parent:
        parts += (_SPAN_PARENT_SPAN_ID, parent.span_id.to_bytes(8, "big"))
    name = span.name
    if name:
        field = batch.names.get(name)
        if field is None:
            field = batch.names[name] = _delimited(_SPAN_NAME, name.encode())
        parts.append(field)
    parts.append(_KINDS[span.kind._value_])
    start = span.start_time
    if start:
        parts += (_SPAN_START_TIME, _pack_fixed64(start))
    end = span.end_time
    if end:
        parts += (_SPAN_END_TIME, _pack_fixed64(end))

    attributes: Mapping[str, Any] | None
    events: Iterable[Event]
    links: Iterable[Link]
    if _READ_SPAN_STORAGE:  # see _span_storage_readable
        attributes, events, links = span._attributes, span._events, span._links
        if type(attributes) is BoundedAttributes:
            attributes = attributes._dict
        # BoundedList._dq is assigned in the SDK's unannotated __init__: mypy cannot see it.
        if type(events) is BoundedList:
            events = events._dq  # type: ignore[attr-defined]
        if type(links) is BoundedList:
            links = links._dq  # type: ignore[attr-defined]
    else:
        attributes, events, links = span.attributes, span.events, span.links

    if attributes:
        batch.attributes(_SPAN_ATTRIBUTES, attributes, parts)
    dropped = span.dropped_attributes
    if dropped:
        parts += (_SPAN_DROPPED_ATTRIBUTES, _varint(dropped))
    for event in events:
        parts.append(_delimited(_SPAN_EVENTS, _event(event, batch)))
    dropped = span.dropped_events
    if dropped:
        parts += (_SPAN_DROPPED_EVENTS, _varint(dropped))
    for link in links:
        parts.append(_delimited(_SPAN_LINKS, _link(link, batch)))
    dropped = span.dropped_links
    if dropped:
        parts += (_SPAN_DROPPED_LINKS, _varint(dropped))
    status = span.status
    if status is not None:
        code = status.status_code._value_
        if status.description:
            message = _delimited(_STATUS_MESSAGE, status.description.encode())
            parts.append(_delimited(_SPAN_STATUS, message + _STATUS_CODE + _varint(code)))
        else:
            parts.append(_STATUS_WITHOUT_MESSAGE[code])
    parts.append(_SPAN_REMOTE_PARENT if parent and parent.is_remote else _SPAN_LOCAL_PARENT)
    return b"".join(parts)


def _event(event: Event, batch: _Batch) -> bytes:
    parts: list[bytes] = []
    if event.timestamp:
        parts += (_EVENT_TIME, _pack_fixed64(event.timestamp))
    if event.name:
        parts.append(_delimited(_EVENT_NAME, event.name.encode()))
    if event.attributes:
        batch.attributes(_EVENT_ATTRIBUTES, event.attributes, parts)
    if event.dropped_attributes:
        parts += (_EVENT_DROPPED_ATTRIBUTES, _varint(event.dropped_attributes))
    return b"".join(parts)


def _link(link: Link, batch: _Batch) -> bytes:
    context = link.context
    parts = [
        _LINK_TRACE_ID,
        context.trace_id.to_bytes(16, "big"),
        _LINK_SPAN_ID,
        context.span_id.to_bytes(8, "big"),
    ]
    if link.attributes:
        batch.attributes(_LINK_ATTRIBUTES, link.attributes, parts)
    if link.dropped_attributes:
        parts += (_LINK_DROPPED_ATTRIBUTES, _varint(link.dropped_attributes))
    parts.append(_LINK_REMOTE if context.is_remote else _LINK_LOCAL)
    return b"".join(parts)


def _resource(resource: Resource, batch: _Batch) -> bytes:
    parts: list[bytes] = []
    if resource.attributes:
        batch.attributes(_RESOURCE_ATTRIBUTES, resource.attributes, parts)
    return b"".join(parts)


def _scope(scope: InstrumentationScope | None, batch: _Batch) -> bytes:
    if scope is None:
        return b""
    parts: list[bytes] = []
    if scope.name:
        parts.append(_delimited(_SCOPE_NAME, scope.name.encode()))
    if scope.version:
        parts.append(_delimited(_SCOPE_VERSION, scope.version.encode()))
    if scope.attributes:
        batch.attributes(_SCOPE_ATTRIBUTES, scope.attributes, parts)
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialized ``ExportTraceServiceRequest`` for ``spans``.

    Grouped as the SDK groups them: by resource, then by instrumentation scope (each
    in order of first appearance, by the SDK's own equality), the spans of a group in
    their order. A span's group is found by the identity of its resource and scope
    (every span of a provider shares its Resource, of a tracer its scope), so the
    SDK's equality (a JSON dump, for a Resource) runs once per distinct object, and
    each resource and scope is encoded once per batch, not once per span.
    """
    batch = _Batch()
    groups: dict[Resource, dict[InstrumentationScope | None, list[bytes]]] = {}
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        # The spans keep their resources and scopes alive for the whole call: no
        # id() can be reused while by_identity is in use.
        identity = (id(resource), id(scope))
        out = by_identity.get(identity)
        if out is None:
            scopes = groups.setdefault(resource, {})
            out = by_identity[identity] = scopes.setdefault(scope, [])
        body = _span(span, batch)
        size = len(body)
        out += (_SS_SPANS, _BYTE[size] if size < 0x80 else _varint(size), body)

    request: list[bytes] = []
    for resource, scopes in groups.items():
        resource_spans = [_delimited(_RS_RESOURCE, _resource(resource, batch))]
        for scope, span_fields in scopes.items():
            scope_spans = [_delimited(_SS_SCOPE, _scope(scope, batch)), *span_fields]
            if scope is not None and scope.schema_url:
                scope_spans.append(_delimited(_SS_SCHEMA_URL, scope.schema_url.encode()))
            resource_spans += (_RS_SCOPE_SPANS, _varint(sum(map(len, scope_spans))))
            resource_spans += scope_spans
        if resource.schema_url:
            resource_spans.append(_delimited(_RS_SCHEMA_URL, resource.schema_url.encode()))
        request += (_REQUEST_RESOURCE_SPANS, _varint(sum(map(len, resource_spans))))
        request += resource_spans
    return b"".join(request)
