"""Server spans: one SERVER span per request, and ``setup_tracing`` that attaches it.

* ``setup_tracing`` stores a :class:`~telemetry.tracing.Tracing` under
  :data:`~telemetry.keys.TRACING` and a ``cleanup_ctx`` that owns the
  ``TracerProvider``, and returns the :class:`ServerSpans` the request middleware
  (telemetry/middleware.py) starts and ends around each request. It lives here, not
  in ``tracing.py``, so that imports point one way: this module needs the per-app
  state, the per-app state never needs the spans.
* Built on the helpers of ``opentelemetry-instrumentation-aiohttp-server``
  (attribute collection, status mapping). We do not use
  ``AioHttpServerInstrumentor.instrument()`` (it replaces ``web.Application``
  globally) nor ``create_aiohttp_middleware`` (in 0.66b1 it reads module state that
  only ``_instrument()`` sets and answers 500).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from contextvars import Token
from typing import Any, Final

from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation import aiohttp_server as _server_helpers
from opentelemetry.instrumentation._semconv import _StabilityMode
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.http import (
    OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS,
    redact_query_parameters,
    redact_url,
)

from .keys import SERVER_SPAN, TRACING
from .lean_spans import LeanServerTracer, LeanSpan
from .metrics import UNMATCHED_ENDPOINT, Metrics
from .settings import TelemetrySettings
from .tracing import (
    DEFAULT_SHUTDOWN_TIMEOUT_S,
    Tracing,
    TracingConfig,
    redact_query,
    tracer_provider_ctx,
    untraced,
)

__all__ = ["ServerAttributes", "ServerSpan", "ServerSpans", "setup_tracing"]

# Attributes that carry a URL or query string, whose sensitive parameters we redact.
_URL_ATTRIBUTES: Final = ("http.target", "http.url", "url.query", "url.full")


def _server_attributes(request: web.Request, tracing: Tracing, route: str | None) -> dict[str, Any]:
    """The package's attribute collection, URL values redacted; for every semconv mode."""
    attributes: dict[str, Any] = _server_helpers.collect_request_attributes(
        request, tracing.http_semconv
    )
    if route is None:
        attributes.pop("http.route", None)  # semconv: omit when unknown, never the raw path
    for key in _URL_ATTRIBUTES:
        if isinstance(value := attributes.get(key), str):
            attributes[key] = redact_query(value)
    return {k: v for k, v in attributes.items() if v is not None}


_KNOWN_METHODS: Final = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}
)
_MAX_ORIGINS: Final = 256


class _Origin:
    """What the URL of every request to one (scheme, Host header) shares."""

    __slots__ = ("base_url", "host", "port", "server_name")

    def __init__(self, request: web.Request) -> None:
        url = request.url
        self.host = url.host
        self.port = url.port
        self.server_name = request.host
        self.base_url = str(url.origin())


class ServerAttributes:
    """The attributes of a sampled server span, exactly as
    :func:`_server_attributes` gives them, at a fraction of the cost for the default
    (old, v1.20) semantic conventions: what every request to one origin shares is
    computed once per origin, the URL is not re-parsed unless it has a query, and
    nothing is built for a request whose span is not sampled. Other semconv modes
    (``OTEL_SEMCONV_STABILITY_OPT_IN=http`` or ``http/dup``) use the package's helper.
    tests/telemetry/test_server_attributes.py holds the two to the same output.
    """

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._fast = tracing.http_semconv is _StabilityMode.DEFAULT
        self._all_methods = bool(
            os.environ.get(OTEL_PYTHON_INSTRUMENTATION_HTTP_CAPTURE_ALL_METHODS)
        )
        self._origins: dict[tuple[str, str], _Origin] = {}

    def collect(self, request: web.Request, route: str | None) -> dict[str, Any]:
        if not self._fast:
            return _server_attributes(request, self._tracing, route)
        key = (request.scheme, request.host)
        origin = self._origins.get(key)
        if origin is None:
            if len(self._origins) >= _MAX_ORIGINS:  # a client inventing Host headers
                self._origins.clear()
            origin = self._origins[key] = _Origin(request)
        method = request.method.upper().strip()
        if not self._all_methods and method not in _KNOWN_METHODS:
            method = "_OTHER"
        target = request.path_qs
        url = origin.base_url + str(request.rel_url)
        if request.query_string:
            target = redact_query(redact_query_parameters(target))
            url = redact_query(redact_url(url))
        attributes: dict[str, Any] = {"http.method": method, "http.scheme": key[0]}
        if origin.host:
            attributes["net.host.name"] = origin.host
            attributes["http.host"] = origin.host
        if origin.port:
            attributes["net.host.port"] = origin.port
        attributes["http.target"] = target
        attributes["http.url"] = url
        if user_agent := request.headers.get("user-agent"):
            attributes["http.user_agent"] = user_agent
        version = request.version
        attributes["http.flavor"] = f"{version.major}.{version.minor}"
        if route is not None:
            attributes["http.route"] = route
        if origin.server_name:
            attributes["http.server_name"] = origin.server_name
        return attributes


