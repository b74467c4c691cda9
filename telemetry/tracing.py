"""STUB — replaced by the tracing helper. The function signatures are the contract."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import aiopg
from aiohttp import web

from .metrics import Metrics
from .settings import TelemetrySettings


def setup_tracing(app: web.Application, settings: TelemetrySettings, metrics: Metrics) -> None:
    return None


async def create_aiopg_pool(app: web.Application, dsn: str, **kwargs: Any) -> aiopg.Pool:
    """An aiopg pool whose statements become client spans (when tracing is on)."""
    return await aiopg.create_pool(dsn, **kwargs)


def instrument_redis(app: web.Application, client: Any) -> None:
    """Make every command of this redis.asyncio client a span (when tracing is on)."""
    return None


def client_trace_configs(app: web.Application) -> list[aiohttp.TraceConfig]:
    """TraceConfigs for an aiohttp.ClientSession: client spans + traceparent injection."""
    return []


def context_carrier() -> dict[str, str]:
    """The current trace context as W3C headers (traceparent/tracestate), to store."""
    return {}


@contextlib.contextmanager
def continue_trace(app: web.Application, carrier: Mapping[str, str], span_name: str) -> Iterator[None]:
    """Run the block in a new span whose parent is the stored ``carrier`` context."""
    yield
