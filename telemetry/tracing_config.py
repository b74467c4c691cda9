"""The OTEL_* variables, read once per app: what to export, where, how, and how much.

:class:`TracingConfig` is validated at setup (a malformed variable stops start-up with
a message naming it); :func:`build_resource` says who is exporting. Configuration
comes from ``TelemetrySettings.otel_env`` (the raw OTEL_* variables), not
``os.environ``, so each app (and each test) can be configured on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.version import __version__ as _sdk_version

from .settings import TelemetrySettings, TelemetrySettingsError, positive_float_env

__all__ = ["TracingConfig", "build_resource"]

_DEFAULT_HTTP_ENDPOINT: Final = "http://localhost:4318/v1/traces"
_DEFAULT_GRPC_ENDPOINT: Final = "http://localhost:4317"
_SAMPLERS: Final = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)

# --------------------------------------------------------------------------- config


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value <= 0:
        raise TelemetrySettingsError(f"{name}={raw!r}: expected a positive integer, e.g. {default}")
    return value


def _parse_headers(raw: str) -> dict[str, str]:
    """``k1=v1,k2=v2`` (values URL-encoded), as OTEL_EXPORTER_OTLP_HEADERS is defined."""
    headers: dict[str, str] = {}
    for item in raw.split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise TelemetrySettingsError(
                "OTEL_EXPORTER_OTLP_HEADERS: expected comma-separated key=value pairs, "
                "e.g. 'api-key=abc,tenant=acme'"
            )
        headers[unquote(name).strip().lower()] = unquote(value).strip()
    return headers


def _parse_resource_attributes(raw: str) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for item in raw.split(","):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            attributes[unquote(name).strip()] = unquote(value).strip()
    return attributes


def _sampler(env: Mapping[str, str]) -> Sampler:
    name = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        raise TelemetrySettingsError(
            f"OTEL_TRACES_SAMPLER={name!r}: expected one of {', '.join(_SAMPLERS)}"
        )
    ratio = 1.0
    if name.endswith("traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG", "1.0")
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise TelemetrySettingsError(
                f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a ratio between 0 and 1, e.g. 0.25"
            )
    root: Sampler
    if name.endswith("always_on"):
        root = ALWAYS_ON
    elif name.endswith("always_off"):
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(ratio)
    return ParentBased(root) if name.startswith("parentbased_") else root


def _endpoint(env: Mapping[str, str], protocol: str) -> str:
    if traces := env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return base or _DEFAULT_GRPC_ENDPOINT
    # The generic endpoint is a base URL: the signal path is appended (OTLP spec).
    return f"{base.rstrip('/')}/v1/traces" if base else _DEFAULT_HTTP_ENDPOINT


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """What the OTEL_* variables ask for, validated once at setup."""

    enabled: bool = True
    exporter: str = "otlp"  # "otlp" or "none" (spans still made: logs keep trace ids)
    protocol: str = "http/protobuf"  # or "grpc"
    endpoint: str = _DEFAULT_HTTP_ENDPOINT
    headers: Mapping[str, str] = field(default_factory=dict)
    # Seconds, as the Python SDK reads OTEL_EXPORTER_OTLP_TIMEOUT (the spec says ms).
    timeout_s: float = 10.0
    compression: str | None = None  # "gzip" or None
    insecure: bool | None = None  # gRPC only; None = from the endpoint's scheme
    sampler: Sampler = field(default_factory=lambda: ParentBased(ALWAYS_ON))
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_ms: int = 5000
    export_timeout_ms: int = 30000
    excluded_urls: str = ""
    resource_attributes: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TracingConfig:
        enabled = not _truthy(env.get("OTEL_SDK_DISABLED"))
        exporter = env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() or "otlp"
        if exporter not in {"otlp", "none"}:
            raise TelemetrySettingsError(
                f"OTEL_TRACES_EXPORTER={exporter!r}: expected otlp or none"
            )
        protocol = (
            (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            .strip()
            .lower()
        )
        if protocol not in {"http/protobuf", "grpc"}:
            raise TelemetrySettingsError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected http/protobuf or grpc"
            )
        compression = (
            (
                env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                or env.get("OTEL_EXPORTER_OTLP_COMPRESSION")
                or "none"
            )
            .strip()
            .lower()
        )
        if compression not in {"none", "gzip"}:
            raise TelemetrySettingsError(
                f"OTEL_EXPORTER_OTLP_COMPRESSION={compression!r}: expected gzip or none"
            )
        insecure_raw = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or env.get(
            "OTEL_EXPORTER_OTLP_INSECURE"
        )
        max_queue = _int_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        max_batch = _int_env(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        if max_batch > max_queue:
            raise TelemetrySettingsError(
                f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={max_batch}: must not exceed "
                f"OTEL_BSP_MAX_QUEUE_SIZE={max_queue}"
            )
        resource_attributes = _parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
        return cls(
            enabled=enabled,
            exporter=exporter,
            protocol=protocol,
            endpoint=_endpoint(env, protocol),
            headers=_parse_headers(
                env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                or env.get("OTEL_EXPORTER_OTLP_HEADERS", "")
            ),
            timeout_s=positive_float_env(
                env, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10.0
            ),
            compression=None if compression == "none" else compression,
            insecure=None if insecure_raw is None else _truthy(insecure_raw),
            sampler=_sampler(env),
            max_queue_size=max_queue,
            max_export_batch_size=max_batch,
            schedule_delay_ms=_int_env(env, "OTEL_BSP_SCHEDULE_DELAY", 5000),
            export_timeout_ms=_int_env(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000),
            excluded_urls=env.get(
                "OTEL_PYTHON_AIOHTTP_SERVER_EXCLUDED_URLS", env.get("OTEL_PYTHON_EXCLUDED_URLS", "")
            ),
            resource_attributes=resource_attributes,
        )


def build_resource(settings: TelemetrySettings, config: TracingConfig) -> Resource:
    """service.name: OTEL_SERVICE_NAME > OTEL_RESOURCE_ATTRIBUTES > settings (spec order)."""
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": _sdk_version,
        "service.name": settings.service_name,
        "service.version": settings.service_version,
        "service.instance.id": settings.instance_id,
        # The brief's key and the current semconv key, so either kind of backend finds it.
        "deployment.environment": settings.environment,
        "deployment.environment.name": settings.environment,
    }
    attributes.update(config.resource_attributes)
    if name := settings.otel_env.get("OTEL_SERVICE_NAME", "").strip():
        attributes["service.name"] = name
    return Resource(attributes)
