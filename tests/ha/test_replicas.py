"""Three replicas of hitl-api on one PostgreSQL and one Redis, behind HAProxy.

What a second and third replica must not break: a decision is seen by every replica at
once (one shared cache, invalidated on write), every final decision is notified exactly
once although three outbox workers poll the same table, and at least once when the
worker holding it dies; losing a replica under load costs no request once HAProxy's
health check has noticed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, require_tool
from tests.ops.conftest import OPS, Processes, fast_rule_files
from tests.prom import parse_exposition
from tests.service.helpers import sql, submission

from .conftest import LEASE_SECONDS, LOOPBACK, Cluster, Replica, render

SLO_YML = OPS / "slo.yml"

pytestmark = pytest.mark.slow

# HAProxy's check of the template: `inter 1s fall 2` (+ `timeout check 1s`).
CHECK_INTER_SECONDS = 1.0
CHECK_FALL = 2
CHECK_TIMEOUT_SECONDS = 1.0
# A loaded 2-core CI machine delays a check by this much at worst (observed, generous).
SCHEDULING_SLACK_SECONDS = 1.5


async def submit(session: aiohttp.ClientSession, cluster: Cluster, base: str) -> str:
    async with session.post(
        f"{base}/api/reviews", json=submission(), headers=cluster.headers("producer")
    ) as response:
        assert response.status == 201, await response.text()
        return str((await response.json())["id"])


async def decide(
    session: aiohttp.ClientSession, cluster: Cluster, base: str, review_id: str, decision: str
) -> dict[str, Any]:
    async with session.post(
        f"{base}/api/reviews/{review_id}/decision",
        json={"decision": decision, "justification": "checked on every replica"},
        headers=cluster.headers("reviewer"),
    ) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def get_review(
    session: aiohttp.ClientSession, cluster: Cluster, base: str, review_id: str
) -> dict[str, Any]:
    async with session.get(
        f"{base}/api/reviews/{review_id}", headers=cluster.headers("viewer")
    ) as response:
        assert response.status == 200, await response.text()
        return dict(await response.json())


async def poll_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def undelivered(cluster: Cluster, review_ids: set[str]) -> int:
    rows = await sql(
        cluster.database_url,
        "SELECT count(*) FROM webhook_outbox WHERE review_id::text = ANY(%s)"
        " AND delivered_at IS NULL",
        (list(review_ids),),
    )
    return int(rows[0][0])


async def delivered_by(session: aiohttp.ClientSession, replica: Replica) -> float:
    async with session.get(f"{replica.url}/metrics") as response:
        text = await response.text()
    return parse_exposition(text).value("hitl_webhook_deliveries_total", result="delivered")


async def test_a_decision_through_one_replica_is_seen_at_once_by_the_others(
    three_up: Cluster,
) -> None:
    """Each replica in turn decides a review that the two others have just read (and so
    cached as pending); right after the decision, both read the decided review."""
    cluster = three_up
    async with aiohttp.ClientSession() as session:
        for deciding in cluster.replicas:
            others = [r for r in cluster.replicas if r is not deciding]
            review_id = await submit(session, cluster, deciding.url)
            for other in others:  # warm every replica's view of the pending review
                for _ in range(2):
                    assert (await get_review(session, cluster, other.url, review_id))[
                        "status"
                    ] == "pending"
            decided = await decide(session, cluster, deciding.url, review_id, "approve")
            assert decided["status"] == "approved"
            for other in others:
                seen = await get_review(session, cluster, other.url, review_id)
                assert seen["status"] == "approved", (deciding.name, other.name, seen)
                assert seen["decided_at"] == decided["decided_at"], seen
                assert [d["decision"] for d in seen["decisions"]] == ["approve"], seen


async def test_every_final_decision_is_delivered_exactly_once_by_three_workers(
    three_up: Cluster,
) -> None:
    """30 decisions made through HAProxy (so on all three replicas): the three outbox
    workers lease the same table (FOR UPDATE SKIP LOCKED) and deliver each once."""
    cluster = three_up
    count = 30
    async with aiohttp.ClientSession() as session:
        before = {r.name: await delivered_by(session, r) for r in cluster.replicas}
        ids = [await submit(session, cluster, cluster.lb_url) for _ in range(count)]
        await asyncio.gather(*(
            decide(session, cluster, cluster.lb_url, rid, ("approve", "reject")[i % 2])
            for i, rid in enumerate(ids)
        ))
        wanted = set(ids)

        async def all_delivered() -> bool:
            return await undelivered(cluster, wanted) == 0

        await poll_until(all_delivered, 20, "every outbox row marked delivered")
        arrivals = cluster.receiver.for_reviews(wanted)
        per_review = Counter(a.review_id for a in arrivals)
        assert set(per_review) == wanted
        duplicates = {rid: n for rid, n in per_review.items() if n > 1}
        assert not duplicates, f"delivered more than once: {duplicates}"
        # The work really was shared: the receiver saw more than one replica, and each
        # replica's own counter agrees with what the receiver saw from it.
        senders = Counter(a.replica for a in arrivals)
        assert len(senders) >= 2, senders
        for replica in cluster.replicas:
            moved = await delivered_by(session, replica) - before[replica.name]
            assert moved == senders.get(replica.name, 0), (replica.name, moved, senders)
    print(f"\nexactly-once: {count} decisions, deliveries per replica {dict(senders)}")


async def test_a_killed_lease_holder_loses_no_decision(three_up: Cluster) -> None:
    """With a slow receiver (deliveries in flight), SIGKILL the replica holding the most
    leases: once its leases run out (LEASE_SECONDS) the others deliver its rows, so
    every decision arrives at least once; the duplicates are the deliveries that had
    reached the receiver when the sender died."""
    cluster = three_up
    receiver = cluster.receiver
    count = 12
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, cluster, cluster.lb_url) for _ in range(count)]
        wanted = set(ids)
        receiver.delay = 2.0
        try:
            await asyncio.gather(*(
                decide(session, cluster, cluster.lb_url, rid, "approve") for rid in ids
            ))

            async def some_in_flight() -> bool:
                return len([a for a in receiver.in_flight() if a.review_id in wanted]) >= 3

            await poll_until(some_in_flight, 10, "deliveries in flight at the receiver")
            holding = Counter(a.replica for a in receiver.in_flight() if a.review_id in wanted)
            victim = next(r for r in cluster.replicas if r.name == holding.most_common(1)[0][0])
            leased = await sql(
                cluster.database_url,
                "SELECT count(*) FROM webhook_outbox WHERE review_id::text = ANY(%s)"
                " AND delivered_at IS NULL AND leased_until > now()",
                (ids,),
            )
            assert int(leased[0][0]) > 0
            killed = time.monotonic()
            cluster.kill(victim)
            cut_off = {
                a.review_id for a in receiver.in_flight()
                if a.replica == victim.name and a.review_id in wanted
            }
            receiver.delay = 0.0
        finally:
            receiver.delay = 0.0

        async def all_delivered() -> bool:
            return await undelivered(cluster, wanted) == 0

        await poll_until(all_delivered, LEASE_SECONDS + 20, "every row delivered after the kill")
        recovered = time.monotonic() - killed
        arrivals = receiver.for_reviews(wanted)
        per_review = Counter(a.review_id for a in arrivals)
        assert set(per_review) == wanted, wanted - set(per_review)
        # What the victim had in flight was delivered again, by a survivor.
        for review_id in cut_off:
            assert any(
                a.replica != victim.name and a.answered is not None
                for a in arrivals if a.review_id == review_id
            ), review_id
        # Each delivery cut off by the kill had reached the receiver and is delivered
        # again (its row was never marked delivered): those are the duplicates.
        duplicates = sum(n - 1 for n in per_review.values())
        assert cut_off, "the victim had nothing in flight: the kill proved nothing"
        assert len(cut_off) <= duplicates <= count
    cluster.restart(victim)
    print(
        f"\nSIGKILL of {victim.name} holding {len(cut_off)} deliveries in flight: all {count} "
        f"delivered {recovered:.1f}s after the kill, {duplicates} duplicate(s)"
    )


async def test_killing_a_replica_under_load_fails_no_request_once_haproxy_noticed(
    three_up: Cluster,
) -> None:
    """50 GET/s through HAProxy for 10 s; one replica SIGKILLed at 3 s. HAProxy marks it
    DOWN within inter x fall (+ the check timeout and scheduling slack); from then on
    no request fails. Failures before that are counted (GET retries with redispatch
    usually hide them)."""
    cluster = three_up
    victim = cluster.replicas[-1]
    rate, duration, kill_at = 50, 10.0, 3.0
    results: list[tuple[float, float, int | str]] = []  # (sent, finished, status | error)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        review_id = await submit(session, cluster, cluster.lb_url)
        retried_before = cluster.retries()

        async def one() -> None:
            sent = time.monotonic()
            outcome: int | str
            try:
                async with session.get(
                    f"{cluster.lb_url}/api/reviews/{review_id}", headers=cluster.headers("viewer")
                ) as response:
                    await response.read()
                    outcome = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = type(exc).__name__
            results.append((sent, time.monotonic(), outcome))

        async def watch_down() -> float:
            return await asyncio.to_thread(cluster.wait_for_status, victim, "DOWN", 15)

        start = time.monotonic()
        tasks = []
        killed = down = None
        watcher = None
        for n in range(int(rate * duration)):
            due = start + n / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if killed is None and due - start >= kill_at:
                watcher = asyncio.create_task(watch_down())
                killed = await asyncio.to_thread(cluster.kill, victim)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        assert killed is not None and watcher is not None
        down = await watcher
    detection = down - killed
    retried = [after - before for after, before in zip(cluster.retries(), retried_before, strict=True)]
    failed = [(sent, outcome) for sent, _, outcome in results if outcome != 200]
    before_noticed = [f for f in failed if f[0] < down]
    after_noticed = [f for f in failed if f[0] >= down]
    bound = CHECK_INTER_SECONDS * CHECK_FALL + CHECK_TIMEOUT_SECONDS + SCHEDULING_SLACK_SECONDS
    print(
        f"\nkill under load: {len(results)} requests, HAProxy marked {victim.name} DOWN "
        f"{detection:.2f}s after SIGKILL (bound {bound:.1f}s); failed before: "
        f"{len(before_noticed)}, after: {len(after_noticed)} {Counter(o for _, o in failed)}; "
        f"HAProxy retried {retried[0]}, redispatched {retried[1]}"
    )
    assert len(results) == rate * duration
    assert detection <= bound, detection
    assert after_noticed == [], after_noticed
    cluster.restart(victim)


# -- aggregation: a real Prometheus scraping the three --------------------------------


def start_prometheus(cluster: Cluster, processes: Processes, directory: Path) -> str:
    """Prometheus with the stack's rendered config: the replicas discovered from a
    file_sd file as `make stack REPLICAS=3` writes it, 1 s scrapes and evaluations."""
    binary = require_tool("prometheus")
    targets = directory / "hitl-api-targets.json"
    ports = [r.port for r in cluster.replicas]
    targets.write_text(json.dumps(render.file_sd_targets(ports)))
    config = render.prometheus_config(
        {"hitl-api": render.replica_targets(ports)},
        f"{LOOPBACK}:{free_port()}",  # no Alertmanager: alerts are read from ALERTS
        rule_files=fast_rule_files(directory),
        scrape_interval="1s",
        evaluation_interval="1s",
    )
    config = render.use_file_sd(config, "hitl-api", targets)
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    processes.start(
        "prometheus",
        [binary, f"--config.file={path}", f"--storage.tsdb.path={directory / 'data'}",
         f"--web.listen-address={LOOPBACK}:{port}"],
        ready_url=f"http://{LOOPBACK}:{port}/-/ready",
        timeout=30,
    )
    return f"http://{LOOPBACK}:{port}"


async def query(
    session: aiohttp.ClientSession, prometheus: str, expr: str, at: float | None = None
) -> list[dict[str, Any]]:
    params = {"query": expr, **({"time": repr(at)} if at is not None else {})}
    async with session.get(f"{prometheus}/api/v1/query", params=params) as response:
        body = await response.json()
        assert response.status == 200, body
        return list(body["data"]["result"])


def per_instance(result: list[dict[str, Any]]) -> dict[str, float]:
    """Sum a raw result's series (one per endpoint, method, ...) per instance."""
    sums: dict[str, float] = {}
    for series in result:
        instance = series["metric"]["instance"]
        sums[instance] = sums.get(instance, 0.0) + float(series["value"][1])
    return sums


