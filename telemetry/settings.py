"""Settings for the telemetry package: one frozen dataclass, no service knowledge."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any


class TelemetrySettingsError(ValueError):
    """A telemetry environment variable has a value of the wrong form."""


def _instance_id() -> str:
    # Unique per process, readable per host: service.instance.id of the spans.
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """What telemetry needs to know about the service using it.

    Every default is neutral: a service sets its own names (``service_name``,
    ``env_prefix``, ``access_logger``, ``problem_type_base``, ``metric_prefix``,
    the probe routes) so its logs, problems and metrics speak of it, not of us.
    """

    # OpenTelemetry's own default for a service that did not name itself.
    service_name: str = "unknown_service"
    service_version: str = "0.0.0"
    build_commit: str = "unknown"
    environment: str = "development"
    instance_id: str = field(default_factory=_instance_id)
    # Prefix of the variables ``from_env`` reads (<PREFIX>LOG_LEVEL, ...).
    env_prefix: str = "TELEMETRY_"
    # The logger of the one access line per request.
    access_logger: str = "telemetry.access"
    # Problem ``type`` URIs are this plus the problem's slug. The default is a relative
    # reference (RFC 9457 allows one), resolved against the request's URL.
    problem_type_base: str = "/problems/"
    # Prefix of telemetry's own health metrics (<prefix>tracing_spans_dropped_total ...).
    metric_prefix: str = "telemetry_"
    # SLO: a request is "latency-good" when it completes within this many seconds.
    slo_latency_threshold_seconds: float = 0.5
    # Requests whose route template starts with one of these never count toward SLOs
    # (health probes and scrapes would otherwise dilute the error budget).
    slo_excluded_prefixes: tuple[str, ...] = ("/metrics",)
    # Health probes and metric scrapes: routes hit every few seconds by machines. They
    # still count in http_requests_total, but are not traced (a trace per scrape
    # would drown real traces) and their access-log lines are at debug.
    probe_prefixes: tuple[str, ...] = ("/metrics",)
    log_level: str = "INFO"
    # "json", "console" or "auto" (console when stdout is a TTY).
    log_format: str = "auto"
    # Raw OTEL_* variables; tracing_config.py interprets them as the OTel spec says.
    otel_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, base: TelemetrySettings | None = None
    ) -> TelemetrySettings:
        """``base`` (the service's names and defaults) with what the environment sets:
        OTEL_SERVICE_NAME, every OTEL_* variable, and <env_prefix>ENVIRONMENT,
        BUILD_COMMIT, SLO_LATENCY_SECONDS, LOG_LEVEL and LOG_FORMAT."""
        env = os.environ if environ is None else environ
        settings = base if base is not None else cls()
        prefix = settings.env_prefix
        values: dict[str, Any] = {
            "otel_env": {k: v for k, v in env.items() if k.startswith("OTEL_")}
        }
        if "OTEL_SERVICE_NAME" in env:
            values["service_name"] = env["OTEL_SERVICE_NAME"]
        if f"{prefix}ENVIRONMENT" in env:
            values["environment"] = env[f"{prefix}ENVIRONMENT"]
        if f"{prefix}BUILD_COMMIT" in env:
            values["build_commit"] = env[f"{prefix}BUILD_COMMIT"]
        if f"{prefix}SLO_LATENCY_SECONDS" in env:
            values["slo_latency_threshold_seconds"] = positive_float_env(
                env, [f"{prefix}SLO_LATENCY_SECONDS"], settings.slo_latency_threshold_seconds
            )
        if f"{prefix}LOG_LEVEL" in env:
            values["log_level"] = _one_of(
                env,
                f"{prefix}LOG_LEVEL",
                ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
                str.upper,
            )
        if f"{prefix}LOG_FORMAT" in env:
            values["log_format"] = _one_of(
                env, f"{prefix}LOG_FORMAT", ("json", "console", "auto"), str.lower
            )
        return replace(settings, **values)


def _one_of(
    env: Mapping[str, str], name: str, allowed: Sequence[str], normalise: Callable[[str], str]
) -> str:
    value = normalise(env[name])
    if value not in allowed:
        raise TelemetrySettingsError(f"{name}={env[name]!r}: expected one of {', '.join(allowed)}")
    return value


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
