"""Live updates of the reviewer console (issue 13): every open queue and review page
hears of a submission or a decision, made on any replica, within a second.

    domain (after commit) --RedisFeed.publish--> Redis channel "<prefix>live:reviews"
        --> LiveSubscriber (one per instance) --> LiveHub --> one bounded queue per
        stream --> GET /console/live (Server-Sent Events) --> live.js in the page

``setup_live(app)`` wires it into the app factory: the route (on the main app, at
its exact path: a plain route resolves before the /console/ sub-app's prefix, and the
console's middlewares do not run on it), the default authorisation
(``app[LIVE_AUTHORIZE]``: a console session or an API key; replaceable), the
metrics, the end of every stream on shutdown and at the start of a SIGTERM drain,
and a cleanup context that opens the Redis clients, starts the subscriber and hands
the feed to the review service. The /api routes gain nothing: no middleware, no
signal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import telemetry
from telemetry import instrument_redis

from ..background import background
from ..keys import CACHE, DRAIN, LIVE_AUTHORIZE, LIVE_HUB, REVIEWS, SETTINGS
from .endpoint import PATH, LiveEndpoint, console_user_or_api_key
from .events import channel_name
from .hub import LiveHub
from .metrics import LiveMetrics
from .publisher import RedisFeed
from .subscriber import LiveSubscriber

__all__ = ["PATH", "setup_live"]


def setup_live(
    app: web.Application,
    *,
    min_backoff_seconds: float = 0.1,
    max_backoff_seconds: float = 2.0,
    ping_seconds: float = 5.0,
) -> None:
    """Call after ``setup_draining`` and after the review service's cleanup context
    is appended (the live context hands it the feed)."""
    settings = app[SETTINGS]
    metrics = LiveMetrics(app[telemetry.METRICS])
    hub = LiveHub(metrics, queue_size=settings.live_queue_size)
    app[LIVE_HUB] = hub
    app[LIVE_AUTHORIZE] = console_user_or_api_key
    app.router.add_get(
        PATH,
        LiveEndpoint(keepalive_seconds=settings.live_keepalive_seconds).handle,
        name="console_live",
        allow_head=False,
    )
    # A drain starts on SIGTERM (service/server.py); on_shutdown covers every other
    # stop (a test server, run_app). Either way the streams end before the wait for
    # in-flight requests, which they would otherwise hold up to its limit.
    app[DRAIN].on_start.append(hub.end_all)

    async def end_streams(app: web.Application) -> None:
        hub.end_all()

    app.on_shutdown.append(end_streams)

    async def live_ctx(app: web.Application) -> AsyncIterator[None]:
        channel = channel_name(settings.redis_key_prefix)
        timeout = settings.redis_timeout_seconds

        def client(*, read_timeout: float | None) -> aioredis.Redis:
            # No retries: a failure is reported at once (publish: swallowed; subscribe:
            # the subscriber's own backoff), never stretched by the client.
            return aioredis.from_url(
                settings.redis_url,
                socket_timeout=read_timeout,
                socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0),
            )

        publisher_client = client(read_timeout=timeout)
        instrument_redis(app, publisher_client)
        feed = RedisFeed(
            publisher_client,
            channel,
            app[CACHE].breaker,
            metrics,
            app[telemetry.METRICS],
            timeout_seconds=timeout,
        )
        app[REVIEWS].feed = feed
        subscriber = LiveSubscriber(
            # The subscription's reads wait for messages; get_message bounds each.
            lambda: client(read_timeout=None),
            channel,
            hub,
            ping_seconds=ping_seconds,
            min_backoff_seconds=min_backoff_seconds,
            max_backoff_seconds=max_backoff_seconds,
        )
        try:
            async with background("hitl-live-subscriber", subscriber.run):
                yield
        finally:
            hub.end_all()
            await publisher_client.aclose()

    app.cleanup_ctx.append(live_ctx)
