"""Typed application keys for what telemetry attaches to an aiohttp app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .metrics import Metrics
    from .settings import TelemetrySettings

SETTINGS: web.AppKey[TelemetrySettings] = web.AppKey("telemetry_settings")
METRICS: web.AppKey[Metrics] = web.AppKey("telemetry_metrics")

# Set by the request-context middleware; read by the error middleware and access log.
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
