#!/usr/bin/env python3
"""Generate SLO recording rules, burn-rate alerts and their promtool tests from ops/slo.yml.

    .venv/bin/python ops/slo/generate.py            # rewrite the committed files
    .venv/bin/python ops/slo/generate.py --check    # exit 1 when they are stale

The SLOs are defined once, in ops/slo.yml; everything that depends on an objective,
a window or a burn factor is derived here so the numbers cannot drift apart.

Naming follows the Prometheus recording-rule convention level:metric:operations
(kubernetes-mixin, sloth):

    slo:sli_requests:rate<w>         requests per second in window w
    slo:sli_error:ratio_rate<w>      bad / total over window w (0..1)
    slo:burn_rate:rate<w>            ratio_rate<w> / error budget (1 = on budget)
    slo:objective:ratio              the objective (e.g. 0.999)
    slo:error_budget:ratio           1 - objective
    slo:error_budget_remaining:ratio 1 - consumed fraction of the budget over the SLO window

Every series carries {slo="<name>", service="<service>"}.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "ops" / "slo.yml"
RULES_OUT = Path("ops/prometheus/rules/slo.rules.yml")
TESTS_OUT = Path("ops/prometheus/tests/slo-burn-rate.test.yml")

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w|y)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ALERT = re.compile(r"^[A-Z][A-Za-z0-9]*$")

# Input traffic of the generated promtool tests: 100 requests per second, so every
# minimum-traffic guard (at most 1 000 requests here) is met after the first minute and
# what the tests observe is the burn rate and `for`, not the guard.
TEST_REQUESTS_PER_MINUTE = 6000
# A scenario burns at this multiple of a tier's factor: just above or just below it.
ABOVE, BELOW = 1.05, 0.95


class SpecError(ValueError):
    """ops/slo.yml describes something that cannot work; the message says what."""


def seconds(duration: str) -> float:
    match = _DURATION.match(duration)
    if not match:
        raise SpecError(f"{duration!r} is not a Prometheus duration like 5m, 1h or 30d")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def canonical(duration: str) -> str:
    """One spelling per duration (24h -> 1d), so no window is recorded twice."""
    total = seconds(duration)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    return duration


@dataclass(frozen=True)
class Tier:
    severity: str
    long: str
    short: str
    factor: float
    for_: str

    @property
    def burn_window(self) -> str:
        return self.long


@dataclass(frozen=True)
class Slo:
    name: str
    alert: str
    description: str
    objective: float
    window: str
    total: str
    bad: str

    @property
    def budget(self) -> float:
        return round(1 - self.objective, 12)


@dataclass(frozen=True)
class Spec:
    service: str
    team: str
    runbook_base_url: str
    dashboard_url: str
    report_windows: tuple[str, ...]
    slos: tuple[Slo, ...]
    tiers: tuple[Tier, ...]
    min_events: int


def load_spec(path: Path = SPEC) -> Spec:
    raw = yaml.safe_load(path.read_text())
    return parse_spec(raw)


def parse_spec(raw: dict[str, Any]) -> Spec:
    try:
        tiers = tuple(
            Tier(
                t["severity"],
                canonical(t["long"]),
                canonical(t["short"]),
                float(t["factor"]),
                t["for"],
            )
            for t in raw["burn_rate_alerts"]["tiers"]
        )
        slos = tuple(
            Slo(
                s["name"],
                s["alert"],
                " ".join(str(s.get("description", "")).split()),
                float(s["objective"]),
                s["window"],
                s["total"],
                s["bad"],
            )
            for s in raw["slos"]
        )
        spec = Spec(
            service=raw["service"],
            team=raw["team"],
            runbook_base_url=raw["runbook_base_url"],
            dashboard_url=raw["dashboard_url"],
            report_windows=tuple(raw.get("report_windows", [])),
            slos=slos,
            tiers=tiers,
            min_events=int(raw["burn_rate_alerts"].get("min_events", 1)),
        )
    except (KeyError, TypeError) as exc:
        raise SpecError(f"ops/slo.yml is missing or mistypes a field: {exc}") from exc
    validate(spec)
    return spec


def validate(spec: Spec) -> None:
    """Reject SLOs and tiers whose alerts could never fire or would fire on noise."""
    if not spec.slos:
        raise SpecError("no SLO defined")
    names = [s.name for s in spec.slos]
    alerts = [s.alert for s in spec.slos]
    if len(set(names)) != len(names) or len(set(alerts)) != len(alerts):
        raise SpecError(f"SLO names and alert names must be unique: {names} {alerts}")
    for window in spec.report_windows:
        seconds(window)
    for tier in spec.tiers:
        if tier.severity not in {"critical", "warning"}:
            raise SpecError(f"tier {tier.long}/{tier.short}: severity must be critical or warning")
        if seconds(tier.short) >= seconds(tier.long):
            raise SpecError(f"tier {tier.long}/{tier.short}: the short window must be shorter")
        seconds(tier.for_)
        if tier.factor <= 0:
            raise SpecError(f"tier {tier.long}/{tier.short}: factor must be positive")
    ordered = sorted(spec.tiers, key=lambda t: -t.factor)
    if [seconds(t.for_) for t in ordered] != sorted({seconds(t.for_) for t in ordered}):
        raise SpecError(
            "tiers must have a strictly longer `for` as the factor shrinks, so the faster "
            "burn always fires first"
        )
    if len({t.long for t in spec.tiers}) != len(spec.tiers):
        raise SpecError("each tier needs its own long window: it is the burn_window label")
    for slo in spec.slos:
        if not _NAME.match(slo.name):
            raise SpecError(f"SLO name {slo.name!r} must be lower_snake_case")
        if not _ALERT.match(slo.alert):
            raise SpecError(f"SLO {slo.name}: alert {slo.alert!r} must be CamelCase")
        if not 0 < slo.objective < 1:
            raise SpecError(
                f"SLO {slo.name}: objective {slo.objective} must lie strictly between 0 and 1"
            )
        seconds(slo.window)
        for tier in spec.tiers:
            # The error ratio of a window is at most 1, so a threshold at or above 1 is
            # unreachable: the alert would sit in the rules looking like protection.
            threshold = tier.factor * slo.budget
            if threshold >= 1:
                raise SpecError(
                    f"SLO {slo.name}: objective {slo.objective} with burn factor {tier.factor} "
                    f"({tier.long}/{tier.short}) needs an error ratio above {threshold:g}, "
                    "which can never happen: its alert could never fire"
                )
            if threshold * ABOVE >= 1:
                raise SpecError(
                    f"SLO {slo.name}: burn factor {tier.factor} leaves no room above its "
                    f"threshold {threshold:g} (the error ratio cannot exceed 1)"
                )


def windows_for(spec: Spec, slo: Slo) -> list[str]:
    wanted = {slo.window, *spec.report_windows}
    for tier in spec.tiers:
        wanted |= {tier.long, tier.short}
    return sorted({canonical(w) for w in wanted}, key=seconds)


def min_requests(spec: Spec, slo: Slo, tier: Tier) -> int:
    """Requests the long window must hold before its alert may fire."""
    single_bad_request = math.ceil(1 / (tier.factor * slo.budget) - 1e-9)
    return max(spec.min_events, single_bad_request)


def _fmt(number: float) -> str:
    return f"{number:.12g}"


def _anchor(alert: str) -> str:
    return alert.lower()


def recording_groups(spec: Spec) -> list[dict[str, Any]]:
    groups = []
    for slo in spec.slos:
        labels = {"slo": slo.name, "service": spec.service}
        sel = f'{{slo="{slo.name}"}}'
        short: list[dict[str, Any]] = []
        long: list[dict[str, Any]] = []
        for window in windows_for(spec, slo):
            rules = [
                {
                    "record": f"slo:sli_requests:rate{window}",
                    "expr": f"sum(rate({slo.total}[{window}]))",
                    "labels": labels,
                },
                {
                    "record": f"slo:sli_error:ratio_rate{window}",
                    # `or vector(0)`: the bad counter does not exist until the first bad
                    # request, and a missing numerator must read as "no errors", not "no data".
                    "expr": (
                        f"(sum(rate({slo.bad}[{window}])) or vector(0))\n"
                        f"/\nsum(rate({slo.total}[{window}]))\n"
                    ),
                    "labels": labels,
                },
                {
                    "record": f"slo:burn_rate:rate{window}",
                    "expr": f"slo:sli_error:ratio_rate{window}{sel} / {_fmt(slo.budget)}",
                    "labels": labels,
                },
            ]
            # Windows of a day or more change slowly and scan many samples: evaluate
            # them every minute instead of every 30 s.
            (long if seconds(window) >= 86400 else short).extend(rules)
        meta = [
            {
                "record": "slo:objective:ratio",
                "expr": f"vector({_fmt(slo.objective)})",
                "labels": labels,
            },
            {
                "record": "slo:error_budget:ratio",
                "expr": f"vector({_fmt(slo.budget)})",
                "labels": labels,
            },
            {
                "record": "slo:error_budget_remaining:ratio",
                "expr": (
                    f"1 - slo:sli_error:ratio_rate{canonical(slo.window)}{sel}"
                    f" / {_fmt(slo.budget)}"
                ),
                "labels": labels,
            },
        ]
        groups.append({"name": f"slo-sli-{slo.name}", "interval": "30s", "rules": short})
        groups.append({"name": f"slo-sli-{slo.name}-long", "interval": "1m", "rules": long + meta})
    return groups


def burn_alert(spec: Spec, slo: Slo, tier: Tier) -> dict[str, Any]:
    sel = f'{{slo="{slo.name}"}}'
    factor = _fmt(tier.factor)
    return {
        "alert": slo.alert,
        "expr": (
            f"slo:burn_rate:rate{tier.long}{sel} > {factor}\n"
            f"and on (slo, service)\n"
            f"slo:burn_rate:rate{tier.short}{sel} > {factor}\n"
            f"and on (slo, service)\n"
            f"slo:sli_requests:rate{tier.long}{sel} * {_fmt(seconds(tier.long))} >= "
            f"{min_requests(spec, slo, tier)}\n"
        ),
        "for": tier.for_,
        "labels": {
            "severity": tier.severity,
            "team": spec.team,
            "category": "slo",
            "burn_window": tier.burn_window,
        },
        "annotations": burn_annotations(spec, slo, tier, "{{ $value | humanize }}"),
    }


def burn_annotations(spec: Spec, slo: Slo, tier: Tier, value: str) -> dict[str, str]:
    budget_pct = _fmt(slo.budget * 100)
    return {
        "summary": (
            f"{slo.name} SLO is burning its error budget {_fmt(tier.factor)}x too fast "
            f"over {tier.long} and {tier.short}"
        ),
        "description": (
            f"The {slo.name} SLO ({_fmt(slo.objective * 100)} % over {slo.window}) is burning "
            f"its {budget_pct} % error budget at {value}x the sustainable rate over the last "
            f"{tier.long} (threshold {_fmt(tier.factor)}x, confirmed over {tier.short})."
        ),
        "runbook_url": f"{spec.runbook_base_url}#{_anchor(slo.alert)}",
        "dashboard_url": spec.dashboard_url,
    }


def alert_groups(spec: Spec) -> list[dict[str, Any]]:
    # Pages are evaluated as often as the seed's critical alerts, tickets as its warnings.
    page = [
        burn_alert(spec, s, t) for s in spec.slos for t in spec.tiers if t.severity == "critical"
    ]
    ticket = [
        burn_alert(spec, s, t) for s in spec.slos for t in spec.tiers if t.severity == "warning"
    ]
    return [
        {"name": "slo-burn-rate-page", "interval": "30s", "rules": page},
        {"name": "slo-burn-rate-ticket", "interval": "1m", "rules": ticket},
    ]


def _humanize(value: float) -> str:
    """Go's `humanize` template function for 1 <= value < 1000 (what the tests produce)."""
    assert 1 <= value < 1000, value
    return f"{value:.4g}"


