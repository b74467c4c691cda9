"""The subscriber on a throwaway Redis that hangs (SIGSTOP: connections accepted,
nothing answered): silence on the channel is noticed by its pings, the hub goes not
live (every stream is told), and it is live again once Redis answers."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import telemetry
from service.background import background
from service.config import telemetry_settings
from service.live.hub import LiveHub
from service.live.metrics import LiveMetrics
from service.live.subscriber import LiveSubscriber
from tests.service.conftest import ThrowawayRedis

from .conftest import wait_until

PING = 0.3


async def test_a_hung_redis_is_noticed_by_pings_and_its_return_too(
    throwaway_redis: ThrowawayRedis,
) -> None:
    hub = LiveHub(LiveMetrics(telemetry.Metrics(telemetry_settings())), queue_size=4)
    stream = hub.open(lambda: None)

    def connect() -> aioredis.Redis:
        return aioredis.from_url(
            throwaway_redis.url, socket_connect_timeout=PING, retry=Retry(NoBackoff(), 0)
        )

    subscriber = LiveSubscriber(
        connect, "chan", hub, ping_seconds=PING, min_backoff_seconds=0.05, max_backoff_seconds=0.2
    )
    async with background("test-live-subscriber", subscriber.run):
        await wait_until(lambda: hub.live, 5.0)
        assert (await stream.next(1.0)) is not None  # mode live=true

        throwaway_redis.pause()
        try:
            seconds = await wait_until(lambda: not hub.live, 5.0)
            assert seconds < 3 * PING + 0.5, seconds  # two ping intervals of silence
            frame = await stream.next(1.0)
            assert frame is not None and b'"live":false' in frame.data
        finally:
            throwaway_redis.resume()
        await wait_until(lambda: hub.live, 5.0)

        # Live means subscribed: a publish now reaches the hub.
        publisher = aioredis.from_url(throwaway_redis.url)
        try:
            await publisher.publish("chan", b'{"type": "review.submitted", "review_id": "x"}')
        finally:
            await publisher.aclose()
        while (frame := await stream.next(2.0)) is not None and frame.review_type is None:
            pass  # the mode frame(s) before it
        assert frame is not None and frame.review_type == "review.submitted"
