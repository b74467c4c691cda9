"""telemetry/ adopted unchanged by another aiohttp service.

"bookshop" is a second tiny service with its own names and one business counter. It
uses only telemetry's public surface (this module imports nothing else of it, which
the last test checks) and gets metrics, traces and correlated logs under its own
names — and none of hitl's.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

import telemetry
from telemetry import Problem, TelemetrySettings, TelemetrySettingsError
from tests.otlp_receiver import OtlpHttpReceiver


class OutOfStock(Exception):
    pass


def bookshop_problems(exc: BaseException) -> Problem | None:
    if isinstance(exc, OutOfStock):
        return Problem(
            status=409,
            title=telemetry.http_title(409),
            slug="out-of-stock",
            detail=str(exc),
            error_type="out_of_stock",
        )
    return None


BOOKS_SOLD: web.AppKey[Any] = web.AppKey("books_sold")


async def buy(request: web.Request) -> web.Response:
    book_id = request.match_info["book_id"]
    if book_id == "0":
        raise OutOfStock("book 0 is sold out")
    request.app[BOOKS_SOLD].inc(telemetry.metric_labels(genre="poetry"))
    structlog.get_logger("bookshop.sales").info("book_sold", book_id=book_id)
    return web.json_response({"book": book_id})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def bookshop(otel_env: dict[str, str]) -> web.Application:
    settings = TelemetrySettings(
        service_name="bookshop",
        service_version="0.3.0",
        env_prefix="BOOKSHOP_",
        access_logger="bookshop.access",
        problem_type_base="https://bookshop.example/problems/",
        metric_prefix="bookshop_",
        probe_prefixes=("/healthz", "/metrics"),
        slo_excluded_prefixes=("/healthz", "/metrics"),
        log_format="json",
        otel_env=otel_env,
    )
    app = web.Application()
    metrics = telemetry.setup(
        app,
        settings,
        problem_mapper=bookshop_problems,
        app_error_labels=[("out_of_stock", "warning")],
    )
    app[BOOKS_SOLD] = metrics.counter("bookshop_books_sold_total", "Books sold, by genre.")
    app.router.add_post("/books/{book_id}/buy", buy)
    app.router.add_get("/healthz", healthz)
    return app


@pytest.fixture
def receiver() -> Iterator[OtlpHttpReceiver]:
    with OtlpHttpReceiver() as rx:
        yield rx


def lines(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def series_names(exposition: str) -> set[str]:
    return {
        line.split("{")[0].split(" ")[0]
        for line in exposition.splitlines()
        if line and not line.startswith("#")
    }


def is_hitls(name: str) -> bool:
    return name.startswith(("review_", "apv_", "hitl"))


async def test_a_second_service_gets_metrics_traces_and_logs_under_its_own_names(
    receiver: OtlpHttpReceiver, aiohttp_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its business counter, route labels, error series and telemetry-health series
    carry its names; its spans its service.name; its access line its logger, with the
    trace id of the exported span; its problems its type URIs; nothing of hitl's."""
    client = await aiohttp_client(bookshop(receiver.otel_env()))

    resp = await client.post("/books/7/buy")
    assert resp.status == 200
    trace_id = resp.headers["traceparent"].split("-")[1]
    resp = await client.post("/books/0/buy")
    assert resp.status == 409
    assert (await resp.json())["type"] == "https://bookshop.example/problems/out-of-stock"
    assert (await client.get("/healthz")).status == 200
    exposition = await (await client.get("/metrics")).text()

    names = series_names(exposition)
    assert "bookshop_books_sold_total" in names
    assert 'bookshop_books_sold_total{genre="poetry"} 1' in exposition
    assert 'endpoint="/books/{book_id}/buy"' in exposition
    assert 'app_errors_total{severity="warning",type="out_of_stock"} 1' in exposition
    assert {"bookshop_tracing_spans_dropped_total", "bookshop_tracing_export_failures_total"} <= names
    assert sorted(n for n in names if is_hitls(n)) == []

    spans = await receiver.wait_for_spans(lambda s: sum(x.kind == "SERVER" for x in s) >= 2)
    servers = [s for s in spans if s.kind == "SERVER"]
    assert {s.name for s in servers} == {"POST /books/{book_id}/buy"}  # /healthz untraced
    assert {s.resource["service.name"] for s in spans} == {"bookshop"}

    logged = lines(capsys)
    access = [x for x in logged if x.get("logger") == "bookshop.access"]
    assert {x["route"] for x in access} >= {"/books/{book_id}/buy"}
    sold = next(x for x in logged if x.get("event") == "book_sold")
    bought = next(x for x in access if x["status"] == 200)
    assert sold["trace_id"] == bought["trace_id"] == trace_id
    assert trace_id in {s.trace_id for s in servers}
    assert not [x for x in logged if "hitl" in str(x.get("logger", ""))]


async def test_default_settings_know_no_service(
    aiohttp_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """telemetry.setup with default settings exposes no review_*, apv_* or hitl*
    series, logs access lines as telemetry.access, and names problems relatively."""
    app = web.Application()
    telemetry.setup(app, TelemetrySettings(log_format="json", otel_env={"OTEL_SDK_DISABLED": "true"}))

    async def teapot(request: web.Request) -> web.Response:
        raise web.HTTPConflict(text="no")

    app.router.add_get("/teapot", teapot)
    client = await aiohttp_client(app)
    assert (await client.get("/teapot")).status == 409
    exposition = await (await client.get("/metrics")).text()

    names = series_names(exposition)
    assert "http_requests_total" in names
    assert sorted(n for n in names if is_hitls(n)) == []
    assert "telemetry_tracing_spans_dropped_total" in names
    access = [x for x in lines(capsys) if x.get("event") == "request"]
    assert {x["logger"] for x in access} == {"telemetry.access"}


def test_settings_read_the_services_own_variable_prefix() -> None:
    """from_env reads <env_prefix>LOG_LEVEL and names that variable when it is wrong."""
    base = TelemetrySettings(env_prefix="BOOKSHOP_")
    settings = TelemetrySettings.from_env(
        {"BOOKSHOP_LOG_LEVEL": "debug", "HITL_LOG_LEVEL": "ERROR", "OTEL_SERVICE_NAME": "shop"},
        base=base,
    )
    assert (settings.log_level, settings.service_name) == ("DEBUG", "shop")
    with pytest.raises(TelemetrySettingsError, match="BOOKSHOP_LOG_LEVEL='loud'"):
        TelemetrySettings.from_env({"BOOKSHOP_LOG_LEVEL": "loud"}, base=base)


def test_this_module_uses_only_the_public_surface() -> None:
    """What this test service imports from telemetry is in telemetry.__all__."""
    tree = ast.parse(Path(__file__).read_text())
    from_telemetry = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("telemetry")
        for alias in node.names
    }
    modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("telemetry")
    }
    assert modules == {"telemetry"}
    assert from_telemetry <= set(telemetry.__all__)
