"""Payload builders shared by the service tests."""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

import aiopg
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from service.api.openapi import EXAMPLE_SUBMISSION


def submission(**changes: Any) -> dict[str, Any]:
    """A valid APV submission with a fresh apv_id; keyword arguments replace fields."""
    body = copy.deepcopy(EXAMPLE_SUBMISSION)
    body["apv_id"] = f"apv-{uuid.uuid4().hex[:12]}"
    body.update(changes)
    return body


# -- added for the endpoint suites --------------------------------------------------

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_BASE = "https://hitl.dev/problems/"
TABLES = ("reviews", "validation_results", "review_decisions", "webhook_outbox")
KEY_SHAPE = re.compile(r"^hitl_[0-9a-f]{8}_[A-Za-z0-9_-]{20,}$")


async def assert_problem(resp: ClientResponse, status: int, slug: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with this status (and type slug); its body."""
    text = await resp.text()
    assert resp.status == status, text
    assert resp.content_type == PROBLEM_CONTENT_TYPE, (resp.content_type, text)
    body = json.loads(text)
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    if slug is not None:
        assert body["type"] == PROBLEM_BASE + slug, body
    assert "Traceback" not in text
    return dict(body)


def error_fields(problem: dict[str, Any]) -> set[str]:
    """The JSON pointers a 422 problem names."""
    return {e["field"] for e in problem["errors"]}


async def sql(database_url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement directly against PostgreSQL (autocommit); its rows, if any."""
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        await cur.execute(query, params)
        if cur.description is None:
            return []
        return list(await cur.fetchall())


async def count_rows(database_url: str) -> dict[str, int]:
    """Rows per table, read from PostgreSQL directly."""
    counts: dict[str, int] = {}
    async with aiopg.connect(database_url) as conn, conn.cursor() as cur:
        for table in TABLES:
            await cur.execute(f"SELECT count(*) FROM {table}")
            row = await cur.fetchone()
            counts[table] = int(row[0])
    return counts


async def submit(client: TestClient, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    """Submit a fresh valid APV (with changes) and return the created review."""
    resp = await client.post("/api/reviews", json=submission(**changes), headers=headers)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


def decision_body(decision: str) -> dict[str, Any]:
    """A complete, valid request body for ``decision``."""
    body: dict[str, Any] = {"decision": decision}
    if decision != "approve":
        body["justification"] = f"because {decision}"
    if decision == "modify":
        body["modifications"] = {"patch": "tightened bound"}
    return body


async def decide(
    client: TestClient, review_id: str, decision: str, headers: dict[str, str]
) -> ClientResponse:
    return await client.post(
        f"/api/reviews/{review_id}/decision", json=decision_body(decision), headers=headers
    )
