"""The load generators of the throughput runs, wrk (closed loop) and hey (fixed rate),
and parsers of what they print.

wrk's ``--latency`` percentiles are of a closed loop at saturation: each of the 32
connections sends its next request when the previous answer arrives, so they say how
long a request waited in a saturated server, not what a client at a given rate sees
(that is openloop.py's job on the real API). hey with ``-q`` paces each worker, which
gives a fixed aggregate rate well below every configuration's capacity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .procs import Processes

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int


@dataclass(frozen=True)
class HeyResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    non_200: int
    errors: int


def _wrk_time_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise ValueError(f"wrk output lacks {pattern!r}:\n{output}")
        return match

    total = find(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)")
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_wrk_time_ms(total.group(2) + total.group(3)) / 1000,
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_wrk_time_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_wrk_time_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def parse_hey(output: str) -> HeyResult:
    def seconds_ms(pattern: str) -> float:
        match = re.search(pattern, output, re.MULTILINE)
        return float(match.group(1)) * 1000 if match else float("nan")

    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"^\s+\[(\d{3})\]\s+(\d+) responses", output, re.MULTILINE)
    }
    error_block = output.split("Error distribution:", 1)
    errors = (
        sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]", error_block[1], re.MULTILINE))
        if len(error_block) == 2
        else 0
    )
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return HeyResult(
        requests=sum(statuses.values()),
        rps=float(rps.group(1)) if rps else 0.0,
        p50_ms=seconds_ms(r"^\s+50% in ([\d.]+) secs"),
        p99_ms=seconds_ms(r"^\s+99% in ([\d.]+) secs"),
        max_ms=seconds_ms(r"^\s+Slowest:\s+([\d.]+) secs"),
        non_200=sum(n for code, n in statuses.items() if code != 200),
        errors=errors,
    )


def wrk(
    procs: Processes,
    url: str,
    *,
    seconds: float,
    connections: int = 32,
    cpus: str | None = None,
) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]
    return parse_wrk(procs.run(argv, timeout=seconds + 30, cpus=cpus))


def hey(
    procs: Processes,
    url: str,
    *,
    seconds: float,
    rate: int,
    workers: int = 10,
    cpus: str | None = None,
) -> HeyResult:
    """``rate`` requests/s in all, spread over ``workers`` paced workers."""
    per_worker = max(rate / workers, 1.0)
    argv = ["hey", "-z", f"{seconds:g}s", "-c", str(workers), "-q", f"{per_worker:g}", url]
    return parse_hey(procs.run(argv, timeout=seconds + 30, cpus=cpus))
