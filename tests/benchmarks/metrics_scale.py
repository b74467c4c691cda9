"""``/metrics`` at scale (item 4): render time of a registry holding 10,000 series.

    python -m tests.benchmarks.metrics_scale [--series 10000] [--repeat 15]

In-process, in its own interpreter: hitl's registry (``telemetry.Metrics`` with
hitl's settings and error labels, plus ``ReviewMetrics``) is filled through the public
facade, as traffic would fill it: database and cache series, then many distinct
endpoint label sets through ``record_request`` (each adds a requests counter per
status and three histograms), until the exposition holds at least ``--series``
samples. A series here is one sample line of the exposition, as Prometheus counts
them (a histogram label set is its buckets, ``_sum`` and ``_count``). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

DB_OPERATIONS = 20  # insert_review, get_review, list_reviews, ...: a service's queries
STATUSES = (200, 404)


def count_series(body: bytes) -> int:
    return sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))


async def measure(target: int, repeat: int) -> dict[str, Any]:
    from service.api.problems import APP_ERROR_LABELS
    from service.config import telemetry_settings
    from service.metrics import ReviewMetrics
    from telemetry import Metrics

    settings = telemetry_settings(log_format="json", otel_env={"OTEL_SDK_DISABLED": "true"})
    metrics = Metrics(settings)
    metrics.preinitialise_app_errors(APP_ERROR_LABELS)
    ReviewMetrics(metrics, settings)
    for n in range(DB_OPERATIONS):
        async with metrics.db_query(f"operation_{n}"):
            pass
    for operation, result in (("get", "hit"), ("get", "miss"), ("set", "ok"), ("delete", "ok")):
        metrics.record_cache(operation, result)

    def add_endpoints(start: int, count: int) -> None:
        for n in range(start, start + count):
            for status in STATUSES:
                metrics.record_request(
                    method="GET",
                    endpoint=f"/api/bench/{n}/{{item_id}}",
                    status=status,
                    duration=0.004,
                    request_size=0,
                    response_size=512,
                )

    base = count_series((await metrics.render([]))[0])
    add_endpoints(0, 1)
    per_endpoint = count_series((await metrics.render([]))[0]) - base
    endpoints = 1 + max(0, -(-(target - base - per_endpoint) // per_endpoint))
    add_endpoints(1, endpoints - 1)

    body, _ = await metrics.render([])  # warm-up, and the size of what is timed
    wall_ms, cpu_ms = [], []
    for _ in range(repeat):
        # Spread over a few seconds, so one busy moment of a shared machine does not
        # decide the median; the CPU time beside the wall time is what a neighbour's
        # load does not inflate.
        await asyncio.sleep(0.2)
        started, started_cpu = time.perf_counter(), time.process_time()
        await metrics.render([])
        wall_ms.append((time.perf_counter() - started) * 1000)
        cpu_ms.append((time.process_time() - started_cpu) * 1000)
    return {
        "series": count_series(body),
        "endpoints": endpoints,
        "body_bytes": len(body),
        "repeat": repeat,
        "median_ms": statistics.median(wall_ms),
        "min_ms": min(wall_ms),
        "max_ms": max(wall_ms),
        "cpu_median_ms": statistics.median(cpu_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.series, args.repeat))))


if __name__ == "__main__":
    main()
