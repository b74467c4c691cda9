"""Redis as a cache, never the truth.

Every call goes through one wrapper that counts hits, misses, sets, deletes and
errors. A Redis failure or timeout is logged, counted and swallowed: the caller falls
back to PostgreSQL and the request still succeeds. Every call also passes a circuit
breaker (breaker.py): after a few failures in a row the cache is skipped for a
cool-down, so a hung Redis stops costing each request its timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
import structlog

from telemetry import Metrics

from .breaker import BreakerPolicy, CircuitBreaker

log = structlog.get_logger("hitl.cache")

_REDIS_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)
# Keys whose write missed Redis, deleted when it answers again. Beyond this many
# (a long outage under heavy writes) the rest is left to expire with its TTL.
MAX_STALE_KEYS = 10_000


class Cache:
    def __init__(
        self,
        client: aioredis.Redis,
        metrics: Metrics,
        *,
        prefix: str,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self._metrics = metrics
        self._prefix = prefix
        self.breaker = breaker if breaker is not None else CircuitBreaker(BreakerPolicy())
        self._stale: set[str] = set()
        self._stale_overflowed = False

    def key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def get_json(self, key: str) -> Any | None:
        # A call the open breaker turns away is not a Redis call: neither an error nor
        # a miss. The circuit gauge and the open-transitions counter tell the operator.
        if not self.breaker.allow():
            return None
        async with self._guard("get"):
            await self._forget_stale()
            raw = await self.client.get(key)
            self._metrics.record_cache("get", "miss" if raw is None else "hit")
            return None if raw is None else json.loads(raw)
        return None

    async def set_json(
        self, key: str, value: Any, ttl_seconds: int, *, only_if_absent: bool = False
    ) -> None:
        if not self.breaker.allow():
            self._remember_stale(key)
            return
        async with self._guard("set", key):
            await self._forget_stale()
            await self.client.set(
                key, json.dumps(value, default=str), ex=ttl_seconds, nx=only_if_absent
            )
            self._metrics.record_cache("set", "ok")

    async def delete(self, *keys: str) -> None:
        if not self.breaker.allow():
            self._remember_stale(*keys)
            return
        async with self._guard("delete", *keys):
            await self._forget_stale()
            await self.client.delete(*keys)
            self._metrics.record_cache("delete", "ok")

    async def ping(self) -> bool:
        """Readiness' question. While the breaker is open it answers False without
        asking Redis; once the cool-down is over the ping is the half-open probe."""
        if not self.breaker.allow():
            return False
        try:
            await self._forget_stale()
            answer = bool(await self.client.ping())
        except _REDIS_FAILURES:
            self.breaker.record_failure()
            return False
        self.breaker.record_success()
        return answer

    async def evicted_keys(self) -> int | None:
        """Keys Redis evicted under memory pressure since it started (INFO stats
        evicted_keys); None when Redis cannot be asked. TTL expiry is not an eviction.

        A background poll: it does not ask Redis while the breaker is open, and its
        outcome does not move the breaker (requests and readiness do)."""
        if self.breaker.is_open:
            return None
        try:
            stats = await self.client.info("stats")
        except _REDIS_FAILURES:
            return None
        return int(stats.get("evicted_keys", 0))

    @contextlib.asynccontextmanager
    async def _guard(self, operation: str, *written: str) -> AsyncIterator[None]:
        """Run one Redis call that the breaker allowed; tell the breaker how it ended.
        ``written``: the keys a set or delete was to change."""
        try:
            yield
        except _REDIS_FAILURES as exc:
            self.breaker.record_failure()
            self._remember_stale(*written)
            self._metrics.record_cache(operation, "error")
            self._metrics.record_app_error(type="cache_unavailable", severity="warning")
            log.warning("cache_unavailable", operation=operation, error=type(exc).__name__)
        else:
            self.breaker.record_success()

    def _remember_stale(self, *keys: str) -> None:
        """A write that did not reach Redis (a decision's new state, an invalidation)
        may leave an older value there, e.g. behind a SIGSTOPped Redis that resumes:
        delete those keys once Redis answers again."""
        if len(self._stale) + len(keys) > MAX_STALE_KEYS:
            if not self._stale_overflowed:
                log.error("cache_stale_keys_overflow", limit=MAX_STALE_KEYS)
            self._stale_overflowed = True
            return
        self._stale.update(keys)

    async def _forget_stale(self) -> None:
        """Before a call, delete the keys whose writes missed Redis, so nothing stale
        is read once it answers again. Raises (keeping them) if Redis fails: the
        call fails with it."""
        if not self._stale:
            return
        keys, self._stale = sorted(self._stale), set()
        try:
            for start in range(0, len(keys), 500):
                await self.client.delete(*keys[start : start + 500])
        except BaseException:
            self._stale.update(keys)
            raise
        self._stale_overflowed = False
        log.info("cache_stale_keys_deleted", count=len(keys))
