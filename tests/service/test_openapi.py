"""GET /api/openapi.json: complete, valid OpenAPI 3.1, and its examples are true."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from service.api.openapi import EXAMPLE_DECISIONS, EXAMPLE_SUBMISSION
from tests.conftest import Keys
from tests.service.helpers import submission, submit


async def document(client: TestClient) -> dict[str, Any]:
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    return dict(await resp.json())


def examples(doc: dict[str, Any]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(where, example, schema) for every media-type and parameter example, and every
    JSON Schema `examples` entry inside the component schemas."""
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            bodies = [("requestBody", operation.get("requestBody", {}).get("content", {}))]
            bodies += [(f"response {code}", r.get("content", {})) for code, r in operation["responses"].items()]
            for label, content in bodies:
                for media_type, media in content.items():
                    where = f"{method.upper()} {path} {label} {media_type}"
                    if "example" in media:
                        yield where, media["example"], media["schema"]
                    for name, named in media.get("examples", {}).items():
                        yield f"{where} [{name}]", named["value"], media["schema"]

    def walk(schema: Any, where: str) -> Iterator[tuple[str, Any, dict[str, Any]]]:
        if isinstance(schema, dict):
            for value in schema.get("examples", []) if isinstance(schema.get("examples"), list) else []:
                yield where, value, schema
            for key, sub in schema.items():
                yield from walk(sub, f"{where}/{key}")
        elif isinstance(schema, list):
            for n, sub in enumerate(schema):
                yield from walk(sub, f"{where}/{n}")

    yield from walk(doc["components"]["schemas"], "#/components/schemas")


async def test_every_route_is_documented(client: TestClient, app: web.Application) -> None:
    """Each route the app registers (HEAD twins aside) is in the document with its method.
    The reviewer console under /console/ (HTML pages, and the live stream, which never
    ends and so must not be driven by schemathesis) is not the JSON API: not documented."""
    doc = await document(client)
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
        and not route.resource.canonical.startswith("/console/")
    }
    assert registered, "no routes found"
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    missing = registered - documented
    assert not missing, f"undocumented routes: {sorted(missing)}"
    assert ("get", "/metrics") in registered


async def test_document_is_valid_openapi_3_1(client: TestClient) -> None:
    """The document passes the OpenAPI 3.1 validator."""
    doc = await document(client)
    assert doc["openapi"].startswith("3.1")
    validate(doc)


async def test_every_example_matches_its_schema(client: TestClient) -> None:
    """Every example in the document validates against its (ref-resolved) schema."""
    doc = await document(client)
    found = list(examples(doc))
    assert len(found) >= 10
    for where, example, schema in found:
        rooted = {**copy.deepcopy(schema), "components": doc["components"]}
        validator = Draft202012Validator(rooted, format_checker=Draft202012Validator.FORMAT_CHECKER)
        errors = [e.message for e in validator.iter_errors(example)]
        assert not errors, f"{where}: {errors}"


async def test_problem_responses_are_documented(client: TestClient) -> None:
    """Every secured operation documents 401 and 403 as problem bodies; body-reading ones
    document 400, 413, 415 and 422."""
    doc = await document(client)
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if operation.get("security"):
                assert {"401", "403"} <= codes, (method, path)
                assert "application/problem+json" in operation["responses"]["401"]["content"]
            if "requestBody" in operation:
                assert {"400", "413", "415", "422"} <= codes, (method, path)


async def test_examples_work_against_the_live_api(client: TestClient, api_keys: Keys) -> None:
    """The documented submission is accepted (201) and answered with a body matching the
    documented Review schema; it validates clean; each documented decision works."""
    resp = await client.post("/api/reviews", json=EXAMPLE_SUBMISSION, headers=api_keys.auth("producer"))
    assert resp.status == 201, await resp.text()
    created = await resp.json()
    doc = await document(client)
    review_schema = {"$ref": "#/components/schemas/Review", "components": doc["components"]}
    assert not [e.message for e in Draft202012Validator(review_schema).iter_errors(created)]
    assert all(v["result"] == "valid" for v in created["validation"])
    resp = await client.post("/api/apv/validate", json=EXAMPLE_SUBMISSION, headers=api_keys.auth("producer"))
    assert (await resp.json())["valid"] is True
    for name, body in EXAMPLE_DECISIONS.items():
        rid = (await submit(client, api_keys.auth("producer")))["id"]
        resp = await client.post(f"/api/reviews/{rid}/decision", json=body, headers=api_keys.auth("reviewer"))
        assert resp.status == 200, (name, await resp.text())


