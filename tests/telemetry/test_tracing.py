"""Tracing end to end: real aiopg, redis.asyncio and aiohttp-client calls, spans decoded
by an OTLP receiver, stdout log lines matched against the exported ids."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from opentelemetry.trace import SpanKind

from telemetry.tracing import continue_trace
from tests.otlp_receiver import OtlpHttpReceiver, ReceivedSpan
from tests.telemetry._tracing_fixtures import (
    CARRIERS,
    SECRET_PARAM,
    SESSION,
    ClientFactory,
    Downstream,
    build_app,
    downstream,
    json_lines,
    pg_dsn,
    start,
    trace_id_of,
)

__all__ = ["downstream", "pg_dsn", "start"]  # fixtures, imported


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as r:
        yield r


def server_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == "SERVER"]


def one(spans: list[ReceivedSpan], **match: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected one span matching {match}, got {[s.name for s in spans]}"
    return found[0]


async def test_request_is_one_server_span_with_db_and_redis_children(
    receiver: OtlpHttpReceiver, start: ClientFactory, pg_dsn: str
) -> None:
    """A request yields exactly one SERVER span named by its route template, and its
    PostgreSQL and Redis calls are CLIENT children in the same trace."""
    client = await start(build_app(receiver.otel_env(), pg_dsn=pg_dsn))
    resp = await client.get("/api/reviews/r1")
    assert resp.status == 200
    spans = await receiver.wait_for_spans(lambda s: len(s) >= 3)
    await asyncio.sleep(0.2)  # anything extra (a duplicate server span) would land now
    spans = receiver.spans

    server = one(server_spans(spans))
    assert server.name == "GET /api/reviews/{review_id}"
    assert server.parent_span_id is None
    assert server.attributes["http.route"] == "/api/reviews/{review_id}"
    assert server.status == "UNSET"
    db = one(spans, name="SELECT")
    cache = one(spans, name="GET", kind="CLIENT")
    for child in (db, cache):
        assert child.kind == "CLIENT"
        assert child.trace_id == server.trace_id
        assert child.parent_span_id == server.span_id
    assert db.attributes["db.system"] == "postgresql"
    assert len(spans) == 3
    version, trace_id, span_id, flags = resp.headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", server.trace_id, server.span_id)
    assert int(flags, 16) & 0x01  # sampled
    assert server.resource["service.name"] == "hitl-test"
    assert server.resource["service.version"] == "1.2.3"
    assert server.resource["service.instance.id"] == "test-instance-1"
    assert server.resource["deployment.environment"] == "test"


async def test_n_requests_give_n_server_spans(
    receiver: OtlpHttpReceiver, start: ClientFactory
) -> None:
    """Our explicit middleware is the only server instrumentation: 5 requests, 5 spans."""
    client = await start(build_app(receiver.otel_env()))
    for _ in range(5):
        assert (await client.get("/api/ok")).status == 200
    await receiver.wait_for_spans(5)
    await asyncio.sleep(0.2)
    assert [s.name for s in receiver.spans] == ["GET /api/ok"] * 5


async def test_incoming_traceparent_is_continued(
    receiver: OtlpHttpReceiver, start: ClientFactory
) -> None:
    """A caller's W3C traceparent makes our server span its child, in its trace."""
    client = await start(build_app(receiver.otel_env()))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    resp = await client.get(
        "/api/ok", headers={"traceparent": f"00-{trace_id}-{parent}-01", "tracestate": "vendor=x"}
    )
    assert resp.status == 200
    (span,) = await receiver.wait_for_spans(1)
    assert span.trace_id == trace_id
    assert span.parent_span_id == parent
    assert trace_id_of(resp.headers["traceparent"]) == trace_id


async def test_crash_is_error_and_4xx_is_not(
    receiver: OtlpHttpReceiver, start: ClientFactory
) -> None:
    """A crash (500) leaves an ERROR span with the exception event; a 409 and a route
    miss (404) stay UNSET, the miss under one fixed name."""
    client = await start(build_app(receiver.otel_env()))
    assert (await client.get("/api/crash")).status == 500
    assert (await client.post("/api/conflict")).status == 409
    assert (await client.get("/no/such/route/123")).status == 404
    spans = await receiver.wait_for_spans(3)

    crash = one(spans, name="GET /api/crash")
    assert crash.status == "ERROR"
    assert crash.status_message == "ZeroDivisionError"
    assert "exception" in crash.event_names()
    assert (
        crash.attributes.get("http.status_code", crash.attributes.get("http.response.status_code"))
        == 500
    )
    conflict = one(spans, name="POST /api/conflict")
    assert conflict.status == "UNSET"
    miss = one(spans, name="GET unmatched")
    assert miss.status == "UNSET"
    assert "http.route" not in miss.attributes


