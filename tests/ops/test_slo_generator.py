"""ops/slo.yml and its generator: the seed's SLOs, fresh generated files, and refusal of
objectives whose alerts could never fire."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import OPS, ROOT, load_module

GENERATOR = OPS / "slo" / "generate.py"
gen = load_module(GENERATOR, "slo_generate")


def raw_spec() -> dict[str, Any]:
    return yaml.safe_load((OPS / "slo.yml").read_text())


def test_generated_files_are_up_to_date() -> None:
    """`make rules` has been run after the last edit of ops/slo.yml (and nobody edited
    its outputs by hand)."""
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    """--check fails when a generated file differs from what ops/slo.yml produces."""
    for rel in (gen.RULES_OUT, gen.TESTS_OUT):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    assert gen.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / gen.RULES_OUT).write_text((ROOT / gen.RULES_OUT).read_text().replace("14.4", "14"))
    assert gen.main(["--check", "--root", str(tmp_path)]) == 1


def test_slo_yml_holds_the_seeds_three_slos() -> None:
    """availability 99.9 % / 30d, latency 95 % / 7d, error rate 0.1 % / 24h."""
    spec = gen.load_spec()
    slos = {s.name: (s.objective, s.window) for s in spec.slos}
    assert slos == {"availability": (0.999, "30d"), "latency": (0.95, "7d"), "error_rate": (0.999, "24h")}


def test_burn_rate_tiers_are_the_sre_workbooks() -> None:
    """Page 14.4x (1h & 5m) and 6x (6h & 30m); ticket 3x (1d & 2h) and 1x (3d & 6h)."""
    tiers = {(t.severity, t.long, t.short, t.factor) for t in gen.load_spec().tiers}
    assert tiers == {
        ("critical", "1h", "5m", 14.4),
        ("critical", "6h", "30m", 6.0),
        ("warning", "1d", "2h", 3.0),
        ("warning", "3d", "6h", 1.0),
    }


def test_every_window_an_alert_or_dashboard_needs_is_recorded() -> None:
    """Each SLO has SLI, burn-rate and request-rate series for every alert window, its
    own window and the dashboard's trend windows."""
    rules = yaml.safe_load((ROOT / gen.RULES_OUT).read_text())
    recorded: set[tuple[str, str]] = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "record" in rule:
                recorded.add((rule["record"], rule["labels"]["slo"]))
    spec = gen.load_spec()
    for slo in spec.slos:
        windows = {gen.canonical(slo.window), "1h", "6h", "1d", "7d", "30d"} | {w for t in spec.tiers for w in (t.long, t.short)}
        for window in windows:
            for name in ("slo:sli_error:ratio_rate", "slo:burn_rate:rate", "slo:sli_requests:rate"):
                assert (f"{name}{window}", slo.name) in recorded, (name, window, slo.name)
        for name in ("slo:objective:ratio", "slo:error_budget:ratio", "slo:error_budget_remaining:ratio"):
            assert (name, slo.name) in recorded


def test_burn_rate_alerts_have_both_windows_a_guard_and_a_burn_window() -> None:
    """Every generated alert checks its long and short window, requires enough traffic
    that one bad request cannot fire it, and carries burn_window for inhibition."""
    spec = gen.load_spec()
    rules = [r for g in gen.alert_groups(spec) for r in g["rules"]]
    assert len(rules) == len(spec.slos) * len(spec.tiers)
    for slo in spec.slos:
        for tier in spec.tiers:
            (rule,) = [r for r in rules if r["alert"] == slo.alert and r["labels"]["burn_window"] == tier.long]
            assert f"slo:burn_rate:rate{tier.long}" in rule["expr"]
            assert f"slo:burn_rate:rate{tier.short}" in rule["expr"]
            guard = gen.min_requests(spec, slo, tier)
            assert f"slo:sli_requests:rate{tier.long}" in rule["expr"] and f">= {guard}" in rule["expr"]
            # One bad request among `guard` stays at or under the threshold.
            assert 1 / guard <= tier.factor * slo.budget + 1e-12
            assert rule["labels"]["severity"] == tier.severity


def _with(mutate: Any) -> dict[str, Any]:
    raw = copy.deepcopy(raw_spec())
    mutate(raw)
    return raw


def _objective(value: float) -> Any:
    def mutate(raw: dict[str, Any]) -> None:
        raw["slos"][1]["objective"] = value

    return mutate


def test_an_objective_whose_alerts_could_never_fire_is_rejected() -> None:
    """At 90 %, a 14.4x burn needs an error ratio of 144 %: the generator refuses it."""
    with pytest.raises(gen.SpecError, match="could never fire"):
        gen.parse_spec(_with(_objective(0.90)))


@pytest.mark.parametrize("objective", [1.0, 0.0, 1.5])
def test_an_objective_outside_zero_and_one_is_rejected(objective: float) -> None:
    """100 % leaves no budget to burn; 0 % or more than 100 % is not an objective."""
    with pytest.raises(gen.SpecError, match="strictly between 0 and 1"):
        gen.parse_spec(_with(_objective(objective)))


def test_a_short_window_not_shorter_than_its_long_window_is_rejected() -> None:
    """A tier needs a long window to prove significance and a shorter one for recency."""

    def mutate(raw: dict[str, Any]) -> None:
        raw["burn_rate_alerts"]["tiers"][0]["short"] = "1h"

    with pytest.raises(gen.SpecError, match="short window"):
        gen.parse_spec(_with(mutate))


def test_the_generator_command_fails_with_a_message_on_a_bad_spec(tmp_path: Path) -> None:
    """`make rules` on an impossible SLO exits non-zero naming the problem and writes nothing."""
    spec = tmp_path / "slo.yml"
    spec.write_text(yaml.safe_dump(_with(_objective(0.90))))
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--spec", str(spec), "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "could never fire" in result.stderr
    assert not (tmp_path / "ops").exists()
