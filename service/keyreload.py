"""Reload the API keys file while serving: on change (a cheap stat every
``api_keys_reload_interval_seconds``) and on SIGHUP.

The checks run on the event loop itself: one stat per interval, and a read of a file
of a few kB when it changed, cost microseconds, and running them on the loop means a
poll and a SIGHUP never race each other.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

import telemetry

from .auth import ReloadResult
from .background import Stopping, background
from .keys import API_KEYS, REVIEW_METRICS, SETTINGS

log = structlog.get_logger("hitl.auth")


async def api_keys_ctx(app: web.Application) -> AsyncIterator[None]:
    """Watch the keys file for the app's lifetime, and reload it on SIGHUP."""
    keys = app[API_KEYS]
    metrics = app[REVIEW_METRICS]
    interval = app[SETTINGS].api_keys_reload_interval_seconds

    def record(result: ReloadResult | None) -> None:
        if result is not None:
            metrics.record_api_keys_reload(result=result)

    def on_sighup() -> None:
        record(keys.reload(trigger="sighup"))

    async def poll(stopping: Stopping) -> None:
        while not stopping.is_set:
            await stopping.sleep(interval)
            if stopping.is_set:
                return
            record(keys.poll())

    async def collect_loaded() -> None:
        metrics.set_api_keys_loaded(keys.valid_count())

    app[telemetry.METRICS].add_collector(collect_loaded)
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        on_signal = True
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        # Not the main thread, or no signals on this platform: polling still works.
        log.warning("api_keys_sighup_unavailable", error=str(exc))
        on_signal = False
    try:
        async with background("hitl-api-keys-reload", poll):
            yield
    finally:
        if on_signal:
            loop.remove_signal_handler(signal.SIGHUP)
