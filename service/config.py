"""Service settings: one frozen dataclass read from HITL_* (and OTEL_*) variables.

A wrong value stops start-up with one line naming the variable and the expected form.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from telemetry import TelemetrySettings, TelemetrySettingsError

from . import __version__

T = TypeVar("T")


class SettingsError(ValueError):
    """A configuration variable has a value of the wrong form."""


# Health probes and the scrape: not traced, access-logged at debug, not in the SLOs.
PROBE_ROUTES = ("/api/health", "/metrics")
# The console's live stream (service/live) lasts as long as the page is open: traced
# and access-logged like any request, but its duration is no latency, so not in the SLOs.
LONG_LIVED_ROUTES = ("/console/live",)


def telemetry_settings(**overrides: Any) -> TelemetrySettings:
    """Telemetry's settings with this service's names: its logger, problem URIs,
    variable prefix, metric prefix, service name and probe routes. ``overrides`` (for
    tests and tools) replace any field."""
    hitl = TelemetrySettings(
        service_name="hitl-api",
        service_version=__version__,
        env_prefix="HITL_",
        access_logger="hitl.access",
        problem_type_base="https://hitl.dev/problems/",
        metric_prefix="hitl_",
        probe_prefixes=PROBE_ROUTES,
        slo_excluded_prefixes=PROBE_ROUTES + LONG_LIVED_ROUTES,
    )
    return replace(hitl, **overrides)


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    database_url: str = "postgresql://postgres@127.0.0.1:5432/hitl"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every cache key starts with this, so several deployments (or test runs) can
    # share one Redis without seeing each other's entries.
    redis_key_prefix: str = "hitl:"
    redis_timeout_seconds: float = 0.25
    # Circuit breaker on the cache: this many failures in a row skip Redis for the
    # cool-down, then one call probes it.
    cache_breaker_failures: int = 5
    cache_breaker_cool_down_seconds: float = 5.0
    api_keys_file: Path = Path(".local/api-keys.json")
    # How often the keys file is checked for changes (one stat); SIGHUP reloads at once.
    api_keys_reload_interval_seconds: float = 1.0
    db_pool_min: int = 1
    db_pool_max: int = 10
    db_timeout_seconds: float = 10.0
    db_connect_deadline_seconds: float = 30.0
    review_cache_ttl_seconds: int = 300
    stats_cache_ttl_seconds: int = 5
    # Time to decision and decisions by type in GET /api/reviews/stats cover the
    # decisions of this many seconds before now, so their cost does not grow with history.
    stats_window_seconds: int = 7 * 24 * 3600
    max_body_bytes: int = 1024 * 1024
    # Hostile clients (service/server.py): a body must arrive whole within this; an
    # idle keep-alive connection, and the headers of the next request, within
    # keepalive_timeout_seconds; at most max_connections open at once (0 per client:
    # no per-address cap, since behind a proxy every client has the proxy's address).
    body_read_timeout_seconds: float = 10.0
    keepalive_timeout_seconds: float = 15.0
    max_connections: int = 1000
    max_connections_per_client: int = 0
    # SIGTERM: readiness 503 and `Connection: close` for drain seconds while still
    # serving, then the listener closes and in-flight requests get up to grace seconds.
    shutdown_drain_seconds: float = 5.0
    shutdown_grace_seconds: float = 10.0
    anomaly_threshold: float = 0.5
    decision_webhook_url: str | None = None
    webhook_timeout_seconds: float = 5.0
    webhook_base_backoff_seconds: float = 1.0
    webhook_max_backoff_seconds: float = 300.0
    webhook_poll_seconds: float = 0.5
    # Deliveries in flight at once (never two for one review), and how long a leased
    # row stays hidden from other workers; the lease is renewed every third of it
    # while its delivery runs, so a killed worker's rows are retried within it.
    webhook_concurrency: int = 8
    webhook_lease_seconds: float = 10.0
    # Delivered outbox rows are deleted this long after delivery (undelivered ones
    # never), by a task that runs this often and once shortly after start.
    outbox_retention_seconds: float = 7 * 86400.0
    outbox_prune_interval_seconds: float = 3600.0
    cache_stats_interval_seconds: float = 15.0
    # The backlog gauges are read from PostgreSQL at most this often, however many
    # scrapers (Prometheus scrapes every 10 s).
    queue_metrics_interval_seconds: float = 15.0
    # The console's live stream (service/live): a keepalive comment after this many
    # quiet seconds, and at most this many frames waiting per stream before a browser
    # that does not keep up is dropped (it reconnects and reloads).
    live_keepalive_seconds: float = 15.0
    live_queue_size: int = 64
    enable_test_routes: bool = False
    # The reviewer console (/console/): how long a sign-in lasts, and the base URLs its
    # queue-health page links to (Grafana's dashboards, Jaeger's trace search).
    console_session_ttl_seconds: int = 8 * 3600
    console_grafana_url: str = "http://127.0.0.1:3000"
    console_jaeger_url: str = "http://127.0.0.1:16686"
    telemetry: TelemetrySettings = field(default_factory=telemetry_settings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        try:
            telemetry = TelemetrySettings.from_env(env, base=telemetry_settings())
        except TelemetrySettingsError as exc:
            raise SettingsError(str(exc)) from None
        values = {
            name: reader.get(f"HITL_{name.upper()}", parse, getattr(defaults, name))
            for name, parse in PARSERS.items()
        }
        settings = cls(**values, telemetry=telemetry)
        if settings.db_pool_min > settings.db_pool_max:
            raise SettingsError(
                f"HITL_DB_POOL_MIN={settings.db_pool_min} is larger than "
                f"HITL_DB_POOL_MAX={settings.db_pool_max}: expected MIN <= MAX"
            )
        return settings

    def with_changes(self, **changes: Any) -> Settings:
        return replace(self, **changes)


class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        raw = self._env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError as exc:
            raise SettingsError(f"{name}={raw!r}: expected {exc}") from None


def _bounded(
    convert: Callable[[str], T], accept: Callable[[T], bool], expected: str
) -> Callable[[str], T]:
    """A parser: ``convert`` the text, then require ``accept``; else say ``expected``."""

    def parse(raw: str) -> T:
        try:
            value = convert(raw)
        except ValueError:
            raise ValueError(expected) from None
        if not accept(value):  # NaN fails every comparison, so it is refused too
            raise ValueError(expected)
        return value

    return parse


_port = _bounded(int, lambda v: 0 <= v <= 65535, "a TCP port number from 0 to 65535, e.g. 8000")
_positive_int = _bounded(int, lambda v: v > 0, "a positive whole number, e.g. 10")
_non_negative_int = _bounded(int, lambda v: v >= 0, "a whole number >= 0, e.g. 1")
_positive_float = _bounded(float, lambda v: v > 0, "a positive number of seconds, e.g. 0.5")
_non_negative_float = _bounded(
    float, lambda v: v >= 0, "a number of seconds >= 0, e.g. 5 (0: none)"
)
_unit_interval = _bounded(float, lambda v: 0.0 <= v <= 1.0, "a number from 0 to 1, e.g. 0.5")


def _boolean(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("true or false")


def _postgres_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"postgresql", "postgres"} or not parts.hostname:
        raise ValueError("a URL like postgresql://USER[:PASSWORD]@HOST:PORT/DBNAME")
    return raw


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"redis", "rediss", "unix"}:
        raise ValueError("a URL like redis://HOST:PORT/DB")
    return raw


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("an http(s) URL like http://127.0.0.1:9000/decisions")
    return raw


def _base_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("an http(s) base URL like https://grafana.example.com")
    return raw.rstrip("/")


# Every field but ``telemetry`` is read from HITL_<FIELD NAME IN CAPITALS> with its
# parser; a parser's ValueError message says what the value should look like.
PARSERS: dict[str, Callable[[str], object]] = {
    "host": str,
    "port": _port,
    "database_url": _postgres_url,
    "redis_url": _redis_url,
    "redis_key_prefix": str,
    "redis_timeout_seconds": _positive_float,
    "cache_breaker_failures": _positive_int,
    "cache_breaker_cool_down_seconds": _positive_float,
    "api_keys_file": Path,
    "api_keys_reload_interval_seconds": _positive_float,
    "db_pool_min": _non_negative_int,
    "db_pool_max": _positive_int,
    "db_timeout_seconds": _positive_float,
    "db_connect_deadline_seconds": _positive_float,
    "review_cache_ttl_seconds": _positive_int,
    "stats_cache_ttl_seconds": _positive_int,
    "stats_window_seconds": _positive_int,
    "max_body_bytes": _positive_int,
    "body_read_timeout_seconds": _positive_float,
    "keepalive_timeout_seconds": _positive_float,
    "max_connections": _positive_int,
    "max_connections_per_client": _non_negative_int,
    "shutdown_drain_seconds": _non_negative_float,
    "shutdown_grace_seconds": _positive_float,
    "anomaly_threshold": _unit_interval,
    "decision_webhook_url": _http_url,
    "webhook_timeout_seconds": _positive_float,
    "webhook_base_backoff_seconds": _positive_float,
    "webhook_max_backoff_seconds": _positive_float,
    "webhook_poll_seconds": _positive_float,
    "webhook_concurrency": _positive_int,
    "webhook_lease_seconds": _positive_float,
    "outbox_retention_seconds": _positive_float,
    "outbox_prune_interval_seconds": _positive_float,
    "cache_stats_interval_seconds": _positive_float,
    "queue_metrics_interval_seconds": _positive_float,
    "live_keepalive_seconds": _positive_float,
    "live_queue_size": _positive_int,
    "enable_test_routes": _boolean,
    "console_session_ttl_seconds": _positive_int,
    "console_grafana_url": _base_url,
    "console_jaeger_url": _base_url,
}
