"""A test downstream for decision notifications, served by pytest-aiohttp."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


class Downstream:
    """A test receiver of decision notifications that can be told to fail."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_next = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503)
        self.received.append(await request.json())
        self.headers.append(dict(request.headers))
        self.arrived.set()
        return web.Response(status=204)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def enough() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(enough(), timeout)


@pytest.fixture
async def downstream(aiohttp_server: Callable[..., Any]) -> tuple[Downstream, TestServer]:
    receiver = Downstream()
    app = web.Application()
    app.router.add_post("/decisions", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, server