def _set_http_status(span: trace.Span, status: int, tracing: Tracing) -> None:
    """Semconv status attributes; ERROR for 5xx, unset for 4xx (server-side rules).

    A description the error responder already gave (the crash's exception type)
    survives: the package's helper would overwrite it with a bare ERROR. For the
    default semconv the two steps of that helper are done here directly.
    """
    previous = span.status if isinstance(span, ReadableSpan) else None
    keep = previous is not None and previous.status_code is StatusCode.ERROR
    if tracing.http_semconv is not _StabilityMode.DEFAULT:
        _server_helpers.set_status_code(span, status, None, tracing.http_semconv)
        if keep and previous is not None and previous.description:
            span.set_status(previous)
        return
    if isinstance(span, LeanSpan):
        span.set_known_attribute("http.status_code", status)
    else:
        span.set_attribute("http.status_code", status)
    # http_status_to_status_code(status, server_span=True): 1xx-4xx leave it unset.
    if (status < 100 or status > 499) and not (keep and previous and previous.description):
        span.set_status(Status(StatusCode.ERROR))


class ServerSpan:
    """A request's server span while it is current — or, for a probe, the untraced
    scope: what :meth:`ServerSpans.finish` needs to close it."""

    __slots__ = ("span", "token", "untraced")

    def __init__(
        self,
        span: trace.Span | None,
        token: Token[otel_context.Context] | None = None,
        untraced_scope: AbstractContextManager[None] | None = None,
    ) -> None:
        self.span = span
        self.token = token
        self.untraced = untraced_scope


class ServerSpans:
    """One SERVER span per request, started and ended by the request middleware.

    Lean by design, since it runs for every request: the span starts with its name and
    kind only, and the HTTP attributes (the costly part) are collected once, and only
    when the sampler kept the span; context is attached and detached directly rather
    than through context-manager generators.
    """

    def __init__(self, tracing: Tracing) -> None:
        self._tracing = tracing
        self._attributes = ServerAttributes(tracing)
        # Made on the first request: the provider (and its export thread) starts with
        # the app, not when the middleware is built.
        self._tracer: LeanServerTracer | None = None
        # The headers the global propagators read (W3C traceparent/tracestate and
        # baggage by default; b3's or others' if OTEL_PROPAGATORS says so).
        self._context_headers = tuple(propagate.get_global_textmap().fields)

    def start(self, request: web.Request, route: str) -> ServerSpan | None:
        """Make the request's span current; None when it is not traced at all."""
        tracing = self._tracing
        if (
            not tracing.enabled
            or not is_http_instrumentation_enabled()
            or tracing.excluded.url_disabled(request.path)
        ):
            return None
        matched = None if route == UNMATCHED_ENDPOINT else route
        if matched is not None and matched.startswith(tracing.settings.probe_prefixes):
            # Probes and scrapes: no server span, and no parentless SQL/Redis spans
            # from what their handlers (readiness checks, collectors) do either.
            scope = untraced()
            scope.__enter__()
            return ServerSpan(None, untraced_scope=scope)
        method = request.method
        if not (method.isalpha() and len(method) <= 16):
            method = "HTTP"
        headers = request.headers
        tracer = self._tracer
        if tracer is None:
            tracer = self._tracer = LeanServerTracer(tracing.server_tracer)
        span = tracer.start(
            f"{method} {matched or UNMATCHED_ENDPOINT}",
            # Most requests carry no trace context: skip the propagators' parsing then.
            propagate.extract(headers)
            if any(name in headers for name in self._context_headers)
            else None,
            lambda: self._attributes.collect(request, matched),
        )
        request[SERVER_SPAN] = span
        return ServerSpan(span, otel_context.attach(trace.set_span_in_context(span)))

    def finish(self, scope: ServerSpan, status: int | None) -> None:
        """Detach and end the span; ``status`` is what the client saw, None when the
        handler was cancelled (no answer: the span ends without an HTTP status)."""
        if scope.untraced is not None:
            scope.untraced.__exit__(None, None, None)
            return
        span = scope.span
        if span is None or scope.token is None:
            return
        otel_context.detach(scope.token)
        if status is not None and span.is_recording():
            _set_http_status(span, status, self._tracing)
        span.end()


def setup_tracing(
    app: web.Application,
    settings: TelemetrySettings,
    metrics: Metrics,
    *,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
) -> ServerSpans | None:
    """Store the app's tracing and attach the provider's cleanup context; return the
    server spans the request middleware starts (None when tracing is disabled).

    Raises ``TelemetrySettingsError`` naming the OTEL_* variable that is malformed.
    """
    tracing = Tracing(
        settings,
        metrics,
        TracingConfig.from_env(settings.otel_env),
        shutdown_timeout_s=shutdown_timeout_s,
    )
    app[TRACING] = tracing
    app.cleanup_ctx.append(tracer_provider_ctx)
    return ServerSpans(tracing) if tracing.config.enabled else None
