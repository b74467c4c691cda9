"""Liveness and readiness. Both are open (no API key): orchestrators probe them."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..keys import CACHE, REVIEWS
from .bodies import json_response

routes = web.RouteTableDef()

PROBE_TIMEOUT_SECONDS = 1.0


@routes.get("/api/health", name="health")
async def health(request: web.Request) -> web.Response:
    """Alive: the event loop answers. No I/O, so a slow dependency never kills us."""
    return json_response({"status": "ok"})


@routes.get("/api/health/ready", name="ready")
async def ready(request: web.Request) -> web.Response:
    """Ready: PostgreSQL answers (else 503). Redis down only degrades: the cache is
    optional, every read falls back to PostgreSQL."""
    postgres, redis = await asyncio.gather(_postgres_ok(request), _redis_ok(request))
    checks = {
        "postgres": "ok" if postgres else "unavailable",
        "redis": "ok" if redis else "unavailable",
    }
    if not postgres:
        return json_response({"status": "unavailable", "checks": checks}, status=503)
    return json_response({"status": "ready" if redis else "degraded", "checks": checks})


async def _postgres_ok(request: web.Request) -> bool:
    try:
        await asyncio.wait_for(request.app[REVIEWS].store.ping(), PROBE_TIMEOUT_SECONDS)
    except Exception:  # any failure means "not ready"; the probe must not crash
        return False
    return True


async def _redis_ok(request: web.Request) -> bool:
    try:
        return await asyncio.wait_for(request.app[CACHE].ping(), PROBE_TIMEOUT_SECONDS)
    except TimeoutError:
        return False
