"""docs/runbooks.md: one complete section per alert, and no section without an alert."""

from __future__ import annotations

import re

from .conftest import RUNBOOKS_MD, alert_rules

PARTS = ("**Symptoms.**", "**Impact.**", "**First look.**", "**Investigation.**", "**Resolution.**")


def sections() -> dict[str, str]:
    text = RUNBOOKS_MD.read_text()
    chunks = re.split(r"^## ", text, flags=re.M)[1:]
    return {chunk.splitlines()[0].strip(): chunk for chunk in chunks}


def test_every_alert_has_a_section_and_every_section_an_alert() -> None:
    """The runbook lists exactly the alerts Prometheus can fire."""
    alerts = {rule["alert"] for rule in alert_rules()}
    assert set(sections()) == alerts


def test_every_section_says_what_to_do() -> None:
    """Each section has symptoms, impact, a PromQL first look with a dashboard,
    investigation steps and a resolution."""
    for name, body in sections().items():
        for part in PARTS:
            assert part in body, f"{name}: no {part}"
        first_look = body.split("**First look.**", 1)[1].split("**Investigation.**", 1)[0]
        assert "```promql" in first_look, f"{name}: no PromQL to look at first"
        assert "Dashboard:" in first_look, f"{name}: no dashboard to look at first"
