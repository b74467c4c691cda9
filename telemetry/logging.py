"""structlog configuration: one JSON line per event on stdout, correlated with traces.

Every line the process prints has the same shape, whether it came from structlog
(``structlog.get_logger(...)``) or from the standard library (aiohttp, asyncio, aiopg,
opentelemetry). The two take different roads, because one of them is the request path:

* structlog events (the access line, the service's own events) go straight from the
  processor chain to an orjson-rendered line written to stdout — no stdlib
  ``logging`` round trip (LogRecord, handler lock, formatter) per request.
* stdlib records of libraries go through one root handler whose
  ``structlog.stdlib.ProcessorFormatter`` runs the same processors and renderer.

Correlation follows the OpenTelemetry spec for trace context in non-OTLP logs: the
span active at the moment of the log call contributes top-level ``trace_id`` (32
lowercase hex), ``span_id`` (16 lowercase hex) and ``trace_flags`` (2 hex).

Logging is process-global by nature (the root logger, structlog's config, and
:data:`_OUTPUT`, the level and renderer every cached logger consults at call time);
that is the only global state touched here, and ``configure_logging`` is idempotent
so each ``telemetry.setup(app, ...)`` can call it.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from typing import Any

import orjson
import structlog
from opentelemetry import trace
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from .settings import TelemetrySettings
from .trace_ids import hex_ids

__all__ = [
    "REDACTED",
    "add_otel_context",
    "bind_request_id",
    "configure_logging",
    "event_writer",
    "is_enabled",
    "is_sensitive_key",
    "redact_secrets",
    "reset_logging",
    "unbind_request_id",
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
# Field names are few and repeat on every line: remember each verdict. Bounded, so a
# caller logging attacker-chosen keys cannot grow it without limit.
_KEY_VERDICTS: dict[str, bool] = {}
_MAX_KEY_VERDICTS = 4096

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

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _Output:
    """The level and renderer in force, read by every logger at call time, so a logger
    cached under one configuration follows the next one."""

    __slots__ = ("console", "level")

    def __init__(self) -> None:
        self.level = logging.INFO
        self.console = False


_OUTPUT = _Output()


def is_enabled(level: str) -> bool:
    """Whether a line at ``level`` ("debug", "info", ...) would be written now; lets a
    hot path skip building the fields of a line that would be dropped."""
    return _LEVELS[level] >= _OUTPUT.level


def is_sensitive_key(key: str) -> bool:
    """Whether a field or header name denotes a secret (shared with tracing's redaction)."""
    verdict = _KEY_VERDICTS.get(key)
    if verdict is None:
        verdict = bool(_SENSITIVE_KEY.search(key.lower()))
        if len(_KEY_VERDICTS) < _MAX_KEY_VERDICTS:
            _KEY_VERDICTS[key] = verdict
    return verdict


# A string can be a pasted credential only if it starts (after blanks) with one of
# these letters: every other string is passed over without running the regex.
_CREDENTIAL_FIRST = frozenset("bBdD \t\r\n\f\v")
# Values that are never walked: the bulk of an access line.
_SCALARS = frozenset({int, float, bool, type(None)})


def _redact_value(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        if value and value[0] in _CREDENTIAL_FIRST and _CREDENTIAL_VALUE.match(value):
            return REDACTED
        return value
    if kind in _SCALARS or depth > _MAX_REDACTION_DEPTH:
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
    return value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Replace credentials (by key, nested, or by ``Bearer ...`` value) with ``[REDACTED]``.

    Key verdicts are remembered; numbers and None (most of an access line) are passed
    over at once; a string runs the regex only when its first character could start
    a credential; only containers are walked.
    """
    return _redact(event_dict, _NOTHING_TRUSTED)


_NOTHING_TRUSTED: frozenset[str] = frozenset()


def _redact(event_dict: EventDict, trusted: frozenset[str]) -> EventDict:
    """redact_secrets, passing over the ``trusted`` keys: fields whose values the
    caller produced itself and that cannot hold a credential (a status, a route)."""
    verdicts = _KEY_VERDICTS
    for key, value in event_dict.items():
        if key in trusted:
            continue
        sensitive = verdicts.get(key)
        if sensitive is None:
            sensitive = is_sensitive_key(key)
        if sensitive:
            event_dict[key] = REDACTED
        elif type(value) not in _SCALARS and not key.startswith("_"):
            # "_record"/"_from_structlog": stdlib plumbing, never printed, never walked.
            redacted = _redact_value(value, 0)
            if redacted is not value:
                event_dict[key] = redacted
    return event_dict


_TIMESTAMP_SECOND: list[Any] = [-1, ""]


def _add_timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 UTC with microseconds and "Z" (2026-11-28T19:14:28.076412Z), as
    structlog's TimeStamper(fmt="iso", utc=True) writes it, at a fraction of the cost:
    the part up to the second is formatted once per second."""
    now = time.time()
    second = int(now)
    cached = _TIMESTAMP_SECOND
    if cached[0] != second:
        cached[0], cached[1] = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    # %-formatting: a quarter of the cost of an f-string's :06d here.
    event_dict["timestamp"] = "%s.%06dZ" % (cached[1], int((now - second) * 1_000_000))  # noqa: UP031
    return event_dict


def add_otel_context(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Add trace_id/span_id/trace_flags of the span active at the log call, if any."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"], event_dict["span_id"], event_dict["trace_flags"] = hex_ids(ctx)
    return event_dict


# The id of the request whose task is logging, set by the request middleware. A
# ContextVar of our own rather than structlog.contextvars.bind_contextvars: setting
# and resetting one variable is a tenth of the cost of binding through structlog, on
# every request. aiohttp runs each request in a task with its own copy of the context.
_REQUEST_ID: ContextVar[str | None] = ContextVar("telemetry.request_id", default=None)
# structlog.contextvars' registry of the variables bound through it: while it is empty
# nothing was ever bound, and merging (a copy of the whole context) can be skipped.
_STRUCTLOG_BOUND: Mapping[str, object] | None = getattr(
    structlog.contextvars, "_CONTEXT_VARS", None
)


def bind_request_id(request_id: str) -> Token[str | None]:
    """Every line the current task writes from now on carries ``request_id``."""
    return _REQUEST_ID.set(request_id)


def unbind_request_id(token: Token[str | None]) -> None:
    _REQUEST_ID.reset(token)


def merge_context(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """What the task bound through ``structlog.contextvars`` (as structlog's
    ``merge_contextvars``), then its request id; a field given to the log call wins."""
    if _STRUCTLOG_BOUND is None or _STRUCTLOG_BOUND:
        structlog.contextvars.merge_contextvars(logger, method, event_dict)
    request_id = _REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


def _add_logger_name(logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict["logger"] = logger.name
    return event_dict


def _drop_formatter_message(
    _logger: WrappedLogger, _method: str, event_dict: EventDict
) -> EventDict:
    """``logging.Formatter`` sets ``record.message``; ExtraAdder would copy it beside
    ``event`` (same text), so every stdlib line would say it twice."""
    if event_dict.get("message") == event_dict.get("event"):
        event_dict.pop("message", None)
    return event_dict


def _json_default(value: Any) -> str:
    # Whatever orjson cannot serialise natively (a UUID subclass, a Path ...) prints as
    # its str(), as the stdlib JSON renderer's default=str did.
    return str(value)


_ORJSON_LINE = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE


def _orjson_line(event_dict: EventDict) -> bytes:
    """The JSON line, newline included (orjson appends it without a second copy)."""
    return orjson.dumps(event_dict, default=_json_default, option=_ORJSON_LINE)


_EXCEPTION_DICTS = structlog.processors.ExceptionRenderer(
    # show_locals=False: frame locals would print passwords and tokens verbatim.
    ExceptionDictTransformer(show_locals=False)
)
_CONSOLE = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)


def _render(logger: WrappedLogger, method: str, event_dict: EventDict) -> bytes | str:
    """The last processor: a JSON line as bytes, newline-terminated (orjson), or a
    console line for humans (text, without the newline)."""
    if _OUTPUT.console:
        return _CONSOLE(logger, method, event_dict)
    if "exc_info" in event_dict:
        event_dict = _EXCEPTION_DICTS(logger, method, event_dict)
    return _orjson_line(event_dict)


def _render_foreign(logger: WrappedLogger, method: str, event_dict: EventDict) -> str:
    """The same renderer for stdlib records (ProcessorFormatter wants text)."""
    rendered = _render(logger, method, event_dict)
    # The handler adds the newline itself.
    return rendered[:-1].decode() if isinstance(rendered, bytes) else rendered


def _processors(*, foreign: bool) -> list[Processor]:
    """Processors both structlog events and foreign (stdlib) records go through.

    For foreign records, ``extra={...}`` fields are lifted in before redaction sees
    them, and the logger name comes from the record.
    """
    if foreign:
        head: list[Processor] = [
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
        ]
        extras: list[Processor] = [structlog.stdlib.ExtraAdder(), _drop_formatter_message]
    else:
        head = [structlog.processors.add_log_level, _add_logger_name]
        extras = []
    return [
        merge_context,
        *head,
        _add_timestamp,
        structlog.processors.StackInfoRenderer(),
        *extras,
        add_otel_context,
        redact_secrets,
    ]


# What every structlog event goes through, whatever the settings (the level and the
# renderer are read at call time from _OUTPUT): structlog's configuration and the
# direct writers of event_writer() share this one chain.
_EVENT_CHAIN: list[Processor] = [*_processors(foreign=False), _render]


class _StdoutLogger:
    """structlog's final logger: writes each rendered line to whatever ``sys.stdout``
    is *now* (so pytest's capsys, or any later redirection, sees every line), as bytes
    when it can, one line per write, flushed, so a crash loses nothing written."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def msg(self, message: bytes | str) -> None:
        """Write ``message``: JSON bytes end with their newline, console text not."""
        stream = sys.stdout
        buffer = getattr(stream, "buffer", None)
        if isinstance(message, bytes) and buffer is not None:
            stream.flush()  # text printed before this line goes first
            buffer.write(message)  # a JSON line: _render ended it with a newline
            buffer.flush()
            return
        text = message.decode() if isinstance(message, bytes) else message + "\n"
        stream.write(text)
        stream.flush()

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


EventWriter = Callable[[str, EventDict], None]


def event_writer(name: str, *, trusted_keys: frozenset[str] = _NOTHING_TRUSTED) -> EventWriter:
    """A writer of whole events for logger ``name``, for a hot path that builds the
    event dict itself: ``write("info", {"event": "request", ...})``.

    The line is the one ``structlog.get_logger(name).info("request", ...)`` would
    write — the same fields, level filter, redaction and renderer — with the simple
    processors of the chain done inline, not through four layers of bound-logger
    calls and a call per processor. ``trusted_keys``: fields the caller produced
    itself that cannot carry a credential, which redaction passes over.
    """
    logger = _StdoutLogger(name)

    def write(method: str, event_dict: EventDict) -> None:
        if _LEVELS[method] < _OUTPUT.level:
            return
        merge_context(logger, method, event_dict)
        event_dict["level"] = method
        event_dict["logger"] = name
        _add_timestamp(logger, method, event_dict)
        add_otel_context(logger, method, event_dict)
        logger.msg(_render(logger, method, _redact(event_dict, trusted_keys)))

    return write


def _logger_factory(*args: Any) -> _StdoutLogger:
    return _StdoutLogger(str(args[0]) if args and args[0] is not None else "root")


class _BoundLogger(structlog.BoundLoggerBase):
    """A bound logger that drops lines below the configured level before any processor
    runs, reading the level at call time (a cached logger follows reconfiguration)."""

    def _emit(self, method: str, event: str | None, kw: dict[str, Any]) -> Any:
        if _LEVELS[method] < _OUTPUT.level:
            return None
        return self._proxy_to_logger(method, event, **kw)

    def debug(self, event: str | None = None, **kw: Any) -> Any:
        return self._emit("debug", event, kw)

    def info(self, event: str | None = None, **kw: Any) -> Any:
        return self._emit("info", event, kw)

    def warning(self, event: str | None = None, **kw: Any) -> Any:
        return self._emit("warning", event, kw)

    warn = warning

    def error(self, event: str | None = None, **kw: Any) -> Any:
        return self._emit("error", event, kw)

    def critical(self, event: str | None = None, **kw: Any) -> Any:
        return self._emit("critical", event, kw)

    fatal = critical

    def exception(self, event: str | None = None, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self._emit("error", event, kw)

    def msg(self, event: str | None = None, **kw: Any) -> Any:
        return self._proxy_to_logger("info", event, **kw)


class _StdoutHandler(logging.Handler):
    """The root handler for stdlib records: writes to whatever ``sys.stdout`` is *now*."""

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


def _remove_our_handlers(root: logging.Logger) -> None:
    for handler in list(root.handlers):
        if isinstance(handler, _StdoutHandler):
            root.removeHandler(handler)
            handler.close()


def configure_logging(settings: TelemetrySettings) -> None:
    """Route structlog and stdlib logging to stdout as JSON (or console) lines.

    Idempotent: calling it again replaces the handler, the level and the renderer.
    """
    level = logging.getLevelName(settings.log_level.upper())
    if not isinstance(level, int):
        level = logging.INFO
    _OUTPUT.level = level
    _OUTPUT.console = _use_console(settings)

    root = logging.getLogger()
    _remove_our_handlers(root)
    handler = _StdoutHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_processors(foreign=True),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _render_foreign,
            ],
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    for name in ROUTED_STDLIB_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)

    structlog.configure(
        processors=_EVENT_CHAIN,
        logger_factory=_logger_factory,
        wrapper_class=_BoundLogger,
        context_class=dict,
        cache_logger_on_first_use=True,
    )


def reset_logging() -> None:
    """Undo ``configure_logging`` (for tests): structlog defaults, our handler removed."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _OUTPUT.level = logging.INFO
    _OUTPUT.console = False
    _remove_our_handlers(logging.getLogger())
