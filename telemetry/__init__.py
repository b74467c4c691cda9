"""Reusable aiohttp telemetry: Prometheus metrics, OpenTelemetry tracing, structlog logs.

This package never imports the service that uses it. A service calls
``telemetry.setup(app, settings, problem_mapper=...)`` once, before adding its own
middlewares, and records business events through ``app[telemetry.METRICS]``.

Middlewares, outermost first: tracing, request context, metrics, errors.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from .context import setup_request_context
from .errors import setup_errors
from .keys import METRICS, SETTINGS
from .logging import configure_logging
from .metrics import Metrics
from .middleware import setup_metrics
from .problems import Problem, ProblemMapper, problem_response
from .server_spans import setup_tracing
from .settings import TelemetrySettings, TelemetrySettingsError

__all__ = [
    "METRICS",
    "SETTINGS",
    "Metrics",
    "Problem",
    "ProblemMapper",
    "TelemetrySettings",
    "TelemetrySettingsError",
    "problem_response",
    "setup",
]


def setup(
    app: web.Application,
    settings: TelemetrySettings,
    *,
    problem_mapper: ProblemMapper | None = None,
    app_error_labels: Iterable[tuple[str, str]] = (),
) -> Metrics:
    """Attach every telemetry middleware, route and signal to ``app``.

    ``app_error_labels``: every (type, severity) the ``problem_mapper`` can answer
    with, pre-created at 0 in ``app_errors_total``. The order of the calls below is
    the order of the middlewares.
    """
    configure_logging(settings)
    metrics = Metrics(settings)
    metrics.preinitialise_app_errors(app_error_labels)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    setup_tracing(app, settings, metrics)
    setup_request_context(app, settings)
    setup_metrics(app, settings, metrics)
    setup_errors(app, metrics, problem_mapper)
    return metrics
