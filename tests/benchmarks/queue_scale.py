"""Queue size (issue 14, item 1): list, get and stats at 1,000 and 1,000,000 reviews.

    python -m tests.benchmarks.queue_scale [--sizes 1000,1000000] [--repeat 5]
        [--shape history|uniform] [--markdown]

For each size: a throwaway database on the shared PostgreSQL (created and migrated
with service.storage.migrate, dropped at the end) is seeded in SQL with
generate_series (never through HTTP) and VACUUM ANALYZEd; the app runs in-process
on an aiohttp test server with Redis pointing at a closed port, so every call
reaches PostgreSQL. Each call is made once to warm up, then ``--repeat`` times in a
row; best and median latencies are reported side by side with the ratio of the
largest size to the smallest, and EXPLAIN ANALYZE of the stats query says which
indexes it read.

Shapes (``--shape``):

- ``history`` (default): what "history grows" means. Every size holds the same
  current week: 500 open reviews created in the last 7 days (a tenth escalated) and
  500 decided in the last 7 days; everything else is decided history, spread over
  the two years before the week. So 1,000 is a queue's current week alone, and
  1,000,000 the same week after 999,000 older decisions.
- ``uniform``: the issue's measurement: half open and half decided, all spread over
  90 days. The backlog (500,000 open reviews at 1,000,000) and the window's decisions
  (7/90 of the decided) grow with the size, and so does what stats must count.

Prints JSON, or with ``--markdown`` a table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg2

PG_BASE = os.environ.get("HITL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
WEEK_SECONDS = 7 * 24 * 3600
DAY_SECONDS = 24 * 3600
TARGET_RATIO = 2.0  # the target: stats at the largest size within 2x the smallest


@dataclass(frozen=True)
class Shape:
    """How many reviews are open, decided within the window, and decided before it,
    and over how many seconds the open and the older ones are spread."""

    open_n: int
    recent_n: int
    old_n: int
    open_span: int
    old_span: int


def shape_for(kind: str, size: int) -> Shape:
    if kind == "history":
        open_n = min(500, size // 2)
        recent_n = min(500, size - open_n)
        return Shape(open_n, recent_n, size - open_n - recent_n, WEEK_SECONDS, 730 * DAY_SECONDS)
    open_n = size // 2
    decided = size - open_n
    recent_n = decided * 7 // 90
    return Shape(open_n, recent_n, decided - recent_n, 90 * DAY_SECONDS, 83 * DAY_SECONDS)


# i = 1..open_n: open; then recent_n decided within the week; then old_n decided
# before it. Severity, status and decision cycle with i; time to decision is between
# 0 and 48 hours. Ids are derived from i, so the benchmark can name one, and ascend
# with it, so the primary key is filled in order (much faster than random uuid4s).
SEED_REVIEWS = """
INSERT INTO reviews (id, apv_id, apv_code, cve_id, severity, source, package_name,
    package_version, package_ecosystem, patch, confidence, anomaly_score, cvss_score,
    payload_sha256, status, created_at, decided_at)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'APV-BENCH-' || i, 'APV-BENCH-' || i,
    'CVE-2024-' || (10000 + i %% 50000),
    (ARRAY['critical', 'high', 'medium', 'low'])[1 + i %% 4], 'bench',
    'package-' || (i %% 500), '1.0.' || (i %% 10), 'npm',
    '--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n', 0.9, 0.8,
    (ARRAY[9.5, 7.5, 5.0, 2.0])[1 + i %% 4], md5('payload' || i),
    t.status, t.created_at, t.decided_at
FROM generate_series(1::bigint, %(total)s) AS i
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN i <= %(open_n)s THEN
            CASE WHEN i %% 10 = 0 THEN 'escalated' ELSE 'pending' END
        ELSE (ARRAY['approved', 'rejected', 'modified'])[1 + i %% 3] END AS status,
        CASE
        WHEN i <= %(open_n)s THEN NULL
        WHEN i <= %(open_n)s + %(recent_n)s THEN
            now() - ((i - %(open_n)s) * %(week)s / (%(recent_n)s + 1.0)) * interval '1 second'
        ELSE now() - (%(week)s + 3600
            + (i - %(open_n)s - %(recent_n)s) * %(old_span)s / (%(old_n)s + 1.0))
            * interval '1 second' END AS decided_at
) d
CROSS JOIN LATERAL (
    SELECT d.status, d.decided_at, CASE
        WHEN i <= %(open_n)s THEN
            now() - (i * %(open_span)s / (%(open_n)s + 1.0)) * interval '1 second'
        ELSE d.decided_at - ((i * 7919) %% 172800) * interval '1 second' END AS created_at
) t
"""

# One decision record per decided review, and one escalation per escalated one.
SEED_DECISIONS = """
INSERT INTO review_decisions (review_id, decision, reviewer, justification,
    modifications, from_status, to_status, decided_at)
