"""`make bench`: every benchmark of issue 10, then the tables, a chart and the docs.

    python -m tests.benchmarks.run [--rounds 3] [--duration 10] [--only throughput,api,...]
    python -m tests.benchmarks.run --profile sample100      # py-spy profiles only
    python -m tests.benchmarks.run --from-json RESULTS      # redo the report only

1. Throughput: the five configurations of apps.py, each its own process, started
   afresh for each measurement and alternated A B C D E per round (the machine's
   noise then hits every configuration alike), wrk then hey against each.
2. The real API (realapi.py): each route alone at its rate, then all four at once,
   open loop (openloop.py).
3. ``/metrics`` with 10,000 series (metrics_scale.py).
4. The soak, on the real API's process.

Results print as markdown tables and replace the marked block of docs/benchmarks.md;
the raw numbers stay in .local/bench/<run>/results.json. Every process the run starts
is stopped at the end, on failure and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import report
from .apps import CONFIGS, ROUTE
from .load import hey, wrk
from .procs import (
    PYTHON,
    Processes,
    cpu_seconds,
    free_port,
    http_get_json,
    managed,
    steal_percent,
    steal_ticks,
    wait_for_port,
)
from .realapi import ApiOptions, child_env, hitl_api, pending_needed, run_scenarios, seed

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
CHART = ROOT / "docs" / "images" / "benchmarks.png"
PROFILE_TEXT = ROOT / "docs" / "benchmarks-profile.txt"
PARTS = ("throughput", "api", "metrics", "soak")
# Two cores: the server under test gets one, everything that loads or receives from
# it (wrk, hey, the sink) the other, so the server's telemetry (its export thread
# included) is paid for out of one core, as a one-process-per-core deployment pays.
SERVER_CPU = "1"
LOAD_CPU = "0"


def _assignment(text: str) -> tuple[str, str]:
    name, equals, value = text.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (default 3)")
    parser.add_argument("--duration", type=float, default=10, help="seconds of each wrk run")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of wrk before each run")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--fixed-rate", type=int, default=500, help="hey's aggregate req/s")
    parser.add_argument("--fixed-seconds", type=float, default=4, help="seconds of each hey run")
    parser.add_argument("--fixed-workers", type=int, default=10, help="hey workers")
    parser.add_argument("--api-seconds", type=float, default=15, help="each real-API scenario")
    parser.add_argument("--api-warmup", type=float, default=2, help="unrecorded start of each")
    parser.add_argument(
        "--api-env",
        action="append",
        default=[],
        type=_assignment,
        metavar="NAME=VALUE",
        help="extra variable for hitl-api serve, e.g. OTEL_SDK_DISABLED=true (repeatable)",
    )
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument("--soak-warmup", type=float, default=10)
    parser.add_argument("--series", type=int, default=10_000, help="/metrics registry size")
    parser.add_argument("--only", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and load")
    parser.add_argument("--no-docs", action="store_true", help="print only; leave docs/ alone")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' log files")
    parser.add_argument(
        "--profile",
        action="append",
        choices=CONFIGS,
        metavar="CONFIG",
        help="only profile CONFIG under wrk load with py-spy (repeatable)",
    )
    parser.add_argument("--profile-seconds", type=float, default=15)
    parser.add_argument(
        "--at",
        metavar="REV",
        help="measure this commit (a `git archive` of it) instead of the working tree",
    )
    parser.add_argument("--from-json", type=Path, help="rebuild the report from a results.json")
    parser.add_argument("--invoked-as", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
    return args


# -- facts about the run ----------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.rstrip("\n")


def _cpu_model() -> str:
    for line in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False
    ).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def meta(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from importlib.metadata import version

    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": _git("rev-parse", "--short", args.at or "HEAD"),
        "snapshot": bool(args.at),
        # Porcelain lines are "XY path": two status letters, a space, the path. A
        # snapshot (--at) is clean by construction, whatever the working tree holds.
        "dirty": []
        if args.at
        else [line[3:] for line in _git("status", "--porcelain").splitlines()],
        "api_env": dict(args.api_env),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "otel_sdk": version("opentelemetry-sdk"),
        "wrk": (wrk_version.stdout or wrk_version.stderr).split(" [")[0].strip() or "wrk",
        "loadavg_start": os.getloadavg()[0],
        "command": args.invoked_as or "python -m tests.benchmarks.run " + " ".join(argv),
        "argv": "python -m tests.benchmarks.run " + " ".join(argv)
        if argv
        else "python -m tests.benchmarks.run",
        "placement": (
            "unpinned (--no-pin)"
            if args.no_pin
            else f"server under test on CPU {SERVER_CPU}; wrk, hey and the OTLP sink on CPU "
            f"{LOAD_CPU} (taskset); the real API and its load unpinned"
        ),
        "params": {
            "rounds": args.rounds,
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "fixed_rate": args.fixed_rate,
            "fixed_seconds": args.fixed_seconds,
            "fixed_workers": args.fixed_workers,
            "api_seconds": args.api_seconds,
            "api_warmup": args.api_warmup,
            "soak_seconds": args.soak_seconds,
            "soak_warmup": args.soak_warmup,
            "series": args.series,
            "only": args.only,
        },
    }


def snapshot(rev: str, into: Path) -> Path:
    """``service`` and ``telemetry`` as of commit ``rev``, with this harness beside them,
    under ``into``: a run measures one coherent version even while the working tree is
    being edited, and any older commit can be measured by today's harness."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "--", "service", "telemetry"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "__init__.py", into / "tests")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "tests" / "benchmarks", into / "tests" / "benchmarks", ignore=ignore)
    return into


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "hey", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(
            f"missing {', '.join(missing)}: `make bench` installs them (apt-get install wrk hey)"
        )


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the sink and the configurations ----------------------------------------------------


