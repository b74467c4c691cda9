"""Reusable aiohttp telemetry: Prometheus metrics, OpenTelemetry tracing, structlog logs.

This package never imports the service that uses it, and knows none by name: a service
passes its names (service name, logger, problem base URI, env prefix, metric prefix,
probe routes) in :class:`TelemetrySettings`. It calls ``telemetry.setup(app,
settings, problem_mapper=...)`` once, before adding its own middlewares; defines its
business metrics on ``app[telemetry.METRICS]`` (``counter``/``gauge``/``histogram``);
and uses the helpers below for spans of its own resources. Everything a service needs
is in ``__all__``; the modules behind it are internals.

One middleware (telemetry/middleware.py) does, outermost first: tracing, request
context, metrics, errors.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from .context import AccessLog, setup_request_context
from .errors import ErrorResponder
from .instrumentation import client_trace_configs, create_aiopg_pool, instrument_redis
from .keys import METRICS, REQUEST_ID, SETTINGS
from .logging import configure_logging
from .metrics import Metrics, metric_labels, require_label
from .middleware import request_middleware, setup_metrics
from .problems import Problem, ProblemMapper, http_title, problem_response
from .server_spans import setup_tracing
from .settings import TelemetrySettings, TelemetrySettingsError
from .tracing import context_carrier, continue_trace, untraced

__all__ = [
    "METRICS",
    "REQUEST_ID",
    "SETTINGS",
    "Metrics",
    "Problem",
    "ProblemMapper",
    "TelemetrySettings",
    "TelemetrySettingsError",
    "client_trace_configs",
    "configure_logging",
    "context_carrier",
    "continue_trace",
    "create_aiopg_pool",
    "http_title",
    "instrument_redis",
    "metric_labels",
    "problem_response",
    "require_label",
    "setup",
    "untraced",
]


def setup(
    app: web.Application,
    settings: TelemetrySettings,
    *,
    problem_mapper: ProblemMapper | None = None,
    app_error_labels: Iterable[tuple[str, str]] = (),
) -> Metrics:
    """Attach the telemetry middleware, ``/metrics``, and the signals to ``app``.

    ``app_error_labels``: every (type, severity) the ``problem_mapper`` can answer
    with, pre-created at 0 in ``app_errors_total``. Call it before adding the app's
    own middlewares: ours is then the outermost.
    """
    configure_logging(settings)
    metrics = Metrics(settings)
    metrics.preinitialise_app_errors(app_error_labels)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    spans = setup_tracing(app, settings, metrics)
    setup_request_context(app)
    setup_metrics(app, metrics)
    app.middlewares.append(
        request_middleware(
            metrics, AccessLog(settings), ErrorResponder(settings, metrics, problem_mapper), spans
        )
    )
    return metrics