@dataclass(frozen=True)
class Aggregate:
    """A recording rule and how to rebuild its value from the per-instance raw series:
    the rate of ``total`` (and of ``bad``: then the rule is the ratio bad / total)."""

    record: str
    total: str
    bad: str | None = None

    def from_instances(self, totals: dict[str, float], bads: dict[str, float]) -> float:
        if self.bad is None:
            return sum(totals.values())
        return sum(bads.values()) / sum(totals.values())


def slo_aggregates() -> list[Aggregate]:
    """From ops/slo.yml: each SLO's request rate and error ratio over 5 minutes, and
    the hand-written hitl.rules.yml request rate and error ratio."""
    slos = yaml.safe_load(SLO_YML.read_text())["slos"]
    api = 'http_requests_total{job="hitl-api",endpoint!~"/api/health.*|/metrics"}'
    errors = api.replace("}", ',status=~"5.."}')
    aggregates = []
    for slo in slos:
        aggregates.append(Aggregate(f'slo:sli_requests:rate5m{{slo="{slo["name"]}"}}', slo["total"]))
        aggregates.append(
            Aggregate(f'slo:sli_error:ratio_rate5m{{slo="{slo["name"]}"}}', slo["total"], slo["bad"])
        )
    aggregates.append(Aggregate("hitl:http_requests:rate5m", api))
    aggregates.append(Aggregate("hitl:http_error_ratio:rate5m", api, errors))
    return aggregates


