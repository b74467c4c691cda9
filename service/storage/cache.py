"""Redis as a cache, never the truth.

Every call goes through one wrapper that counts hits, misses, sets, deletes and
errors. A Redis failure or timeout is logged, counted and swallowed: the caller falls
back to PostgreSQL and the request still succeeds.
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

log = structlog.get_logger("hitl.cache")

_REDIS_FAILURES = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


class Cache:
    def __init__(self, client: aioredis.Redis, metrics: Metrics, *, prefix: str) -> None:
        self.client = client
        self._metrics = metrics
        self._prefix = prefix

    def key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def get_json(self, key: str) -> Any | None:
        async with self._guard("get"):
            raw = await self.client.get(key)
            self._metrics.record_cache("get", "miss" if raw is None else "hit")
            return None if raw is None else json.loads(raw)
        return None

    async def set_json(
        self, key: str, value: Any, ttl_seconds: int, *, only_if_absent: bool = False
    ) -> None:
        async with self._guard("set"):
            await self.client.set(
                key, json.dumps(value, default=str), ex=ttl_seconds, nx=only_if_absent
            )
            self._metrics.record_cache("set", "ok")

    async def delete(self, *keys: str) -> None:
        async with self._guard("delete"):
            await self.client.delete(*keys)
            self._metrics.record_cache("delete", "ok")

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except _REDIS_FAILURES:
            return False

    async def evicted_keys(self) -> int | None:
        """Keys Redis evicted under memory pressure since it started (INFO stats
        evicted_keys); None when Redis cannot be asked. TTL expiry is not an eviction."""
        try:
            stats = await self.client.info("stats")
        except _REDIS_FAILURES:
            return None
        return int(stats.get("evicted_keys", 0))

    @contextlib.asynccontextmanager
    async def _guard(self, operation: str) -> AsyncIterator[None]:
        try:
            yield
        except _REDIS_FAILURES as exc:
            self._metrics.record_cache(operation, "error")
            self._metrics.record_app_error(type="cache_unavailable", severity="warning")
            log.warning("cache_unavailable", operation=operation, error=type(exc).__name__)
