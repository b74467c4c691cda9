"""STUB — replaced by the tracing/logging helper."""

from __future__ import annotations

import structlog

from .settings import TelemetrySettings


def configure_logging(settings: TelemetrySettings) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        cache_logger_on_first_use=False,
    )
