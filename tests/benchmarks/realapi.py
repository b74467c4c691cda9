"""The real API under load (item 3) and the soak (item 5), against ``hitl-api serve``.

The service runs as it is deployed: the venv's ``hitl-api`` console script, a
throwaway database on the shared PostgreSQL (created with ``hitl-api createdb`` and
``migrate``, dropped at the end), Redis under a key prefix of its own (deleted at the
end), an API key made with ``hitl-api keys add``, JSON logs to a file, and every
request traced (the default ``parentbased_always_on``) and exported to the sink.
Load comes from openloop.py in its own process at fixed arrival rates.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .openloop import Spec, Stream
from .procs import PYTHON, Processes, cpu_seconds, free_port, proc_status, wait_for_http

PG_BASE = os.environ.get("HITL_BENCH_PG", "postgresql://postgres@127.0.0.1:5432")
REDIS_URL = os.environ.get("HITL_BENCH_REDIS", "redis://127.0.0.1:6379/0")
HITL_API = str(Path(PYTHON).with_name("hitl-api"))

# Item 3's rates (requests/s), in the issue's order.
ROUTE_RATES = {"cached_read": 200.0, "list": 100.0, "submit": 100.0, "decide": 30.0}
# The soak's 100/s: mostly reads, a quarter writes, a few decisions.
SOAK_RATES = {"cached_read": 50.0, "list": 20.0, "submit": 25.0, "decide": 5.0}
CACHED_IDS = 20  # the cached-read target set, each fetched once before a run
GENERAL_REVIEWS = 200  # what the list pages through: pending and decided


@dataclass(frozen=True)
class Api:
    base_url: str
    key: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int


def child_env(**extra: str) -> dict[str, str]:
    """The caller's environment without OTEL_* and HITL_*: only what we set counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "HITL_"))}
    env.update(extra)
    return env


def _cli(procs: Processes, env: dict[str, str], *args: str) -> str:
    return procs.run([HITL_API, *args], env=env, timeout=120).strip()


