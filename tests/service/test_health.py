"""Liveness, readiness and the failure switch."""

from __future__ import annotations

from aiohttp.test_utils import TestClient

from service.keys import DRAIN
from tests.conftest import Keys
from tests.service.conftest import MakeClient
from tests.service.helpers import assert_problem


async def test_liveness(client: TestClient) -> None:
    """GET /api/health says ok without touching anything."""
    resp = await client.get("/api/health")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}


async def test_readiness_with_everything_up(client: TestClient) -> None:
    """GET /api/health/ready is 'ready' when PostgreSQL and Redis both answer."""
    resp = await client.get("/api/health/ready")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "checks": {"postgres": "ok", "redis": "ok"}}


async def test_failure_switch_is_a_500_problem_without_internals(client: TestClient) -> None:
    """/api/_test/fail answers a 500 problem carrying the request id, never a traceback."""
    resp = await client.get("/api/_test/fail")
    problem = await assert_problem(resp, 500, "internal-error")
    assert problem["request_id"]
    assert problem["request_id"] == resp.headers.get("X-Request-ID", problem["request_id"])
    assert "InjectedFailure" not in str(problem)


async def test_failure_switch_absent_unless_enabled(make_client: MakeClient, api_keys: Keys) -> None:
    """Without enable_test_routes the failure switch does not exist."""
    client = await make_client(enable_test_routes=False)
    resp = await client.get("/api/_test/fail", headers=api_keys.auth("admin"))
    await assert_problem(resp, 404)
    document = await (await client.get("/api/openapi.json")).json()
    assert "/api/_test/fail" not in document["paths"]


async def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    """An unknown path is a 404 problem and a wrong method a 405 problem."""
    await assert_problem(await client.get("/api/nothing-here"), 404)
    await assert_problem(await client.delete("/api/reviews"), 405)


async def test_draining_readiness_is_503_and_every_response_says_close(
    client: TestClient, api_keys: Keys
) -> None:
    """Once draining (SIGTERM), readiness is 503 'draining' without asking PostgreSQL,
    and every response — the API's too, which are still served — says Connection: close;
    before it, responses keep the connection alive."""
    resp = await client.get("/api/reviews", headers=api_keys.auth("viewer"))
    assert resp.status == 200 and "Connection" not in resp.headers
    assert client.server.app is not None
    client.server.app[DRAIN].start()
    resp = await client.get("/api/health/ready")
    assert resp.status == 503
    assert await resp.json() == {"status": "draining", "checks": {}}
    assert resp.headers["Connection"] == "close"
    resp = await client.get("/api/reviews", headers=api_keys.auth("viewer"))
    assert resp.status == 200 and resp.headers["Connection"] == "close"
    assert (await client.get("/api/health")).headers["Connection"] == "close"
