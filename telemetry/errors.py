"""The innermost telemetry middleware: every failure becomes a problem+json response.

Domain exceptions are translated by the service's ``ProblemMapper``; aiohttp's own
HTTP errors keep their status; anything else is a crash: logged once with its
traceback, counted in ``app_exceptions_total`` and answered with a 500 that names the
request id, never the traceback.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .keys import REQUEST_ID
from .metrics import Metrics
from .problems import Problem, ProblemMapper, http_title, problem_response
from .settings import TelemetrySettings

log = structlog.get_logger("telemetry.errors")


def _problem_from_http_exception(exc: web.HTTPException) -> Problem:
    headers = {
        k: v for k, v in exc.headers.items() if k.lower() not in {"content-type", "content-length"}
    }
    detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
    return Problem(
        status=exc.status,
        title=http_title(exc.status, exc.reason),
        detail=detail,
        headers=headers,
    )


def errors_middleware(
    settings: TelemetrySettings, metrics: Metrics, mapper: ProblemMapper | None
) -> Middleware:
    type_base = settings.problem_type_base

    @web.middleware
    async def handle_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            problem = _problem_from_http_exception(exc)
        except Exception as exc:
            mapped = mapper(exc) if mapper is not None else None
            if mapped is None:
                return _crash_response(request, metrics, exc, type_base)
            problem = mapped
        if problem.error_type is not None:
            metrics.record_app_error(type=problem.error_type, severity=problem.severity)
        return problem_response(problem, type_base=type_base, instance=request.path)

    return handle_errors


def _crash_response(
    request: web.Request, metrics: Metrics, exc: Exception, type_base: str
) -> web.Response:
    request_id = request.get(REQUEST_ID, "")
    kind = type(exc).__name__
    metrics.record_exception(type=kind)
    span = trace.get_current_span()
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, kind))
    log.error("unhandled_exception", exc_info=exc, exception_type=kind, request_id=request_id)
    problem = Problem(
        status=500,
        title="Internal Server Error",
        slug="internal-error",
        detail="The server failed to handle this request; quote the request id when reporting it.",
    )
    return problem_response(
        problem, type_base=type_base, instance=request.path, request_id=request_id
    )


def setup_errors(
    app: web.Application,
    settings: TelemetrySettings,
    metrics: Metrics,
    mapper: ProblemMapper | None,
) -> None:
    app.middlewares.append(errors_middleware(settings, metrics, mapper))
