"""The reviewer console: server-rendered pages under /console/ (issue 13).

A sub-app (app.py) with its own middlewares — error pages, sessions, sign-in, CSRF —
and security headers, none of which run on /api. Pages call the same domain service
as the JSON API (service/domain/reviews.py); the console only reads forms and renders.
"""

from __future__ import annotations

from .app import create_console_app

__all__ = ["create_console_app"]
