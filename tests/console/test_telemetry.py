"""Telemetry covers the console as it covers the API: route templates as metric
labels (never raw paths), a server span per request, an access line per request; and
the console adds no middleware or signal to the /api path. No key in any log line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.app import create_app
from service.config import Settings
from service.console.security import add_security_headers
from tests.conftest import Keys
from tests.otlp_receiver import OtlpHttpReceiver
from tests.prom import parse_exposition
from tests.service.conftest import traced
from tests.service.helpers import submit

from .conftest import sign_in


async def test_console_requests_are_labelled_traced_and_logged_by_route_template(
    receiver: OtlpHttpReceiver,
    aiohttp_client: Any,
    settings: Settings,
    api_keys: Keys,
    console_sessions_table: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Metrics, spans and access lines name console routes by template, never by raw path; no key is logged."""
    client = await aiohttp_client(create_app(traced(settings, receiver)))
    review = await submit(client, api_keys.auth("producer"))
    assert (await sign_in(client, api_keys.reviewer)).status == 303
    for _ in range(2):
        assert (await client.get(f"/console/reviews/{review['id']}")).status == 200
    assert (await client.get("/console/queue")).status == 200
    assert (await client.get("/console/no-such-page")).status == 404

    m = parse_exposition(await (await client.get("/metrics")).text())
    template = "/console/reviews/{review_id}"
    assert m.value("http_requests_total", method="GET", endpoint=template, status="200") == 2
    assert (
        m.value("http_requests_total", method="GET", endpoint="/console/queue", status="200") == 1
    )
    assert (
        m.value("http_requests_total", method="POST", endpoint="/console/sign-in", status="303")
        == 1
    )
    endpoints = {dict(labels)["endpoint"] for labels in m.series_of("http_requests_total")}
    assert not any(review["id"] in e or "no-such-page" in e for e in endpoints), endpoints

    spans = await receiver.wait_for_spans(
        lambda s: sum(x.kind == "SERVER" and x.name == f"GET {template}" for x in s) == 2
    )
    page_span = next(s for s in spans if s.kind == "SERVER" and s.name == f"GET {template}")
    assert page_span.status != "ERROR"

    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    access = [x for x in lines if x.get("logger") == "hitl.access"]
    routes = [x["route"] for x in access]
    assert routes.count(template) == 2
    assert "/console/sign-in" in routes
    review_lines = [x for x in access if x["route"] == template]
    assert {x["trace_id"] for x in review_lines} <= {s.trace_id for s in spans}
    everything = "\n".join(json.dumps(x) for x in lines)
    assert api_keys.reviewer not in everything
    assert api_keys.reviewer.split("_", 2)[2] not in everything


def test_the_api_path_gains_no_middleware_or_signal(settings: Settings) -> None:
    """The console's middlewares and header signal live on its sub-app only."""
    app = create_app(settings)
    names = [getattr(m, "__name__", repr(m)) for m in app.middlewares]
    assert names == ["observe_request", "count_in_flight"], names
    assert add_security_headers not in app.on_response_prepare
    (console,) = [r for r in app.router.resources() if r.canonical == "/console"]
    sub = console._app  # type: ignore[attr-defined]
    assert add_security_headers in sub.on_response_prepare
    assert len(sub.middlewares) == 4