SELECT id,
    CASE status WHEN 'approved' THEN 'approve' WHEN 'rejected' THEN 'reject'
        WHEN 'modified' THEN 'modify' ELSE 'escalate' END,
    'bench-reviewer', 'seeded by the benchmark',
    CASE WHEN status = 'modified' THEN '{"patch": "x"}'::jsonb END,
    'pending', status, coalesce(decided_at, created_at + interval '1 minute')
FROM reviews WHERE status <> 'pending'
ORDER BY coalesce(decided_at, created_at + interval '1 minute')
"""


def review_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012x}"


@contextmanager
def connect(dsn: str) -> Iterator[Any]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        yield conn
    finally:
        conn.close()


# The seeded tables' indexes that back no constraint: dropped while seeding and
# recreated from their own definitions after, since building an index once is much
# faster than a million inserts into it.
SECONDARY_INDEXES = """
SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i
WHERE i.indrelid IN ('reviews'::regclass, 'review_decisions'::regclass)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
"""


def seed(dsn: str, shape: Shape) -> dict[str, float]:
    timings = {}
    params = {
        "total": shape.open_n + shape.recent_n + shape.old_n,
        "open_n": shape.open_n,
        "recent_n": shape.recent_n,
        "old_n": shape.old_n,
        "open_span": shape.open_span,
        "old_span": shape.old_span,
        "week": WEEK_SECONDS,
    }
    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET synchronous_commit = off")
        cur.execute("SET maintenance_work_mem = '256MB'")
        # Skips the foreign-key check of each seeded decision (one lookup per row):
        # every review_id comes from the reviews just inserted.
        cur.execute("SET session_replication_role = replica")
        cur.execute(SECONDARY_INDEXES)
        indexes = cur.fetchall()
        for name, _ in indexes:
            cur.execute(f"DROP INDEX {name}")
        steps = [("reviews", SEED_REVIEWS, params), ("review_decisions", SEED_DECISIONS, None)]
        steps += [(f"index {name}", definition, None) for name, definition in indexes]
        steps.append(("vacuum_analyze", "VACUUM ANALYZE reviews, review_decisions", None))
        for step, sql, args in steps:
            started = time.perf_counter()
            cur.execute(sql, args)
            timings[step] = round(time.perf_counter() - started, 1)
    return timings


def explain_stats(dsn: str, window: int) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the stats query: the indexes and tables it read."""
    from service.storage.reviews import STATS_SQL

    with connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + STATS_SQL, {"window": window})
        plan = cur.fetchone()[0][0]
    indexes: set[str] = set()
    seq_scans: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            indexes.add(f"{node['Node Type']} {node['Index Name']}")
        if node["Node Type"] == "Seq Scan":
            seq_scans.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return {
        "execution_ms": round(plan["Execution Time"], 2),
        "indexes": sorted(indexes),
        "seq_scans": sorted(seq_scans),
    }


@asynccontextmanager
async def seeded_database(
    size: int, kind: str
) -> AsyncIterator[tuple[str, Shape, dict[str, float]]]:
    """A throwaway database, migrated and seeded with ``size`` reviews; dropped after."""
    from service.storage.migrate import apply_migrations, create_database, drop_database

    shape = shape_for(kind, size)
    dsn = f"{PG_BASE}/hitl_bench_queue_{uuid.uuid4().hex[:12]}"
    await create_database(dsn)
    try:
        await apply_migrations(dsn)
        yield dsn, shape, seed(dsn, shape)
    finally:
        await drop_database(dsn)


@asynccontextmanager
async def running_app(dsn: str, keys_file: Path) -> AsyncIterator[str]:
    """The app on an aiohttp test server in this process; its base URL."""
    from aiohttp.test_utils import TestServer

    from service.app import create_app
    from service.config import Settings, telemetry_settings
    from tests.benchmarks.procs import free_port

    settings = Settings(
        database_url=dsn,
        # Nothing listens there: every cache read misses and every call reaches
        # PostgreSQL, as while Redis is down.
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        api_keys_file=keys_file,
        telemetry=telemetry_settings(
            log_format="json", log_level="ERROR", otel_env={"OTEL_SDK_DISABLED": "true"}
        ),
    )
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


