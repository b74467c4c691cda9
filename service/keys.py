"""Every shared resource of the app, as a typed key (aiohttp AppKey)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from .api.health import Readiness
    from .auth import ApiKeys
    from .config import Settings
    from .domain.reviews import ReviewService
    from .storage.cache import Cache
    from .storage.db import Database

SETTINGS: web.AppKey[Settings] = web.AppKey("settings")
DB: web.AppKey[Database] = web.AppKey("db")
CACHE: web.AppKey[Cache] = web.AppKey("cache")
REVIEWS: web.AppKey[ReviewService] = web.AppKey("reviews")
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
API_KEYS: web.AppKey[ApiKeys] = web.AppKey("api_keys")
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_client", aiohttp.ClientSession)
