"""Publishing committed review changes to the Redis channel every instance listens to.

Called by the domain after the commit, on the request's path, so it may never fail
nor hold the request up: a dedicated client with no retries and the short Redis
timeout, bounded once more by ``asyncio.timeout``; a failure is logged, counted
(app_errors_total{type="live_publish_failed"}) and swallowed. It goes through the
cache's circuit breaker — the same Redis — so while the breaker is open no publish is
attempted, and its outcome informs the breaker like a cache call does. A change not
published is not lost for the pages: they reload their data every 15 s while the
stream says it is not live, and once after it is live again.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from telemetry import Metrics

from ..domain.ports import ReviewChange
from ..storage.breaker import CircuitBreaker
from .events import encode_change
from .metrics import LiveMetrics

log = structlog.get_logger("hitl.live")

REDIS_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


class RedisFeed:
    """The domain's ReviewFeed (service/domain/ports.py), on Redis pub/sub."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        breaker: CircuitBreaker,
        metrics: LiveMetrics,
        app_metrics: Metrics,
        *,
        timeout_seconds: float,
    ) -> None:
        self._client = client
        self._channel = channel
        self._breaker = breaker
        self._metrics = metrics
        self._app_metrics = app_metrics
        self._timeout = timeout_seconds

    async def publish(self, change: ReviewChange) -> None:
        if not self._breaker.allow():
            self._failed(change, "circuit_open")
            return
        try:
            async with asyncio.timeout(self._timeout):
                await self._client.publish(self._channel, encode_change(change))
        except REDIS_FAILURES as exc:
            self._breaker.record_failure()
            self._failed(change, type(exc).__name__)
            return
        except Exception:
            # Not Redis: a bug here. Still not the request's failure: it committed.
            log.exception("live_publish_crashed", event_type=change.type)
            self._failed(change, "crash")
            return
        self._breaker.record_success()
        self._metrics.record_published(change.type)

    def _failed(self, change: ReviewChange, error: str) -> None:
        self._app_metrics.record_app_error(type="live_publish_failed", severity="warning")
        log.warning("live_publish_failed", event_type=change.type, error=error)
