"""One trace per decision, end to end: HTTP -> SQL -> Redis -> webhook, and the log
lines of each request carry that trace's ids."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys
from tests.otlp_receiver import OtlpHttpReceiver, ReceivedSpan
from tests.service.conftest import traced
from tests.service.downstream import Downstream
from tests.service.helpers import submission


def descendants(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    by_parent: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        if span.parent_span_id:
            by_parent.setdefault(span.parent_span_id, []).append(span)
    found, stack = [], [root.span_id]
    while stack:
        for child in by_parent.get(stack.pop(), []):
            found.append(child)
            stack.append(child.span_id)
    return found


def server_span(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    (span,) = [s for s in spans if s.kind == "SERVER" and s.name == name]
    return span


# The receiver comes first in each signature so it is torn down last: the app's
# shutdown flush must still find it.
async def test_decision_is_one_trace_from_http_to_webhook(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    downstream: tuple[Downstream, TestServer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Submitting and deciding a review exports a server span per request with
    PostgreSQL and Redis child spans in the same trace; the webhook delivery joins the
    decision's trace (its traceparent names it); every log line of those requests
    carries exactly the exported trace and span ids."""
    notes, server = downstream
    app = create_app(
        traced(settings, receiver, decision_webhook_url=str(server.make_url("/decisions")))
    )
    client = await aiohttp_client(app)
    resp = await client.post("/api/reviews", json=submission(), headers=api_keys.auth("producer"))
    assert resp.status == 201
    review_id = (await resp.json())["id"]
    submit_traceparent = resp.headers["traceparent"]
    resp = await client.post(
        f"/api/reviews/{review_id}/decision",
        json={"decision": "approve"},
        headers={**api_keys.auth("reviewer"), "X-Request-ID": "decision-req-1"},
    )
    assert resp.status == 200
    decision_traceparent = resp.headers["traceparent"]
    assert resp.headers["X-Request-ID"] == "decision-req-1"
    await notes.wait_for(1)

    decide_name = "POST /api/reviews/{review_id}/decision"
    spans = await receiver.wait_for_spans(
        lambda s: (
            any(x.name == decide_name for x in s)
            and any(x.name == "webhook deliver" for x in s)
            and any(x.name == "POST /api/reviews" for x in s)
        )
    )
    submit = server_span(spans, "POST /api/reviews")
    decide = server_span(spans, decide_name)
    assert submit.trace_id == submit_traceparent.split("-")[1]
    assert decide.trace_id == decision_traceparent.split("-")[1]
    assert decide.span_id == decision_traceparent.split("-")[2]
    assert submit.trace_id != decide.trace_id

    for root in (submit, decide):
        children = descendants(spans, root)
        assert {c.trace_id for c in children} == {root.trace_id}
        systems = {
            c.attributes.get("db.system") or c.attributes.get("db.system.name") for c in children
        }
        assert "postgresql" in systems, [c.name for c in children]
        assert "redis" in systems, [c.name for c in children]
        for child in children:
            statement = str(
                child.attributes.get("db.statement", child.attributes.get("db.query.text", ""))
            )
            assert "reviewer-bot" not in statement and api_keys.reviewer not in statement

    delivery = next(s for s in spans if s.name == "webhook deliver")
    assert delivery.trace_id == decide.trace_id
    outgoing = [s for s in descendants(spans, delivery) if s.kind == "CLIENT"]
    assert outgoing, "the webhook POST is a client span under the delivery span"
    delivered_traceparent = notes.headers[0]["traceparent"]
    assert delivered_traceparent.split("-")[1] == decide.trace_id

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    access = {line["request_id"]: line for line in lines if line.get("logger") == "hitl.access"}
    assert access["decision-req-1"]["trace_id"] == decide.trace_id
    assert access["decision-req-1"]["span_id"] == decide.span_id
    assert access["decision-req-1"]["route"] == "/api/reviews/{review_id}/decision"
    for line in lines:
        if line.get("request_id") == "decision-req-1":
            assert line["trace_id"] == decide.trace_id
    assert api_keys.reviewer not in "\n".join(json.dumps(line) for line in lines)


async def test_incoming_traceparent_is_continued(
    receiver: OtlpHttpReceiver, aiohttp_client: Any, settings: Settings, api_keys: Keys
) -> None:
    """A caller's W3C traceparent makes our server span its child, in its trace."""
    client = await aiohttp_client(create_app(traced(settings, receiver)))
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    resp = await client.get(
        "/api/reviews",
        headers={**api_keys.auth("viewer"), "traceparent": f"00-{trace_id}-{parent_id}-01"},
    )
    assert resp.status == 200
    spans = await receiver.wait_for_spans(lambda s: any(x.kind == "SERVER" for x in s))
    span = server_span(spans, "GET /api/reviews")
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id)
    assert resp.headers["traceparent"].split("-")[1] == trace_id


async def test_crash_is_an_error_span_and_one_log_line(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A crash exports an ERROR span with the exception, and logs one line with the
    exception and the trace id the 500 response names."""
    client = await aiohttp_client(create_app(traced(settings, receiver)))
    resp = await client.get("/api/_test/fail")
    assert resp.status == 500
    trace_id = resp.headers["traceparent"].split("-")[1]
    body = await resp.json()
    assert "Traceback" not in json.dumps(body)
    spans = await receiver.wait_for_spans(lambda s: any(x.kind == "SERVER" for x in s))
    span = server_span(spans, "GET /api/_test/fail")
    assert span.status == "ERROR" and "exception" in span.event_names()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    crashes = [line for line in lines if line.get("event") == "unhandled_exception"]
    assert len(crashes) == 1
    assert crashes[0]["trace_id"] == trace_id
    assert "InjectedFailure" in json.dumps(crashes[0])
    assert crashes[0]["request_id"] == body["request_id"]