def calls_for(shape: Shape) -> dict[str, str]:
    # A decided review from the middle of the history (or of the week when there is
    # no history): read with its decision record.
    middle = shape.open_n + (shape.recent_n + shape.old_n) // 2
    return {
        "GET /api/reviews?limit=20": "/api/reviews?limit=20",
        "GET /api/reviews?status=pending&severity=high&limit=20": (
            "/api/reviews?status=pending&severity=high&limit=20"
        ),
        "GET /api/reviews/{id}": f"/api/reviews/{review_id(middle)}",
        "GET /api/reviews/stats": "/api/reviews/stats",
    }


async def get_ms(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.get(url) as resp:
        body = await resp.read()
    elapsed = (time.perf_counter() - started) * 1000
    assert resp.status == 200, (url, resp.status, body[:500])
    return elapsed


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from service.auth import append_key, new_key
    from service.config import Settings

    sizes = [int(s) for s in args.sizes.split(",")]
    async with AsyncExitStack() as stack:
        databases = [
            await stack.enter_async_context(seeded_database(size, args.shape)) for size in sizes
        ]
        keys_file = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "api-keys.json"
        key, entry = new_key("bench-viewer", ["viewer"])
        append_key(keys_file, entry)
        bases = [
            await stack.enter_async_context(running_app(dsn, keys_file)) for dsn, _, _ in databases
        ]
        session = await stack.enter_async_context(
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
        )
        calls = [calls_for(shape) for _, shape, _ in databases]
        for base, paths in zip(bases, calls, strict=True):
            for path in paths.values():
                await get_ms(session, base.rstrip("/") + path)  # warm-up
        # Round-robin: each round times every call at every size in turn, so a busy
        # moment of the shared machine falls on both sizes alike.
        samples: list[dict[str, list[float]]] = [{name: [] for name in c} for c in calls]
        for _ in range(args.repeat):
            for name in calls[0]:
                for base, paths, out in zip(bases, calls, samples, strict=True):
                    out[name].append(await get_ms(session, base.rstrip("/") + paths[name]))
        window = Settings().stats_window_seconds
        runs: list[dict[str, Any]] = [
            {
                "size": size,
                "shape": shape.__dict__,
                "seed_seconds": seeded,
                "calls": {
                    name: {
                        "best_ms": round(min(values), 2),
                        "median_ms": round(statistics.median(values), 2),
                    }
                    for name, values in out.items()
                },
                "stats_plan": explain_stats(dsn, window),
            }
            for size, (dsn, shape, seeded), out in zip(sizes, databases, samples, strict=True)
        ]
    stats_ratio = (
        runs[-1]["calls"]["GET /api/reviews/stats"]["best_ms"]
        / runs[0]["calls"]["GET /api/reviews/stats"]["best_ms"]
    )
    return {
        "shape": args.shape,
        "repeat": args.repeat,
        "runs": runs,
        "stats_ratio_best": round(stats_ratio, 2),
        "target_ratio": TARGET_RATIO,
        "target_met": stats_ratio <= TARGET_RATIO,
    }


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    first, last = runs[0], runs[-1]
    head = " | ".join(f"{r['size']:,} best / median" for r in runs)
    lines = [
        f"| call | {head} | ratio {last['size']:,} / {first['size']:,} (best) |",
        "|---|" + "---|" * len(runs) + "---|",
    ]
    for call in first["calls"]:
        cells = " | ".join(
            f"{r['calls'][call]['best_ms']:.1f} / {r['calls'][call]['median_ms']:.1f} ms"
            for r in runs
        )
        ratio = last["calls"][call]["best_ms"] / first["calls"][call]["best_ms"]
        lines.append(f"| `{call}` | {cells} | {ratio:.2f}x |")
    lines.append("")
    for r in runs:
        plan = r["stats_plan"]
        lines.append(
            f"- {r['size']:,} ({r['shape']['open_n']:,} open, {r['shape']['recent_n']:,}"
            f" decided in the window, {r['shape']['old_n']:,} before it): seeded in"
            f" {sum(r['seed_seconds'].values()):.0f} s (with VACUUM ANALYZE); stats query"
            f" {plan['execution_ms']:.1f} ms in EXPLAIN ANALYZE, reading"
            f" {', '.join(plan['indexes']) or 'no index'}"
            + (f"; sequential scans of {', '.join(plan['seq_scans'])}" if plan["seq_scans"] else "")
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,1000000", help="comma-separated review counts")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per endpoint")
    parser.add_argument("--shape", choices=("history", "uniform"), default="history")
    parser.add_argument("--markdown", action="store_true", help="print a table, not JSON")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
