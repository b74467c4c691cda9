"""Export paths and failure modes: gRPC, collector down, collector hung, a full queue,
bounded shutdown, the once-a-minute failure line, and the OTEL_* configuration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from telemetry import Metrics, TelemetrySettings, TelemetrySettingsError
from telemetry.export import QueueBudget, ReportingExporter, _ExporterLogCapture
from telemetry.instrumentation import sanitize_sql
from telemetry.keys import TRACING
from telemetry.logging import configure_logging
from telemetry.tracing_config import TracingConfig
from tests.otlp_receiver import HungCollector, OtlpGrpcReceiver, OtlpHttpReceiver, closed_port
from tests.telemetry._tracing_fixtures import (
    ClientFactory,
    build_app,
    json_lines,
    start,
)

__all__ = ["start"]  # fixtures, imported

BATCH = 30


async def _batch_of_requests(client: object) -> float:
    started = time.perf_counter()
    responses = await asyncio.gather(*(client.get("/api/ok") for _ in range(BATCH)))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert all(r.status == 200 for r in responses)
    return elapsed


def _export_warnings(out: str) -> list[dict[str, object]]:
    return [ln for ln in json_lines(out) if ln.get("level") in {"warning", "error"}]


async def test_grpc_protocol_exports_to_a_grpc_receiver(start: ClientFactory) -> None:
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc sends the same spans over OTLP/gRPC."""
    with OtlpGrpcReceiver() as receiver:
        client = await start(build_app(receiver.otel_env()))
        assert (await client.get("/api/ok")).status == 200
        (span,) = await receiver.wait_for_spans(1)
        assert span.name == "GET /api/ok"
        assert span.kind == "SERVER"
        assert span.resource["service.name"] == "hitl-test"
        await client.close()


async def test_collector_down_never_slows_requests_and_logs_one_line(
    start: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Connection refused: a batch of requests finishes far inside the exporter timeout,
    and repeated export failures print exactly one structured warning line."""
    timeout_s = 2.0
    with closed_port() as port:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": str(timeout_s),
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
        }
        app = build_app(env)
        client = await start(app)
        elapsed = await _batch_of_requests(client)
        assert elapsed < timeout_s / 4
        await asyncio.sleep(timeout_s * 2 + 0.5)  # several failed export rounds
        app[TRACING].shutdown_timeout_s = 0.5
        await client.close()
    warnings = _export_warnings(capsys.readouterr().out)
    failed = [w for w in warnings if w["event"] == "span_export_failed"]
    assert len(failed) == 1, warnings
    (line,) = failed
    assert line["endpoint"] == f"http://127.0.0.1:{port}/v1/traces"
    assert line["failed_batches"] == 1
    assert "Connection refused" in str(line["reason"])
    assert not [w for w in warnings if str(w.get("logger", "")).startswith("opentelemetry")]


async def test_collector_hung_never_slows_requests_and_shutdown_is_bounded(
    start: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collector that accepts and never answers: requests stay fast, the app still
    shuts down within its bound, and at most one warning line per kind is printed."""
    with HungCollector() as hung:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": hung.endpoint,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "10",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        app = build_app(env)
        client = await start(app)
        elapsed = await _batch_of_requests(client)
        assert elapsed < 2.0  # the exporter timeout is 10 s
        await asyncio.sleep(0.3)  # the export thread is now stuck on the hung socket
        assert hung.accepted
        app[TRACING].shutdown_timeout_s = 1.0
        started = time.perf_counter()
        await client.close()
        assert time.perf_counter() - started < 2.0
    warnings = _export_warnings(capsys.readouterr().out)
    assert [w["event"] for w in warnings] == ["tracing_shutdown_incomplete"]


async def test_full_queue_drops_and_counts_spans(start: ClientFactory) -> None:
    """With the exporter stuck and a queue of 4, extra spans are dropped and counted
    in telemetry_tracing_spans_dropped_total; requests are unaffected."""
    with HungCollector() as hung:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": hung.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_BSP_MAX_QUEUE_SIZE": "4",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2",
        }
        app = build_app(env)
        client = await start(app)
        await client.get("/api/ok")
        await asyncio.sleep(0.3)  # the first batch is taken, the exporter hangs on it
        await _batch_of_requests(client)
        body = await (await client.get("/metrics")).text()
        dropped = [
            float(line.split()[-1])
            for line in body.splitlines()
            if line.startswith("telemetry_tracing_spans_dropped_total")
        ]
        assert dropped and dropped[0] >= BATCH - 4
        app[TRACING].shutdown_timeout_s = 0.3
        await client.close()


class _FailingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None


