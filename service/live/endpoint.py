"""``GET /console/live``: the console's Server-Sent Events stream.

Frames (the console contract): ``hello`` first, with whether updates are live; then
``review`` for each committed submission or decision on any instance, ``mode`` when
the Redis channel is lost or regained, and a ``: keepalive`` comment when nothing was
sent for ``keepalive_seconds`` (proxies close silent connections; the browser learns
a dead one).

A stream is a request that lasts: it ends when the client goes (noticed within
``DISCONNECT_CHECK_SECONDS``, so the open-connections gauge does not lag), when its
authorisation no longer holds (checked again at each keepalive), when it is dropped
as too slow (hub.py), and when the instance drains or shuts down — at the
start of the drain, so the SIGTERM drain never waits its grace for a stream (the
browser reconnects, through the load balancer, to an instance that is not going).
"""

from __future__ import annotations

import time

import structlog
from aiohttp import hdrs, web

from ..auth import Principal
from ..console.sessions import user_from_cookie
from ..domain.errors import DomainError, Unauthenticated
from ..keys import API_KEYS, LIVE_AUTHORIZE, LIVE_HUB
from .events import KEEPALIVE, hello_frame
from .hub import StreamClosed

log = structlog.get_logger("hitl.live")

PATH = "/console/live"

DISCONNECT_CHECK_SECONDS = 1.0

STREAM_HEADERS = {
    hdrs.CONTENT_TYPE: "text/event-stream; charset=utf-8",
    hdrs.CACHE_CONTROL: "no-store",
    # As on every console response (the console's own middlewares do not run here).
    hdrs.X_CONTENT_TYPE_OPTIONS: "nosniff",
    # nginx and similar proxies would otherwise buffer the stream.
    "X-Accel-Buffering": "no",
}


async def api_key_holder(request: web.Request) -> Principal:
    """A valid API key in ``Authorization: Bearer``, any role (for API clients)."""
    values = request.headers.getall(hdrs.AUTHORIZATION, [])
    if len(values) > 1:
        raise Unauthenticated("more than one Authorization header")
    return request.app[API_KEYS].authenticate(values[0] if values else None)


async def console_user_or_api_key(request: web.Request) -> object:
    """The default check: a signed-in console session (the browser's EventSource sends
    the ``hitl_session`` cookie, and cannot send a header), else an API key. This route
    is on the main app, outside the console's middlewares, so the session is read from
    its cookie directly, with the same check that the key behind it is still valid."""
    user = await user_from_cookie(request)
    if user is not None:
        return user
    return await api_key_holder(request)


async def still_authorised(request: web.Request) -> bool:
    """Asked again at each keepalive, so a session signed out or a key revoked while
    the page stays open stops receiving within one keepalive interval."""
    try:
        await request.app[LIVE_AUTHORIZE](request)
    except (web.HTTPException, DomainError):
        return False
    except Exception as exc:
        # The check could not be made (the session store unreachable): a database
        # blip must not cut every open page; the next keepalive asks again.
        log.warning("live_reauthorisation_failed", error=type(exc).__name__)
    return True


class LiveEndpoint:
    def __init__(self, *, keepalive_seconds: float) -> None:
        self.keepalive_seconds = keepalive_seconds

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.app[LIVE_AUTHORIZE](request)
        hub = request.app[LIVE_HUB]
        if hub.closing:
            # Draining: the browser retries, and reaches an instance that stays.
            raise web.HTTPServiceUnavailable(headers={hdrs.RETRY_AFTER: "1"})
        response = web.StreamResponse(headers=STREAM_HEADERS)

        def abort() -> None:
            if request.transport is not None:
                request.transport.abort()

        # Registered before hello is written: a mode change from now on is queued.
        stream = hub.open(abort)
        ended = False
        try:
            await response.prepare(request)
            await response.write(hello_frame(hub.live).data)
            last_write = time.monotonic()
            while True:
                idle = time.monotonic() - last_write
                wait = max(0.0, min(DISCONNECT_CHECK_SECONDS, self.keepalive_seconds - idle))
                try:
                    frame = await stream.next(wait)
                except StreamClosed:
                    ended = not stream.dropped
                    break
                if request.transport is None or request.transport.is_closing():
                    break  # the client went away
                if frame is not None:
                    await response.write(frame.data)
                    last_write = time.monotonic()
                    if frame.review_type is not None:
                        hub.metrics.record_delivered(frame.review_type)
                elif time.monotonic() - last_write >= self.keepalive_seconds:
                    if not await still_authorised(request):
                        ended = True  # signed out or key revoked since: stop telling
                        break
                    await response.write(KEEPALIVE)
                    last_write = time.monotonic()
            if ended:
                await response.write_eof()
        except ConnectionError:
            pass  # the client went away mid-write, or was dropped as too slow
        finally:
            hub.close(stream)
        return response
