"""The OTLP/HTTP sink every traced configuration exports to: accepts and counts spans.

    python -m tests.benchmarks.sink --port N

``POST /v1/traces`` decodes the ``ExportTraceServiceRequest`` (opentelemetry-proto's
C-backed parser: a 512-span batch takes well under a millisecond) and answers 200 with
an empty ``ExportTraceServiceResponse``; ``GET /count`` returns ``{"spans", "requests",
"bytes"}`` so the report shows how many spans each run really delivered. Decoding,
rather than trusting the exporter, is what proves the export happened.
"""

from __future__ import annotations

import argparse
import gzip

from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

COUNTS = web.AppKey("counts", dict[str, int])
EMPTY_RESPONSE = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()


def count_spans(payload: bytes) -> int:
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(payload)
    return sum(
        len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans
    )


async def receive(request: web.Request) -> web.Response:
    body = await request.read()
    if request.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    counts = request.app[COUNTS]
    counts["spans"] += count_spans(body)
    counts["requests"] += 1
    counts["bytes"] += len(body)
    return web.Response(body=EMPTY_RESPONSE, content_type="application/x-protobuf")


async def count(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


def create_app() -> web.Application:
    # Batches of 512 spans are ~0.5 MB; aiohttp's 1 MiB default would be too tight
    # for a larger OTEL_BSP_MAX_EXPORT_BATCH_SIZE.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = {"spans": 0, "requests": 0, "bytes": 0}
    app.router.add_post("/v1/traces", receive)
    app.router.add_get("/count", count)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
