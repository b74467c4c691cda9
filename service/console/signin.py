"""Sign-in and sign-out, and the middleware that sends anyone not signed in to the
sign-in page."""

from __future__ import annotations

from typing import Final

import aiohttp_jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from ..auth import MAX_TOKEN_CHARS
from ..domain.errors import Unauthenticated
from ..keys import API_KEYS
from . import sessions
from .security import forget_sign_in_token, sign_in_token
from .sessions import CONSOLE_USER

log = structlog.get_logger("hitl.console")

routes = web.RouteTableDef()

SIGN_IN_PATH: Final = "/console/sign-in"
QUEUE_PATH: Final = "/console/queue"
# Routes anyone may reach: the sign-in form itself and the static files it uses.
PUBLIC_ROUTES: Final = frozenset({"console_sign_in", "console_sign_in_submit", "console_static"})


def safe_next(raw: str | None) -> str:
    """Where to go after signing in: a console page of this site, else the queue (a
    ``next`` pointing elsewhere would make the form an open redirect)."""
    if not raw or len(raw) > 2000 or "\\" in raw:
        return QUEUE_PATH
    url = URL(raw)
    if url.is_absolute() or raw.startswith("//") or not url.path.startswith("/console/"):
        return QUEUE_PATH
    if url.path.startswith(SIGN_IN_PATH):
        return QUEUE_PATH
    return url.path_qs


@web.middleware
async def require_sign_in(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Resolve the session into ``request[CONSOLE_USER]``; a page that needs a user
    and has none answers 303 to the sign-in form, which brings the user back."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        raise match_info.http_exception  # a console 404/405: the error page says so
    user = await sessions.current_user(request)
    if user is not None:
        request[CONSOLE_USER] = user
    elif match_info.route.name not in PUBLIC_ROUTES:
        if request.method == "GET" and request.headers.get("Sec-Fetch-Site") == "cross-site":
            return _continue_here(request)
        target = request.path_qs if request.method == "GET" else QUEUE_PATH
        raise web.HTTPSeeOther(str(URL(SIGN_IN_PATH).with_query(next=target)))
    return await handler(request)


def _continue_here(request: web.Request) -> web.Response:
    """A link followed from another site (a chat message, an alert) arrives without
    the SameSite=Strict session cookie. Load the same address again from this site
    (a meta refresh, no script), which sends the cookie: a signed-in reviewer lands on
    the page, anyone else on the sign-in form."""
    return aiohttp_jinja2.render_template(
        "continue.html", request, {"page": "continue", "user": None, "target": request.path_qs}
    )


def _render_sign_in(
    request: web.Request, *, next_path: str, error: str | None = None, status: int = 200
) -> web.Response:
    response = web.Response(status=status)
    token = sign_in_token(request, response)
    page = aiohttp_jinja2.render_string(
        "sign_in.html",
        request,
        {
            "next_path": next_path,
            "error": error,
            "csrf_token": token,
            "page": "sign-in",
            "user": None,
        },
    )
    response.text = page
    response.content_type = "text/html"
    return response


@routes.get("/sign-in", name="console_sign_in")
async def sign_in_form(request: web.Request) -> web.StreamResponse:
    next_path = safe_next(request.query.get("next"))
    if CONSOLE_USER in request:
        raise web.HTTPSeeOther(next_path)
    return _render_sign_in(request, next_path=next_path)


@routes.post("/sign-in", name="console_sign_in_submit")
async def sign_in(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    next_path = safe_next(_text(form.get("next")))
    key = (_text(form.get("api_key")) or "").strip()
    if not key or len(key) > MAX_TOKEN_CHARS:
        return _refused(request, next_path, "Enter an API key.")
    try:
        principal = request.config_dict[API_KEYS].authenticate(f"Bearer {key}")
    except Unauthenticated:
        log.info("console_sign_in_refused", reason="unknown_key")
        return _refused(
            request, next_path, "That API key is not valid (unknown, revoked or expired)."
        )
    role = sessions.console_role(principal)
    if role is None:
        log.info("console_sign_in_refused", reason="no_console_role", user=principal.name)
        return _refused(
            request,
            next_path,
            "That API key has neither the reviewer nor the viewer role, "
            "so it cannot use the console.",
            status=403,
        )
    await sessions.start(request, principal, role)
    log.info("console_signed_in", user=principal.name, role=role)
    response = web.HTTPSeeOther(next_path)
    forget_sign_in_token(response)
    raise response


def _refused(
    request: web.Request, next_path: str, message: str, *, status: int = 401
) -> web.Response:
    return _render_sign_in(request, next_path=next_path, error=message, status=status)


@routes.post("/sign-out", name="console_sign_out")
async def sign_out(request: web.Request) -> web.StreamResponse:
    user = request[CONSOLE_USER]
    await sessions.end(request)
    log.info("console_signed_out", user=user.name)
    raise web.HTTPSeeOther(SIGN_IN_PATH)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
