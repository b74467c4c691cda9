"""aiohttp wiring for the metric catalogue: RED/SLO middleware, GET /metrics, service_up.

The middleware sits between request context (outer) and errors (inner): by the time a
request comes back to it, the errors middleware has already turned domain errors and
crashes into problem+json responses, so it normally just reads the response. Whatever
still escapes (an HTTPException the errors middleware re-raises, a cancellation) is
counted with the status the client will see, then re-raised.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog
from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.typedefs import Handler, Middleware

from .keys import REQUEST_DURATION, RESPONSE_BODY_BYTES
from .metrics import UNMATCHED_ENDPOINT, Metrics

__all__ = [
    "METRICS_PATH",
    "metrics_middleware",
    "request_body_size",
    "response_body_size",
    "response_bytes_counter",
    "route_template",
    "setup_metrics",
    "status_of_exception",
]

log = structlog.get_logger("telemetry.middleware")

METRICS_PATH: Final = "/metrics"

# aiohttp's AbstractStreamWriter.on_body_write: (body bytes of this write, output so far).
BodyWriteHook = Callable[[int, int], None]


# nginx's "client closed request": the handler was cancelled before it answered. Not a
# 5xx (the service did not fail) but its time still counts toward the latency SLO.
CLIENT_CLOSED_REQUEST: Final = 499


def route_template(request: web.Request) -> str:
    """The endpoint label: the matched route's template, or one value for route misses."""
    match_info = request.match_info
    resource = match_info.route.resource
    # 404 and 405 from the router carry a SystemRoute whose resource is None.
    if match_info.http_exception is not None or resource is None:
        return UNMATCHED_ENDPOINT
    return resource.canonical


def request_body_size(request: web.BaseRequest) -> int:
    """Declared Content-Length, else the body bytes received so far (chunked uploads)."""
    declared = request.content_length
    if declared is not None:
        return declared
    return request.content.total_bytes


class BodyBytesWritten:
    """Counts body bytes passing through a response writer, before content encoding.

    aiohttp's ``StreamResponse.body_length`` is the writer's output size, which includes
    the status line, headers and chunk framing; hooking the writer's ``on_body_write``
    notification gives the body bytes alone, for streamed and plain responses alike.
    """

    __slots__ = ("_chained", "count")

    def __init__(self, chained: BodyWriteHook | None) -> None:
        self.count = 0
        # Keep whatever hook was there (none on a server writer today) working.
        self._chained = chained

    def __call__(self, body_size: int, output_size: int) -> None:
        self.count += body_size
        if self._chained is not None:
            self._chained(body_size, output_size)


def response_bytes_counter(request: web.Request) -> BodyBytesWritten:
    """The request's response-body byte counter, hooked onto its writer on first use."""
    counter = request.get(RESPONSE_BODY_BYTES)
    if counter is None:
        writer: AbstractStreamWriter = request.writer
        counter = BodyBytesWritten(writer.on_body_write)
        writer.on_body_write = counter
        request[RESPONSE_BODY_BYTES] = counter
    return counter


@dataclass(slots=True)
class Outcome:
    """What a handler chain produced, as a middleware's ``finally`` needs it."""

    response: web.StreamResponse | None = None
    status: int = 500


async def call_handler(
    request: web.Request, handler: Handler, outcome: Outcome
) -> web.StreamResponse:
    """Await ``handler``, recording into ``outcome`` the response (an HTTPException is
    one) and the status the client will see, whether it returns or raises."""
    try:
        outcome.response = await handler(request)
        outcome.status = outcome.response.status
        return outcome.response
    except BaseException as exc:
        outcome.status = status_of_exception(exc)
        if isinstance(exc, web.HTTPException):
            outcome.response = exc
        raise


def status_of_exception(exc: BaseException) -> int:
    """The status a client sees for an exception escaping the handler chain."""
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    return 500


def _sends_no_body(method: str, status: int) -> bool:
    # RFC 9110: HEAD answers and 1xx/204/304 carry no body, whatever the handler set.
    return method == hdrs.METH_HEAD or status in (204, 304) or 100 <= status < 200


def response_body_size(
    response: web.StreamResponse, written: int, *, method: str | None = None
) -> int:
    """Body bytes of ``response``: what was streamed, or what is about to be sent.

    A handler that prepared the response has written (some of) its body already
    (``written``, counted on the writer's ``on_body_write`` hook); otherwise aiohttp
    writes it after the middlewares return, and its length is known. Pass the
    request ``method`` so a HEAD answer counts as the 0 bytes it sends.
    """
    if _sends_no_body(method or "", response.status):
        return 0
    if response.prepared:
        return written
    if isinstance(response, web.Response):
        return response.content_length or 0
    return 0


def metrics_middleware(metrics: Metrics) -> Middleware:
    """RED and SLO accounting for every request, on one ``perf_counter`` clock.

    SLO settings are not a parameter: ``Metrics.record_request`` classifies with the
    settings the ``Metrics`` was built with, so the two cannot disagree.
    """

    @web.middleware
    async def record_request_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        written = response_bytes_counter(request)
        outcome = Outcome()
        try:
            return await call_handler(request, handler, outcome)
        finally:
            duration = time.perf_counter() - started
            request[REQUEST_DURATION] = duration
            _record(metrics, request, outcome.response, outcome.status, duration, written.count)

    return record_request_metrics


def _record(
    metrics: Metrics,
    request: web.Request,
    response: web.StreamResponse | None,
    status: int,
    duration: float,
    written: int,
) -> None:
    try:
        response_size = (
            0 if response is None else response_body_size(response, written, method=request.method)
        )
        metrics.record_request(
            method=request.method,
            endpoint=route_template(request),
            status=status,
            duration=duration,
            request_size=request_body_size(request),
            response_size=response_size,
        )
    except Exception:
        # Telemetry must never turn a served request into a failure.
        log.exception("request_metrics_failed", path=request.path)


def metrics_handler(metrics: Metrics) -> Handler:
    """GET /metrics: refresh collector-fed gauges, then render for the Accept header."""

    async def serve_metrics(request: web.Request) -> web.StreamResponse:
        body, headers = await metrics.render(request.headers.getall(hdrs.ACCEPT, []))
        return web.Response(body=body, headers=headers)

    return serve_metrics


def setup_metrics(app: web.Application, metrics: Metrics) -> None:
    """Attach the metrics middleware, ``GET /metrics`` and the service_up signals."""
    app.middlewares.append(metrics_middleware(metrics))
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
