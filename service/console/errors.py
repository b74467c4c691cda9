"""Error pages: what a console request raised, as an HTML page with the same status
the JSON API would answer (the API's problem table decides, service/api/problems.py).

Domain errors are counted in app_errors_total as telemetry counts the API's; a crash
(an exception the table does not know) is left to telemetry's middleware, which logs
it with its traceback and answers 500.
"""

from __future__ import annotations

from http import HTTPStatus

import aiohttp_jinja2
from aiohttp import web
from aiohttp.typedefs import Handler

import telemetry
from telemetry import http_title

from ..api.problems import problem_for
from ..domain.errors import ValidationFailed
from .sessions import CONSOLE_USER


def render_error(
    request: web.Request, status: int, message: str, *, headers: dict[str, str] | None = None
) -> web.Response:
    response = aiohttp_jinja2.render_template(
        "error.html",
        request,
        {
            "page": "error",
            "title": http_title(status, HTTPStatus(status).phrase),
            "status": status,
            "message": message,
            "user": request.get(CONSOLE_USER),
        },
        status=status,
    )
    if headers:
        response.headers.update(headers)
    return response


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise  # a redirect
        return render_error(request, exc.status, _http_message(exc))
    except ValidationFailed as exc:
        # A console page's only input outside its forms is the query (filters, cursor):
        # a bad query is a bad request; the forms handle their own errors.
        message = "; ".join(f"{e.field} {e.message}" for e in exc.errors)
        return render_error(request, 400, f"The address is not valid: {message}.")
    except Exception as exc:
        problem = problem_for(exc)
        if problem is None:
            raise  # a crash: telemetry logs it and answers 500
        if problem.error_type is not None:
            request.config_dict[telemetry.METRICS].record_app_error(
                type=problem.error_type, severity=problem.severity
            )
        headers = {k: v for k, v in problem.headers.items() if k.lower() != "www-authenticate"}
        return render_error(
            request, problem.status, problem.detail or problem.title, headers=headers
        )


def _http_message(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "There is no such page in the console."
    if exc.status == 405:
        return "This page cannot be used that way."
    text = exc.text or ""
    # aiohttp's default bodies read "404: Not Found"; ours are sentences.
    return exc.reason if not text or text.startswith(f"{exc.status}:") else text
