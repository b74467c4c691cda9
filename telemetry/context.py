"""Per-request context: request id, structlog contextvars, the access log line.

The request middleware (telemetry/middleware.py) binds the request id for every line
the request logs and, at the end, writes one access line while the server span is
still current — so it carries the request's ``trace_id``/``span_id``.

aiohttp's own access logger would write a second, differently shaped line per
request: run the app with ``web.run_app(app, access_log=None)``.
"""

from __future__ import annotations

import itertools
import re
import secrets
from typing import Final

from aiohttp import hdrs, web

from .keys import REQUEST_DURATION, REQUEST_ID, SERVER_SPAN
from .logging import event_writer, is_enabled
from .requests import response_bytes_counter
from .settings import TelemetrySettings
from .tracing import traceparent_header

__all__ = [
    "REQUEST_ID_HEADER",
    "AccessLog",
    "access_log_level",
    "request_id_for",
    "setup_request_context",
]

REQUEST_ID_HEADER: Final = "X-Request-ID"
# Accept a caller's id only if it is short and log-safe (no spaces, quotes, newlines).
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")


class _RequestIds:
    """Fresh request ids: 32 lowercase hex, a random 64-bit prefix per process and a
    64-bit sequence. Unique across processes and restarts like a uuid4, at the cost
    of a counter increment instead of 16 bytes from the OS per request."""

    __slots__ = ("_prefix", "_sequence")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._sequence = itertools.count(secrets.randbits(32))

    def next(self) -> str:
        # to_bytes().hex(): the same 16 lowercase hex digits as format(n, "016x"), faster.
        return self._prefix + (next(self._sequence) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big").hex()


_REQUEST_IDS = _RequestIds()


def request_id_for(request: web.BaseRequest) -> str:
    """The caller's ``X-Request-ID`` when it is valid, else a fresh id."""
    incoming = request.headers.get(REQUEST_ID_HEADER)
    if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
        return incoming
    return _REQUEST_IDS.next()


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


# Fields of the access line whose values telemetry produces and which cannot hold a
# credential (numbers, a route template, a validated id, an address): redaction passes
# over them. path and user_agent, free text from the client, are still checked.
_TRUSTED_FIELDS = frozenset(
    {
        "event", "method", "route", "status", "duration_ms", "request_bytes",
        "response_bytes", "client", "level", "logger", "timestamp", "request_id",
        "trace_id", "span_id", "trace_flags",
    }
)  # fmt: skip


class AccessLog:
    """One line per request, ``event: request``, to ``settings.access_logger``."""

    __slots__ = ("_probe_prefixes", "_write")

    def __init__(self, settings: TelemetrySettings) -> None:
        self._write = event_writer(settings.access_logger, trusted_keys=_TRUSTED_FIELDS)
        self._probe_prefixes = settings.probe_prefixes

    def write(
        self,
        request: web.Request,
        route: str,
        status: int,
        duration: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        level = access_log_level(route, status, self._probe_prefixes)
        if not is_enabled(level):
            return
        self._write(
            level,
            {
                "event": "request",
                "method": request.method,
                "route": route,
                "path": request.path,
                "status": status,
                # Milliseconds to 3 decimals, rounded half up (round(x, 3), exact
                # half-even on the binary value, costs four times as much).
                "duration_ms": int(duration * 1_000_000 + 0.5) / 1000,
                "request_bytes": request_bytes,
                "response_bytes": response_bytes,
                "client": request.remote,
                "user_agent": request.headers.get(hdrs.USER_AGENT),
            },
        )


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Every response names its request id and (when traced) its server span.

    A response prepared while the handler still runs (the request middleware has not
    set REQUEST_DURATION yet) streams its body from inside the handler: only then is
    the writer hooked to count body bytes. Any other response is prepared after the
    middleware returned, with a body whose length is already known.
    """
    if REQUEST_DURATION not in request:
        response_bytes_counter(request)
    request_id = request.get(REQUEST_ID)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    span = request.get(SERVER_SPAN)
    if span is not None and (traceparent := traceparent_header(span)) is not None:
        response.headers["traceparent"] = traceparent


def setup_request_context(app: web.Application) -> None:
    """Correlation headers on every response, however it was prepared (a streamed
    response sends its headers from inside the handler, so a signal, not the
    middleware, sets them)."""
    app.on_response_prepare.append(_on_prepare)
