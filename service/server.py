"""Serving the app: connection limits, idle and header timeouts, and a graceful drain.

aiohttp's ``web.run_app`` stops at once on SIGTERM: it closes the listener and every
idle keep-alive connection in the same instant, so a request a client sends on a kept
connection a few ms later is reset (issue 11 saw 14 of them). ``serve`` keeps aiohttp's
own machinery — ``web.AppRunner`` and its ``cleanup()``, which closes idle connections,
runs on_shutdown, waits for running handlers up to ``shutdown_timeout`` and then the
cleanup contexts — and puts a drain in front of it:

1. SIGTERM (or SIGINT): readiness answers 503 and every response says
   ``Connection: close``, so a load balancer stops sending and clients reconnect
   elsewhere; requests that still arrive are served. Log ``shutdown_draining``.
2. After ``shutdown_drain_seconds`` (a second signal cuts it short): the listener
   closes. Log ``shutdown_listener_closed``.
3. Requests in handlers get up to ``shutdown_grace_seconds`` to finish (kept
   connections are still served meanwhile, with ``Connection: close``). Log
   ``shutdown_in_flight_finished``.
4. ``runner.cleanup()``: idle connections close, a straggler gets
   :data:`STRAGGLER_SECONDS` before it is cancelled, the cleanup contexts close the
   resources. Log ``shutdown_exited``. The whole shutdown is bounded by drain + grace +
   STRAGGLER_SECONDS + the time the cleanup contexts take.

The listener is our own ``loop.create_server`` rather than a ``web.TCPSite`` so that
each connection passes a :class:`ConnectionLimiter` first. Why at accept time and not
in a middleware: a middleware sees requests, and the connections that cost a file
descriptor and a buffer are exactly the ones that never complete a request (slow
headers, idle keep-alive). The limiter counts connections from ``connection_made`` to
``connection_lost`` of the protocol, so the count is exact (not lagging a batch of
accepts as ``len(server.connections)`` would), and refuses one over the cap with a
503 problem and an immediate close. The per-client cap is off by default: behind a
proxy every connection has the proxy's address.

What aiohttp bounds by itself (aiohttp/web_protocol.py, RequestHandler): the
keep-alive timer is armed when a connection opens and after each response, and
closes a connection still waiting for a *complete* request when it fires; arriving
bytes do not re-arm it. So ``keepalive_timeout`` bounds both an idle kept connection
and headers that trickle in (slowloris). Header size is bounded by ``max_line_size``
/ ``max_field_size`` (8190) and ``max_headers`` (128). Nothing bounds a body read:
service/api/bodies.py puts a deadline on it. After a response to a request whose
body was not read, aiohttp reads and discards the rest for ``lingering_time`` so the
client sees the answer before the close; we shorten that from 10 s to
:data:`LINGER_SECONDS`.
"""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import hdrs, web

import telemetry
from telemetry import http_title

from . import __version__
from .config import Settings
from .keys import DRAIN, REVIEW_METRICS
from .metrics import ReviewMetrics

log = structlog.get_logger("hitl.server")

# How long a response to a request whose body was not (fully) read still discards
# what the client sends before the connection closes (aiohttp's default is 10 s: a
# client declaring 10 GB would be read at line rate for that long).
LINGER_SECONDS = 2.0

# How long runner.cleanup() lets a request finish that is still running after the
# drain and the grace (it started in between, or outlived the grace) before cancelling it.
STRAGGLER_SECONDS = 1.0

# File descriptors kept free beside the connections: the database pool, Redis, the
# webhook client, log files, the listener itself.
RESERVED_DESCRIPTORS = 64

# Refused connections are logged at most this often, with a count, so a flood does not
# become a flood of log lines.
REFUSAL_LOG_INTERVAL_SECONDS = 10.0


