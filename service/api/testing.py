"""Routes that exist only with HITL_ENABLE_TEST_ROUTES=true: a failure switch for
end-to-end alert tests (a burst of 5xx that the real metrics and rules see)."""

from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()


class InjectedFailure(RuntimeError):
    """Raised on purpose by the failure switch."""


@routes.get("/api/_test/fail", name="test_fail")
async def fail(request: web.Request) -> web.StreamResponse:
    raise InjectedFailure("failure injected by /api/_test/fail")