def _delete_redis_keys(prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


def _drop_database(url: str) -> None:
    """Drop the run's database (plain psycopg2: the clean-up must not depend on the
    service's code importing, which may be mid-edit)."""
    import psycopg2
    from psycopg2 import sql

    name = url.rsplit("/", 1)[1]
    conn = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
    try:
        conn.autocommit = True  # DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        conn.close()


@contextlib.contextmanager
def hitl_api(
    procs: Processes,
    run_dir: Path,
    sink: str,
    commit: str,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Api]:
    """``hitl-api serve`` on a free port with its own database and Redis prefix;
    ``extra_env`` adds or overrides variables (e.g. OTEL_SDK_DISABLED, to compare)."""
    run = uuid.uuid4().hex[:10]
    database_url = f"{PG_BASE}/hitl_bench_{run}"
    prefix = f"hitl-bench:{run}:"
    port = free_port()
    env = child_env(
        HITL_HOST="127.0.0.1",
        HITL_PORT=str(port),
        HITL_DATABASE_URL=database_url,
        HITL_REDIS_URL=REDIS_URL,
        HITL_REDIS_KEY_PREFIX=prefix,
        HITL_API_KEYS_FILE=str(run_dir / "api-keys.json"),
        HITL_LOG_FORMAT="json",
        HITL_LOG_LEVEL="INFO",
        HITL_ENVIRONMENT="bench",
        HITL_BUILD_COMMIT=commit,
        OTEL_EXPORTER_OTLP_ENDPOINT=sink,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
    )
    env.update(extra_env or {})
    log_path = run_dir / "hitl-api.log"
    created = False
    try:
        _cli(procs, env, "createdb")
        created = True
        _cli(procs, env, "migrate")
        key = _cli(procs, env, "keys", "add", "bench", "--roles", "producer,reviewer,viewer")
        with log_path.open("wb") as log, (run_dir / "hitl-api.err").open("wb") as err:
            proc = procs.start([HITL_API, "serve"], env=env, stdout=log, stderr=err)
        try:
            wait_for_http(f"http://127.0.0.1:{port}/api/health/ready", proc)
            yield Api(f"http://127.0.0.1:{port}", key, proc, log_path, port)
        finally:
            procs.stop(proc)
    finally:
        if created:
            _drop_database(database_url)
        _delete_redis_keys(prefix)


# -- seeding ------------------------------------------------------------------------


def submission(apv_id: str) -> dict[str, Any]:
    """A valid APV (the README's example), unique by ``apv_id``."""
    return {
        "apv_id": apv_id,
        "apv_code": f"APV-{apv_id}",
        "cve_id": "CVE-2024-12345",
        "severity": "high",
        "source": "bench",
        "package": {"name": "openssl", "version": "3.0.7", "ecosystem": "debian"},
        "patch": "--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n",
        "confidence": 0.92,
        "anomaly_score": 0.81,
        "cvss_score": 7.5,
    }


DECISIONS_FOR_SEEDING = (
    {"decision": "approve"},
    {"decision": "reject", "justification": "not exploitable here"},
    {"decision": "escalate", "justification": "needs the crypto team"},
    {"decision": "modify", "justification": "narrower patch", "modifications": {"patch": "x"}},
)


async def _gather_limited(jobs: list[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(job: Any) -> Any:
        async with gate:
            return await job

    return list(await asyncio.gather(*(one(job) for job in jobs)))


async def _post(session: aiohttp.ClientSession, path: str, body: dict[str, Any]) -> Any:
    async with session.post(path, json=body) as response:
        if response.status not in (200, 201):
            raise RuntimeError(f"seeding: POST {path} -> {response.status} {await response.text()}")
        return await response.json()


@dataclass
class Seeded:
    cached_ids: list[str]
    pending_ids: list[str]


async def seed(api: Api, pending: int) -> Seeded:
    """Reviews to list (a quarter of them decided), ``pending`` more to decide later."""
    headers = {"Authorization": f"Bearer {api.key}"}
    async with aiohttp.ClientSession(api.base_url, headers=headers) as session:
        general = await _gather_limited(
            [
                _post(session, "/api/reviews", submission(f"seed-{n}"))
                for n in range(GENERAL_REVIEWS)
            ]
        )
        to_decide = general[: GENERAL_REVIEWS // 4]
        await _gather_limited(
            [
                _post(session, f"/api/reviews/{r['id']}/decision", DECISIONS_FOR_SEEDING[i % 4])
                for i, r in enumerate(to_decide)
            ]
        )
        queue = await _gather_limited(
            [_post(session, "/api/reviews", submission(f"queue-{n}")) for n in range(pending)]
        )
    # Read targets span decided and pending reviews; none of them is decided later.
    cached = [r["id"] for r in general[:: GENERAL_REVIEWS // CACHED_IDS]][:CACHED_IDS]
    return Seeded(cached_ids=cached, pending_ids=[r["id"] for r in queue])


async def warm_cache(api: Api, ids: list[str]) -> None:
    """Fetch each read target once, so the timed reads are cache hits."""
    headers = {"Authorization": f"Bearer {api.key}"}
    async with aiohttp.ClientSession(api.base_url, headers=headers) as session:
        for review_id in ids:
            async with session.get(f"/api/reviews/{review_id}") as response:
                response.raise_for_status()
                await response.read()


# -- scenarios ----------------------------------------------------------------------


class PendingPool:
    """Pending review ids handed out once each: a decided review cannot be decided
    again (409), so every decision of every run needs a fresh one."""

    def __init__(self, ids: list[str]) -> None:
        self._ids = list(ids)

    def take(self, count: int) -> list[str]:
        if count > len(self._ids):
            raise RuntimeError(
                f"seeded too few pending reviews: need {count}, have {len(self._ids)}"
            )
        taken, self._ids = self._ids[:count], self._ids[count:]
        return taken


def needed_decisions(rate: float, seconds: float) -> int:
    return math.floor(rate * seconds) + 1


def streams(
    rates: dict[str, float], seeded: Seeded, pool: PendingPool, seconds: float, tag: str
) -> list[Stream]:
    """One openloop stream per route in ``rates``, over ``seconds`` (warm-up included)."""
    made = {
        "cached_read": lambda r: Stream(
            "cached_read", r, "GET", [f"/api/reviews/{i}" for i in seeded.cached_ids]
        ),
        "list": lambda r: Stream("list", r, "GET", ["/api/reviews?limit=20"]),
        "submit": lambda r: Stream(
            "submit", r, "POST", ["/api/reviews"], submission(f"{tag}-{{n}}")
        ),
        "decide": lambda r: Stream(
            "decide",
            r,
            "POST",
            [f"/api/reviews/{i}/decision" for i in pool.take(needed_decisions(r, seconds))],
            {"decision": "approve"},
        ),
    }
    return [made[name](rate) for name, rate in rates.items()]


def run_openloop(
    procs: Processes, run_dir: Path, name: str, spec: Spec, api: Api, *, sample: bool = False
) -> dict[str, Any]:
    """openloop.py in its own process, then the server's CPU time per request over
    the whole run (warm-up included); with ``sample``, the server's RSS and fds every
    second while the load runs (the soak)."""
    spec_path = run_dir / f"openloop-{name}.json"
    spec_path.write_text(json.dumps(spec.to_json()))
    out_path = run_dir / f"openloop-{name}.out.json"
    cpu_before = cpu_seconds(api.proc.pid)
    with out_path.open("wb") as out:
        proc = procs.start([PYTHON, "-m", "tests.benchmarks.openloop", str(spec_path)], stdout=out)
        limit = spec.warmup + spec.seconds + 60
        samples = _sample_while_running(proc, api if sample else None, limit)
        procs.stop(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"openloop {name} exited with {proc.returncode}")
    # A backlog left by an overloaded scenario must not be charged to the next one.
    settle(api)
    sent = sum(math.floor(s.rate * (spec.warmup + spec.seconds)) for s in spec.streams)
    result: dict[str, Any] = json.loads(out_path.read_text())
    result["server_cpu_ms_per_request"] = 1000 * (cpu_seconds(api.proc.pid) - cpu_before) / sent
    if samples:
        result["samples"] = samples
    return result


def settle(api: Api, timeout: float = 120.0) -> None:
    """Until the readiness probe (a PostgreSQL and a Redis ping, so it queues behind
    requests waiting for a pool connection) answers within 50 ms three times running."""
    import urllib.request

    deadline = time.monotonic() + timeout
    quick = 0
    while quick < 3 and time.monotonic() < deadline:
        started = time.monotonic()
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{api.base_url}/api/health/ready", timeout=10),
        ):
            pass
        quick = quick + 1 if time.monotonic() - started < 0.05 else 0
        time.sleep(0.2)


def _sample_while_running(
    proc: subprocess.Popen[bytes], server: Api | None, limit_s: float
) -> list[dict[str, float]]:
    started = time.monotonic()
    samples: list[dict[str, float]] = []
    while proc.poll() is None and time.monotonic() - started < limit_s:
        if server is not None:
            samples.append(
                {"t": time.monotonic() - started, **server_fds(server.proc.pid, server.port)}
            )
        time.sleep(1.0)
    return samples


def server_fds(pid: int, port: int) -> dict[str, float]:
    """RSS and fds of the server; ``other_fds`` leaves out the client connections,
    whose number follows the load's concurrency at that instant, not a leak."""
    status = proc_status(pid)
    clients = _client_socket_inodes(port)
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    client_fds = sum(1 for link in links if link in clients)
    return {
        "rss_kib": status["rss_kib"],
        "fds": len(links),
        "client_fds": client_fds,
        "other_fds": len(links) - client_fds,
    }


def _client_socket_inodes(port: int) -> set[str]:
    """``socket:[inode]`` of every established connection whose local end is the
    server's port: the accepted client connections (read from /proc/net, as ss does)."""
    local_port = f"{port:04X}"
    inodes = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            established = fields[3] == "01"
            if established and fields[1].rsplit(":", 1)[1] == local_port:
                inodes.add(f"socket:[{fields[9]}]")
    return inodes


def spans_health(api: Api) -> dict[str, float]:
    """telemetry's own counters of dropped spans and failed exports, from /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"{api.base_url}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    wanted = {
        "hitl_tracing_spans_dropped_total": "spans_dropped",
        "hitl_tracing_export_failures_total": "export_failures",
    }
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            found[wanted[name]] = float(value)
    return found


@dataclass(frozen=True)
class ApiOptions:
    seconds: float = 15.0
    warmup: float = 2.0
    soak_seconds: float = 60.0
    soak_warmup: float = 10.0
    soak: bool = True
    api: bool = True


def pending_needed(options: ApiOptions) -> int:
    total = 0
    if options.api:
        per_run = needed_decisions(ROUTE_RATES["decide"], options.warmup + options.seconds)
        total += 2 * per_run  # alone, then mixed
    if options.soak:
        total += needed_decisions(SOAK_RATES["decide"], options.soak_warmup + options.soak_seconds)
    return total + 10


def run_scenarios(
    api: Api, seeded: Seeded, run_dir: Path, procs: Processes, options: ApiOptions
) -> dict[str, Any]:
    """Each route alone at its rate, then all four together; then the soak."""
    pool = PendingPool(seeded.pending_ids)
    results: dict[str, Any] = {}

    def spec(rates: dict[str, float], seconds: float, warmup: float, tag: str) -> Spec:
        return Spec(
            base_url=api.base_url,
            headers={"Authorization": f"Bearer {api.key}"},
            streams=streams(rates, seeded, pool, warmup + seconds, tag),
            seconds=seconds,
            warmup=warmup,
        )

    if options.api:
        for route, rate in ROUTE_RATES.items():
            asyncio.run(warm_cache(api, seeded.cached_ids))
            alone = spec({route: rate}, options.seconds, options.warmup, f"alone-{route}")
            results[f"alone:{route}"] = run_openloop(procs, run_dir, f"alone-{route}", alone, api)
        asyncio.run(warm_cache(api, seeded.cached_ids))
        mixed = spec(ROUTE_RATES, options.seconds, options.warmup, "mixed")
        results["mixed"] = run_openloop(procs, run_dir, "mixed", mixed, api)
    if options.soak:
        asyncio.run(warm_cache(api, seeded.cached_ids))
        soak = spec(SOAK_RATES, options.soak_seconds, options.soak_warmup, "soak")
        results["soak"] = run_openloop(procs, run_dir, "soak", soak, api, sample=True)
    results["tracing"] = spans_health(api)
    return results
