"""The console sub-app, mounted at /console/ by service/app.py.

Its middlewares, outermost first: error pages (errors.py), aiohttp-session (with the
PostgreSQL storage of sessions.py), sign-in (signin.py), CSRF (security.py); its
``on_response_prepare`` adds the security headers. aiohttp runs a sub-app's
middlewares and signals only for the requests routed into it: /api is untouched.
Telemetry's middleware on the parent still wraps every console request (route
template label such as ``/console/reviews/{review_id}``, server span, access line).
"""

from __future__ import annotations

import warnings
from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import aiohttp_session
import jinja2
from aiohttp import web

from ..config import Settings
from . import health, queue, review, signin
from .errors import error_pages
from .security import CSRF_FIELD, add_security_headers, csrf_protect
from .sessions import PostgresSessionStorage

# aiohttp-session 2.12 stores the session under plain string request keys, which
# aiohttp 3.14 warns about on every first use; the keys are its own, not ours to fix.
warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module="aiohttp_session")


def _package_dir(name: str) -> Path:
    # Installed as package data (setup.cfg), so the wheel serves them too.
    return Path(str(resources.files("service.console") / name))


def create_console_app(settings: Settings) -> web.Application:
    console = web.Application()
    aiohttp_jinja2.setup(
        console,
        loader=jinja2.FileSystemLoader(_package_dir("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env = aiohttp_jinja2.get_env(console)
    env.globals["csrf_field"] = CSRF_FIELD
    console.middlewares.append(error_pages)
    aiohttp_session.setup(
        console, PostgresSessionStorage(ttl_seconds=settings.console_session_ttl_seconds)
    )
    console.middlewares.append(signin.require_sign_in)
    console.middlewares.append(csrf_protect)
    console.on_response_prepare.append(add_security_headers)

    console.router.add_get("/", _to_queue, name="console_home")
    console.router.add_routes(signin.routes)
    console.router.add_routes(queue.routes)
    console.router.add_routes(review.routes)
    console.router.add_routes(health.routes)
    console.router.add_static("/static/", _package_dir("static"), name="console_static")
    return console


async def _to_queue(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(signin.QUEUE_PATH)
