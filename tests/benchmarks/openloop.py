"""An open-loop load generator: requests leave on a fixed schedule, answered or not.

    python -m tests.benchmarks.openloop SPEC.json    # prints the result as JSON

Each stream has a rate; request k of a stream is due at ``k / rate`` seconds (plus a
small phase per stream, so streams do not all fire on the same tick) and is launched
at that moment whether or not earlier requests have come back. Latency is completion
minus *due* time, so a server that stalls is charged for every request that queued
behind the stall: no coordinated omission, unlike a closed loop (wrk, hey) where a
slow answer delays the next request and hides the wait. The generator's own lateness
(launching after the due time) is charged too and reported as ``dispatch_lag``, so a
saturated client shows up instead of flattering the server.

Bounded by construction: the schedule is finite (rate x seconds requests per
stream), and after the last launch the stragglers get ``timeout`` seconds.

The spec (JSON)::

    {"base_url": "http://127.0.0.1:8000", "headers": {...}, "seconds": 20,
     "warmup": 2, "timeout": 10, "max_connections": 256,
     "streams": [{"name": "read", "rate": 200, "method": "GET",
                  "paths": ["/api/reviews/1", ...], "body": null}, ...]}

``paths`` are used in turn (request k takes ``paths[k % len(paths)]``). In ``body``,
every string containing ``{n}`` gets the request's number, to make unique ids.
Requests due during the first ``warmup`` seconds are sent but not recorded.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass(frozen=True)
class Stream:
    name: str
    rate: float
    method: str
    paths: list[str]
    body: Any = None


@dataclass(frozen=True)
class Spec:
    base_url: str
    streams: list[Stream]
    seconds: float
    warmup: float = 0.0
    timeout: float = 10.0
    max_connections: int = 256
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Spec:
        streams = [Stream(**s) for s in data.pop("streams")]
        return cls(streams=streams, **data)

    def to_json(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "seconds": self.seconds,
            "warmup": self.warmup,
            "timeout": self.timeout,
            "max_connections": self.max_connections,
            "headers": self.headers,
            "streams": [s.__dict__ for s in self.streams],
        }


@dataclass(frozen=True)
class Due:
    """One request of the schedule: when (seconds from start), which stream, which k."""

    at: float
    stream: int
    k: int


def schedule(rates: list[float], seconds: float) -> list[Due]:
    """Every request of every stream over ``seconds``, in due order.

    Stream i's requests are ``k / rate`` apart, shifted by ``i / (len * rate)`` of an
    interval so that streams interleave instead of colliding on the same instant.
    """
    dues: list[Due] = []
    for index, rate in enumerate(rates):
        interval = 1.0 / rate
        phase = interval * index / len(rates)
        count = math.floor(rate * seconds)
        dues.extend(Due(phase + k * interval, index, k) for k in range(count))
    dues.sort(key=lambda due: (due.at, due.stream))
    return dues


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(p / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def summarise(latencies_ms: list[float]) -> dict[str, float]:
    ordered = sorted(latencies_ms)
    return {
        "p50_ms": percentile(ordered, 50),
        "p90_ms": percentile(ordered, 90),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1] if ordered else math.nan,
    }


def _with_number(body: Any, n: int) -> Any:
    if isinstance(body, str):
        return body.replace("{n}", str(n))
    if isinstance(body, dict):
        return {key: _with_number(value, n) for key, value in body.items()}
    if isinstance(body, list):
        return [_with_number(value, n) for value in body]
    return body


@dataclass
class Outcome:
    """What one stream recorded (requests due after the warm-up only): the latency of
    every request that finished, successfully or not, and what went wrong."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def _prepare(spec: Spec, dues: list[Due]) -> list[tuple[str, str, bytes | None]]:
    """Method, path and encoded body of every request, built before the clock starts
    so the generator spends its time during the run sending, not encoding."""
    prepared = []
    for due in dues:
        stream = spec.streams[due.stream]
        path = stream.paths[due.k % len(stream.paths)]
        body = None
        if stream.body is not None:
            body = json.dumps(_with_number(stream.body, due.k)).encode()
        prepared.append((stream.method, path, body))
    return prepared


async def _send(
    session: aiohttp.ClientSession,
    request: tuple[str, str, bytes | None],
    due_at: float,
    outcome: Outcome | None,
) -> None:
    loop = asyncio.get_running_loop()
    method, path, body = request
    headers = {"Content-Type": "application/json"} if body is not None else None
    error: str | None = None
    try:
        async with session.request(method, path, data=body, headers=headers) as response:
            await response.read()
            if not 200 <= response.status < 300:
                error = f"HTTP {response.status}"
            status = str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        error = status = type(exc).__name__
    if outcome is None:
        return
    # Failures count in the distribution too, at the time they took to fail: leaving
    # out the requests that timed out would make an overloaded server look fast.
    outcome.latencies_ms.append((loop.time() - due_at) * 1000)
    outcome.statuses[status] += 1
    if error is not None:
        outcome.errors[error] += 1


async def run(spec: Spec) -> dict[str, Any]:
    dues = schedule([s.rate for s in spec.streams], spec.warmup + spec.seconds)
    prepared = _prepare(spec, dues)
    outcomes = [Outcome() for _ in spec.streams]
    lags_ms: list[float] = []
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=spec.max_connections)
    timeout = aiohttp.ClientTimeout(total=spec.timeout)
    async with aiohttp.ClientSession(
        spec.base_url, headers=spec.headers, connector=connector, timeout=timeout
    ) as session:
        pending: set[asyncio.Task[None]] = set()
        start = loop.time() + 0.1
        for due, request in zip(dues, prepared, strict=True):
            due_at = start + due.at
            if (delay := due_at - loop.time()) > 0:
                await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # behind schedule: launch now, but let answers in
            recorded = due.at >= spec.warmup
            if recorded:
                lags_ms.append((loop.time() - due_at) * 1000)
            outcome = outcomes[due.stream] if recorded else None
            task = asyncio.create_task(_send(session, request, due_at, outcome))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            _, late = await asyncio.wait(pending, timeout=spec.timeout + 1)
            for task in late:
                task.cancel()
    return _report(spec, outcomes, lags_ms, dues)


def _report(
    spec: Spec, outcomes: list[Outcome], lags_ms: list[float], dues: list[Due]
) -> dict[str, Any]:
    scheduled = Counter(d.stream for d in dues if d.at >= spec.warmup)
    streams = []
    for index, (stream, outcome) in enumerate(zip(spec.streams, outcomes, strict=True)):
        errors = dict(outcome.errors)
        if lost := scheduled[index] - len(outcome.latencies_ms):  # cancelled at the end
            errors["unanswered"] = lost
        streams.append(
            {
                "name": stream.name,
                "rate": stream.rate,
                "scheduled": scheduled[index],
                "answered": len(outcome.latencies_ms),
                "errors": sum(errors.values()),
                "error_kinds": errors,
                "statuses": dict(outcome.statuses),
                **summarise(outcome.latencies_ms),
            }
        )
    return {
        "seconds": spec.seconds,
        "warmup": spec.warmup,
        "streams": streams,
        "dispatch_lag": summarise(lags_ms),
    }


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.benchmarks.openloop SPEC.json")
    with open(sys.argv[1]) as handle:
        spec = Spec.from_json(json.load(handle))
    json.dump(asyncio.run(run(spec)), sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
