"""Settings for the telemetry package: one frozen dataclass, no service knowledge."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class TelemetrySettingsError(ValueError):
    """A telemetry environment variable has a value of the wrong form."""


def _default_instance_id() -> str:
    # Unique per process, readable per host: service.instance.id of the spans.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    service_name: str = "hitl-api"
    service_version: str = "0.0.0"
    build_commit: str = "unknown"
    environment: str = "development"
    instance_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    )
    # SLO: a request is "latency-good" when it completes within this many seconds.
    slo_latency_threshold_seconds: float = 0.5
    # Requests whose route template starts with one of these never count toward SLOs
    # (health probes and scrapes would otherwise dilute the error budget).
    slo_excluded_prefixes: tuple[str, ...] = ("/api/health", "/metrics")
    # Health probes and metric scrapes: routes hit every few seconds by machines. They
    # still count in http_requests_total, but are not traced (a trace per scrape
    # would drown real traces) and their access-log lines are at debug.
    probe_prefixes: tuple[str, ...] = ("/api/health", "/metrics")
    log_level: str = "INFO"
    # "json", "console" or "auto" (console when stdout is a TTY).
    log_format: str = "auto"
    # Raw OTEL_* variables; tracing.py interprets them as the OTel spec says.
    otel_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: object
    ) -> TelemetrySettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "OTEL_SERVICE_NAME" in env:
            values["service_name"] = env["OTEL_SERVICE_NAME"]
        if "HITL_ENVIRONMENT" in env:
            values["environment"] = env["HITL_ENVIRONMENT"]
        if "HITL_BUILD_COMMIT" in env:
            values["build_commit"] = env["HITL_BUILD_COMMIT"]
        if "HITL_SLO_LATENCY_SECONDS" in env:
            values["slo_latency_threshold_seconds"] = positive_float_env(
                env, ["HITL_SLO_LATENCY_SECONDS"], 0.5
            )
        if "HITL_LOG_LEVEL" in env:
            level = env["HITL_LOG_LEVEL"].upper()
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
                raise TelemetrySettingsError(
                    f"HITL_LOG_LEVEL={env['HITL_LOG_LEVEL']!r}: expected one of "
                    "DEBUG, INFO, WARNING, ERROR, CRITICAL"
                )
            values["log_level"] = level
        if "HITL_LOG_FORMAT" in env:
            fmt = env["HITL_LOG_FORMAT"].lower()
            if fmt not in {"json", "console", "auto"}:
                raise TelemetrySettingsError(
                    f"HITL_LOG_FORMAT={env['HITL_LOG_FORMAT']!r}: expected json, console or auto"
                )
            values["log_format"] = fmt
        values["otel_env"] = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


def positive_float_env(env: Mapping[str, str], names: Sequence[str], default: float) -> float:
    """The first of ``names`` that is set, as a positive number; else ``default``.
    A value of the wrong form is an error naming the variable."""
    for name in names:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise TelemetrySettingsError(
                f"{name}={raw!r}: expected a positive number, e.g. {default}"
            )
        return value
    return default