def _series(
    total_per_minute: float, bad_per_minute: float, slo: Slo, minutes: int
) -> list[dict[str, str]]:
    """Counters where `total` grows by total_per_minute, of which bad_per_minute are bad."""
    if slo.total.partition("{")[0] == slo.bad.partition("{")[0]:
        # One metric split by a label (http_requests_total by status): the total selector
        # also matches the bad series, so the rest of the traffic is a separate good series.
        good = _with_labels(slo.total).replace("}", ',status="200"}')
        return [
            {"series": good, "values": f"0+{_fmt(total_per_minute - bad_per_minute)}x{minutes}"},
            {"series": _with_labels(slo.bad), "values": f"0+{_fmt(bad_per_minute)}x{minutes}"},
        ]
    return [
        {"series": _with_labels(slo.total), "values": f"0+{_fmt(total_per_minute)}x{minutes}"},
        {"series": _with_labels(slo.bad), "values": f"0+{_fmt(bad_per_minute)}x{minutes}"},
    ]


def _with_labels(selector: str) -> str:
    """Turn a selector into one concrete series: regex matchers get a matching value."""
    name, _, body = selector.partition("{")
    labels: dict[str, str] = {"instance": "hitl-api:8000"}
    for matcher in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
        label, op, value = matcher.groups()
        if op == "=":
            labels[label] = value
        elif op == "=~":
            labels[label] = {"5..": "500"}.get(value, value.split("|")[0])
        elif op == "!~" and label == "endpoint":
            labels[label] = "/api/reviews"
    rendered = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{rendered}}}"


