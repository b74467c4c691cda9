"""Every typed key telemetry puts on an aiohttp app or request, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from opentelemetry import trace

if TYPE_CHECKING:
    from .metrics import Metrics
    from .requests import BodyBytesWritten
    from .settings import TelemetrySettings
    from .tracing import Tracing

# -- on the app, set by telemetry.setup
SETTINGS: web.AppKey[TelemetrySettings] = web.AppKey("telemetry_settings")
METRICS: web.AppKey[Metrics] = web.AppKey("telemetry_metrics")
# The per-app tracing state (config, provider, tracers), set by setup_tracing.
TRACING: web.AppKey[Tracing] = web.AppKey("telemetry_tracing")

# -- on each request
# Set by the request-context middleware; read by the error middleware and access log.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
# Seconds from metrics-middleware entry to handler return: the one clock behind the
# duration histogram and the SLO latency decision, kept for the access log line.
REQUEST_DURATION: web.RequestKey[float] = web.RequestKey(
    "telemetry_request_duration_seconds", float
)
# One response-body byte counter per request, shared by every middleware that reports
# response sizes (metrics, access log): the writer hook is installed once.
RESPONSE_BODY_BYTES: web.RequestKey[BodyBytesWritten] = web.RequestKey(
    "telemetry_response_body_bytes"
)
# The request's server span, kept so on_response_prepare (which runs after the
# middleware chain returned, the span no longer current) can name it in traceparent.
SERVER_SPAN: web.RequestKey[trace.Span] = web.RequestKey("telemetry_server_span", trace.Span)
