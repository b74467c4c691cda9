"""The one subscriber of an instance: reads the Redis channel and hands each review
event to the hub, which fans it out to this instance's streams.

Redis going away must not take the pages down with it: on any failure the hub is
told it is not live (every stream gets ``mode {"live": false}``, the pages switch to
reloading every 15 s), and the subscriber reconnects with exponential backoff. Once
subscribed again the hub is live and the pages reload once, for the events published
meanwhile (pub/sub keeps nothing for an absent listener).

A killed Redis is noticed at once (the connection ends). A hung one is noticed by
pinging on the subscribed connection when the channel is quiet: no answer within two
ping intervals counts as lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis.asyncio as aioredis
import structlog

from telemetry import untraced

from ..background import Stopping
from .events import review_frame
from .hub import LiveHub
from .publisher import REDIS_FAILURES

log = structlog.get_logger("hitl.live")


class ChannelSilent(Exception):
    """No message and no answer to a ping for too long: the connection is dead."""


class LiveSubscriber:
    def __init__(
        self,
        connect: Callable[[], aioredis.Redis],
        channel: str,
        hub: LiveHub,
        *,
        ping_seconds: float = 5.0,
        min_backoff_seconds: float = 0.1,
        max_backoff_seconds: float = 2.0,
    ) -> None:
        """``connect`` makes a client for one subscription attempt (closed after it)."""
        self._connect = connect
        self._channel = channel
        self._hub = hub
        self._ping_seconds = ping_seconds
        self._min_backoff = min_backoff_seconds
        self._max_backoff = max_backoff_seconds
        self._subscribed = False

    async def run(self, stopping: Stopping) -> None:
        backoff = self._min_backoff
        failures = 0
        # Machine chatter (pings, reconnects) must not start a trace each time.
        with untraced():
            while not stopping.is_set:
                self._subscribed = False
                try:
                    await self._listen(stopping)
                except (*REDIS_FAILURES, ChannelSilent) as exc:
                    failures += 1
                    # The first failure of an outage is a warning; its retries are not.
                    report = log.warning if failures == 1 else log.debug
                    report(
                        "live_subscriber_lost",
                        error=type(exc).__name__,
                        attempt=failures,
                        retry_in=backoff,
                    )
                except Exception:
                    # A bug, not Redis: say so, and keep the instance's pages served
                    # (not live, so they refresh) rather than let the task die.
                    log.exception("live_subscriber_crashed")
                self._hub.set_live(False)
                if self._subscribed:  # it worked for a while: start the backoff afresh
                    backoff, failures = self._min_backoff, 0
                await stopping.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)

    async def _listen(self, stopping: Stopping) -> None:
        client = self._connect()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self._channel)
            last_heard = time.monotonic()
            while not stopping.is_set:
                message = await pubsub.get_message(timeout=self._ping_seconds / 2)
                now = time.monotonic()
                if message is None:
                    if now - last_heard > 2 * self._ping_seconds:
                        raise ChannelSilent(self._channel)
                    if now - last_heard > self._ping_seconds / 2:
                        await pubsub.ping()
                    continue
                last_heard = now
                kind = message.get("type")
                if kind == "subscribe":
                    # Confirmed by Redis: from now on every publish reaches us.
                    self._subscribed = True
                    self._hub.set_live(True)
                elif kind == "message":
                    frame = review_frame(message["data"])
                    if frame is None:
                        log.warning("live_message_ignored", channel=self._channel)
                    else:
                        self._hub.broadcast(frame)
        finally:
            await _close_quietly(pubsub, client)


async def _close_quietly(pubsub: aioredis.client.PubSub, client: aioredis.Redis) -> None:
    try:
        await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
        await client.aclose()
    except REDIS_FAILURES:
        pass