async def test_sql_and_redis_values_never_reach_span_attributes(
    receiver: OtlpHttpReceiver, start: ClientFactory, pg_dsn: str, downstream: Downstream
) -> None:
    """db.statement is the parameterised text; inline literals are masked; Redis
    arguments are '?'; no attribute anywhere holds the secret value."""
    client = await start(
        build_app(receiver.otel_env(), pg_dsn=pg_dsn, downstream_url=downstream.url)
    )
    await client.get("/api/reviews/r1")
    await client.get("/api/inline")
    await client.post("/api/reviews/r1/decision?token=abc123&x=1")
    spans = await receiver.wait_for_spans(lambda s: len(server_spans(s)) >= 3)

    statements = {s.attributes.get("db.statement") for s in spans if s.name == "SELECT"}
    assert statements == {
        "SELECT id, title FROM reviews WHERE id = %s AND coalesce(note, ?) <> %s",
        "SELECT count(*) FROM reviews WHERE title <> ? LIMIT ?",
    }
    set_span = one(spans, name="SET")
    assert set_span.attributes["db.statement"] == "SET ? ? ? ?"
    blob = json.dumps([s.attributes for s in spans])
    assert SECRET_PARAM not in blob
    assert "abc123" not in blob  # ?token=... in the server span's target


async def test_logs_carry_the_exported_trace_and_span_ids(
    receiver: OtlpHttpReceiver,
    start: ClientFactory,
    pg_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every stdout line is JSON; the request's lines (handler and access line) carry
    exactly the exported server span's trace_id and span_id."""
    client = await start(build_app(receiver.otel_env(), pg_dsn=pg_dsn))
    resp = await client.get("/api/reviews/r1", headers={"X-Request-ID": "req-abc.123"})
    assert resp.headers["X-Request-ID"] == "req-abc.123"
    spans = await receiver.wait_for_spans(3)
    server = one(server_spans(spans))

    lines = [
        ln for ln in json_lines(capsys.readouterr().out) if ln.get("request_id") == "req-abc.123"
    ]
    assert {ln["event"] for ln in lines} == {"review_loaded", "request"}
    for line in lines:
        assert line["trace_id"] == server.trace_id
        assert line["span_id"] == server.span_id
        assert int(line["trace_flags"], 16) & 0x01  # sampled (0x02 = random trace id)
    access = next(ln for ln in lines if ln["event"] == "request")
    assert access["logger"] == "telemetry.access"
    assert access["route"] == "/api/reviews/{review_id}"
    assert access["path"] == "/api/reviews/r1"
    assert access["status"] == 200
    assert access["method"] == "GET"
    assert access["duration_ms"] >= 0
    assert access["response_bytes"] == int(resp.headers["Content-Length"])
    assert access["client"] == "127.0.0.1"
    assert "user_agent" in access
    assert access["timestamp"].endswith("Z")


async def test_crash_logs_one_line_with_exception_and_the_response_trace_id(
    receiver: OtlpHttpReceiver, start: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash prints one line with the structured exception; its trace_id is the one
    the 500 response's traceparent names, and no frame locals are printed."""
    client = await start(build_app(receiver.otel_env()))
    resp = await client.get("/api/crash")
    assert resp.status == 500
    trace_id = trace_id_of(resp.headers["traceparent"])
    out = capsys.readouterr().out
    with_exc = [ln for ln in json_lines(out) if "exception" in ln]
    assert len(with_exc) == 1
    (line,) = with_exc
    assert line["trace_id"] == trace_id
    assert line["request_id"] == resp.headers["X-Request-ID"]
    assert line["level"] == "error"
    assert line["exception"][0]["exc_type"] == "ZeroDivisionError"
    assert "hunter2-local" not in out
    (span,) = await receiver.wait_for_spans(1)
    assert span.trace_id == trace_id


async def test_continue_trace_carries_the_original_trace_to_the_downstream(
    receiver: OtlpHttpReceiver, start: ClientFactory, pg_dsn: str, downstream: Downstream
) -> None:
    """The decision request's context, stored and continued later (as the outbox
    worker does), makes the webhook call join the decision's trace."""
    app = build_app(receiver.otel_env(), pg_dsn=pg_dsn, downstream_url=downstream.url)
    client = await start(app)
    assert (await client.post("/api/reviews/r1/decision")).status == 200
    inline = downstream.received[0]["headers"]["traceparent"]
    (carrier,) = app[CARRIERS]
    decision_trace = trace_id_of(carrier["traceparent"])
    assert trace_id_of(inline) == decision_trace

    with continue_trace(app, carrier, "webhook.deliver", kind=SpanKind.PRODUCER):
        async with app[SESSION].post(downstream.url, json={"later": True}) as r:
            assert r.status == 200
    later = downstream.received[1]["headers"]["traceparent"]
    assert trace_id_of(later) == decision_trace

    spans = await receiver.wait_for_spans(lambda s: any(x.name == "webhook.deliver" for x in s))
    deliver = one(spans, name="webhook.deliver")
    server = one(server_spans(spans))
    assert deliver.kind == "PRODUCER"
    assert deliver.parent_span_id == carrier["traceparent"].split("-")[2]
    assert deliver.trace_id == server.trace_id
    spans = await receiver.wait_for_spans(lambda s: len([x for x in s if x.name == "POST"]) >= 2)
    posts = [s for s in spans if s.name == "POST"]
    assert {p.parent_span_id for p in posts} == {server.span_id, deliver.span_id}
    assert later.split("-")[2] in {p.span_id for p in posts}
