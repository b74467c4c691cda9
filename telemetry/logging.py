"""structlog configuration: one JSON line per event on stdout, correlated with traces.

Every line the process prints has the same shape, whether it came from structlog
(``structlog.get_logger(...)``) or from the standard library (aiohttp, asyncio, aiopg,
opentelemetry): structlog hands its event dicts to the stdlib logging machinery and a
single root handler renders both through ``structlog.stdlib.ProcessorFormatter``.

Correlation follows the OpenTelemetry spec for trace context in non-OTLP logs: the
span active at the moment of the log call contributes top-level ``trace_id`` (32
lowercase hex), ``span_id`` (16 lowercase hex) and ``trace_flags`` (2 hex).

Logging is process-global by nature (the root logger, structlog's config); that is
the only global state touched here, and ``configure_logging`` is idempotent so each
``telemetry.setup(app, ...)`` can call it.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from .settings import TelemetrySettings

__all__ = [
    "REDACTED",
    "add_otel_context",
    "configure_logging",
    "is_sensitive_key",
    "redact_secrets",
    "reset_logging",
]

REDACTED = "[REDACTED]"

# Header names and field names whose values are credentials. Matched with ``search``
# on the lower-cased key, so ``access_token``, ``X-Api-Key`` and ``db_password`` hit.
_SENSITIVE_KEY = re.compile(
    r"authorization|cookie|token|secret|passw(or)?d|api[-_]?key|private[-_]?key|credential"
)
# A credential pasted into a free-text value ("Bearer eyJ...") is caught too.
_CREDENTIAL_VALUE = re.compile(r"^\s*(bearer|basic|digest)\s+\S+", re.IGNORECASE)
# Bounds the walk into nested containers; a log call never needs deeper structure.
_MAX_REDACTION_DEPTH = 6

# Loggers of libraries whose records must come out in our JSON shape. They propagate
# to the root handler; listing them documents the contract and resets any level a
# previous configuration left on them.
ROUTED_STDLIB_LOGGERS = (
    "aiohttp.access",
    "aiohttp.server",
    "aiohttp.web",
    "asyncio",
    "aiopg",
    "opentelemetry",
)


def is_sensitive_key(key: str) -> bool:
    """Whether a field or header name denotes a secret (shared with tracing's redaction)."""
    return bool(_SENSITIVE_KEY.search(key.lower()))


def _redact_value(value: Any, depth: int) -> Any:
    if depth > _MAX_REDACTION_DEPTH:
        return value
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(k, str) and is_sensitive_key(k)
            else _redact_value(v, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v, depth + 1) for v in value]
    if isinstance(value, str) and _CREDENTIAL_VALUE.match(value):
        return REDACTED
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace credentials (by key, nested, or by ``Bearer ...`` value) with ``[REDACTED]``."""
    for key in list(event_dict):
        if key.startswith("_"):  # structlog/stdlib plumbing (_record, _from_structlog)
            continue
        value = event_dict[key]
        event_dict[key] = REDACTED if is_sensitive_key(key) else _redact_value(value, 0)
    return event_dict


def add_otel_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add trace_id/span_id/trace_flags of the span active at the log call, if any."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
        event_dict["trace_flags"] = format(ctx.trace_flags, "02x")
    return event_dict


def _drop_formatter_message(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """``logging.Formatter`` sets ``record.message``; ExtraAdder would copy it beside
    ``event`` (same text), so every stdlib line would say it twice."""
    if event_dict.get("message") == event_dict.get("event"):
        event_dict.pop("message", None)
    return event_dict


def _shared_processors(*, foreign: bool = False) -> list[Processor]:
    """Processors both structlog and foreign (stdlib) records go through.

    The chain does not depend on settings: a logger cached by
    ``cache_logger_on_first_use`` keeps working after a reconfiguration, because
    everything that varies (renderer, level) lives in the root handler. For foreign
    (stdlib) records, ``extra={...}`` fields are lifted in before redaction sees them.
    """
    extras: list[Processor] = (
        [structlog.stdlib.ExtraAdder(), _drop_formatter_message] if foreign else []
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        *extras,
        add_otel_context,
        redact_secrets,
    ]


class _StdoutHandler(logging.Handler):
    """Writes to whatever ``sys.stdout`` is *now*.

    ``logging.StreamHandler`` binds the stream at construction; resolving it per
    record lets pytest's capsys/capfd (and any later redirection) see every line.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = sys.stdout
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _use_console(settings: TelemetrySettings) -> bool:
    if settings.log_format == "console":
        return True
    if settings.log_format == "json":
        return False
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def _formatter(console: bool) -> structlog.stdlib.ProcessorFormatter:
    renderer: list[Processor]
    if console:
        renderer = [
            structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        ]
    else:
        renderer = [
            # show_locals=False: frame locals would print passwords and tokens verbatim.
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            structlog.processors.JSONRenderer(),
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(foreign=True),
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


def _remove_our_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if isinstance(handler, _StdoutHandler):
            root.removeHandler(handler)
            handler.close()


def configure_logging(settings: TelemetrySettings) -> None:
    """Route structlog and stdlib logging to stdout as JSON (or console) lines.

    Idempotent: calling it again replaces the handler and structlog's config.
    """
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO

    root = logging.getLogger()
    _remove_our_handlers(root)
    handler = _StdoutHandler()
    handler.setFormatter(_formatter(_use_console(settings)))
    root.addHandler(handler)
    root.setLevel(level)
    for name in ROUTED_STDLIB_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)

    structlog.configure(
        processors=[*_shared_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def reset_logging() -> None:
    """Undo ``configure_logging`` (for tests): structlog defaults, our handler removed."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _remove_our_handlers(logging.getLogger())
