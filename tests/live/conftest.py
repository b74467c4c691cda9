"""Live-update fixtures: an SSE reader over a real HTTP connection, and the service
tests' throwaway Redis (a test may kill it; the shared one is never touched)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.keys import LIVE_HUB
from tests.service.conftest import throwaway_redis  # noqa: F401  (a fixture)


@dataclass
class Frame:
    event: str
    data: Any


@dataclass
class SseStream:
    """Frames of one open ``GET /console/live``, read as a browser's EventSource would."""

    response: aiohttp.ClientResponse
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    async def next(self, within: float = 1.0) -> Frame:
        """The next event frame (comments are recorded, not returned); fails if none
        comes within ``within`` seconds."""
        async with asyncio.timeout(within):
            return await self._read()

    async def _read(self) -> Frame:
        event, data = "message", []
        while True:
            raw = await self.response.content.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if line == "":
                if data:
                    return Frame(event, json.loads("\n".join(data)))
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                self.comments.append(value)
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)

    async def ended(self, within: float) -> bool:
        """True once the server ends the stream (EOF) within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                while await self.response.content.readline():
                    pass
        except TimeoutError:
            return False
        except aiohttp.ClientError:
            return True
        return True


OpenStream = Callable[..., Awaitable[SseStream]]


@pytest.fixture
async def open_stream() -> AsyncIterator[OpenStream]:
    """Open SSE streams on test clients; all closed at the end of the test."""
    opened: list[aiohttp.ClientResponse] = []

    async def open_(client: TestClient, headers: dict[str, str]) -> SseStream:
        response = await client.get(
            "/console/live", headers={**headers, "Accept": "text/event-stream"}
        )
        assert response.status == 200, await response.text()
        opened.append(response)
        return SseStream(response)

    yield open_
    for response in opened:
        response.close()


async def wait_until(check: Callable[[], Any], within: float, every: float = 0.02) -> float:
    """Seconds until ``check()`` (awaited if a coroutine) is true; fails after ``within``."""
    started = time.monotonic()
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return time.monotonic() - started
        assert time.monotonic() - started < within, f"not true within {within}s"
        await asyncio.sleep(every)


async def live(app: web.Application, within: float = 5.0) -> None:
    """Wait until the instance's subscriber is subscribed (hub live)."""
    await wait_until(lambda: app[LIVE_HUB].live, within)