def test_export_failures_are_reported_at_most_once_a_minute(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Failures at t=0, 30 s and 59 s give one line; the next at 61 s gives a second
    line that sums what was suppressed in between; the failure counter counts all four."""
    configure_logging(TelemetrySettings(log_format="json"))
    now = [0.0]
    metrics = Metrics(TelemetrySettings())
    exporter = ReportingExporter(
        _FailingExporter(),
        budget=QueueBudget(10),
        metrics=metrics,
        capture=_ExporterLogCapture(),
        endpoint="http://collector:4318/v1/traces",
        protocol="http/protobuf",
        clock=lambda: now[0],
    )
    for t in (0.0, 30.0, 59.0, 61.0):
        now[0] = t
        assert exporter.export([]) is SpanExportResult.FAILURE
    lines = [
        ln for ln in json_lines(capsys.readouterr().out) if ln["event"] == "span_export_failed"
    ]
    assert [ln["failed_batches"] for ln in lines] == [1, 3]
    # The log is rate-limited; the counter is not: every failed batch counts.
    assert metrics.tracing_export_failures_total.get({}) == 4


def test_otel_env_is_read_from_settings_not_the_process() -> None:
    """Endpoint, protocol, sampler and batch settings come from otel_env, per app."""
    config = TracingConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=abc%3D,tenant=hitl",
        }
    )
    assert config.endpoint == "http://collector:4318/v1/traces"
    assert config.protocol == "http/protobuf"
    assert config.headers == {"api-key": "abc=", "tenant": "hitl"}
    assert isinstance(config.sampler, ParentBased)
    assert "0.25" in config.sampler.get_description()  # type: ignore[no-untyped-call]
    grpc = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert grpc.endpoint == "http://localhost:4317"
    specific = TracingConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b/x",
        }
    )
    assert specific.endpoint == "http://b/x"
    assert isinstance(
        TracingConfig.from_env({"OTEL_TRACES_SAMPLER": "traceidratio"}).sampler, TraceIdRatioBased
    )
    assert TracingConfig.from_env({"OTEL_SDK_DISABLED": "true"}).enabled is False


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "0"}, "OTEL_BSP_MAX_QUEUE_SIZE"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
    ],
)
def test_malformed_otel_env_names_the_variable(env: dict[str, str], names: str) -> None:
    """A wrong OTEL_* value fails setup with a message naming the variable."""
    with pytest.raises(TelemetrySettingsError, match=names):
        build_app(env)


async def test_sdk_disabled_means_no_spans_and_no_traceparent(start: ClientFactory) -> None:
    """OTEL_SDK_DISABLED=true: requests work, nothing is exported, no traceparent."""
    with OtlpHttpReceiver() as receiver:
        client = await start(build_app(receiver.otel_env(OTEL_SDK_DISABLED="true")))
        resp = await client.get("/api/ok")
        assert resp.status == 200
        assert "traceparent" not in resp.headers
        assert resp.headers["X-Request-ID"]
        await asyncio.sleep(0.3)
        assert receiver.spans == []
        await client.close()


async def test_ratio_zero_exports_nothing_but_logs_keep_trace_ids(
    start: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sampled out (ratio 0): no span is exported, yet log lines still carry the
    trace_id (trace_flags 00) so logs of one request stay grouped."""
    with OtlpHttpReceiver() as receiver:
        env = receiver.otel_env(OTEL_TRACES_SAMPLER="traceidratio", OTEL_TRACES_SAMPLER_ARG="0")
        client = await start(build_app(env))
        resp = await client.get("/api/ok")
        await asyncio.sleep(0.3)
        assert receiver.spans == []
        await client.close()
    (access,) = [ln for ln in json_lines(capsys.readouterr().out) if ln["event"] == "request"]
    assert access["trace_id"] == resp.headers["traceparent"].split("-")[1]
    assert int(access["trace_flags"], 16) & 0x01 == 0


async def test_otel_service_name_overrides_the_settings_name(start: ClientFactory) -> None:
    """OTEL_SERVICE_NAME in otel_env wins over settings.service_name (OTel spec order)."""
    with OtlpHttpReceiver() as receiver:
        client = await start(build_app(receiver.otel_env(OTEL_SERVICE_NAME="hitl-api-canary")))
        await client.get("/api/ok")
        (span,) = await receiver.wait_for_spans(1)
        assert span.resource["service.name"] == "hitl-api-canary"
        await client.close()


def test_sanitize_sql_masks_literals_but_keeps_placeholders() -> None:
    """Placeholders and identifiers survive; quoted, dollar-quoted and numeric literals go."""
    assert sanitize_sql("SELECT * FROM t1 WHERE a = %s AND b = %(b)s") == (
        "SELECT * FROM t1 WHERE a = %s AND b = %(b)s"
    )
    assert sanitize_sql("UPDATE t SET pw = 'it''s' , n = 42, f = 1.5, d = $$x$$") == (
        "UPDATE t SET pw = ? , n = ?, f = ?, d = ?"
    )
