"""Profiles of a throughput configuration under wrk load, with py-spy.

``make bench PROFILE=1`` (sample100) or ``PROFILE=<config>``, i.e. ``run.py --profile
CONFIG``: the configuration is started as in the benchmark and loaded with the same
``wrk -t1 -c32``, twice while py-spy samples it from outside the process (ptrace; as
root that works here): once for a flame graph, ``docs/images/profile-<config>.svg``,
once as raw stacks, from which the 20 functions with the most samples (own time, and
time including callees) go to ``docs/benchmarks-profile.txt``. Only the thread
holding the GIL is sampled (``--gil``), whichever it is, the event loop's or the span
exporter's: one Python process runs one thread at a time, so that is the time every
request waits on. (Without it, py-spy also counts the exporter thread waking in
``Condition.wait`` and socket writes done without the GIL, which cost no request.)
py-spy pauses the process for each sample (100 per second), which costs the run a
little throughput: profiles say where time goes, not how fast it goes.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .load import wrk
from .procs import PYTHON, Processes

# The venv's (the bench extra installs it), found without the venv on PATH.
PY_SPY = str(Path(PYTHON).with_name("py-spy"))
TOP = 20
# Frames under which every sample runs (the interpreter's start, the event loop, the
# app's main): in the "total" table they would only fill the top rows with ~100 %.
SCAFFOLDING = (
    "(<frozen runpy>",
    "(asyncio/base_events.py",
    "(asyncio/events.py",
    "(aiohttp/web.py:",
    "(tests/benchmarks/apps.py",
)


@dataclass(frozen=True)
class Top:
    samples: int
    own: list[tuple[str, int]]
    total: list[tuple[str, int]]


def top_functions(raw: str, top: int = TOP) -> Top:
    """The functions with most samples, from py-spy's raw (collapsed) stacks: lines of
    ``frame;frame;...;leaf COUNT``."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):  # recursion counts once per sample
            if not any(marker in frame for marker in SCAFFOLDING):
                total[frame] += count
    return Top(samples, own.most_common(top), total.most_common(top))


def format_top(config: str, result: Top) -> str:
    def rows(pairs: list[tuple[str, int]]) -> list[str]:
        return [f"{100 * n / max(result.samples, 1):6.1f} %  {n:6d}  {frame}" for frame, n in pairs]

    return "\n".join(
        [
            f"== {config}: {result.samples} samples (the thread holding the GIL) ==",
            "",
            f"top {TOP} by own time (the function itself, not its callees):",
            *rows(result.own),
            "",
            f"top {TOP} by total time (including callees; the event loop's own frames left out):",
            *rows(result.total),
            "",
        ]
    )


def _record_under_load(
    procs: Processes,
    pid: int,
    url: str,
    seconds: float,
    py_spy_args: list[str],
    wrk_cpus: str | None,
) -> None:
    """py-spy for ``seconds`` while wrk keeps the server saturated a bit longer."""
    load = threading.Thread(
        target=wrk, args=(procs, url), kwargs={"seconds": seconds + 3, "cpus": wrk_cpus}
    )
    load.start()
    try:
        argv = [PY_SPY, "record", "--pid", str(pid), "--duration", f"{seconds:g}"]
        # --function: one row per function (its first line), not one per line executed;
        # --gil: only the thread holding the GIL (see the module's docstring).
        procs.run(
            [*argv, "--rate", "100", "--function", "--gil", *py_spy_args], timeout=seconds + 60
        )
    finally:
        load.join()


def profile(
    procs: Processes,
    *,
    config: str,
    pid: int,
    url: str,
    seconds: float,
    images: Path,
    scratch: Path,
    wrk_cpus: str | None,
) -> str:
    """Flame graph to ``images``; returns the top-N text."""
    svg = images / f"profile-{config}.svg"
    _record_under_load(procs, pid, url, seconds, ["-o", str(svg)], wrk_cpus)
    raw = scratch / f"profile-{config}.raw"
    try:
        _record_under_load(procs, pid, url, seconds, ["--format", "raw", "-o", str(raw)], wrk_cpus)
        return format_top(config, top_functions(raw.read_text()))
    finally:
        raw.unlink(missing_ok=True)
