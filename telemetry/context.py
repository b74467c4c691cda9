"""Per-request context: request id, structlog contextvars, the access log line.

The middleware runs just inside the tracing middleware, so the server span is
current for everything it does — including the access log line it writes at the
end, which therefore carries the request's ``trace_id``/``span_id``.

aiohttp's own access logger would write a second, differently shaped line per
request: run the app with ``web.run_app(app, access_log=None)``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Final

import structlog
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from .keys import REQUEST_DURATION, REQUEST_ID, SERVER_SPAN
from .middleware import (
    Outcome,
    call_handler,
    request_body_size,
    response_body_size,
    response_bytes_counter,
    route_template,
)
from .settings import TelemetrySettings
from .tracing import traceparent_header

__all__ = [
    "REQUEST_ID_HEADER",
    "access_log_level",
    "access_log_middleware",
    "request_id_for",
    "setup_request_context",
]

REQUEST_ID_HEADER: Final = "X-Request-ID"
# Accept a caller's id only if it is short and log-safe (no spaces, quotes, newlines).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


def request_id_for(request: web.BaseRequest) -> str:
    """The caller's ``X-Request-ID`` when it is valid, else a fresh uuid4 hex."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    if _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return uuid.uuid4().hex


def access_log_level(route: str, status: int, probe_prefixes: tuple[str, ...]) -> str:
    """The level of a request's access line.

    Probes and scrapes at debug (a line per probe every few seconds is noise); a
    5xx is the service failing: error; a 4xx is the client's mistake, worth a look
    when it repeats: warning (499, the client hung up, included); the rest info.
    """
    if route.startswith(probe_prefixes):
        return "debug"
    if status >= 500:
        return "error"
    if status >= 400:
        return "warning"
    return "info"


def access_log_middleware(settings: TelemetrySettings) -> Middleware:
    """Bind request_id for the request's logs; write one access line at the end, to
    the ``settings.access_logger`` logger."""
    access_log = structlog.get_logger(settings.access_logger)
    probe_prefixes = settings.probe_prefixes

    @web.middleware
    async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = request_id_for(request)
        request[REQUEST_ID] = request_id
        # aiohttp runs each request in its own task (a copy of the context), but a
        # keep-alive connection reuses it: start clean, end clean.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        body = response_bytes_counter(request)
        outcome = Outcome()
        try:
            return await call_handler(request, handler, outcome)
        finally:
            duration = request.get(REQUEST_DURATION)
            if duration is None:  # metrics middleware absent or bypassed
                duration = time.perf_counter() - started
            route = route_template(request)
            write = getattr(access_log, access_log_level(route, outcome.status, probe_prefixes))
            write(
                "request",
                method=request.method,
                route=route,
                path=request.path,
                status=outcome.status,
                duration_ms=round(duration * 1000, 3),
                request_bytes=request_body_size(request),
                response_bytes=0
                if outcome.response is None
                else response_body_size(outcome.response, body.count, method=request.method),
                client=request.remote,
                user_agent=request.headers.get(hdrs.USER_AGENT),
            )
            structlog.contextvars.clear_contextvars()

    return request_context


async def _add_correlation_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names its request id and (when traced) its server span."""
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    span = request.get(SERVER_SPAN)
    if span is not None and (traceparent := traceparent_header(span)) is not None:
        response.headers["traceparent"] = traceparent


def setup_request_context(app: web.Application, settings: TelemetrySettings) -> None:
    app.middlewares.append(access_log_middleware(settings))
    app.on_response_prepare.append(_add_correlation_headers)
