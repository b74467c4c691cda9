"""/metrics writes exactly the text aioprometheus' own formatter would."""

from __future__ import annotations

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry, Summary
from aioprometheus.renderer import render

import telemetry
from telemetry import TelemetrySettings
from telemetry.exposition import render_text


def test_the_fast_text_equals_aioprometheus_text() -> None:
    """Every kind of collector, with and without labels and const labels, histogram
    buckets with +Inf, escaped label values and a label sorting after "le"."""
    registry = Registry()
    counter = Counter("c_total", "a counter", registry=registry)
    counter.inc({})
    counter.add({"route": "/a/{id}", "status": "200"}, 3)
    Gauge("g", "a gauge", const_labels={"zone": "a"}, registry=registry).set({"x": "1"}, 2.5)
    histogram = Histogram(
        "h_seconds", "a histogram", registry=registry, buckets=(0.1, 1.0, float("inf"))
    )
    for value in (0.05, 0.5, 5.0):
        histogram.observe({"method": "GET", "endpoint": '/q\\"x"', "zone": "z"}, value)
    histogram.observe({}, 0.2)
    Histogram(
        "hc_seconds", "const", const_labels={"app": "x"}, registry=registry, buckets=(1.0,)
    ).observe({"b": "1"}, 2.0)
    Summary("s", "a summary", registry=registry).observe({"k": "v"}, 1.0)

    ours, headers = render_text(registry)
    theirs, their_headers = render(registry, [])

    assert ours == theirs
    assert headers == {str(k): str(v) for k, v in their_headers.items()}


async def test_the_service_exposition_is_unchanged() -> None:
    """A Metrics registry with hot-path children renders the same both ways."""
    metrics = telemetry.Metrics(TelemetrySettings())
    for status in (200, 404, 500):
        metrics.record_request(
            method="GET", endpoint="/api/reviews/{review_id}", status=status,
            duration=0.03, request_size=10, response_size=300,
        )
    async with metrics.db_query("select_review"):
        pass
    ours, _ = await metrics.render([])
    theirs, _ = render(metrics.registry, [])
    assert ours == theirs
