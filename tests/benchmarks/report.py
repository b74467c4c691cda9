"""From the raw results of a run to tables, targets, a chart and docs/benchmarks.md.

Only the block between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` of the
document is rewritten; the prose around it (method, decisions, notes) is left as is.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .apps import CONFIGS, TRACED
from .realapi import ROUTE_RATES, SOAK_RATES

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"
CONFIG_TITLES = {
    "bare": "bare aiohttp",
    "off": "ours, tracing off",
    "sample10": "ours, 10 % sampled",
    "sample100": "ours, 100 % sampled",
    "stock": "stock peer, 100 %",
}
ROUTE_TITLES = {
    "cached_read": "`GET /api/reviews/{id}` (cache hit)",
    "list": "`GET /api/reviews?limit=20`",
    "submit": "`POST /api/reviews`",
    "decide": "`POST /api/reviews/{id}/decision`",
}


# -- numbers --------------------------------------------------------------------------


def _fmt(value: float, digits: int = 1) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:,.{digits}f}"
    )


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def throughput_summary(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration: medians over rounds, the rounds' spread, and proofs of work
    (spans the sink received and log lines written, per request served)."""
    summary: dict[str, dict[str, Any]] = {}
    for config in CONFIGS:
        runs = [r for r in records if r["config"] == config]
        if not runs:
            continue
        served = sum(r["served"] for r in runs)
        summary[config] = {
            "rounds": [r["wrk"]["rps"] for r in runs],
            "rps": statistics.median(r["wrk"]["rps"] for r in runs),
            "cpu_us": statistics.median(r["server_cpu_us_per_request"] for r in runs),
            "steal_pct": statistics.median(r["steal_pct"] for r in runs),
            "p50_ms": statistics.median(r["wrk"]["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["wrk"]["p99_ms"] for r in runs),
            "hey_p50_ms": statistics.median(r["hey"]["p50_ms"] for r in runs),
            "hey_p99_ms": statistics.median(r["hey"]["p99_ms"] for r in runs),
            "hey_max_ms": max(r["hey"]["max_ms"] for r in runs),
            "hey_rps": statistics.median(r["hey"]["rps"] for r in runs),
            "errors": sum(
                r["wrk"]["non_2xx"]
                + r["wrk"]["socket_errors"]
                + r["hey"]["non_200"]
                + r["hey"]["errors"]
                for r in runs
            ),
            "spans_per_request": sum(r["spans"] for r in runs) / served if served else math.nan,
            "log_lines_per_request": sum(r["log_lines"] for r in runs) / served if served else 0,
        }
    bare = summary.get("bare", {})
    for values in summary.values():
        values["ratio"] = values["rps"] / bare["rps"] if bare else math.nan
        # The same ratio from CPU per request: less sensitive to steal and neighbours.
        values["cpu_ratio"] = bare["cpu_us"] / values["cpu_us"] if bare else math.nan
    return summary


def throughput_tables(results: dict[str, Any]) -> str:
    params = results["meta"]["params"]
    summary = throughput_summary(results["throughput"])
    rows = []
    for config, s in summary.items():
        rows.append(
            [
                CONFIG_TITLES[config],
                f"**{_fmt(s['rps'], 0)}**",
                " / ".join(_fmt(v, 0) for v in s["rounds"]),
                f"**{s['ratio']:.2f}**",
                _fmt(s["cpu_us"], 0),
                f"{s['cpu_ratio']:.2f}",
                _fmt(s["p50_ms"], 2),
                _fmt(s["p99_ms"], 2),
                f"{s['spans_per_request']:.3f}" if config in TRACED else "-",
                f"{s['log_lines_per_request']:.2f}",
                str(s["errors"]),
                _fmt(s["steal_pct"], 1),
            ]
        )
    wrk_table = _table(
        [
            "configuration",
            "req/s (median)",
            "req/s per round",
            "ratio to bare",
            "server CPU µs / request",
            "bare's CPU / this CPU",
            "p50 ms",
            "p99 ms",
            "spans received / request",
            "log lines / request",
            "errors",
            "steal %",
        ],
        rows,
    )
    fixed_rows = [
        [
            CONFIG_TITLES[config],
            _fmt(s["hey_rps"], 0),
            _fmt(s["hey_p50_ms"], 2),
            _fmt(s["hey_p99_ms"], 2),
            _fmt(s["hey_max_ms"], 1),
        ]
        for config, s in summary.items()
    ]
    fixed_table = _table(
        ["configuration", "req/s achieved", "p50 ms", "p99 ms", "max ms (any round)"], fixed_rows
    )
    return (
        f"**Throughput**: `wrk -t1 -c{params['connections']} -d{params['duration']:g}s --latency` "
        f"on `GET /api/bench`, after a {params['warmup']:g} s warm-up, configurations "
        f"alternating, {params['rounds']} rounds; p50/p99 are the medians of the rounds' "
        "(closed loop at saturation). Server CPU per request: user + system time of the "
        "server process (all threads) during the measured run over requests served; steal: "
        "the machine's CPU time taken by the hypervisor during it (medians of the rounds).\n\n"
        f"{wrk_table}\n\n"
        f"**Fixed rate**: `hey -z {params['fixed_seconds']:g}s -c {params['fixed_workers']} "
        f"-q {params['fixed_rate'] / params['fixed_workers']:g}` = {params['fixed_rate']} "
        "req/s on the same processes, medians of the rounds.\n\n"
        f"{fixed_table}"
    )


def _route_rows(run: dict[str, Any], label: str, alone: bool) -> list[list[str]]:
    cpu = run.get("server_cpu_ms_per_request", math.nan)
    return [
        [
            label,
            ROUTE_TITLES[s["name"]],
            _fmt(s["rate"], 0),
            str(s["scheduled"]),
            str(s["errors"]),
            _fmt(s["p50_ms"], 2),
            _fmt(s["p99_ms"], 2),
            _fmt(s["max_ms"], 1),
            _fmt(cpu, 2) if alone else "",
            _fmt(1000 / cpu, 0) if alone and cpu > 0 else "",
        ]
        for s in run["streams"]
    ]


def api_table(results: dict[str, Any]) -> str:
    api = results["api"]
    params = results["meta"]["params"]
    rows: list[list[str]] = []
    lags = []
    if "mixed" in api:
        rows += _route_rows(api["mixed"], "all four at once", alone=False)
        lags.append(f"all at once {_fmt(api['mixed']['dispatch_lag']['p99_ms'], 2)} ms")
    for route in ROUTE_RATES:
        if (run := api.get(f"alone:{route}")) is not None:
            rows += _route_rows(run, "alone", alone=True)
            lags.append(f"{route} alone {_fmt(run['dispatch_lag']['p99_ms'], 2)} ms")
    if not rows:
        return ""
    table = _table(
        [
            "scenario",
            "route",
            "rate /s",
            "requests",
            "errors",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU ms / request",
            "≈ req/s one core can serve",
        ],
        rows,
    )
    mixed_cpu = api.get("mixed", {}).get("server_cpu_ms_per_request", math.nan)
    tracing = api.get("tracing", {})
    overrides = results["meta"].get("api_env") or {}
    setting = (
        "with " + ", ".join(f"`{k}={v}`" for k, v in overrides.items())
        if overrides
        else "100 % sampling to the sink"
    )
    return (
        f"**Real API** (`hitl-api serve`, PostgreSQL, Redis, {setting}, "
        f"JSON logs to a file): open loop, {params['api_seconds']:g} s per scenario after "
        f"{params['api_warmup']:g} s not recorded; latency from each request's scheduled "
        "start.\n\n"
        f"{table}\n\n"
        "Errors include timeouts (10 s); failed requests count in the percentiles at the "
        "time they took to fail. Server CPU per request: the service process's user + system "
        "time over the scenario (warm-up included) divided by the requests sent; "
        f"all four at once: {_fmt(mixed_cpu, 2)} ms on average. "
        "The service is one asyncio process, so one core bounds it whatever the machine has.\n\n"
        f"Generator lateness (p99 of launch minus due time): {'; '.join(lags)}. "
        f"Spans received by the sink from the service: {api.get('spans_received', 0):,}; "
        f"telemetry's own counters at the end: "
        f"{tracing.get('spans_dropped', math.nan):.0f} spans dropped, "
        f"{tracing.get('export_failures', math.nan):.0f} failed exports."
    )


def soak_summary(soak: dict[str, Any], warmup: float) -> dict[str, Any]:
    samples = soak.get("samples", [])
    warm = next((s for s in samples if s["t"] >= warmup), samples[0] if samples else None)
    end = samples[-1] if samples else None
    if warm is None or end is None:
        return {}
    return {
        "warm": warm,
        "end": end,
        "rss_growth_pct": 100 * (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"],
        "other_fd_growth": end["other_fds"] - warm["other_fds"],
        "requests": sum(s["scheduled"] for s in soak["streams"]),
        "errors": sum(s["errors"] for s in soak["streams"]),
    }


def soak_table(results: dict[str, Any]) -> str:
    soak = results["api"].get("soak")
    if not soak:
        return ""
    params = results["meta"]["params"]
    s = soak_summary(soak, params["soak_warmup"])
    if not s:
        return ""
    warm, end = s["warm"], s["end"]
    mix = ", ".join(f"{name} {rate:g}/s" for name, rate in SOAK_RATES.items())
    worst = max(soak["streams"], key=lambda x: x["p99_ms"])
    table = _table(
        ["", "after warm-up", "at the end", "growth"],
        [
            [
                "RSS MiB",
                _fmt(warm["rss_kib"] / 1024, 1),
                _fmt(end["rss_kib"] / 1024, 1),
                f"{s['rss_growth_pct']:+.1f} %",
            ],
            [
                "open fds, client connections left out",
                str(warm["other_fds"]),
                str(end["other_fds"]),
                f"{s['other_fd_growth']:+d}",
            ],
            ["open fds, all", str(warm["fds"]), str(end["fds"]), f"{end['fds'] - warm['fds']:+d}"],
        ],
    )
    return (
        f"**Soak**: {params['soak_seconds']:g} s at {sum(SOAK_RATES.values()):g} req/s "
        f"({mix}) after a {params['soak_warmup']:g} s warm-up, same service process; "
        f"{s['requests']:,} requests, {s['errors']} errors, worst route p99 "
        f"{_fmt(worst['p99_ms'], 2)} ms ({worst['name']}).\n\n{table}"
    )


def metrics_table(results: dict[str, Any]) -> str:
    m = results.get("metrics")
    if not m:
        return ""
    table = _table(
        ["series", "endpoint label sets", "body", "render median", "min", "max", "CPU median"],
        [
            [
                f"{m['series']:,}",
                str(m["endpoints"]),
                f"{m['body_bytes'] / 1024:,.0f} KiB",
                f"**{m['median_ms']:.1f} ms**",
                f"{m['min_ms']:.1f} ms",
                f"{m['max_ms']:.1f} ms",
                f"{m['cpu_median_ms']:.1f} ms" if "cpu_median_ms" in m else "n/a",
            ]
        ],
    )
    return (
        f"**`/metrics` at scale**: `await metrics.render([])` in-process, median of "
        f"{m['repeat']} renders 0.2 s apart of hitl's registry filled to {m['series']:,} "
        "series; wall time (what a scrape waits), and the process's CPU time.\n\n"
        f"{table}"
    )


# -- targets --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    what: str
    op: str  # ">=", "<" or "<=": how the measured value must compare to the threshold
    threshold: float
    value: float
    unit: str = ""
    digits: int = 2

    @property
    def met(self) -> bool:
        if math.isnan(self.value):
            return False
        return {
            ">=": self.value >= self.threshold,
            "<": self.value < self.threshold,
            "<=": self.value <= self.threshold,
        }[self.op]

    def row(self) -> list[str]:
        gap = self.value - self.threshold if self.op == ">=" else self.threshold - self.value
        sign = {">=": "≥", "<": "<", "<=": "≤"}[self.op]
        return [
            self.what,
            f"{sign} {self.threshold:g}{self.unit}",
            f"{_fmt(self.value, self.digits)}{self.unit}",
            "met" if self.met else "**not met**",
            f"{gap:+.{self.digits}f}{self.unit}",
        ]


def targets(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    if results.get("throughput"):
        s = throughput_summary(results["throughput"])
        ratio: Callable[[str], float] = lambda c: s[c]["ratio"] if c in s else math.nan  # noqa: E731
        found += [
            Target("tracing off, throughput / bare", ">=", 0.70, ratio("off")),
            Target("10 % sampled + export, throughput / bare", ">=", 0.55, ratio("sample10")),
            Target("100 % sampled + export, throughput / bare", ">=", 0.40, ratio("sample100")),
            Target(
                "100 % sampled, throughput / stock peer's",
                ">=",
                2.0,
                ratio("sample100") / ratio("stock"),
            ),
        ]
    # The issue names a rate per route without saying whether they run together:
    # judged both ways, each route alone and all four at once.
    limits = (
        ("cached_read", "cached read", 10),
        ("submit", "submissions", 25),
        ("decide", "decisions", 40),
    )
    api = results.get("api", {})
    for scenario, label in (("alone", "alone"), ("mixed", "all routes at once")):
        for route, title, limit in limits:
            run = api.get(f"alone:{route}") if scenario == "alone" else api.get("mixed")
            if run is None:
                continue
            p99 = next(st["p99_ms"] for st in run["streams"] if st["name"] == route)
            what = f"{title} p99 at {ROUTE_RATES[route]:g}/s, {label}"
            found.append(Target(what, "<", limit, p99, " ms"))
    if results.get("metrics"):
        found.append(
            Target(
                "`/metrics` render, 10k series", "<", 50, results["metrics"]["median_ms"], " ms", 1
            )
        )
    soak = results.get("api", {}).get("soak")
    if soak and (grown := soak_summary(soak, results["meta"]["params"]["soak_warmup"])):
        found += [
            Target("soak: RSS growth after warm-up", "<", 10, grown["rss_growth_pct"], " %", 1),
            Target(
                "soak: fd growth (client connections left out)",
                "<=",
                0,
                grown["other_fd_growth"],
                "",
                0,
            ),
        ]
    return found


def targets_table(results: dict[str, Any]) -> str:
    rows = [t.row() for t in targets(results)]
    if not rows:
        return ""
    met = sum(1 for t in targets(results) if t.met)
    return f"**Targets**: {met} of {len(rows)} met in this run (gap: + is headroom).\n\n" + _table(
        ["target", "threshold", "measured", "", "gap"], rows
    )


# -- the document ---------------------------------------------------------------------


def meta_lines(results: dict[str, Any]) -> str:
    meta = results["meta"]
    if meta.get("snapshot"):
        tree = "a snapshot of that commit (`--at`), whatever the working tree held"
    elif meta["dirty"]:
        tree = "working tree with uncommitted changes: " + ", ".join(meta["dirty"][:12])
    else:
        tree = "clean working tree"
    return "\n".join(
        [
            f"- **When**: {meta['date']} (UTC); measured at commit `{meta['commit']}`, {tree}.",
            f"- **Machine**: `nproc` = {meta['nproc']}, {meta['cpu_model']}, "
            f"{meta['memory_gib']:.0f} GiB; shared with other work (1-min load average "
            f"{meta['loadavg_start']:.2f} at the start, {meta.get('loadavg_end', math.nan):.2f} at the end).",
            f"- **Software**: Python {meta['python']}, aiohttp {meta['aiohttp']}, "
            f"opentelemetry-sdk {meta['otel_sdk']}, plain asyncio event loop, {meta['wrk']}, hey.",
            f"- **Command**: `{meta['command']}` — runs `{meta['argv']}`.",
            f"- **CPU placement**: {meta['placement']}.",
        ]
    )


def block(results: dict[str, Any], chart: str | None) -> str:
    parts = [meta_lines(results)]
    parts += [
        text
        for text in (
            targets_table(results),
            throughput_tables(results) if results.get("throughput") else "",
            api_table(results) if results.get("api") else "",
            metrics_table(results),
            soak_table(results) if results.get("api") else "",
        )
        if text
    ]
    if chart:
        parts.append(f"![benchmark results]({chart})")
    return "\n\n".join(parts)


def write_document(path: Path, text: str) -> None:
    """Replace the marked block of ``path`` (appended when the markers are missing)."""
    current = path.read_text() if path.exists() else ""
    fenced = f"{BEGIN}\n\n{text}\n\n{END}"
    if BEGIN in current and END in current:
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
        updated = pattern.sub(lambda _: fenced, current, count=1)
    else:
        updated = current.rstrip("\n") + ("\n\n" if current else "") + fenced + "\n"
    path.write_text(updated)


# -- the chart ------------------------------------------------------------------------


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        p
        for p, present in (
            (_throughput_panel, bool(results.get("throughput"))),
            (_api_panel, bool(results.get("api", {}).get("mixed"))),
            (_soak_panel, bool(results.get("api", {}).get("soak"))),
        )
        if present
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.6), squeeze=False)
    for draw, axis in zip(panels, axes[0], strict=True):
        draw(results, axis)
    meta = results["meta"]
    figure.suptitle(
        f"hitl benchmarks, {meta['date'][:10]}, commit {meta['commit']}, "
        f"{meta['nproc']} x {meta['cpu_model']}",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _throughput_panel(results: dict[str, Any], axis: Any) -> None:
    summary = throughput_summary(results["throughput"])
    names = list(summary)
    medians = [summary[c]["rps"] for c in names]
    low = [m - min(summary[c]["rounds"]) for c, m in zip(names, medians, strict=True)]
    high = [max(summary[c]["rounds"]) - m for c, m in zip(names, medians, strict=True)]
    colours = ["#888888", "#4c72b0", "#55a868", "#c44e52", "#dd8452"][: len(names)]
    axis.bar(names, medians, yerr=[low, high], capsize=4, color=colours)
    for i, config in enumerate(names):
        # Above the whisker, so the label never sits on it.
        axis.annotate(
            f"{summary[config]['ratio']:.2f}x\n{summary[config]['cpu_us']:.0f} µs",
            (i, max(summary[config]["rounds"])),
            ha="center",
            va="bottom",
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=8,
        )
    axis.set_ylim(top=max(max(s["rounds"]) for s in summary.values()) * 1.2)
    axis.set_ylabel("requests/s (median of rounds; whiskers: min-max)")
    axis.set_title(
        "no-I/O route, wrk -t1 -c32\n(ratio to bare; server CPU per request)", fontsize=10
    )


def _api_panel(results: dict[str, Any], axis: Any) -> None:
    api = results["api"]
    limits = {"cached_read": 10, "submit": 25, "decide": 40}
    names = list(ROUTE_RATES)
    width = 0.27

    def p99s(run_of: Callable[[str], dict[str, Any] | None]) -> list[float]:
        values = []
        for name in names:
            run = run_of(name)
            streams = {st["name"]: st for st in run["streams"]} if run else {}
            values.append(streams[name]["p99_ms"] if name in streams else math.nan)
        return values

    def p50s_alone() -> list[float]:
        return [
            next(st["p50_ms"] for st in api[f"alone:{n}"]["streams"])
            if f"alone:{n}" in api
            else math.nan
            for n in names
        ]

    x = list(range(len(names)))
    axis.bar([i - width for i in x], p50s_alone(), width, label="p50, alone")
    axis.bar(x, p99s(lambda n: api.get(f"alone:{n}")), width, label="p99, alone")
    axis.bar(
        [i + width for i in x], p99s(lambda n: api.get("mixed")), width, label="p99, all at once"
    )
    for i, name in enumerate(names):
        if name in limits:
            axis.hlines(limits[name], i - 0.45, i + 0.45, colors="black", linestyles="dashed")
    axis.set_yscale("log")
    axis.set_ylim(top=axis.get_ylim()[1] * 30)  # room for the legend above the bars
    axis.set_xticks(x, [f"{n}\n{ROUTE_RATES[n]:g}/s" for n in names])
    axis.set_ylabel("ms from scheduled start, log scale (dashed: p99 target)")
    axis.set_title("real API, open loop, 100 % sampled", fontsize=10)
    axis.legend(fontsize=8, ncol=3, loc="upper center")


def _soak_panel(results: dict[str, Any], axis: Any) -> None:
    samples = results["api"]["soak"]["samples"]
    warmup = results["meta"]["params"]["soak_warmup"]
    t = [s["t"] for s in samples]
    rss = [s["rss_kib"] / 1024 for s in samples]
    axis.plot(t, rss, label="RSS")
    axis.set_xlabel("seconds")
    axis.set_ylabel("RSS MiB (blue)")
    axis.axvline(warmup, color="grey", linestyle="dotted")
    axis.set_ylim(0, max(rss) * 1.25)
    fds = axis.twinx()
    other = [s["other_fds"] for s in samples]
    fds.plot(t, other, color="#c44e52", label="fds")
    fds.set_ylabel("open fds, client connections left out (red)")
    fds.set_ylim(0, max(other) * 2.5)
    axis.set_title(
        f"soak, {sum(SOAK_RATES.values()):g} req/s (dotted: end of warm-up)", fontsize=10
    )