class Sink:
    def __init__(self, procs: Processes, run_dir: Path, cpus: str | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with (run_dir / "sink.err").open("wb") as err:
            self.proc = procs.start(
                [PYTHON, "-m", "tests.benchmarks.sink", "--port", str(self.port)],
                env=child_env(),
                stderr=err,
                cpus=cpus,
            )
        wait_for_port(self.port, self.proc)

    def spans(self) -> int:
        counts = http_get_json(f"{self.url}/count")
        assert isinstance(counts, dict)
        return int(counts["spans"])


@contextmanager
def configuration(
    procs: Processes, config: str, sink: Sink, log_path: Path, cpus: str | None
) -> Iterator[tuple[int, str]]:
    """One configuration's process, stdout (its JSON log lines) to ``log_path``;
    yields its pid and URL. Stopped with SIGTERM, so it flushes its spans first."""
    port = free_port()
    with log_path.open("wb") as log, log_path.with_suffix(".err").open("wb") as err:
        proc = procs.start(
            [
                PYTHON,
                "-m",
                "tests.benchmarks.apps",
                config,
                "--port",
                str(port),
                "--sink",
                sink.url,
            ],
            env=child_env(),
            stdout=log,
            stderr=err,
            cpus=cpus,
        )
    try:
        wait_for_port(port, proc)
        yield proc.pid, f"http://127.0.0.1:{port}{ROUTE}"
    finally:
        code = procs.stop(proc)
        if code not in (0, None):
            errors = log_path.with_suffix(".err").read_text()[-2000:]
            raise RuntimeError(f"{config} exited with {code}:\n{errors}")


def _log_lines(path: Path, keep: bool) -> int:
    with path.open("rb") as handle:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    if not keep:
        path.unlink()
    return lines


def measure(
    procs: Processes,
    config: str,
    round_no: int,
    sink: Sink,
    run_dir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    server_cpu, load_cpu = (None, None) if args.no_pin else (SERVER_CPU, LOAD_CPU)
    log_path = run_dir / f"{config}-r{round_no}.log"
    before = sink.spans()
    loadavg = os.getloadavg()[0]
    with configuration(procs, config, sink, log_path, server_cpu) as (pid, url):
        warm = wrk(procs, url, seconds=args.warmup, connections=args.connections, cpus=load_cpu)
        cpu_before, steal_before = cpu_seconds(pid), steal_ticks()
        measured = wrk(
            procs, url, seconds=args.duration, connections=args.connections, cpus=load_cpu
        )
        cpu, steal = cpu_seconds(pid) - cpu_before, steal_percent(steal_before, steal_ticks())
        fixed = hey(
            procs,
            url,
            seconds=args.fixed_seconds,
            rate=args.fixed_rate,
            workers=args.fixed_workers,
            cpus=load_cpu,
        )
    return {
        "round": round_no,
        "config": config,
        "loadavg": loadavg,
        "steal_pct": steal,
        # CPU per request is steadier than req/s on a noisy machine: time the
        # hypervisor steals stretches the run but is not charged to the process.
        "server_cpu_us_per_request": 1e6 * cpu / max(measured.requests, 1),
        "wrk": measured.__dict__,
        "hey": fixed.__dict__,
        "served": warm.requests + measured.requests + fixed.requests,
        "spans": sink.spans() - before,  # after shutdown: the last batch is flushed
        "log_lines": _log_lines(log_path, args.keep_logs),
    }


def run_throughput(
    procs: Processes, sink: Sink, run_dir: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    records = []
    for round_no in range(1, args.rounds + 1):
        for config in CONFIGS:
            record = measure(procs, config, round_no, sink, run_dir, args)
            records.append(record)
            say(
                f"round {round_no}/{args.rounds} {config:>9}: {record['wrk']['rps']:9.0f} req/s, "
                f"{record['server_cpu_us_per_request']:5.0f} us CPU/req, "
                f"steal {record['steal_pct']:4.1f} %, "
                f"p99 {record['wrk']['p99_ms']:6.2f} ms; at {args.fixed_rate}/s p99 "
                f"{record['hey']['p99_ms']:6.2f} ms; spans {record['spans']}, "
                f"log lines {record['log_lines']} for {record['served']} requests"
            )
    return records


def run_real_api(
    procs: Processes, sink: Sink, run_dir: Path, args: argparse.Namespace, commit: str
) -> dict[str, Any]:
    parts = args.only.split(",")
    options = ApiOptions(
        seconds=args.api_seconds,
        warmup=args.api_warmup,
        soak_seconds=args.soak_seconds,
        soak_warmup=args.soak_warmup,
        api="api" in parts,
        soak="soak" in parts,
    )
    before = sink.spans()
    with hitl_api(procs, run_dir, sink.url, commit, dict(args.api_env)) as api:
        say(f"hitl-api serving on {api.base_url}; seeding")
        seeded = asyncio.run(seed(api, pending_needed(options)))
        say("seeded; running the open-loop scenarios" + (" and the soak" if options.soak else ""))
        results = run_scenarios(api, seeded, run_dir, procs, options)
    results["spans_received"] = sink.spans() - before
    results["log_lines"] = _log_lines(api.log_path, args.keep_logs)
    return results


def run_metrics_scale(procs: Processes, args: argparse.Namespace) -> dict[str, Any]:
    out = procs.run(
        [PYTHON, "-m", "tests.benchmarks.metrics_scale", "--series", str(args.series)],
        env=child_env(),
        timeout=600,
    )
    result: dict[str, Any] = json.loads(out)
    return result


def run_profiles(procs: Processes, sink: Sink, run_dir: Path, args: argparse.Namespace) -> None:
    from .profile import profile

    server_cpu, load_cpu = (None, None) if args.no_pin else (SERVER_CPU, LOAD_CPU)
    sections = []
    for config in args.profile:
        say(f"profiling {config} for 2 x {args.profile_seconds:g} s under wrk load")
        with configuration(procs, config, sink, run_dir / f"profile-{config}.log", server_cpu) as (
            pid,
            url,
        ):
            wrk(procs, url, seconds=args.warmup, connections=args.connections, cpus=load_cpu)
            sections.append(
                profile(
                    procs,
                    config=config,
                    pid=pid,
                    url=url,
                    seconds=args.profile_seconds,
                    images=CHART.parent,
                    scratch=run_dir,
                    wrk_cpus=load_cpu,
                )
            )
        _log_lines(run_dir / f"profile-{config}.log", args.keep_logs)  # deletes it unless kept
        say(f"flame graph: {CHART.parent / f'profile-{config}.svg'}")
    if args.at:
        source = f"commit {_git('rev-parse', '--short', args.at)} (a snapshot, --at)"
    else:
        dirty = " with uncommitted changes" if _git("status", "--porcelain") else ""
        source = f"the working tree at {_git('rev-parse', '--short', 'HEAD')}{dirty}"
    header = (
        f"py-spy profiles, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, of "
        f"{source}; wrk -t1 -c{args.connections} on GET {ROUTE}, {args.profile_seconds:g} s "
        "at 100 Hz, the thread holding the GIL only.\n"
        "Percent of all samples; frames are function (file:first line).\n\n"
    )
    PROFILE_TEXT.write_text(header + "\n".join(sections))
    print(PROFILE_TEXT.read_text())


# -- main ---------------------------------------------------------------------------------


def finish(results: dict[str, Any], args: argparse.Namespace) -> None:
    text = report.block(results, None)
    print(text)
    if args.no_docs:
        return
    report.chart(results, CHART)
    report.write_document(DOC, report.block(results, CHART.relative_to(DOC.parent).as_posix()))
    say(f"wrote {DOC.relative_to(ROOT)} and {CHART.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> None:
    try:
        bench(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # managed() has already stopped every process; the database and keys are gone.
        sys.exit("interrupted: every process the run started is stopped")


def bench(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.from_json:
        finish(json.loads(args.from_json.read_text()), args)
        return
    require_tools()
    run_dir = ROOT / ".local" / "bench" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    results: dict[str, Any] = {
        "meta": meta(args, [a for a in argv if not a.startswith("--invoked-as")])
    }
    parts = args.only.split(",")
    source = snapshot(args.at, run_dir / "src") if args.at else ROOT
    with managed(source) as procs:
        sink = Sink(procs, run_dir, None if args.no_pin else LOAD_CPU)
        if args.profile:
            run_profiles(procs, sink, run_dir, args)
            return
        if "throughput" in parts:
            results["throughput"] = run_throughput(procs, sink, run_dir, args)
        if "api" in parts or "soak" in parts:
            results["api"] = run_real_api(procs, sink, run_dir, args, results["meta"]["commit"])
        if "metrics" in parts:
            results["metrics"] = run_metrics_scale(procs, args)
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    (run_dir / "results.json").write_text(json.dumps(results, indent=1))
    say(f"raw results: {(run_dir / 'results.json').relative_to(ROOT)}")
    finish(results, args)


if __name__ == "__main__":
    main()
