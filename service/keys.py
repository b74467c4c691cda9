"""Every shared resource of the app, as a typed key (aiohttp AppKey): the one place
the service declares them (telemetry declares its own in telemetry/keys.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .api.health import Readiness
    from .auth import ApiKeys
    from .config import Settings
    from .domain.reviews import ReviewService
    from .live.hub import LiveHub
    from .metrics import ReviewMetrics
    from .server import Drain
    from .storage.cache import Cache
    from .storage.db import Database

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
CACHE: web.AppKey[Cache] = web.AppKey("cache")
REVIEWS: web.AppKey[ReviewService] = web.AppKey("reviews")
REVIEW_METRICS: web.AppKey[ReviewMetrics] = web.AppKey("review_metrics")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
DRAIN: web.AppKey[Drain] = web.AppKey("drain")
API_KEYS: web.AppKey[ApiKeys] = web.AppKey("api_keys")
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_client", aiohttp.ClientSession)
OPENAPI_DOCUMENT: web.AppKey[dict[str, Any]] = web.AppKey("openapi_document", dict)
# Who may open the console's live stream (service/live): returns who is asking, or
# raises an error answered 401/403. By default a console session or an API key.
LIVE_AUTHORIZE: web.AppKey[Callable[[web.Request], Awaitable[object]]] = web.AppKey(
    "live_authorize"
)
LIVE_HUB: web.AppKey[LiveHub] = web.AppKey("live_hub")
