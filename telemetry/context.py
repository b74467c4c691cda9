"""STUB — replaced by the tracing/logging helper (request id, contextvars)."""

from __future__ import annotations

from aiohttp import web


def setup_request_context(app: web.Application) -> None:
    return None
