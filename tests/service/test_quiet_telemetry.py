"""Telemetry without noise: machine chatter (idle polls, probes, scrapes) makes no
trace, log levels follow the outcome, every delivery line names its decision's trace,
a bad query says what was wrong, and error series exist before the first error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.config import Settings, telemetry_settings
from tests.conftest import Keys
from tests.otlp_receiver import OtlpHttpReceiver
from tests.prom import parse_exposition
from tests.service.conftest import traced
from tests.service.downstream import Downstream
from tests.service.helpers import submission


def log_lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


async def test_idle_background_polls_make_no_spans(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
) -> None:
    """With the outbox polling every 50 ms and the eviction poller every 200 ms, an idle
    second exports nothing; the one request made afterwards is the only trace."""
    _, server = downstream
    app = create_app(
        traced(settings, receiver, decision_webhook_url=str(server.make_url("/decisions")))
    )
    client = await aiohttp_client(app)
    await asyncio.sleep(1.0)  # ~20 outbox leases and ~5 Redis INFO polls
    resp = await client.get("/api/reviews", headers=api_keys.auth("viewer"))
    assert resp.status == 200
    trace_id = resp.headers["traceparent"].split("-")[1]
    await receiver.wait_for_spans(lambda s: any(x.kind == "SERVER" for x in s))
    await asyncio.sleep(0.3)  # a poll's span, had there been one, would be exported by now
    traces = {span.trace_id for span in receiver.spans}
    assert traces == {trace_id}, [s.name for s in receiver.spans if s.trace_id != trace_id]


async def test_probes_and_scrapes_are_not_traced_but_counted(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/metrics, /api/health and /api/health/ready start no trace (nor SQL/Redis spans
    under one), log their access line at debug (so not at the default info level),
    and still count in http_requests_total — but not toward the SLOs."""
    client = await aiohttp_client(create_app(traced(settings, receiver)))
    for path in ("/api/health", "/api/health/ready", "/metrics"):
        resp = await client.get(path)
        assert resp.status == 200, path
        assert "traceparent" not in resp.headers, path
    exposition = parse_exposition(await (await client.get("/metrics")).text())
    for endpoint in ("/api/health", "/api/health/ready", "/metrics"):
        assert exposition.value(
            "http_requests_total", method="GET", endpoint=endpoint, status="200"
        ) >= 1
    assert exposition.value("slo_requests_total", slo_type="availability") == 0
    await asyncio.sleep(0.3)
    assert receiver.spans == []
    access = [line for line in log_lines(capsys) if line.get("logger") == "hitl.access"]
    assert access == []


async def test_probe_access_lines_are_debug(
    aiohttp_client: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """At log level DEBUG the probe lines are there, at level debug."""
    debug = settings.with_changes(
        telemetry=telemetry_settings(
            log_format="json", log_level="DEBUG", otel_env={"OTEL_SDK_DISABLED": "true"}
        )
    )
    client = await aiohttp_client(create_app(debug))
    assert (await client.get("/api/health")).status == 200
    (line,) = [
        x
        for x in log_lines(capsys)
        if x.get("logger") == "hitl.access" and x.get("route") == "/api/health"
    ]
    assert line["level"] == "debug"


async def test_access_line_level_follows_the_status(
    client: Any, api_keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    """2xx at info, 4xx at warning, 5xx at error."""
    assert (await client.get("/api/reviews", headers=api_keys.auth("viewer"))).status == 200
    missing = "/api/reviews/00000000-0000-0000-0000-000000000000"
    assert (await client.get(missing, headers=api_keys.auth("viewer"))).status == 404
    assert (await client.get("/api/_test/fail")).status == 500
    levels = {
        line["status"]: line["level"]
        for line in log_lines(capsys)
        if line.get("logger") == "hitl.access"
    }
    assert levels == {200: "info", 404: "warning", 500: "error"}


async def test_delivery_log_lines_carry_the_decisions_trace_id(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A failed attempt and the final delivery are logged with the trace id of the
    decision request that caused them, so the two can be joined in the log store."""
    notes, server = downstream
    notes.fail_next = 1
    app = create_app(
        traced(settings, receiver, decision_webhook_url=str(server.make_url("/decisions")))
    )
    client = await aiohttp_client(app)
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    review_id = (await resp.json())["id"]
    resp = await client.post(
        f"/api/reviews/{review_id}/decision",
        json={"decision": "approve"},
        headers=api_keys.auth("reviewer"),
    )
    assert resp.status == 200
    decision_trace = resp.headers["traceparent"].split("-")[1]
    await notes.wait_for(1)
    await asyncio.sleep(0.1)  # the delivered line is written after the downstream answered
    lines = log_lines(capsys)
    failed = [x for x in lines if x.get("event") == "webhook_delivery_failed"]
    delivered = [x for x in lines if x.get("event") == "webhook_delivered"]
    assert len(failed) == 1 and len(delivered) == 1
    assert failed[0]["trace_id"] == decision_trace
    assert delivered[0]["trace_id"] == decision_trace


async def test_bad_query_parameter_says_what_was_wrong(client: Any, api_keys: Keys) -> None:
    """A query parameter out of range is a 422 that names the parameter and says it is
    the query, not the body, that is wrong."""
    resp = await client.get(
        "/api/reviews?limit=0&status=lost", headers=api_keys.auth("viewer")
    )
    assert resp.status == 422
    problem = await resp.json()
    assert "body" not in problem["detail"]
    assert problem["detail"].startswith("The query parameters are not valid")
    assert "limit must be a whole number from 1 to 100" in problem["detail"]
    assert "status must be one of" in problem["detail"]
    assert {e["field"] for e in problem["errors"]} == {"limit", "status"}
    resp = await client.get("/api/reviews?cursor=bm90LWEtY3Vyc29y", headers=api_keys.auth("viewer"))
    assert resp.status == 422
    assert "cursor is not a cursor this API issued" in (await resp.json())["detail"]


async def test_error_series_exist_before_the_first_error(client: Any) -> None:
    """A fresh service exposes its known error series at 0: every (type, severity)
    of app_errors_total the API can answer with, and the DB-API error classes of
    db_query_errors_total — so error panels read 0, not "No data"."""
    exposition = parse_exposition(await (await client.get("/metrics")).text())
    for error_type, severity in (
        ("validation", "warning"),
        ("bad_request", "warning"),
        ("not_found", "info"),
        ("conflict", "warning"),
        ("auth", "warning"),
        ("database_unavailable", "critical"),
        ("database_pool_exhausted", "critical"),
    ):
        assert exposition.value("app_errors_total", type=error_type, severity=severity) == 0
    for error_type in ("OperationalError", "IntegrityError", "TimeoutError", "CancelledError"):
        assert exposition.value("db_query_errors_total", error_type=error_type) == 0
