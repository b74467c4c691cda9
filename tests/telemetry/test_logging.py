"""structlog configuration: one JSON shape for every line, redaction, reconfiguration."""

from __future__ import annotations

import logging

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from telemetry import TelemetrySettings
from telemetry.logging import REDACTED, configure_logging, reset_logging
from tests.telemetry._tracing_fixtures import (
    ClientFactory,
    build_app,
    json_lines,
    start,
)

__all__ = ["start"]  # fixtures, imported


def test_structlog_and_stdlib_lines_share_one_json_shape(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A structlog event and an aiohttp/asyncio stdlib record both come out as JSON with
    level, logger and an ISO-8601 UTC timestamp."""
    configure_logging(TelemetrySettings(log_format="json"))
    structlog.get_logger("hitl.test").info("review_created", review_id="r1")
    logging.getLogger("aiohttp.server").error("Error handling request from %s", "10.0.0.1")
    logging.getLogger("asyncio").warning("slow callback", extra={"duration_s": 0.2})
    first, second, third = json_lines(capsys.readouterr().out)
    assert first["event"] == "review_created" and first["logger"] == "hitl.test"
    assert second["event"] == "Error handling request from 10.0.0.1"
    assert second["logger"] == "aiohttp.server" and second["level"] == "error"
    assert third["duration_s"] == 0.2
    for line in (first, second, third):
        assert line["timestamp"].endswith("Z") and "T" in line["timestamp"]


def test_lines_carry_the_active_span_ids(capsys: pytest.CaptureFixture[str]) -> None:
    """Inside a span, structlog and stdlib lines get trace_id/span_id/trace_flags as
    lowercase hex; outside any span they have none."""
    configure_logging(TelemetrySettings(log_format="json"))
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        structlog.get_logger("hitl.test").info("inside")
        logging.getLogger("aiopg").warning("inside stdlib")
    structlog.get_logger("hitl.test").info("outside")
    inside, inside_stdlib, outside = json_lines(capsys.readouterr().out)
    ctx = span.get_span_context()
    for line in (inside, inside_stdlib):
        assert line["trace_id"] == f"{ctx.trace_id:032x}"
        assert line["span_id"] == f"{ctx.span_id:016x}"
        assert line["trace_flags"] == f"{ctx.trace_flags:02x}"
    assert "trace_id" not in outside


def test_secrets_are_redacted_at_any_depth(capsys: pytest.CaptureFixture[str]) -> None:
    """Authorization, cookies and token/secret/password/api_key-like fields, nested or
    not, and bearer values under innocent keys, print as [REDACTED]."""
    configure_logging(TelemetrySettings(log_format="json"))
    structlog.get_logger("hitl.test").info(
        "outbound",
        headers={"Authorization": "Basic dXNlcjpwYXNz", "Cookie": "s=1", "Accept": "json"},
        set_cookie="sid=abc",
        api_key="k-123",
        db_password="pw",
        access_token="tok",
        client_secret="shh-client-sec",
        note="Bearer eyJhbGciOi",
        reviewer="alice",
    )
    logging.getLogger("aiohttp.access").info("req", extra={"password": "pw2"})
    out = capsys.readouterr().out
    line, stdlib_line = json_lines(out)
    assert line["headers"] == {"Authorization": REDACTED, "Cookie": REDACTED, "Accept": "json"}
    for key in ("set_cookie", "api_key", "db_password", "access_token", "client_secret", "note"):
        assert line[key] == REDACTED
    assert line["reviewer"] == "alice"
    assert stdlib_line["password"] == REDACTED
    assert "message" not in stdlib_line  # the text is in "event", once
    for secret in ("dXNlcjpwYXNz", "k-123", "eyJhbGciOi", "shh-client-sec", "pw2"):
        assert secret not in out


def test_console_format_and_reconfiguration(capsys: pytest.CaptureFixture[str]) -> None:
    """log_format=console renders for humans; configuring again (after the logger was
    cached) switches the same logger back to JSON; reset_logging stops our output."""
    logger = structlog.get_logger("hitl.test")
    configure_logging(TelemetrySettings(log_format="console"))
    logger.info("human_readable", n=1)
    console_out = capsys.readouterr().out
    assert "human_readable" in console_out and not console_out.lstrip().startswith("{")
    configure_logging(TelemetrySettings(log_format="json"))
    logger.info("machine_readable", n=2)
    (line,) = json_lines(capsys.readouterr().out)
    assert line["event"] == "machine_readable"
    reset_logging()
    logging.getLogger("aiohttp.server").warning("after reset")
    assert capsys.readouterr().out == ""


def test_log_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    """log_level=WARNING drops info lines from structlog and stdlib alike."""
    configure_logging(TelemetrySettings(log_format="json", log_level="WARNING"))
    structlog.get_logger("hitl.test").info("dropped")
    logging.getLogger("aiohttp.server").info("dropped too")
    structlog.get_logger("hitl.test").warning("kept")
    assert [ln["event"] for ln in json_lines(capsys.readouterr().out)] == ["kept"]


async def test_request_id_header_is_honoured_only_when_valid(
    start: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A valid X-Request-ID is echoed and bound to the request's lines; an invalid one
    (spaces, too long) is replaced by a generated id."""
    client = await start(build_app({"OTEL_TRACES_EXPORTER": "none"}))
    good = await client.get("/api/ok", headers={"X-Request-ID": "abc-123_X.y"})
    assert good.headers["X-Request-ID"] == "abc-123_X.y"
    bad = await client.get("/api/ok", headers={"X-Request-ID": "has space " + "x" * 200})
    generated = bad.headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()
    lines = json_lines(capsys.readouterr().out)
    assert {ln["request_id"] for ln in lines if ln["event"] == "request"} == {
        "abc-123_X.y",
        generated,
    }
    handler_line = next(ln for ln in lines if ln["event"] == "ok_handler")
    assert handler_line["authorization"] == REDACTED