async def compare(
    session: aiohttp.ClientSession, prometheus: str, aggregate: Aggregate
) -> tuple[float, float, dict[str, float]]:
    """(recorded, rebuilt from the instances, per-instance totals), both read at the
    recorded sample's own timestamp: the instant the rule was evaluated."""
    stamped = await query(session, prometheus, f"timestamp({aggregate.record})")
    assert len(stamped) == 1, (aggregate.record, stamped)  # one series: aggregated
    at = float(stamped[0]["value"][1])
    (recorded,) = await query(session, prometheus, aggregate.record, at)
    totals = per_instance(await query(session, prometheus, f"rate({aggregate.total}[5m])", at))
    bads = (
        per_instance(await query(session, prometheus, f"rate({aggregate.bad}[5m])", at))
        if aggregate.bad else {}
    )
    return float(recorded["value"][1]), aggregate.from_instances(totals, bads), totals


async def test_recording_rules_equal_the_sum_over_the_three_instances(
    three_up: Cluster, tmp_path: Path
) -> None:
    """A real Prometheus discovers the three replicas from the stack's file_sd file, each
    with its own `instance`; after traffic through HAProxy (successes and 5xx), every
    SLO recording rule of ops/slo.yml and the request/error rules of hitl.rules.yml
    equal the sum over the three instances' raw series. Killing one replica then raises
    InstanceDown for that instance alone, and no ServiceDown."""
    cluster = three_up
    processes = Processes(tmp_path)
    try:
        prometheus = start_prometheus(cluster, processes, tmp_path)
        async with aiohttp.ClientSession() as session:
            instances = {f"{LOOPBACK}:{r.port}" for r in cluster.replicas}

            async def three_targets_up() -> bool:
                up = await query(session, prometheus, 'up{job="hitl-api"} == 1')
                return {s["metric"]["instance"] for s in up} == instances

            await poll_until(three_targets_up, 20, "three distinct hitl-api instances up")

            # Every series the traffic moves exists on every replica before it is
            # scraped: a counter first seen at N has no rate until it moves again.
            review_id = await submit(session, cluster, cluster.lb_url)
            for replica in cluster.replicas:
                await get_review(session, cluster, replica.url, review_id)
                async with session.get(f"{replica.url}/api/_test/fail") as response:
                    assert response.status == 500

            async def first_requests_scraped() -> bool:
                failed = await query(
                    session, prometheus, 'http_requests_total{job="hitl-api",status="500"}'
                )
                return {s["metric"]["instance"] for s in failed} == instances

            await poll_until(first_requests_scraped, 15, "the first requests scraped")
            # ~3 s of traffic through HAProxy, so several scrapes see it move.
            for n in range(90):
                await get_review(session, cluster, cluster.lb_url, review_id)
                if n % 6 == 0:
                    async with session.get(f"{cluster.lb_url}/api/_test/fail") as response:
                        assert response.status == 500
                await asyncio.sleep(0.03)

            aggregates = slo_aggregates()
            checked: dict[str, tuple[float, float]] = {}
            mismatch: list[Any] = []

            async def rules_match_instances() -> bool:
                for aggregate in aggregates:
                    try:
                        recorded, rebuilt, totals = await compare(session, prometheus, aggregate)
                    except (AssertionError, ValueError) as exc:
                        mismatch[:] = [aggregate.record, "not recorded yet", repr(exc)[:300]]
                        return False
                    # Traffic reached all three, and the rule is their sum, not one's.
                    if set(totals) != instances or min(totals.values()) <= 0:
                        mismatch[:] = [aggregate.record, "not every instance has traffic", totals]
                        return False
                    if not math.isclose(recorded, rebuilt, rel_tol=1e-9, abs_tol=1e-12):
                        mismatch[:] = [aggregate.record, recorded, rebuilt, totals]
                        return False
                    checked[aggregate.record] = (recorded, rebuilt)
                return True

            try:
                await poll_until(rules_match_instances, 30, "rules equal to instance sums", 0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last mismatch: {mismatch}") from None
            assert checked['slo:sli_error:ratio_rate5m{slo="availability"}'][0] > 0

            # One replica down: InstanceDown names it (pending: its `for` is 1m); the
            # service-wide ServiceDown stays quiet while two replicas are up.
            victim = cluster.replicas[0]
            cluster.kill(victim)

            async def instance_down_pending() -> bool:
                alerts = await query(session, prometheus, 'ALERTS{alertname="InstanceDown"}')
                return [a["metric"]["instance"] for a in alerts] == [f"{LOOPBACK}:{victim.port}"]

            await poll_until(instance_down_pending, 15, "InstanceDown for the killed replica")
            assert await query(session, prometheus, 'ALERTS{alertname="ServiceDown"}') == []
            assert await query(session, prometheus, 'sum by (job) (up{job="hitl-api"})') != []
            cluster.restart(victim)
    finally:
        processes.stop_all()
    print("\naggregation: " + ", ".join(f"{k} = {v[0]:.4g}" for k, v in checked.items()))
