"""RFC 9457 problem details: the one error shape every response uses."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"

# RFC 9110's reason phrases (Python 3.11's HTTPStatus still has the pre-9110 names for
# 413 and 422): the one source of problem titles, for telemetry and the service alike.
HTTP_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def http_title(status: int, fallback: str = "Error") -> str:
    """The problem title for an HTTP status."""
    return HTTP_TITLES.get(status, fallback)


@dataclass(frozen=True, slots=True)
class Problem:
    """An error as the client sees it, plus how telemetry should count it.

    ``error_type``/``severity`` label ``app_errors_total``; ``None`` means the
    problem is not an application error worth counting (e.g. a plain 404 route miss).
    """

    status: int
    title: str
    slug: str = "about:blank"
    detail: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    error_type: str | None = None
    severity: str = "warning"
    headers: Mapping[str, str] = field(default_factory=dict)

    def type_uri(self, base: str) -> str:
        """``base`` + slug (``TelemetrySettings.problem_type_base``); about:blank as is."""
        return "about:blank" if self.slug == "about:blank" else base + self.slug

    def body(self, type_base: str, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.type_uri(type_base),
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


# Maps an exception raised by a handler to a Problem, or None when it is unknown
# (then it is a crash: 500, counted in app_exceptions_total).
ProblemMapper = Callable[[BaseException], "Problem | None"]


def problem_response(
    problem: Problem, *, type_base: str, instance: str | None = None, **extra: Any
) -> web.Response:
    body = problem.body(type_base, instance)
    body.update(extra)
    return web.Response(
        status=problem.status,
        text=json.dumps(body),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=dict(problem.headers),
    )
