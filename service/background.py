"""Background tasks that stop when the app stops, even if a library swallows a cancel.

redis.asyncio (8.x) sometimes swallows a CancelledError that lands inside a command,
so one ``task.cancel()`` followed by ``await task`` can wait forever. Each loop here
also watches a stop event, and stopping re-cancels until the task is done, bounded
in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog

log = structlog.get_logger("hitl.background")

STOP_DEADLINE_SECONDS = 5.0


class Stopping:
    """What a background loop consults: ``while not stopping.is_set``, and
    ``await stopping.sleep(s)`` instead of ``asyncio.sleep(s)``."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    async def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; return early when stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)


@contextlib.asynccontextmanager
async def background(
    name: str, loop: Callable[[Stopping], Coroutine[Any, Any, None]]
) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``loop(stopping)`` as a task for the duration of the block."""
    stopping = Stopping()
    task = asyncio.create_task(loop(stopping), name=name)
    try:
        yield task
    finally:
        stopping.set()
        await _stop(task)


async def _stop(task: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + STOP_DEADLINE_SECONDS
    while not task.done():
        task.cancel()
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            log.error("background_task_did_not_stop", task=task.get_name())
            return
        await asyncio.wait({task}, timeout=min(0.1, remaining))
    if not task.cancelled() and task.exception() is not None:
        log.error("background_task_failed", task=task.get_name(), exc_info=task.exception())
