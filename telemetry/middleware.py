"""The one request middleware, ``GET /metrics`` and the service_up signals.

Every concern keeps its module — server spans (server_spans.py), request id and
access line (context.py), RED/SLO metrics (metrics.py), problem responses
(errors.py) — and this middleware calls them in the order the design's middleware
stack had, outermost first: span, request context, metrics, errors. One middleware
instead of four because each aiohttp middleware layer costs about as much as the
work of a small one, on every request (docs/benchmarks.md).

The order inside a request:

1. request id bound for every line the request logs; the server span started and
   made current (or, for a probe, instrumentation suppressed);
2. the handler; what it raises becomes a problem+json response (errors.py), except
   an HTTP redirect (re-raised as aiohttp expects) and a cancellation;
3. in ``finally``, on one ``perf_counter`` clock: the RED/SLO metrics, then the
   access line (while the span is still current, so it carries its ids), then the
   span's HTTP status and end.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .context import AccessLog, request_id_for
from .errors import ErrorResponder
from .keys import REQUEST_DURATION, REQUEST_ID, RESPONSE_BODY_BYTES
from .logging import bind_request_id, unbind_request_id
from .metrics import Metrics
from .requests import (
    request_body_size,
    response_body_size,
    route_template,
    status_of_exception,
)
from .server_spans import ServerSpans

__all__ = ["METRICS_PATH", "request_middleware", "setup_metrics"]

log = structlog.get_logger("telemetry.middleware")

METRICS_PATH: Final = "/metrics"



def request_middleware(
    metrics: Metrics,
    access_log: AccessLog,
    errors: ErrorResponder,
    spans: ServerSpans | None,
) -> Middleware:
    """Span, request context, RED/SLO metrics and problem responses for every request.

    aiohttp runs each request in a task of its own, with a copy of the connection's
    context (aiohttp#3406), so what a request binds (its id, anything a handler
    binds) never leaks into the next request: only the id is unbound at the end.
    """

    @web.middleware
    async def observe_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_for(request)
        request[REQUEST_ID] = request_id
        bound = bind_request_id(request_id)
        route = route_template(request)
        scope = spans.start(request, route) if spans is not None else None
        response: web.StreamResponse | None = None
        status = 500
        span_status: int | None = 500
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status < 400:
                    raise  # a redirect: aiohttp answers it
                response = errors.for_http_exception(request, exc)
            except Exception as exc:
                response = errors.for_exception(request, exc)
            status = span_status = response.status
            return response
        except BaseException as exc:
            status = span_status = status_of_exception(exc)
            if isinstance(exc, web.HTTPException):
                response = exc
            elif isinstance(exc, asyncio.CancelledError):
                span_status = None  # nobody was answered: the span gets no HTTP status
            raise
        finally:
            duration = time.perf_counter() - started
            request[REQUEST_DURATION] = duration
            # Streamed bodies were counted by the hook the prepare signal installed.
            counter = request.get(RESPONSE_BODY_BYTES)
            written = 0 if counter is None else counter.count
            _record(metrics, access_log, request, route, status, duration, response, written)
            if scope is not None and spans is not None:
                spans.finish(scope, span_status)
            # Lines written after the request (aiohttp's own access log, if enabled)
            # are not the request's: they carry neither its id nor its span.
            unbind_request_id(bound)

    return observe_request


def _record(
    metrics: Metrics,
    access_log: AccessLog,
    request: web.Request,
    route: str,
    status: int,
    duration: float,
    response: web.StreamResponse | None,
    written: int,
) -> None:
    try:
        # Sizes are read once; the metrics and the access line report the same numbers.
        request_size = request_body_size(request)
        response_size = (
            0 if response is None else response_body_size(response, written, method=request.method)
        )
        metrics.record_request(
            method=request.method,
            endpoint=route,
            status=status,
            duration=duration,
            request_size=request_size,
            response_size=response_size,
        )
        access_log.write(request, route, status, duration, request_size, response_size)
    except Exception:
        # Telemetry must never turn a served request into a failure.
        log.exception("request_telemetry_failed", path=request.path)


def metrics_handler(metrics: Metrics) -> Handler:
    """GET /metrics: refresh collector-fed gauges, then render for the Accept header."""

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        body, headers = await metrics.render(request.headers.getall(hdrs.ACCEPT, []))
        return web.Response(body=body, headers=headers)

    return serve_metrics


def setup_metrics(app: web.Application, metrics: Metrics) -> None:
    """Attach ``GET /metrics`` and the service_up signals."""
    app.router.add_get(METRICS_PATH, metrics_handler(metrics), name="metrics")

    async def mark_up(app: web.Application) -> None:
        metrics.set_service_up(True)

    async def mark_down(app: web.Application) -> None:
        metrics.set_service_up(False)

    # on_startup runs after cleanup_ctx has opened every resource (aiohttp registers
    # cleanup_ctx first), so 1 means "ready to serve"; on_shutdown is the first
    # signal of a graceful stop, before connections are closed.
    app.on_startup.append(mark_up)
    app.on_shutdown.append(mark_down)
