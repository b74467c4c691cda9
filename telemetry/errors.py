"""Every failure becomes a problem+json response.

Domain exceptions are translated by the service's ``ProblemMapper``; aiohttp's own
HTTP errors keep their status; anything else is a crash: logged once with its
traceback, counted in ``app_exceptions_total`` and answered with a 500 that names the
request id, never the traceback.
"""

from __future__ import annotations

import structlog
from aiohttp import web
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


class ErrorResponder:
    """Turns what a handler raised into the response the client gets.

    Called by the request middleware (telemetry/middleware.py) innermost, around the
    handler, while the request's server span is current.
    """

    def __init__(
        self, settings: TelemetrySettings, metrics: Metrics, mapper: ProblemMapper | None
    ) -> None:
        self._type_base = settings.problem_type_base
        self._metrics = metrics
        self._mapper = mapper

    def for_http_exception(self, request: web.Request, exc: web.HTTPException) -> web.Response:
        """aiohttp's own 4xx/5xx (a route miss, a 405, a 413): a problem with its status."""
        return self._problem(request, _problem_from_http_exception(exc))

    def for_exception(self, request: web.Request, exc: Exception) -> web.Response:
        """A domain error the mapper knows, or a crash."""
        problem = self._mapper(exc) if self._mapper is not None else None
        if problem is None:
            return self._crash(request, exc)
        return self._problem(request, problem)

    def _problem(self, request: web.Request, problem: Problem) -> web.Response:
        if problem.error_type is not None:
            self._metrics.record_app_error(type=problem.error_type, severity=problem.severity)
        return problem_response(problem, type_base=self._type_base, instance=request.path)

    def _crash(self, request: web.Request, exc: Exception) -> web.Response:
        request_id = request.get(REQUEST_ID, "")
        kind = type(exc).__name__
        self._metrics.record_exception(type=kind)
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, kind))
        log.error("unhandled_exception", exc_info=exc, exception_type=kind, request_id=request_id)
        return problem_response(
            _CRASH, type_base=self._type_base, instance=request.path, request_id=request_id
        )


_CRASH = Problem(
    status=500,
    title="Internal Server Error",
    slug="internal-error",
    detail="The server failed to handle this request; quote the request id when reporting it.",
)
