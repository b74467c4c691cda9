"""STUB — replaced by the tracing helper."""

from __future__ import annotations

from aiohttp import web

from .metrics import Metrics
from .settings import TelemetrySettings


def setup_tracing(app: web.Application, settings: TelemetrySettings, metrics: Metrics) -> None:
    return None
