"""The queue-health page: the stats endpoint's figures and the configured links."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys
from tests.service.helpers import submit

from .conftest import element_text, sign_in


async def test_health_page_shows_the_stats_and_configured_links(
    aiohttp_client: Any,
    client: TestClient,
    settings: Settings,
    api_keys: Keys,
    console_sessions_table: None,
) -> None:
    """The page shows the stats endpoint's figures and links to the configured Grafana and Jaeger."""
    for severity in ("critical", "critical", "low"):
        await submit(client, api_keys.auth("producer"), severity=severity)
    escalated = await submit(client, api_keys.auth("producer"), severity="high")
    resp = await client.post(
        f"/api/reviews/{escalated['id']}/decision",
        json={"decision": "escalate", "justification": "second look"},
        headers=api_keys.auth("reviewer"),
    )
    assert resp.status == 200
    stats = await (await client.get("/api/reviews/stats", headers=api_keys.auth("viewer"))).json()

    app = create_app(
        settings.with_changes(
            console_grafana_url="https://grafana.example.org/",
            console_jaeger_url="https://jaeger.example.org",
        )
    )
    browser = await aiohttp_client(app)
    assert (await sign_in(browser, api_keys.viewer)).status == 303
    page = await (await browser.get("/console/health")).text()

    assert element_text(page, "stat-open") == "4" == str(sum(stats["pending_by_severity"].values()))
    assert element_text(page, "stat-escalated") == "1" == str(stats["escalated"])
    assert 'data-severity="critical">2<' in page
    assert 'data-decision="escalate">1<' in page
    assert element_text(page, "stat-oldest").endswith(" s")
    assert element_text(page, "stat-ttd-median") == "none yet"
    assert '<a id="grafana-link" href="https://grafana.example.org/d/hitl-overview"' in page
    assert '<a id="jaeger-link" href="https://jaeger.example.org/search?service=hitl-api"' in page