async def test_documented_list_parameters_are_the_enforced_ones(client: TestClient, api_keys: Keys) -> None:
    """GET /api/reviews takes every documented status and severity and refuses others;
    the documented maximum limit is accepted and one more refused; without a limit a
    page holds the documented default."""
    doc = await document(client)
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/reviews"]["get"]["parameters"]}
    viewer = api_keys.auth("viewer")

    async def status_of(query: str) -> int:
        return (await client.get(f"/api/reviews?{query}", headers=viewer)).status

    for name in ("status", "severity"):
        for value in params[name]["enum"]:
            assert await status_of(f"{name}={value}") == 200, (name, value)
        assert await status_of(f"{name}=undocumented") == 422, name
    limit = params["limit"]
    assert await status_of(f"limit={limit['maximum']}") == 200
    assert await status_of(f"limit={limit['maximum'] + 1}") == 422
    assert await status_of(f"limit={limit['minimum'] - 1}") == 422
    for _ in range(limit["default"] + 1):
        await submit(client, api_keys.auth("producer"))
    page = await (await client.get("/api/reviews", headers=viewer)).json()
    assert len(page["items"]) == limit["default"]
    assert page["next_cursor"]


DATABASE_OPERATIONS = {"submit_review", "list_reviews", "review_stats", "get_review", "decide_review"}


async def test_failure_responses_are_documented(client: TestClient) -> None:
    """Every operation documents 500 as a problem; those that use PostgreSQL document 503
    with a required integer Retry-After; 401 carries WWW-Authenticate."""
    doc = await document(client)
    seen = set()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            if operation["operationId"] == "test_fail":
                continue
            assert "500" in responses, (method, path)
            assert "application/problem+json" in responses["500"]["content"]
            if operation["operationId"] in DATABASE_OPERATIONS:
                seen.add(operation["operationId"])
                unavailable = responses["503"]
                assert "application/problem+json" in unavailable["content"], (method, path)
                retry_after = unavailable["headers"]["Retry-After"]
                assert retry_after["required"] is True
                assert retry_after["schema"]["type"] == "integer"
            if "401" in responses:
                assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
    assert seen == DATABASE_OPERATIONS


def request_validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


async def test_what_the_document_forbids_the_service_refuses(client: TestClient, api_keys: Keys) -> None:
    """Hand-made submissions at the edges of what the service takes: for each, the
    document's own schema and the live service agree (valid <=> 201)."""
    doc = await document(client)
    validator = request_validator(doc, "ApvSubmission")
    deep: Any = "leaf"
    for _ in range(8):  # details itself is the outermost of 8 nested objects
        deep = {"k": deep}
    too_deep: Any = {"k": deep}
    cases: dict[str, tuple[dict[str, Any], bool]] = {
        "30-digit integer": ({"wargaming": {"verdict": "v", "details": {"n": 10**30 - 1}}}, True),
        "31-digit integer": ({"wargaming": {"verdict": "v", "details": {"n": 10**30}}}, False),
        "float just under 1e30": ({"anomaly_score": 9.99e29}, True),
        "float 1e30": ({"anomaly_score": 1e30}, False),
        "NUL in a field": ({"apv_code": "A\u0000"}, False),
        "NUL in a details key": ({"wargaming": {"verdict": "v", "details": {"a\u0000": 1}}}, False),
        "NUL in modifications-like free text": ({"wargaming": {"verdict": "v", "details": {"a": ["x\u0000"]}}}, False),
        "non-ASCII text": ({"apv_code": "\u00e9\U0001f600"}, True),
        "details 8 deep": ({"wargaming": {"verdict": "v", "details": deep}}, True),
        "details 9 deep": ({"wargaming": {"verdict": "v", "details": too_deep}}, False),
    }
    for name, (changes, valid) in cases.items():
        body = submission(**changes)
        assert validator.is_valid(body) is valid, name
        resp = await client.post(
            "/api/reviews", data=json.dumps(body), headers={**api_keys.auth("producer"), "Content-Type": "application/json"}
        )
        assert (resp.status == 201) is valid, (name, resp.status, await resp.text())
        if not valid:
            assert resp.status in (400, 422), (name, resp.status)


async def test_documented_cursor_is_the_accepted_one(client: TestClient, api_keys: Keys) -> None:
    """An issued next_cursor matches the documented pattern; any string of that pattern is
    accepted; strings outside it are refused with 422."""
    doc = await document(client)
    params = {p["name"]: p["schema"] for p in doc["paths"]["/api/reviews"]["get"]["parameters"]}
    pattern = re.compile(params["cursor"]["pattern"])
    for _ in range(3):
        await submit(client, api_keys.auth("producer"))
    viewer = api_keys.auth("viewer")
    issued = (await (await client.get("/api/reviews?limit=1", headers=viewer)).json())["next_cursor"]
    assert pattern.search(issued), issued
    for cursor, accepted in [
        (issued, True),
        ("", True),
        ("0_" + "0" * 32, True),
        ("9999999999999999_" + "f" * 32, True),
        ("1_" + "A" * 32, False),
        ("12345678901234567_" + "0" * 32, False),
        ("not-a-cursor", False),
    ]:
        assert bool(pattern.search(cursor)) is accepted, cursor
        resp = await client.get("/api/reviews", params={"cursor": cursor}, headers=viewer)
        assert (resp.status == 200) is accepted, (cursor, resp.status, await resp.text())
