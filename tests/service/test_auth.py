"""API keys: 401 without a valid key, 403 without the role, health open, keys never echoed."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import assert_problem, submission

REVIEW = "/api/reviews/00000000-0000-4000-8000-000000000000"
# (method, path, body, the role that may call it)
ENDPOINTS: list[tuple[str, str, Any, str]] = [
    ("POST", "/api/reviews", submission(), "producer"),
    ("POST", "/api/apv/validate", submission(), "producer"),
    ("POST", f"{REVIEW}/decision", {"decision": "approve"}, "reviewer"),
    ("GET", "/api/reviews", None, "viewer"),
    ("GET", "/api/reviews/stats", None, "viewer"),
    ("GET", REVIEW, None, "viewer"),
]
ENDPOINT_IDS = [f"{m} {p.replace(REVIEW, '/api/reviews/{id}')}" for m, p, _, _ in ENDPOINTS]
UNKNOWN_KEY = "hitl_0badc0de_" + "s" * 43


def bad_authorizations(keys: Keys) -> dict[str, str | None]:
    return {
        "missing": None,
        "empty": "",
        "unknown key": f"Bearer {UNKNOWN_KEY}",
        "right id, wrong secret": f"Bearer {keys.viewer[:14]}{'x' * 43}",
        "not a hitl key": "Bearer abc",
        "Basic scheme": f"Basic {keys.admin}",
        "bare key": keys.admin,
        "Bearer without key": "Bearer ",
    }


@pytest.mark.parametrize(("method", "path", "body", "role"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_bad_credentials_are_401(
    client: TestClient, api_keys: Keys, method: str, path: str, body: Any, role: str
) -> None:
    """Every protected endpoint answers 401 (with WWW-Authenticate: Bearer) for a missing,
    unknown or malformed key, and never echoes what was sent."""
    for case, authorization in bad_authorizations(api_keys).items():
        headers = {} if authorization is None else {"Authorization": authorization}
        resp = await client.request(method, path, json=body, headers=headers)
        problem = await assert_problem(resp, 401, "unauthenticated")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), case
        text = str(problem)
        assert UNKNOWN_KEY not in text and api_keys.admin not in text and api_keys.viewer[:14] not in text


@pytest.mark.parametrize(("method", "path", "body", "role"), ENDPOINTS, ids=ENDPOINT_IDS)
async def test_missing_role_is_403(
    client: TestClient, api_keys: Keys, method: str, path: str, body: Any, role: str
) -> None:
    """A valid key without the endpoint's role is a 403 naming the role; the right role passes."""
    for other in ("producer", "reviewer", "viewer"):
        resp = await client.request(method, path, json=body, headers=api_keys.auth(other))
        if other == role:
            assert resp.status not in (401, 403), await resp.text()
            continue
        problem = await assert_problem(resp, 403, "forbidden")
        assert role in problem["detail"]
        assert getattr(api_keys, other) not in str(problem)


async def test_admin_key_with_all_roles_reaches_everything(client: TestClient, api_keys: Keys) -> None:
    """A key holding every role passes every role check."""
    for method, path, body, _ in ENDPOINTS:
        resp = await client.request(method, path, json=body, headers=api_keys.auth("admin"))
        assert resp.status not in (401, 403), (path, await resp.text())


@pytest.mark.parametrize("path", ["/api/health", "/api/health/ready", "/api/openapi.json"])
async def test_open_endpoints_need_no_key(client: TestClient, path: str) -> None:
    """Health probes and the API description answer without any key."""
    resp = await client.get(path)
    assert resp.status == 200


async def test_keys_never_appear_in_responses(client: TestClient, api_keys: Keys) -> None:
    """Across a whole session of successes and failures, no response body or header carries
    a key."""
    secrets = [api_keys.producer, api_keys.reviewer, api_keys.viewer, api_keys.admin, UNKNOWN_KEY]
    bodies: list[str] = []

    async def record(method: str, path: str, **kwargs: Any) -> Any:
        resp = await client.request(method, path, **kwargs)
        bodies.append(await resp.text())
        bodies.append(str(dict(resp.headers)))
        return resp

    created = await (await record("POST", "/api/reviews", json=submission(), headers=api_keys.auth("producer"))).json()
    rid = created["id"]
    await record("GET", f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    await record("POST", f"/api/reviews/{rid}/decision", json={"decision": "approve"}, headers=api_keys.auth("reviewer"))
    await record("POST", f"/api/reviews/{rid}/decision", json={"decision": "approve"}, headers=api_keys.auth("reviewer"))
    await record("GET", "/api/reviews", headers=api_keys.auth("producer"))
    await record("GET", "/api/reviews", headers={"Authorization": f"Bearer {UNKNOWN_KEY}"})
    await record("GET", "/api/reviews/stats", headers={"Authorization": api_keys.admin})
    await record("POST", "/api/reviews", data="{", headers={**api_keys.auth("producer"), "Content-Type": "application/json"})
    await record("GET", "/api/_test/fail", headers=api_keys.auth("admin"))
    for text in bodies:
        for secret in secrets:
            assert secret not in text
            assert secret.split("_", 2)[2] not in text  # not even the secret part
