"""Liveness and readiness. Both are open (no API key): orchestrators probe them."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from ..keys import DRAIN, READINESS
from .bodies import json_response

routes = web.RouteTableDef()

PROBE_TIMEOUT_SECONDS = 1.0

# True when the dependency answers; False or an exception when it does not.
Probe = Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Readiness:
    """What readiness asks, and nothing more: the app factory builds it from the
    database's and the cache's ping."""

    postgres: Probe
    redis: Probe
    # True while the cache's circuit breaker skips Redis: shown as "circuit-open".
    redis_circuit_open: Callable[[], bool] = lambda: False


@routes.get("/api/health", name="health")
async def health(request: web.Request) -> web.Response:
    """Alive: the event loop answers. No I/O, so a slow dependency never kills us."""
    return json_response({"status": "ok"})


@routes.get("/api/health/ready", name="ready")
async def ready(request: web.Request) -> web.Response:
    """Ready: PostgreSQL answers (else 503). Redis down only degrades: the cache is
    optional, every read falls back to PostgreSQL. Shutting down: 503 at once, so a
    load balancer stops sending while the requests that still come are served."""
    if request.app[DRAIN].draining:
        return json_response({"status": "draining", "checks": {}}, status=503)
    readiness = request.app[READINESS]
    postgres, redis = await asyncio.gather(_ok(readiness.postgres), _ok(readiness.redis))
    checks = {
        "postgres": "ok" if postgres else "unavailable",
        "redis": "ok" if redis else _redis_down(readiness),
    }
    if not postgres:
        return json_response({"status": "unavailable", "checks": checks}, status=503)
    return json_response({"status": "ready" if redis else "degraded", "checks": checks})


def _redis_down(readiness: Readiness) -> str:
    return "circuit-open" if readiness.redis_circuit_open() else "unavailable"


async def _ok(probe: Probe) -> bool:
    try:
        return await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
    except Exception:  # any failure means "not ready"; the probe must not crash
        return False
