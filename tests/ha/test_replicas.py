"""Three replicas of hitl-api on one PostgreSQL and one Redis, behind HAProxy.

What a second and third replica must not break: a decision is seen by every replica at
once (one shared cache, invalidated on write), every final decision is notified exactly
once although three outbox workers poll the same table, and at least once when the
worker holding it dies; losing a replica under load costs no request once HAProxy's
health check has noticed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest

from tests.prom import parse_exposition
from tests.service.helpers import sql, submission

from .conftest import LEASE_SECONDS, Cluster, Replica

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
        duplicates = sum(n - 1 for n in per_review.values())
        assert duplicates <= count
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
    failed = [(sent, outcome) for sent, _, outcome in results if outcome != 200]
    before_noticed = [f for f in failed if f[0] < down]
    after_noticed = [f for f in failed if f[0] >= down]
    bound = CHECK_INTER_SECONDS * CHECK_FALL + CHECK_TIMEOUT_SECONDS + SCHEDULING_SLACK_SECONDS
    print(
        f"\nkill under load: {len(results)} requests, HAProxy marked {victim.name} DOWN "
        f"{detection:.2f}s after SIGKILL (bound {bound:.1f}s); failed before: "
        f"{len(before_noticed)}, after: {len(after_noticed)} {Counter(o for _, o in failed)}"
    )
    assert len(results) == rate * duration
    assert detection <= bound, detection
    assert after_noticed == [], after_noticed
    cluster.restart(victim)