class Drain:
    """Whether the process is draining, and how many requests are in a handler.

    ``on_start``: called when the drain starts, for requests that would never end by
    themselves (the console's live streams, service/live) and must not hold the
    in-flight wait up to its grace."""

    __slots__ = ("_idle", "draining", "in_flight", "on_start")

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_start: list[Callable[[], None]] = []

    def start(self) -> None:
        self.draining = True
        for callback in self.on_start:
            callback()

    def entered(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def left(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def idle(self) -> None:
        """Return once no request is in a handler."""
        await self._idle.wait()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def setup_draining(app: web.Application) -> None:
    """Count requests in handlers, and say ``Connection: close`` (and close) on every
    response while draining or when a response asks for it (a body left unread).
    Call after ``telemetry.setup``, whose middleware must stay the outermost."""
    drain = Drain()
    app[DRAIN] = drain

    @web.middleware
    async def count_in_flight(request: web.Request, handler: Handler) -> web.StreamResponse:
        drain.entered()
        try:
            return await handler(request)
        finally:
            drain.left()

    async def close_when_due(request: web.BaseRequest, response: web.StreamResponse) -> None:
        # aiohttp has already chosen keep-alive and written no Connection header for it
        # (HTTP/1.1): say close, and make aiohttp close after this response.
        if drain.draining or response.headers.get(hdrs.CONNECTION, "").lower() == "close":
            response.headers[hdrs.CONNECTION] = "close"
            response.force_close()

    app.middlewares.append(count_in_flight)
    app.on_response_prepare.append(close_when_due)


def handler_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``web.AppRunner`` (passed on to each connection's
    RequestHandler); tests give the same to ``aiohttp_client(server_kwargs=...)``."""
    return {
        # aiohttp's own access log is off: telemetry writes one structured line per request.
        "access_log": None,
        "keepalive_timeout": settings.keepalive_timeout_seconds,
        "lingering_time": LINGER_SECONDS,
    }


class ConnectionLimiter:
    """A protocol factory for ``loop.create_server``: each connection goes to aiohttp's
    handler while under the caps, else gets a 503 problem and is closed."""

    def __init__(
        self,
        server: web.Server,
        options: dict[str, Any],
        *,
        total: int,
        per_client: int = 0,
        problem_type_base: str = "about:blank#",
        metrics: ReviewMetrics | None = None,
    ) -> None:
        self._server = server
        self._metrics = metrics
        self._options = options
        self._problem_type_base = problem_type_base
        self._loop = asyncio.get_running_loop()
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}
        self._refused = 0
        self._refusal_logged_at = float("-inf")
        self._refusal = _refusal_bytes(problem_type_base)

    def __call__(self) -> asyncio.Protocol:
        return _Gate(self)

    def admit(self, client: str | None) -> bool:
        if self.open >= self.total:
            return self._refuse(client, "total")
        if self.per_client and client is not None:
            if self._by_client.get(client, 0) >= self.per_client:
                return self._refuse(client, "per_client")
            self._by_client[client] = self._by_client.get(client, 0) + 1
        self.open += 1
        return True

    def release(self, client: str | None) -> None:
        self.open -= 1
        if self.per_client and client is not None:
            left = self._by_client.get(client, 1) - 1
            if left:
                self._by_client[client] = left
            else:
                self._by_client.pop(client, None)

    def handler(self) -> asyncio.Protocol:
        return ProblemRequestHandler(
            self._server,
            loop=self._loop,
            problem_type_base=self._problem_type_base,
            metrics=self._metrics,
            **self._options,
        )

    @property
    def refusal(self) -> bytes:
        return self._refusal

    def _refuse(self, client: str | None, cap: str) -> bool:
        self._refused += 1
        if self._metrics is not None:
            self._metrics.record_connection_refused(cap=cap)
        now = time.monotonic()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_SECONDS:
            log.warning(
                "connections_refused",
                cap=cap,
                refused=self._refused,
                open=self.open,
                max_connections=self.total,
                max_connections_per_client=self.per_client,
            )
            self._refusal_logged_at = now
            self._refused = 0
        return False


class ProblemRequestHandler(web.RequestHandler):
    """aiohttp's protocol for one connection, except that a request its parser refuses
    (a byte not allowed in a header, a singleton header twice, a bad Content-Length) is
    answered with a problem+json like any other bad input, and logged as a warning
    naming the error class only. aiohttp answers text/plain that echoes the offending
    header line (an API key, say) and logs every such request at error level."""

    __slots__ = ("_metrics", "_problem_type_base")

    def __init__(
        self,
        manager: web.Server,
        *,
        problem_type_base: str,
        metrics: ReviewMetrics | None = None,
        **options: Any,
    ) -> None:
        super().__init__(manager, **options)
        self._problem_type_base = problem_type_base
        self._metrics = metrics

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = type(exc).__name__ if exc is not None else "BadRequest"
        log.warning("http_request_unparsable", status=status, error=reason, client=request.remote)
        if self._metrics is not None:
            self._metrics.record_request_unparsable()
        # The first line of aiohttp's message says what is wrong; the lines after it
        # quote the request's bytes, which are not repeated.
        what = (message or "").split("\n", 1)[0].rstrip(":").strip() or reason
        body = {
            "type": f"{self._problem_type_base}malformed-request",
            "title": http_title(status, HTTPStatus(status).phrase),
            "status": status,
            "detail": f"The request is not valid HTTP/1.1: {what}.",
        }
        response = web.Response(
            status=status,
            text=json.dumps(body, separators=(",", ":")),
            content_type="application/problem+json",
            headers={hdrs.CONNECTION: "close"},
        )
        response.force_close()
        return response


class _Gate(asyncio.Protocol):
    """One connection: aiohttp's RequestHandler behind it if admitted, else a refusal.
    aiohttp writes to the transport directly; only the callbacks pass through here."""

    __slots__ = ("_client", "_inner", "_limiter")

    def __init__(self, limiter: ConnectionLimiter) -> None:
        self._limiter = limiter
        self._inner: asyncio.Protocol | None = None
        self._client: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if not self._limiter.admit(self._client):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(self._limiter.refusal)
            transport.close()
            return
        self._inner = self._limiter.handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limiter.release(self._client)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)


def _refusal_bytes(problem_type_base: str) -> bytes:
    body = json.dumps(
        {
            "type": f"{problem_type_base}too-many-connections",
            "title": http_title(503),
            "status": 503,
            "detail": "The server has as many connections open as it accepts; retry later.",
        },
        separators=(",", ":"),
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/problem+json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def connection_cap(configured: int) -> int:
    """``configured``, lowered to what the open-files limit leaves room for."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft - RESERVED_DESCRIPTORS:
        return configured
    capped = max(1, soft - RESERVED_DESCRIPTORS)
    log.warning(
        "max_connections_lowered",
        configured=configured,
        max_connections=capped,
        open_files_limit=soft,
    )
    return capped


@dataclass(frozen=True, slots=True)
class Listening:
    """A started app: its runner, its listener and the listener's connection limiter."""

    runner: web.AppRunner
    listener: asyncio.Server
    limiter: ConnectionLimiter

    @property
    def port(self) -> int:
        return int(self.listener.sockets[0].getsockname()[1])


async def listen(app: web.Application, settings: Settings) -> Listening:
    """Start ``app`` (startup, cleanup contexts) and listen on the configured address,
    each connection through a :class:`ConnectionLimiter`. Port 0 picks a free one."""
    runner = web.AppRunner(app, shutdown_timeout=STRAGGLER_SECONDS, **handler_options(settings))
    await runner.setup()  # a database that never answers raises here
    try:
        server = runner.server
        assert server is not None
        limiter = ConnectionLimiter(
            server,
            handler_options(settings),
            total=connection_cap(settings.max_connections),
            per_client=settings.max_connections_per_client,
            problem_type_base=settings.telemetry.problem_type_base,
            metrics=app[REVIEW_METRICS],
        )
        metrics = app[REVIEW_METRICS]

        async def collect_open_connections() -> None:
            metrics.set_connections_open(limiter.open)

        app[telemetry.METRICS].add_collector(collect_open_connections)
        listener = await asyncio.get_running_loop().create_server(
            limiter, settings.host, settings.port, reuse_address=True
        )
    except BaseException:
        await runner.cleanup()
        raise
    return Listening(runner, listener, limiter)


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then drain and exit (module docstring)."""
    loop = asyncio.get_running_loop()
    listening = await listen(app, settings)
    try:
        log.info(
            "serving",
            host=settings.host,
            port=listening.port,
            version=__version__,
            max_connections=listening.limiter.total,
        )
        signals: asyncio.Queue[str] = asyncio.Queue()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, signals.put_nowait, signal.Signals(signum).name)
        try:
            received = await signals.get()
            await _drain(app, settings, received, signals, listening)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            listening.listener.close()
    except BaseException:
        await listening.runner.cleanup()
        raise
    await _finish(app, listening.runner, settings)


async def _drain(
    app: web.Application,
    settings: Settings,
    received: str,
    signals: asyncio.Queue[str],
    listening: Listening,
) -> None:
    drain, limiter = app[DRAIN], listening.limiter
    drain.start()
    log.info(
        "shutdown_draining",
        signal=received,
        drain_seconds=settings.shutdown_drain_seconds,
        grace_seconds=settings.shutdown_grace_seconds,
        connections=limiter.open,
        in_flight=drain.in_flight,
    )
    try:
        # A second signal: the operator does not want to wait for the drain.
        async with asyncio.timeout(settings.shutdown_drain_seconds):
            again = await signals.get()
        log.info("shutdown_drain_cut_short", signal=again)
    except TimeoutError:
        pass
    listening.listener.close()
    log.info("shutdown_listener_closed", connections=limiter.open, in_flight=drain.in_flight)


async def _finish(app: web.Application, runner: web.AppRunner, settings: Settings) -> None:
    drain = app[DRAIN]
    started = time.monotonic()
    # Wait before runner.cleanup(): its first step marks every connection closing, and
    # a closing aiohttp connection drops the bytes that still arrive — the rest of a
    # body being uploaded included. Until then a kept connection is still served.
    finished = True
    try:
        async with asyncio.timeout(settings.shutdown_grace_seconds):
            await drain.idle()
    except TimeoutError:
        finished = False
    log.info(
        "shutdown_in_flight_finished",
        all_finished=finished,
        still_running=drain.in_flight,
        seconds=round(time.monotonic() - started, 3),
    )
    # Idle connections close; a request that started meanwhile, or outlived the grace,
    # gets STRAGGLER_SECONDS before it is cancelled; then the cleanup contexts run.
    await runner.cleanup()
    log.info("shutdown_exited", seconds=round(time.monotonic() - started, 3))


def run(app: web.Application, settings: Settings) -> None:
    asyncio.run(serve(app, settings))
