"""API keys: 401 without a valid key (whatever bytes were sent), 403 without the role,
health open, keys never echoed."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from service.auth import ApiKeys
from service.domain.errors import Unauthenticated
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.helpers import PROBLEM_BASE, assert_problem, submission

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


# -- hostile Authorization headers, sent as raw bytes ---------------------------------


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(client: TestClient, request: bytes) -> RawResponse:
    """Send ``request`` byte for byte over a fresh connection; the parsed answer."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(int(status_line.split()[1]), headers, body)


def raw(method: str, path: str, body: Any, header_lines: list[bytes]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += header_lines
    payload = b"" if body is None else json.dumps(body).encode()
    if body is not None:
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(payload)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + payload


def hostile_authorizations(keys: Keys) -> dict[str, list[bytes]]:
    """Authorization header lines (raw bytes) that must each be a 401. The valid key
    used holds every role, so a 401 is about the credential, not the role."""
    valid = keys.admin.encode()
    key_id, secret = valid[5:13], valid[14:]
    auth = b"Authorization: "
    return {
        "lone 0xff": [auth + b"Bearer \xff"],
        "several invalid bytes": [auth + b"Bearer \xff\xfe\xfd\x80"],
        "invalid byte as the whole value": [auth + b"\xff"],
        "valid key plus an invalid byte": [auth + b"Bearer " + valid + b"\xff"],
        "invalid byte inside a valid key": [auth + b"Bearer " + valid[:20] + b"\xff" + valid[21:]],
        "encoded surrogate (invalid UTF-8)": [auth + b"Bearer hitl_" + key_id + b"_\xed\xa0\x80" + secret],
        "UTF-8 non-ASCII in the id": [auth + b"Bearer hitl_\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9_" + secret],
        "latin-1 in the scheme": [auth + b"B\xe9arer " + valid],
        "overlong UTF-8 slash": [auth + b"Bearer hitl_" + key_id + b"_\xc0\xaf" + secret],
        "empty value": [auth],
        "scheme only": [auth + b"Bearer"],
        "scheme and blanks": [auth + b"Bearer     "],
        "tab instead of space": [auth + b"Bearer\t" + valid],
        "garbage scheme": [auth + b"!#$%&'*+.^_`|~ " + valid],
        "Basic with the key": [auth + b"Basic " + base64.b64encode(b"alice:" + valid)],
        "key without scheme": [auth + valid],
        "very long token (7 kB)": [auth + b"Bearer " + b"A" * 7000],
        "very long secret after a real id": [auth + b"Bearer hitl_" + key_id + b"_" + b"x" * 5000],
        "two valid headers": [auth + b"Bearer " + valid, auth + b"Bearer " + valid],
        "valid then invalid": [auth + b"Bearer " + valid, auth + b"Bearer \xff"],
        "invalid then valid": [auth + b"Bearer \xff", auth + b"Bearer " + valid],
        "valid then empty": [auth + b"Bearer " + valid, auth],
        "same header in other case": [auth + b"Bearer " + valid, b"AUTHORIZATION: Bearer " + valid],
    }


async def test_hostile_authorization_bytes_are_401_not_5xx(client: TestClient, api_keys: Keys) -> None:
    """Invalid bytes, odd schemes, huge tokens and duplicate headers, sent as raw bytes
    to every protected endpoint: each a 401 problem that echoes nothing sent, and none
    of them counted as a 5xx by the metrics the availability SLO reads."""
    cases = hostile_authorizations(api_keys)
    for method, path, body, _ in ENDPOINTS:
        for case, lines in cases.items():
            resp = await raw_request(client, raw(method, path, body, lines))
            where = f"{method} {path}: {case}"
            assert resp.status == 401, (where, resp.status, resp.body[:300])
            assert resp.headers["content-type"].startswith("application/problem+json"), where
            assert resp.headers["www-authenticate"].startswith("Bearer"), where
            problem = json.loads(resp.body)
            assert problem["type"] == PROBLEM_BASE + "unauthenticated", where
            assert api_keys.admin.split("_", 2)[2].encode() not in resp.body, where
    # The same header sent properly is accepted: the cases fail for their bytes alone.
    ok = await raw_request(client, raw("GET", "/api/reviews", None, [b"Authorization: Bearer " + api_keys.admin.encode()]))
    assert ok.status == 200

    exposition = parse_exposition(await (await client.get("/metrics")).text())
    statuses = {dict(labels)["status"] for labels in exposition.series_of("http_requests_total")}
    assert "401" in statuses and not any(s.startswith("5") for s in statuses), statuses
    assert exposition.value("slo_requests_bad", slo_type="availability") == 0
    assert exposition.value("slo_requests_good", slo_type="availability") >= len(ENDPOINTS) * len(cases)
    assert exposition.series_of("app_exceptions_total") in ({}, {frozenset(): 0.0})


@pytest.mark.parametrize(
    "line",
    [
        b"Authorization: Bearer " + b"A" * 9000,  # over aiohttp's 8190-byte field limit
        b"Authorization: Bearer \x00",
        b"Authorization: Bearer \x01\x7f",
        b"Authorization\xff: Bearer x",
        b"Authorization : Bearer x",
    ],
    ids=["over the field limit", "NUL", "control bytes", "invalid byte in the name", "space before colon"],
)
async def test_unparseable_authorization_is_refused_by_the_parser(client: TestClient, line: bytes) -> None:
    """What the HTTP parser itself refuses is a 4xx before any handler runs, never a 5xx."""
    resp = await raw_request(client, raw("GET", "/api/reviews", None, [line]))
    assert 400 <= resp.status < 500, (resp.status, resp.body[:300])


@pytest.mark.parametrize(
    "header",
    [
        "Bearer \udcff",
        "Bearer hitl_\udcff\udcfe\udcfd\udcfc_" + "s" * 43,
        "Bearer hitl_0badc0de_\ud800",
        "\udcff \udcff",
        "Bearer " + "x" * 100_000,
        "Bearer hitl_0badc0de_é",
    ],
    ids=["escaped byte", "escaped bytes as the id", "unpaired surrogate", "escaped scheme", "100 kB", "non-ASCII"],
)
def test_authenticate_refuses_any_string_with_unauthenticated(api_keys: Keys, header: str) -> None:
    """Whatever str aiohttp (or anything else) hands over, the verdict is Unauthenticated,
    never another exception."""
    keys = ApiKeys.load(api_keys.file)
    with pytest.raises(Unauthenticated):
        keys.authenticate(header)
    assert keys.authenticate(f"Bearer {api_keys.admin}").name == "alice"
