"""The access line and the metrics report the same sizes and duration for a request."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.telemetry.conftest import STREAM_CHUNKS, build_app


def access_lines(out: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [line for line in lines if line.get("logger") == "telemetry.access"]


async def test_streamed_response_size_matches_metrics(
    aiohttp_client: Any, scrape: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A chunked response is logged with its body bytes, the same number the
    http_response_size_bytes histogram recorded (one counter serves both)."""
    client = await aiohttp_client(build_app())
    resp = await client.get("/api/stream")
    assert len(await resp.read()) == sum(map(len, STREAM_CHUNKS))
    exposition = await scrape(client)
    (line,) = [x for x in access_lines(capsys.readouterr().out) if x["route"] == "/api/stream"]
    assert line["response_bytes"] == sum(map(len, STREAM_CHUNKS))
    assert (
        exposition.value("http_response_size_bytes_sum", method="GET", endpoint="/api/stream")
        == line["response_bytes"]
    )


async def test_head_logs_no_body(aiohttp_client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A HEAD answer sends no body, and its access line says 0 bytes."""
    client = await aiohttp_client(build_app())
    resp = await client.head("/api/reviews/r-1")
    assert resp.status == 200
    (line,) = [x for x in access_lines(capsys.readouterr().out) if x["method"] == "HEAD"]
    assert line["response_bytes"] == 0
