"""The application factory: everything the service is, built from one Settings."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import aiohttp
import redis.asyncio as aioredis
import structlog
from aiohttp import web

import telemetry
from telemetry import client_trace_configs, create_aiopg_pool, instrument_redis, untraced

from .api import apv, health, openapi, reviews, testing
from .api.health import Readiness
from .api.problems import APP_ERROR_LABELS, problem_for
from .auth import ApiKeys
from .background import Stopping, background
from .config import Settings
from .console import create_console_app
from .domain.queue import QueueMonitor
from .domain.reviews import ReviewPolicy, ReviewService
from .keyreload import api_keys_ctx
from .keys import (
    API_KEYS,
    CACHE,
    DB,
    HTTP_CLIENT,
    OPENAPI_DOCUMENT,
    READINESS,
    REVIEW_METRICS,
    REVIEWS,
    SETTINGS,
)
from .live import setup_live
from .metrics import ReviewMetrics
from .outbox import OutboxPolicy, OutboxWorker
from .retention import OutboxPruner, RetentionPolicy
from .server import setup_draining
from .storage.breaker import BreakerPolicy, CircuitBreaker, CircuitState
from .storage.cache import Cache
from .storage.db import Database, open_pool
from .storage.migrate import apply_migrations
from .storage.outbox import OutboxStore
from .storage.reviews import ReviewStore

log = structlog.get_logger("hitl.app")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app[API_KEYS] = ApiKeys.load(settings.api_keys_file)
    metrics = telemetry.setup(
        app, settings.telemetry, problem_mapper=problem_for, app_error_labels=APP_ERROR_LABELS
    )
    app[REVIEW_METRICS] = ReviewMetrics(metrics, settings.telemetry)
    setup_draining(app)

    app.router.add_routes(health.routes)
    app.router.add_routes(reviews.routes)
    app.router.add_routes(apv.routes)
    app.router.add_routes(openapi.routes)
    if settings.enable_test_routes:
        app.router.add_routes(testing.routes)
    app[OPENAPI_DOCUMENT] = openapi.build_document(include_test_routes=settings.enable_test_routes)
    # The reviewer console: a sub-app, so its middlewares (sessions, CSRF, headers)
    # run on /console/ requests only, never on /api.
    app.add_subapp("/console/", create_console_app(settings))

    # Order matters: each context may use what the ones before it opened, and they
    # close in reverse.
    app.cleanup_ctx.append(database_ctx)
    app.cleanup_ctx.append(redis_ctx)
    app.cleanup_ctx.append(readiness_ctx)
    app.cleanup_ctx.append(http_client_ctx)
    app.cleanup_ctx.append(review_service_ctx)
    app.cleanup_ctx.append(outbox_ctx)
    app.cleanup_ctx.append(outbox_retention_ctx)
    app.cleanup_ctx.append(cache_evictions_ctx)
    app.cleanup_ctx.append(api_keys_ctx)
    # Live updates: GET /console/live on this app (a plain route resolves before the
    # sub-app's prefix), and the feed handed to the review service once it exists.
    setup_live(app)

    async def collect_pool_usage() -> None:
        if DB in app:
            active, idle, maximum = app[DB].pool_usage()
            metrics.set_db_pool(active=active, idle=idle, maximum=maximum)

    metrics.add_collector(collect_pool_usage)
    return app


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]

    pool = await open_pool(
        functools.partial(create_aiopg_pool, app),
        settings.database_url,
        minsize=settings.db_pool_min,
        maxsize=settings.db_pool_max,
        timeout=settings.db_timeout_seconds,
        deadline_seconds=settings.db_connect_deadline_seconds,
    )
    try:
        await apply_migrations(settings.database_url)
        app[DB] = Database(pool, app[telemetry.METRICS])
        yield
    finally:
        pool.close()
        await pool.wait_closed()


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    # Short timeouts and no retries: the cache is optional, and a slow Redis must cost
    # a request at most a fraction of a second before it falls back to PostgreSQL.
    client = aioredis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry_on_timeout=False,
        health_check_interval=30,
    )
    instrument_redis(app, client)
    review_metrics = app[REVIEW_METRICS]

    def circuit_changed(state: CircuitState) -> None:
        review_metrics.set_cache_circuit_state(int(state), opened=state is CircuitState.OPEN)
        log.warning("cache_circuit_" + state.name.lower())

    breaker = CircuitBreaker(
        BreakerPolicy(
            failure_threshold=settings.cache_breaker_failures,
            cool_down_seconds=settings.cache_breaker_cool_down_seconds,
        ),
        on_change=circuit_changed,
    )
    app[CACHE] = Cache(
        client, app[telemetry.METRICS], prefix=settings.redis_key_prefix, breaker=breaker
    )
    yield
    await client.aclose()


async def readiness_ctx(app: web.Application) -> AsyncIterator[None]:
    # /api/health/ready asks these two probes and nothing else of the app.
    cache = app[CACHE]
    app[READINESS] = Readiness(
        postgres=app[DB].ping, redis=cache.ping, redis_circuit_open=lambda: cache.breaker.is_open
    )
    yield


async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    session = aiohttp.ClientSession(trace_configs=client_trace_configs(app))
    app[HTTP_CLIENT] = session
    yield
    await session.close()


async def review_service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    policy = ReviewPolicy(
        anomaly_threshold=settings.anomaly_threshold,
        review_cache_ttl_seconds=settings.review_cache_ttl_seconds,
        stats_cache_ttl_seconds=settings.stats_cache_ttl_seconds,
        stats_window_seconds=settings.stats_window_seconds,
        notify_decisions=settings.decision_webhook_url is not None,
    )
    store = ReviewStore(app[DB])
    app[REVIEWS] = ReviewService(
        store,
        app[CACHE],
        app[REVIEW_METRICS],
        policy,
        trace_carrier=telemetry.context_carrier,
    )
    queue = QueueMonitor(
        store, app[REVIEW_METRICS], interval_seconds=settings.queue_metrics_interval_seconds
    )
    app[telemetry.METRICS].add_collector(queue.refresh)
    yield
    await queue.close()


async def outbox_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if settings.decision_webhook_url is None:
        yield
        return
    metrics = app[REVIEW_METRICS]
    worker = OutboxWorker(
        OutboxStore(app[DB]),
        app[HTTP_CLIENT],
        metrics,
        OutboxPolicy(
            url=settings.decision_webhook_url,
            timeout_seconds=settings.webhook_timeout_seconds,
            base_backoff_seconds=settings.webhook_base_backoff_seconds,
            max_backoff_seconds=settings.webhook_max_backoff_seconds,
            poll_seconds=settings.webhook_poll_seconds,
            concurrency=settings.webhook_concurrency,
            lease_seconds=settings.webhook_lease_seconds,
        ),
        functools.partial(telemetry.continue_trace, app),
    )
    app[REVIEWS].on_notification = worker.wake

    async def collect_outbox_depth() -> None:
        depth, oldest_seconds = await worker.backlog()
        metrics.set_outbox_depth(depth)
        metrics.set_outbox_oldest_pending(oldest_seconds)

    app[telemetry.METRICS].add_collector(collect_outbox_depth)
    async with background("hitl-outbox", worker.run):
        yield


async def outbox_retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Prune delivered outbox rows past their retention (service/retention.py). Runs
    even with the webhook off: rows delivered before it was turned off age out too."""
    settings = app[SETTINGS]
    pruner = OutboxPruner(
        OutboxStore(app[DB]),
        app[REVIEW_METRICS],
        RetentionPolicy(
            retention_seconds=settings.outbox_retention_seconds,
            interval_seconds=settings.outbox_prune_interval_seconds,
        ),
    )
    async with background("hitl-outbox-retention", pruner.run):
        yield


async def cache_evictions_ctx(app: web.Application) -> AsyncIterator[None]:
    """Feed cache_evictions_total with the growth of Redis' evicted_keys, polled in
    the background (a restart of Redis resets it: that drop is skipped). The poll goes
    through the cache's circuit breaker: while it is open, Redis is not asked."""
    cache = app[CACHE]
    metrics = app[telemetry.METRICS]
    interval = app[SETTINGS].cache_stats_interval_seconds

    async def poll(stopping: Stopping) -> None:
        # Machine chatter: an INFO every few seconds must not start a trace each time.
        with untraced():
            last = await cache.evicted_keys()
            while not stopping.is_set:
                await stopping.sleep(interval)
                now = await cache.evicted_keys()
                if now is not None and last is not None and now > last:
                    metrics.record_cache_evictions(now - last)
                last = now if now is not None else last

    async with background("hitl-cache-evictions", poll):
        yield
