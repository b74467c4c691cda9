"""Server spans: one SERVER span per request, and ``setup_tracing`` that attaches it.

* ``setup_tracing`` stores a :class:`~telemetry.tracing.Tracing` under
  :data:`~telemetry.keys.TRACING`, adds the server middleware (outermost) and a
  ``cleanup_ctx`` that owns the ``TracerProvider``. It lives here, not in
  ``tracing.py``, so that imports point one way: this module needs the per-app
  state, the per-app state never needs the middleware.
* The server middleware is ours, built on the helpers of
  ``opentelemetry-instrumentation-aiohttp-server`` (attribute collection, status
  mapping, header getter). We do not use ``AioHttpServerInstrumentor.instrument()``
  (it replaces ``web.Application`` globally) nor ``create_aiohttp_middleware`` (in
  0.66b1 it reads module state that only ``_instrument()`` sets and answers 500).
"""

from __future__ import annotations

from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import propagate, trace
from opentelemetry.instrumentation import aiohttp_server as _server_helpers
from opentelemetry.instrumentation.utils import is_http_instrumentation_enabled
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, Status, StatusCode

from .keys import SERVER_SPAN, TRACING
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

__all__ = ["setup_tracing", "tracing_middleware"]

# Attributes that carry a URL or query string, whose sensitive parameters we redact.
_URL_ATTRIBUTES: Final = ("http.target", "http.url", "url.query", "url.full")


def _matched_route(request: web.BaseRequest) -> str | None:
    """The canonical route (``/api/reviews/{review_id}``), None when nothing matched."""
    match_info = getattr(request, "match_info", None)
    route = getattr(match_info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return None
    canonical = resource.canonical
    return canonical if isinstance(canonical, str) and canonical else None


def _server_attributes(request: web.Request, tracing: Tracing, route: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = _server_helpers.collect_request_attributes(
        request, tracing.http_semconv
    )
    if route is None:
        attributes.pop("http.route", None)  # semconv: omit when unknown, never the raw path
    for key in _URL_ATTRIBUTES:
        if isinstance(value := attributes.get(key), str):
            attributes[key] = redact_query(value)
    return {k: v for k, v in attributes.items() if v is not None}


def _set_http_status(span: trace.Span, status: int, tracing: Tracing) -> None:
    """Semconv status attributes; ERROR for 5xx, unset for 4xx (server-side rules).

    A description the error middleware already gave (the crash's exception type)
    survives: the package's helper would overwrite it with a bare ERROR.
    """
    previous = span.status if isinstance(span, ReadableSpan) else None
    _server_helpers.set_status_code(span, status, None, tracing.http_semconv)
    if previous is not None and previous.status_code is StatusCode.ERROR and previous.description:
        span.set_status(previous)


def tracing_middleware(tracing: Tracing) -> Middleware:
    """One SERVER span per request, current while inner middlewares and the handler run."""

    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            not tracing.enabled
            or not is_http_instrumentation_enabled()
            or tracing.excluded.url_disabled(request.url.path)
        ):
            return await handler(request)
        route = _matched_route(request)
        if route is not None and route.startswith(tracing.settings.probe_prefixes):
            # Probes and scrapes: no server span, and no parentless SQL/Redis spans
            # from what their handlers (readiness checks, collectors) do either.
            with untraced():
                return await handler(request)
        method = (
            request.method if request.method.isalpha() and len(request.method) <= 16 else "HTTP"
        )
        name = f"{method} {route or UNMATCHED_ENDPOINT}"
        with tracing.server_tracer.start_as_current_span(
            name,
            context=propagate.extract(request, getter=_server_helpers.getter),
            kind=SpanKind.SERVER,
            attributes=_server_attributes(request, tracing, route),
            # We decide status and exception events ourselves: a 4xx is not an error.
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            request[SERVER_SPAN] = span
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                _set_http_status(span, exc.status, tracing)
                if exc.status >= 500:
                    span.record_exception(exc)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                raise
            _set_http_status(span, response.status, tracing)
            return response

    return trace_request


def setup_tracing(
    app: web.Application,
    settings: TelemetrySettings,
    metrics: Metrics,
    *,
    shutdown_timeout_s: float = DEFAULT_SHUTDOWN_TIMEOUT_S,
) -> None:
    """Attach the tracing middleware (outermost) and the provider's cleanup context.

    Raises ``TelemetrySettingsError`` naming the OTEL_* variable that is malformed.
    """
    tracing = Tracing(
        settings,
        metrics,
        TracingConfig.from_env(settings.otel_env),
        shutdown_timeout_s=shutdown_timeout_s,
    )
    app[TRACING] = tracing
    app.middlewares.insert(0, tracing_middleware(tracing))
    app.cleanup_ctx.append(tracer_provider_ctx)
