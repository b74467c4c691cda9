"""The throughput configurations: one no-I/O route, ``GET /api/bench``, five ways.

    python -m tests.benchmarks.apps CONFIG --port N [--sink http://127.0.0.1:P]

* ``bare``: plain aiohttp, nothing else.
* ``off``, ``sample10``, ``sample100``: hitl's telemetry wired exactly as
  ``service.app.create_app`` wires it (``telemetry.setup`` with hitl's settings,
  problem mapper and error labels, plus ``ReviewMetrics`` on the same registry), with
  tracing disabled (``OTEL_SDK_DISABLED``), sampling 10 %, or sampling 100 %
  (the default ``parentbased_always_on``), exporting over OTLP/HTTP to the sink.
* ``stock``: the peer of the issue, what the packages' READMEs show: the contrib
  ``AioHttpServerInstrumentor().instrument()`` with a ``BatchSpanProcessor`` and
  ``OTLPSpanExporter`` to the same sink, one aioprometheus counter and histogram in a
  middleware, and one structlog JSON line per request.

Every configuration answers the same JSON body with ``web.json_response``, runs on
plain asyncio (no uvloop: hitl does not use it) with aiohttp's access log off, and
writes its logs to stdout, which the harness sends to a file: JSON lines are really
rendered and written, as in production.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler

CONFIGS = ("bare", "off", "sample10", "sample100", "stock")
TRACED = ("sample10", "sample100", "stock")
ROUTE = "/api/bench"
BODY = {"status": "ok"}


async def bench(request: web.Request) -> web.Response:
    return web.json_response(BODY)


def bare_app() -> web.Application:
    app = web.Application()
    app.router.add_get(ROUTE, bench)
    return app


def otel_env(config: str, sink: str | None) -> dict[str, str]:
    """The OTEL_* variables of one of our configurations (nothing from the caller's
    environment: a stray OTEL_* there must not change what is measured)."""
    if config == "off":
        return {"OTEL_SDK_DISABLED": "true"}
    if sink is None:
        raise SystemExit(f"{config} exports spans: --sink is required")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": sink, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    if config == "sample10":
        env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    return env


def ours_app(env: Mapping[str, str]) -> web.Application:
    """hitl's telemetry on a bare route, wired as ``service.app.create_app`` wires it."""
    import telemetry
    from service.api.problems import APP_ERROR_LABELS, problem_for
    from service.config import telemetry_settings
    from service.keys import REVIEW_METRICS
    from service.metrics import ReviewMetrics

    settings = telemetry_settings(log_format="json", log_level="INFO", otel_env=dict(env))
    app = web.Application()
    metrics = telemetry.setup(
        app, settings, problem_mapper=problem_for, app_error_labels=APP_ERROR_LABELS
    )
    app[REVIEW_METRICS] = ReviewMetrics(metrics, settings)
    app.router.add_get(ROUTE, bench)
    return app


def stock_app(sink: str) -> web.Application:
    """The peer: each package used the way its README shows, nothing of ours."""
    import structlog
    from aioprometheus.collectors import Counter, Histogram, Registry
    from aioprometheus.renderer import render
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.aiohttp_server import AioHttpServerInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "stock-peer"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink}/v1/traces")))
    trace.set_tracer_provider(provider)
    # Replaces web.Application with a subclass that inserts the tracing middleware,
    # so the app must be built after this call, through the module attribute.
    AioHttpServerInstrumentor().instrument()

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    log = structlog.get_logger()
    registry = Registry()
    requests_total = Counter("requests_total", "Requests by route and status.", registry=registry)
    duration = Histogram("request_duration_seconds", "Request latency.", registry=registry)

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        response = await handler(request)
        elapsed = time.perf_counter() - started
        route = request.match_info.route.resource
        path = route.canonical if route is not None else "unmatched"
        requests_total.inc({"route": path, "status": str(response.status)})
        duration.observe({"route": path}, elapsed)
        log.info(
            "request",
            method=request.method,
            path=request.path,
            status=response.status,
            duration_ms=round(elapsed * 1000, 3),
        )
        return response

    async def metrics(request: web.Request) -> web.Response:
        body, headers = render(registry, request.headers.getall("Accept", []))
        return web.Response(body=body, headers=headers)

    async def flush_spans(_app: web.Application) -> None:
        provider.shutdown()

    app = web.Application(middlewares=[observe])
    app.router.add_get(ROUTE, bench)
    app.router.add_get("/metrics", metrics)
    app.on_cleanup.append(flush_spans)
    return app


def build(config: str, sink: str | None) -> web.Application:
    if config == "bare":
        return bare_app()
    if config == "stock":
        if sink is None:
            raise SystemExit("stock exports spans: --sink is required")
        return stock_app(sink)
    return ours_app(otel_env(config, sink))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("config", choices=CONFIGS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sink", help="OTLP/HTTP base URL, e.g. http://127.0.0.1:4318")
    args = parser.parse_args()
    web.run_app(
        build(args.config, args.sink),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
