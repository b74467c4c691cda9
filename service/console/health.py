"""The queue-health page: GET /api/reviews/stats's figures, in words, and links to
the Grafana dashboards and Jaeger (base URLs from the settings)."""

from __future__ import annotations

from typing import Any

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

import telemetry

from ..keys import REVIEWS, SETTINGS
from . import words
from .sessions import CONSOLE_USER

routes = web.RouteTableDef()

# The dashboards ops/grafana/dashboards provisions, by uid.
DASHBOARDS = (("hitl-overview", "Overview"), ("hitl-slo", "SLO"))


@routes.get("/health", name="console_health")
async def health_page(request: web.Request) -> web.Response:
    stats = await request.config_dict[REVIEWS].stats()
    settings = request.config_dict[SETTINGS]
    service_name = request.config_dict[telemetry.SETTINGS].service_name
    grafana = settings.console_grafana_url.rstrip("/")
    jaeger = str(
        URL(settings.console_jaeger_url.rstrip("/") + "/search").with_query(service=service_name)
    )
    context: dict[str, Any] = {
        "page": "health",
        "user": request[CONSOLE_USER],
        "stats": stats,
        "open_total": sum(stats["pending_by_severity"].values()),
        "window": words.age(stats["window_seconds"]),
        "oldest": _seconds(stats["oldest_pending_age_seconds"]),
        "ttd_median": _seconds(stats["time_to_decision_seconds"]["median"]),
        "ttd_p95": _seconds(stats["time_to_decision_seconds"]["p95"]),
        "grafana_url": f"{grafana}/d/{DASHBOARDS[0][0]}",
        "dashboards": [(title, f"{grafana}/d/{uid}") for uid, title in DASHBOARDS],
        "jaeger_url": jaeger,
    }
    return aiohttp_jinja2.render_template("health.html", request, context)


def _seconds(value: float | None) -> str:
    return "none yet" if value is None else words.age(value)