def test_groups(spec: Spec) -> list[dict[str, Any]]:
    tests = []
    for slo in spec.slos:
        ordered = sorted(spec.tiers, key=lambda t: -t.factor)
        for tier in ordered:
            for_s = seconds(tier.for_)
            fire_at = int(for_s // 60) + 2  # rates exist from minute 1; `for` counts from there
            minutes = fire_at + 1
            above = tier.factor * slo.budget * ABOVE
            below = tier.factor * slo.budget * BELOW
            burn = _humanize(tier.factor * ABOVE)
            labels = {
                "slo": slo.name,
                "service": spec.service,
                "severity": tier.severity,
                "team": spec.team,
                "category": "slo",
                "burn_window": tier.burn_window,
            }
            for scenario, ratio, expected in (
                ("just above", above, True),
                ("just below", below, False),
            ):
                tests.append(
                    {
                        "name": (
                            f"{slo.alert} {tier.burn_window}/{tier.short}: burning {scenario} "
                            f"{_fmt(tier.factor)}x"
                        ),
                        "interval": "1m",
                        "input_series": _series(
                            TEST_REQUESTS_PER_MINUTE, TEST_REQUESTS_PER_MINUTE * ratio, slo, minutes
                        ),
                        "alert_rule_test": [
                            # Still pending: the condition holds but `for` has not elapsed.
                            {
                                "eval_time": f"{int(for_s // 60)}m",
                                "alertname": slo.alert,
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": f"{fire_at}m",
                                "alertname": slo.alert,
                                "exp_alerts": (
                                    [
                                        {
                                            "exp_labels": labels,
                                            "exp_annotations": burn_annotations(
                                                spec, slo, tier, burn
                                            ),
                                        }
                                    ]
                                    if expected
                                    else []
                                ),
                            },
                        ],
                    }
                )
        # The budget arithmetic, checked on one concrete ratio: errors at half the budget
        # leave half of it. Ratios of rates do not depend on how much of the window holds
        # data, so two hours stand in for the whole SLO window (promtool would otherwise
        # evaluate every rule for 30 simulated days).
        half = slo.budget / 2
        tests.append(
            {
                "name": f"{slo.name}: error budget remaining at half the allowed error ratio",
                "interval": "1m",
                "input_series": _series(
                    TEST_REQUESTS_PER_MINUTE, TEST_REQUESTS_PER_MINUTE * half, slo, 120
                ),
                "promql_expr_test": [
                    {
                        "expr": (
                            f'round(slo:error_budget_remaining:ratio{{slo="{slo.name}"}}, 0.01)'
                        ),
                        "eval_time": "2h",
                        "exp_samples": [
                            {
                                "labels": f'{{service="{spec.service}",slo="{slo.name}"}}',
                                "value": 0.5,
                            }
                        ],
                    },
                    {
                        "expr": f'slo:objective:ratio{{slo="{slo.name}"}}',
                        "eval_time": "2h",
                        "exp_samples": [
                            {
                                "labels": (
                                    "slo:objective:ratio"
                                    f'{{service="{spec.service}",slo="{slo.name}"}}'
                                ),
                                "value": slo.objective,
                            }
                        ],
                    },
                ],
            }
        )
    return tests


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:  # no &id001 anchors: readers grep these files
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def _dump(document: dict[str, Any], header: str) -> str:
    body = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    return header + body


HEADER = (
    "# GENERATED by ops/slo/generate.py from ops/slo.yml; run `make rules` after editing\n"
    "# ops/slo.yml. Do not edit by hand: tests/ops/test_slo_generator.py fails when stale.\n"
)


def render(spec: Spec) -> dict[Path, str]:
    rules = {"groups": recording_groups(spec) + alert_groups(spec)}
    tests = {
        "rule_files": ["../rules/slo.rules.yml"],
        "evaluation_interval": "30s",
        # promtool evaluates rule groups in random order unless told: recording groups
        # first, so an alert never reads a recording one evaluation old.
        "group_eval_order": [group["name"] for group in rules["groups"]],
        "tests": test_groups(spec),
    }
    return {RULES_OUT: _dump(rules, HEADER), TESTS_OUT: _dump(tests, HEADER)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=SPEC)
    parser.add_argument("--root", type=Path, default=ROOT, help="write under this directory")
    parser.add_argument(
        "--check", action="store_true", help="fail if the committed files are stale"
    )
    args = parser.parse_args(argv)
    try:
        outputs = render(load_spec(args.spec))
    except SpecError as exc:
        print(f"ops/slo.yml: {exc}", file=sys.stderr)
        return 2
    stale = []
    for rel, text in outputs.items():
        path = args.root / rel
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(rel))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {rel}")
    if stale:
        print(f"stale (run `make rules`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
