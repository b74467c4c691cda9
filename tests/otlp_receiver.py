"""A tiny OTLP trace receiver for tests: HTTP/protobuf and gRPC, plus "down" and "hung".

It decodes real ``ExportTraceServiceRequest`` protobufs with opentelemetry-proto, so a
test sees exactly what a collector (and Jaeger behind it) would. Every server runs on
its own thread, independent of the test's event loop: an exporter blocking in a
flush can never deadlock against it.

    with OtlpHttpReceiver() as receiver:
        env = receiver.otel_env()            # OTEL_* pointing at it
        ...
        spans = await receiver.wait_for_spans(lambda s: len(s) >= 3)
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

__all__ = [
    "HungCollector",
    "OtlpGrpcReceiver",
    "OtlpHttpReceiver",
    "ReceivedSpan",
    "closed_port",
]

# opentelemetry.proto.trace.v1.Span.SpanKind / Status.StatusCode numbers.
KIND_NAMES = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}
STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(items: Sequence[KeyValue]) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


@dataclass(frozen=True)
class ReceivedSpan:
    """One decoded span, ids as lowercase hex (the form logs and headers use)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    status: str
    status_message: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    events: list[dict[str, Any]] = field(default_factory=list)

    def event_names(self) -> list[str]:
        return [e["name"] for e in self.events]


def decode_request(payload: bytes) -> list[ReceivedSpan]:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(payload)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        kind=KIND_NAMES.get(span.kind, str(span.kind)),
                        status=STATUS_NAMES.get(span.status.code, str(span.status.code)),
                        status_message=span.status.message,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        events=[
                            {"name": e.name, "attributes": _attributes(e.attributes)}
                            for e in span.events
                        ],
                    )
                )
    return spans


class _SpanStore:
    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self.requests = 0
        self.headers: list[dict[str, str]] = []

    def add(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        with self._lock:
            self._spans.extend(spans)
            self.requests += 1
            self.headers.append(headers)

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def clear(self) -> None:
        with self._lock:
            self._spans.clear()

    async def wait_for_spans(
        self,
        until: Callable[[list[ReceivedSpan]], bool] | int = 1,
        timeout: float = 10.0,
    ) -> list[ReceivedSpan]:
        """Poll until ``until(spans)`` holds (or at least ``until`` spans arrived)."""
        check = (lambda spans: len(spans) >= until) if isinstance(until, int) else until
        deadline = time.monotonic() + timeout
        while True:
            spans = self.spans
            if check(spans):
                return spans
            if time.monotonic() > deadline:
                names = [s.name for s in spans]
                raise AssertionError(f"receiver timed out after {timeout}s; got {names}")
            await asyncio.sleep(0.02)


class _Server(_SpanStore):
    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class OtlpHttpReceiver(_Server):
    """OTLP/HTTP (protobuf) on 127.0.0.1:<free port>/v1/traces."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/traces"

    def otel_env(self, **extra: str) -> dict[str, str]:
        """OTEL_* for an app exporting here quickly (50 ms batches)."""
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        env.update(extra)
        return env

    def start(self) -> None:
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                store.add(decode_request(body), {k.lower(): v for k, v in self.headers.items()})
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(store.status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None  # keep test output to what the app prints

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


class _GrpcTraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: _SpanStore) -> None:
        self._store = store

    def Export(self, request: Any, context: Any) -> Any:  # the generated stub's naming
        metadata = {k: v for k, v in context.invocation_metadata()}
        self._store.add(decode_request(request.SerializeToString()), metadata)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpGrpcReceiver(_Server):
    """OTLP/gRPC on 127.0.0.1:<free port> (insecure)."""

    def __init__(self) -> None:
        super().__init__()
        self._server: Any = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def otel_env(self, **extra: str) -> dict[str, str]:
        env = {
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        env.update(extra)
        return env

    def start(self) -> None:
        import grpc

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            _GrpcTraceService(self), self._server
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None


class HungCollector:
    """Accepts TCP connections and never answers: the slowest possible collector.

    ``stop()`` closes every accepted connection, releasing an exporter stuck on it.
    """

    def __init__(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)  # held open, never read, never answered

    def __enter__(self) -> HungCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self._listener.close()


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: the collector is down (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    yield port
