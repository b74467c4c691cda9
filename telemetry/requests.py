"""What telemetry reads off a request and its response: the route label, body sizes,
the status a client sees for an exception.

Shared by the metrics, the access line and the server span, so the three always
agree on what a request was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter

from .keys import RESPONSE_BODY_BYTES
from .metrics import UNMATCHED_ENDPOINT

__all__ = [
    "CLIENT_CLOSED_REQUEST",
    "BodyBytesWritten",
    "request_body_size",
    "response_body_size",
    "response_bytes_counter",
    "route_template",
    "status_of_exception",
]

# aiohttp's AbstractStreamWriter.on_body_write: (body bytes of this write, output so far).
BodyWriteHook = Callable[[int, int], None]


# nginx's "client closed request": the handler was cancelled before it answered. Not a
# 5xx (the service did not fail) but its time still counts toward the latency SLO.
CLIENT_CLOSED_REQUEST: Final = 499


def route_template(request: web.Request) -> str:
    """The endpoint label: the matched route's template, or one value for route misses."""
    match_info = request.match_info
    resource = match_info.route.resource
    # 404 and 405 from the router carry a SystemRoute whose resource is None.
    if match_info.http_exception is not None or resource is None:
        return UNMATCHED_ENDPOINT
    return resource.canonical


def request_body_size(request: web.BaseRequest) -> int:
    """Declared Content-Length, else the body bytes received so far (chunked uploads)."""
    declared = request.content_length
    if declared is not None:
        return declared
    return request.content.total_bytes


class BodyBytesWritten:
    """Counts body bytes passing through a response writer, before content encoding.

    aiohttp's ``StreamResponse.body_length`` is the writer's output size, which includes
    the status line, headers and chunk framing; hooking the writer's ``on_body_write``
    notification gives the body bytes alone, for streamed and plain responses alike.
    """

    __slots__ = ("_chained", "count")

    def __init__(self, chained: BodyWriteHook | None) -> None:
        self.count = 0
        # Keep whatever hook was there (none on a server writer today) working.
        self._chained = chained

    def __call__(self, body_size: int, output_size: int) -> None:
        self.count += body_size
        if self._chained is not None:
            self._chained(body_size, output_size)


def response_bytes_counter(request: web.Request) -> BodyBytesWritten:
    """The request's response-body byte counter, hooked onto its writer on first use."""
    counter = request.get(RESPONSE_BODY_BYTES)
    if counter is None:
        writer: AbstractStreamWriter = request.writer
        counter = BodyBytesWritten(writer.on_body_write)
        writer.on_body_write = counter
        request[RESPONSE_BODY_BYTES] = counter
    return counter


def status_of_exception(exc: BaseException) -> int:
    """The status a client sees for an exception escaping the handler chain."""
    if isinstance(exc, web.HTTPException):
        return exc.status
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    return 500


def _sends_no_body(method: str, status: int) -> bool:
    # RFC 9110: HEAD answers and 1xx/204/304 carry no body, whatever the handler set.
    return method == hdrs.METH_HEAD or status in (204, 304) or 100 <= status < 200


def response_body_size(
    response: web.StreamResponse, written: int, *, method: str | None = None
) -> int:
    """Body bytes of ``response``: what was streamed, or what is about to be sent.

    A handler that prepared the response has written (some of) its body already
    (``written``, counted on the writer's ``on_body_write`` hook); otherwise aiohttp
    writes it after the middlewares return, and its length is known. Pass the
    request ``method`` so a HEAD answer counts as the 0 bytes it sends.
    """
    if _sends_no_body(method or "", response.status):
        return 0
    if response.prepared:
        return written
    if isinstance(response, web.Response):
        return response.content_length or 0
    return 0
