"""Publishing on the request's path (service/live/publisher.py) against a Redis that
accepts connections and never answers: every publish returns within its timeout,
raises nothing, is counted as failed, and once the circuit breaker opens Redis is
not even asked."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import telemetry
from service.config import telemetry_settings
from service.domain.ports import ReviewChange
from service.live.metrics import LiveMetrics
from service.live.publisher import RedisFeed
from service.storage.breaker import BreakerPolicy, CircuitBreaker
from tests.prom import parse_exposition

TIMEOUT = 0.1


def change() -> ReviewChange:
    now = datetime.now(UTC)
    return ReviewChange(
        "review.decided", "r1", "approved", "high", "scanner", "CVE-2026-1", "lodash",
        "approve", "alice", now, now,
    )


async def test_a_hung_redis_costs_a_publish_its_timeout_then_nothing() -> None:
    received: list[bytes] = []
    connections: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while data := await reader.read(65536):
            received.append(data)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.from_url(
        f"redis://127.0.0.1:{port}/0",
        socket_timeout=TIMEOUT,
        socket_connect_timeout=TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    metrics = telemetry.Metrics(telemetry_settings())
    live_metrics = LiveMetrics(metrics)
    breaker = CircuitBreaker(BreakerPolicy(failure_threshold=3, cool_down_seconds=60))
    feed = RedisFeed(client, "c", breaker, live_metrics, metrics, timeout_seconds=TIMEOUT)
    try:
        for _ in range(3):
            started = time.monotonic()
            await feed.publish(change())  # raises nothing
            assert time.monotonic() - started < 5 * TIMEOUT
        assert breaker.is_open
        asked = sum(len(chunk) for chunk in received)
        assert asked > 0  # the three attempts did reach the (silent) server

        started = time.monotonic()
        for _ in range(20):
            await feed.publish(change())
        assert time.monotonic() - started < TIMEOUT  # the open breaker turns them away
        await asyncio.sleep(0.05)
        assert sum(len(chunk) for chunk in received) == asked  # Redis was not asked

        body, _ = await metrics.render([])
        exposition = parse_exposition(body.decode())
        assert exposition.value(
            "app_errors_total", type="live_publish_failed", severity="warning"
        ) == 23
        assert exposition.value("hitl_live_events_published_total", type="review.decided") == 0
    finally:
        await client.aclose()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
