"""STUB — replaced by the metrics helper."""

from __future__ import annotations

from aiohttp import web

from .metrics import Metrics
from .settings import TelemetrySettings


def setup_metrics(app: web.Application, settings: TelemetrySettings, metrics: Metrics) -> None:
    return None
