"""Client spans, per object and bound to the app's provider: PostgreSQL, Redis, aiohttp.

Nothing is monkeypatched: child spans come from per-object APIs of the sibling
instrumentations — a traced proxy around an aiopg pool (:func:`create_aiopg_pool`),
``RedisInstrumentor.instrument_client`` (:func:`instrument_redis`) and
``create_trace_config`` (:func:`client_trace_configs`), all bound to this app's
provider (:func:`telemetry.tracing.app_tracing`). With tracing off or never set up,
each leaves the object untraced.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import aiohttp
import aiopg
import psycopg2.extensions
import yarl
from aiohttp import web
from opentelemetry.instrumentation.aiohttp_client import create_trace_config
from opentelemetry.instrumentation.aiopg.aiopg_integration import (
    AiopgIntegration,
    AsyncCursorTracer,
    AsyncProxyObject,
)
from opentelemetry.instrumentation.aiopg.version import __version__ as _aiopg_version
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.metrics import NoOpMeterProvider

from .tracing import app_tracing, redact_query

__all__ = [
    "client_trace_configs",
    "create_aiopg_pool",
    "instrument_redis",
    "sanitize_sql",
]

_SQL_LITERAL = re.compile(r"'(?:[^']|'')*'|\$\$.*?\$\$|(?<![\w$%])-?\d+(?:\.\d+)?\b", re.DOTALL)


# ------------------------------------------------------------- PostgreSQL (aiopg)


class _SanitisingCursorTracer(AsyncCursorTracer):
    """db.statement is the statement text with any inline literal replaced by ``?``.

    Parameters passed separately (``%s``) never reach the span: the integration is
    built with ``capture_parameters=False``. Inline literals are masked too, so a
    hand-built statement cannot leak a value either (semconv's sanitisation rule).
    """

    def get_statement(self, cursor: Any, args: Sequence[Any]) -> str:
        return sanitize_sql(str(super().get_statement(cursor, args)))


def sanitize_sql(statement: str) -> str:
    """Mask string, dollar-quoted and numeric literals; placeholders stay as they are."""
    return _SQL_LITERAL.sub("?", statement)


class _TracedCursor(AsyncProxyObject):
    def __init__(self, cursor: aiopg.Cursor, tracer: _SanitisingCursorTracer) -> None:
        super().__init__(cursor)
        self._self_tracer = tracer  # wrapt: "_self_" attributes stay on the proxy

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(self.__wrapped__.execute, *args, **kwargs)

    async def callproc(self, *args: Any, **kwargs: Any) -> Any:
        return await self._traced(self.__wrapped__.callproc, *args, **kwargs)

    async def _traced(self, wrapped: Any, *args: Any, **kwargs: Any) -> Any:
        # The aiopg integration ignores suppress_instrumentation (the dbapi and redis
        # ones honour it); an untraced() block must stay spanless here too.
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        return await self._self_tracer.traced_execution(self, wrapped, *args, **kwargs)


class _CursorContext:
    """What ``conn.cursor()`` returns: awaitable, or an async context that closes it."""

    def __init__(self, opening: Any) -> None:
        self._opening = opening
        self._cursor: Any = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> Any:
        self._cursor = await self._opening
        return self._cursor

    async def __aexit__(self, *exc: object) -> None:
        cursor, self._cursor = self._cursor, None
        if cursor is not None:
            cursor.close()


class _TracedConnection(AsyncProxyObject):
    def __init__(self, connection: aiopg.Connection, integration: AiopgIntegration) -> None:
        super().__init__(connection)
        self._self_integration = integration

    def cursor(self, *args: Any, **kwargs: Any) -> _CursorContext:
        return _CursorContext(self._open_cursor(*args, **kwargs))

    async def _open_cursor(self, *args: Any, **kwargs: Any) -> _TracedCursor:
        cursor = await self.__wrapped__.cursor(*args, **kwargs)
        return _TracedCursor(cursor, _SanitisingCursorTracer(self._self_integration))


class _AcquireContext:
    def __init__(self, pool: _TracedPool) -> None:
        self._pool = pool
        self._opening = pool._acquire_traced()
        self._connection: _TracedConnection | None = None

    def __await__(self) -> Any:
        return self._opening.__await__()

    async def __aenter__(self) -> _TracedConnection:
        self._connection = await self._opening
        return self._connection

    async def __aexit__(self, *exc: object) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._pool.release(connection)


class _TracedPool(AsyncProxyObject):
    """An aiopg pool whose connections' cursors trace every statement.

    Only ``acquire()`` hands out traced connections; ``pool.cursor()`` (aiopg's
    shortcut) bypasses the proxy, so the service acquires explicitly.
    """

    def __init__(self, pool: aiopg.Pool, integration: AiopgIntegration) -> None:
        super().__init__(pool)
        self._self_integration = integration

    def acquire(self) -> _AcquireContext:
        return _AcquireContext(self)

    async def _acquire_traced(self) -> _TracedConnection:
        connection = await self.__wrapped__.acquire()
        return _TracedConnection(connection, self._self_integration)

    def release(self, connection: Any) -> Any:
        raw = connection.__wrapped__ if isinstance(connection, _TracedConnection) else connection
        return self.__wrapped__.release(raw)


_AIOPG_DSN_ATTRIBUTES = {"database": "dbname", "port": "port", "host": "host", "user": "user"}
_AIOPG_KWARG_NAMES = {
    "database": "dbname",
    "dbname": "dbname",
    "user": "user",
    "host": "host",
    "port": "port",
}


def _connection_facts(dsn: str, kwargs: Mapping[str, Any]) -> Any:
    """db.name / server.address / port / user from the DSN, without connecting.

    The password is deliberately not copied.
    """
    facts: dict[str, Any] = {}
    with contextlib.suppress(psycopg2.ProgrammingError):
        facts.update(psycopg2.extensions.parse_dsn(dsn) if dsn else {})
    for name, key in _AIOPG_KWARG_NAMES.items():
        if kwargs.get(name) is not None:
            facts[key] = kwargs[name]
    facts.pop("password", None)
    if isinstance(facts.get("port"), str) and facts["port"].isdigit():
        facts["port"] = int(facts["port"])
    return type("ConnectionFacts", (), facts)()


async def create_aiopg_pool(app: web.Application, dsn: str, **kwargs: Any) -> aiopg.Pool:
    """An aiopg pool whose statements become client spans (when tracing is on).

    Use ``async with pool.acquire() as conn: async with conn.cursor() as cur:``.
    Spans carry db.system/db.name/server address and the parameterised statement;
    never parameter values (``capture_parameters=False``), never the password.
    """
    pool = await aiopg.create_pool(dsn, **kwargs)
    tracing = app_tracing(app)
    if tracing is None or not tracing.enabled:
        return pool
    integration = AiopgIntegration(
        "opentelemetry.instrumentation.aiopg",
        "postgresql",
        connection_attributes=_AIOPG_DSN_ATTRIBUTES,
        version=_aiopg_version,
        tracer_provider=tracing.provider,
        meter_provider=NoOpMeterProvider(),
        capture_parameters=False,
        enable_commenter=False,
    )
    integration.get_connection_attributes(_connection_facts(dsn, kwargs))
    return cast(aiopg.Pool, _TracedPool(pool, integration))


# ------------------------------------------------------------------------- Redis


def instrument_redis(app: web.Application, client: Any) -> None:
    """Make every command of this redis.asyncio client a span (when tracing is on).

    Per client (``instrument_client``), bound to this app's provider. The
    instrumentation records ``db.statement`` as ``COMMAND ? ?``: arguments never land.
    """
    tracing = app_tracing(app)
    if tracing is None or not tracing.enabled:
        return
    RedisInstrumentor.instrument_client(client, tracer_provider=tracing.provider)


# ------------------------------------------------------------------ aiohttp client


def _redacted_url(url: yarl.URL) -> str:
    if url.user or url.password:
        url = url.with_user(None)
    return redact_query(str(url))


def client_trace_configs(app: web.Application) -> list[aiohttp.TraceConfig]:
    """TraceConfigs for an aiohttp.ClientSession: client spans + traceparent injection."""
    tracing = app_tracing(app)
    if tracing is None or not tracing.enabled:
        return []
    return [
        create_trace_config(
            url_filter=_redacted_url,
            tracer_provider=tracing.provider,
            meter_provider=NoOpMeterProvider(),
            sem_conv_opt_in_mode=tracing.http_semconv,
        )
    ]
