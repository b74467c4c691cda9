"""The fast server-span attributes are exactly the package helper's, request by request."""

from __future__ import annotations

from typing import Any

from aiohttp import web

import telemetry
from telemetry import TelemetrySettings
from telemetry.keys import TRACING
from telemetry.server_spans import ServerAttributes, _server_attributes

SEEN: web.AppKey[list[tuple[dict[str, Any], dict[str, Any]]]] = web.AppKey("seen", list)


async def compare(request: web.Request) -> web.Response:
    tracing = request.app[TRACING]
    route = request.match_info.route.resource.canonical  # type: ignore[union-attr]
    fast = request.app[FAST].collect(request, route)
    reference = _server_attributes(request, tracing, route)
    request.app[SEEN].append((fast, reference))
    return web.Response(text="ok")


FAST: web.AppKey[ServerAttributes] = web.AppKey("fast", ServerAttributes)


async def test_fast_attributes_equal_the_package_helpers(aiohttp_client: Any) -> None:
    """Query strings with and without secrets, odd paths, custom methods, a missing
    User-Agent, another Host header: the same keys, values and order."""
    app = web.Application()
    telemetry.setup(app, TelemetrySettings(otel_env={"OTEL_TRACES_EXPORTER": "none"}))
    app[FAST] = ServerAttributes(app[TRACING])
    app[SEEN] = []
    app.router.add_route("*", "/items/{item_id}", compare)
    app.router.add_route("*", "/a/{tail:.*}", compare)
    client = await aiohttp_client(app)

    for method, path, headers in [
        ("GET", "/items/1", {}),
        ("GET", "/items/2?limit=20&cursor=abc", {"User-Agent": "curl/8.5"}),
        ("POST", "/items/3?token=s3cret&x=1", {"User-Agent": ""}),
        ("GET", "/items/4?api_key=k&sig=v&X-Amz-Signature=zz", {}),
        ("PURGE", "/items/5", {}),
        ("get", "/items/6", {}),
        ("GET", "/items/%E2%9C%93?q=%20a", {}),
        ("GET", "/a/b/../c", {}),
        ("GET", "/a/x//y?", {}),
        ("GET", "/items/7", {"Host": "example.com"}),
        ("GET", "/items/8", {"Host": "example.com:8443"}),
        ("GET", "/items/9", {"Host": "[::1]:9000"}),
    ]:
        resp = await client.request(method, path, headers=headers, skip_auto_headers={"User-Agent"})
        assert resp.status in (200, 404, 405), (method, path, resp.status)

    assert len(app[SEEN]) >= 10, len(app[SEEN])
    for fast, reference in app[SEEN]:
        assert list(fast.items()) == list(reference.items())
