"""Fan-out of frames to this instance's open live streams.

One bounded queue per stream. Broadcasting never waits: a frame goes into each queue
with ``put_nowait``, and a stream whose queue is full (a browser that stopped
reading, a link too slow for the event rate) is dropped — its queue discarded and its
connection aborted — rather than allowed to hold memory or to slow the others. The
browser's EventSource reconnects, and a reconnect reloads the page's data.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from .events import Frame, mode_frame
from .metrics import LiveMetrics

log = structlog.get_logger("hitl.live")


class StreamClosed(Exception):
    """The stream was ended by the server (shutdown, drain) or dropped as too slow."""


class LiveStream:
    """One open stream: the frames waiting for it, and how to cut it off."""

    __slots__ = ("_abort", "_ended", "_queue", "dropped")

    def __init__(self, queue_size: int, abort: Callable[[], None]) -> None:
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=queue_size)
        self._ended = asyncio.Event()
        self._abort = abort
        self.dropped = False

    async def next(self, within: float) -> Frame | None:
        """The next frame; None if none came within ``within`` seconds. Raises
        StreamClosed once the stream is ended (frames still queued are not sent)."""
        if self._ended.is_set():
            raise StreamClosed
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        ender = asyncio.ensure_future(self._ended.wait())
        try:
            done, _ = await asyncio.wait(
                {getter, ender}, timeout=within, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            getter.cancel()
            ender.cancel()
        if getter in done and not getter.cancelled():
            return getter.result()
        if self._ended.is_set():
            raise StreamClosed
        return None

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame``; False if the queue is full."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            return False
        return True

    def end(self) -> None:
        self._ended.set()

    def drop(self) -> None:
        """End the stream and cut its connection: its handler may be stuck writing
        to a client that does not read, which only a closed transport interrupts."""
        self.dropped = True
        self.end()
        while not self._queue.empty():
            self._queue.get_nowait()
        self._abort()


class LiveHub:
    """The open streams of this instance, and whether the Redis channel is heard
    (``live``; the subscriber sets it, and every stream is told when it changes)."""

    def __init__(self, metrics: LiveMetrics, *, queue_size: int) -> None:
        self.metrics = metrics
        self._queue_size = queue_size
        self._streams: set[LiveStream] = set()
        self.live = False
        self.closing = False

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, abort: Callable[[], None]) -> LiveStream:
        stream = LiveStream(self._queue_size, abort)
        self._streams.add(stream)
        self.metrics.set_connections_open(len(self._streams))
        return stream

    def close(self, stream: LiveStream) -> None:
        self._streams.discard(stream)
        self.metrics.set_connections_open(len(self._streams))

    def broadcast(self, frame: Frame) -> None:
        for stream in list(self._streams):
            if not stream.offer(frame):
                log.warning("live_stream_dropped", reason="queue_full", queue=self._queue_size)
                stream.drop()
                self.close(stream)

    def set_live(self, live: bool) -> None:
        if live == self.live:
            return
        self.live = live
        log.info("live_updates_" + ("on" if live else "off"), streams=len(self._streams))
        self.broadcast(mode_frame(live))

    def end_all(self) -> None:
        """Shutdown or drain: end every stream cleanly and open no new one."""
        self.closing = True
        for stream in self._streams:
            stream.end()
