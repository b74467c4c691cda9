"""Browser-facing protections of the console: response headers and CSRF.

Headers are added by the sub-app's ``on_response_prepare`` signal, which aiohttp sends
only for requests routed into the sub-app, so every console response gets them —
pages, redirects, static files, error pages, even a crash's problem+json from the
parent's telemetry middleware — while /api gains nothing.

CSRF: every POST form carries ``csrf_token``. Signed in, it must equal the session's
token; on the sign-in form (no session yet) it must equal the short-lived
``hitl_signin`` cookie set with the form (double submit). Both cookies are
SameSite=Strict, and a cross-site Origin is refused too. A refused POST changes
nothing: the check runs before any handler.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler
from yarl import URL

from .sessions import CONSOLE_USER, clear_cookie, set_cookie

CONTENT_SECURITY_POLICY: Final = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)

SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}

STATIC_PREFIX: Final = "/console/static/"

SIGN_IN_COOKIE: Final = "hitl_signin"
SIGN_IN_COOKIE_SECONDS: Final = 3600
CSRF_FIELD: Final = "csrf_token"
# The one form posted without a session: its token is the hitl_signin cookie's.
SIGN_IN_ROUTE: Final = "console_sign_in_submit"


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # Pages show review data and a CSRF token: never kept by a browser or a proxy.
    # Static files may be kept but are revalidated (their ETag / Last-Modified).
    if request.path.startswith(STATIC_PREFIX) and response.status < 400:
        response.headers.setdefault(hdrs.CACHE_CONTROL, "no-cache")
    else:
        response.headers[hdrs.CACHE_CONTROL] = "no-store"


class CsrfRefused(web.HTTPForbidden):
    """A POST without the right CSRF token, or from another origin."""

    def __init__(self, why: str) -> None:
        super().__init__(text=why)
        self.why = why


def sign_in_token(request: web.Request, response: web.StreamResponse) -> str:
    """The sign-in form's CSRF token: the browser's ``hitl_signin`` cookie, set (with
    a fresh random value) when it has none."""
    token = request.cookies.get(SIGN_IN_COOKIE, "")
    if len(token) != 43:
        token = secrets.token_urlsafe(32)
        set_cookie(request, response, SIGN_IN_COOKIE, token, SIGN_IN_COOKIE_SECONDS)
    return token


def forget_sign_in_token(response: web.StreamResponse) -> None:
    clear_cookie(response, SIGN_IN_COOKIE)


def _same_origin(request: web.Request) -> bool:
    """False only when the browser says the form came from another origin. Browsers
    send Origin on every POST; a client that sends none (curl) still needs the token."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return True
    if origin == "null":
        return False
    theirs = URL(origin)
    return theirs.host == request.url.host and theirs.port == request.url.port


def _matches(sent: str | None, expected: str) -> bool:
    return bool(sent) and bool(expected) and hmac.compare_digest(str(sent), expected)


async def check_csrf(request: web.Request, form: Mapping[str, object]) -> None:
    """Raise CsrfRefused unless this POST carries the token its form was given."""
    if not _same_origin(request):
        raise CsrfRefused("This form was sent from another site.")
    sent = form.get(CSRF_FIELD)
    sent_text = sent if isinstance(sent, str) else None
    user = request.get(CONSOLE_USER)
    if request.match_info.route.name == SIGN_IN_ROUTE or user is None:
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
    else:
        expected = user.csrf_token
    if not _matches(sent_text, expected):
        raise CsrfRefused(
            "The form's security token is missing or out of date. "
            "Reload the page and send the form again."
        )


@web.middleware
async def csrf_protect(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the CSRF token of every unsafe request before its handler runs (it runs
    after sign-in is resolved, so it knows whose token to expect)."""
    if request.method not in (hdrs.METH_GET, hdrs.METH_HEAD, hdrs.METH_OPTIONS):
        await check_csrf(request, await request.post())
    return await handler(request)
