"""A decision that won is never lost to its client: the answer is built from what the
decision's own transaction read (no query after the commit), and a retry of the same
decision by the same reviewer, or with the same Idempotency-Key, is answered as the
original was (200, ``Idempotent-Replayed: true``) without writing, counting or
notifying anything twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg2
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict

from service.app import create_app
from service.config import Settings
from service.domain.ports import Decided, DecisionRequest, Notify
from service.keys import REVIEWS
from service.storage.migrate import create_database
from tests.conftest import Keys
from tests.prom import parse_exposition
from tests.service.conftest import MakeClient, ThrowawayPostgres
from tests.service.downstream import Downstream
from tests.service.helpers import assert_problem, decision_body, sql, submit

REPLAYED = "Idempotent-Replayed"
FINAL = {"approve": "approved", "reject": "rejected", "modify": "modified"}


async def post_decision(
    client: TestClient,
    review_id: str,
    body: dict[str, Any],
    headers: dict[str, str],
    key: str | None = None,
) -> ClientResponse:
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return await client.post(f"/api/reviews/{review_id}/decision", json=body, headers=headers)


async def decisions_counted(client: TestClient, decision: str) -> float:
    """review_decision_total for ``decision`` on the example APV's severity (high)."""
    m = parse_exposition(await (await client.get("/metrics")).text())
    labels = {"decision": decision, "severity": "high"}
    return m.value("review_decision_total", **labels) if m.has("review_decision_total", **labels) else 0


async def stored(database_url: str, review_id: str) -> list[tuple[Any, ...]]:
    return await sql(
        database_url,
        "SELECT decision, reviewer, to_status, idempotency_key FROM review_decisions"
        " WHERE review_id = %s ORDER BY id",
        (review_id,),
    )


async def outbox_count(database_url: str, review_id: str) -> int:
    rows = await sql(
        database_url, "SELECT count(*) FROM webhook_outbox WHERE review_id = %s", (review_id,)
    )
    return int(rows[0][0])


@pytest.fixture
async def notifying(
    make_client: MakeClient, downstream: tuple[Downstream, TestServer]
) -> tuple[TestClient, Downstream]:
    """An app that delivers final decisions to a test downstream."""
    receiver, server = downstream
    client = await make_client(decision_webhook_url=str(server.make_url("/decisions")))
    return client, receiver


# -- same reviewer, same decision --------------------------------------------------------


@pytest.mark.parametrize("decision", ["approve", "reject", "modify", "escalate"])
async def test_a_repeated_decision_is_replayed_not_refused(
    notifying: tuple[TestClient, Downstream], api_keys: Keys, database_url: str, decision: str
) -> None:
    """The same reviewer sending the same decision again (a retry after a lost answer)
    gets 200 with the original's body and `Idempotent-Replayed: true`; one record is
    stored, the metric counts one decision and the webhook receives one delivery."""
    client, receiver = notifying
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    first = await post_decision(client, rid, decision_body(decision), api_keys.auth("reviewer"))
    assert first.status == 200, await first.text()
    assert REPLAYED not in first.headers
    original = await first.json()

    for _ in range(2):
        again = await post_decision(client, rid, decision_body(decision), api_keys.auth("reviewer"))
        assert again.status == 200, await again.text()
        assert again.headers[REPLAYED] == "true"
        assert await again.json() == original

    target = FINAL.get(decision, "escalated")
    assert await stored(database_url, rid) == [(decision, "reviewer-bot", target, None)]
    assert await decisions_counted(client, decision) == 1
    final = decision != "escalate"
    assert await outbox_count(database_url, rid) == (1 if final else 0)
    if final:
        await receiver.wait_for(1)
        await asyncio.sleep(0.3)  # a second delivery would have had time to arrive
        assert [n["review_id"] for n in receiver.received] == [rid]
    # The replay left the cache true: a read shows the decided review.
    got = await client.get(f"/api/reviews/{rid}", headers=api_keys.auth("viewer"))
    assert (await got.json())["status"] == target


@pytest.mark.parametrize(
    ("role", "body"),
    [
        ("admin", {"decision": "reject", "justification": "because reject"}),  # another reviewer
        ("reviewer", {"decision": "reject", "justification": "another reason"}),
        ("reviewer", {"decision": "approve"}),  # another decision
        (
            "reviewer",
            {"decision": "reject", "justification": "because reject", "modifications": {"a": 1}},
        ),
    ],
    ids=["other-reviewer", "other-justification", "other-decision", "other-modifications"],
)
async def test_anything_but_the_same_request_is_still_409(
    client: TestClient, api_keys: Keys, database_url: str, role: str, body: dict[str, Any]
) -> None:
    """A different reviewer, decision, justification or modifications on a decided review
    is the existing 409 already-decided problem, and nothing is written."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    resp = await post_decision(client, rid, decision_body("reject"), api_keys.auth("reviewer"))
    assert resp.status == 200
    resp = await post_decision(client, rid, body, api_keys.auth(role))
    problem = await assert_problem(resp, 409, "already-decided")
    assert problem["current_status"] == "rejected"
    assert REPLAYED not in resp.headers
    assert len(await stored(database_url, rid)) == 1


async def test_a_replay_of_a_decision_since_overtaken_is_409(
    client: TestClient, api_keys: Keys
) -> None:
    """Without a key only the review's latest decision can be replayed: an escalation
    retried after another reviewer approved is 409, showing the review is approved."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    escalate = decision_body("escalate")
    assert (await post_decision(client, rid, escalate, api_keys.auth("reviewer"))).status == 200
    assert (await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("admin"))).status == 200
    resp = await post_decision(client, rid, escalate, api_keys.auth("reviewer"))
    problem = await assert_problem(resp, 409, "already-decided")
    assert problem["current_status"] == "approved"


async def test_concurrent_identical_retries_apply_once(
    notifying: tuple[TestClient, Downstream], api_keys: Keys, database_url: str
) -> None:
    """Ten identical approvals sent at once by one reviewer: all 200, exactly one not a
    replay, one record, one outbox row, one decision counted."""
    client, _ = notifying
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    responses = await asyncio.gather(
        *(post_decision(client, rid, {"decision": "approve"}, api_keys.auth("reviewer")) for _ in range(10))
    )
    assert [r.status for r in responses] == [200] * 10
    assert sorted(r.headers.get(REPLAYED, "no") for r in responses) == ["no"] + ["true"] * 9
    assert len(await stored(database_url, rid)) == 1
    assert await outbox_count(database_url, rid) == 1
    assert await decisions_counted(client, "approve") == 1


# -- Idempotency-Key ---------------------------------------------------------------------


async def test_a_key_is_stored_and_its_retry_replayed(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A decision sent with an Idempotency-Key stores the key; the same key with the same
    body is replayed; the same key with another body is a 422 idempotency-key-reused
    problem that writes nothing."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    body = decision_body("reject")
    first = await post_decision(client, rid, body, api_keys.auth("reviewer"), key="k-1")
    assert first.status == 200
    again = await post_decision(client, rid, body, api_keys.auth("reviewer"), key="k-1")
    assert again.status == 200 and again.headers[REPLAYED] == "true"
    assert await again.json() == await first.json()
    other = await post_decision(
        client, rid, {**body, "justification": "changed my mind"}, api_keys.auth("reviewer"), key="k-1"
    )
    problem = await assert_problem(other, 422, "idempotency-key-reused")
    assert problem["review_id"] == rid
    assert await stored(database_url, rid) == [("reject", "reviewer-bot", "rejected", "k-1")]


async def test_a_reused_key_is_refused_even_where_the_state_allows_the_decision(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A key used to escalate cannot then approve the escalated review (422, the review
    stays escalated); a fresh key can."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    reviewer = api_keys.auth("reviewer")
    assert (await post_decision(client, rid, decision_body("escalate"), reviewer, key="k")).status == 200
    resp = await post_decision(client, rid, {"decision": "approve"}, reviewer, key="k")
    await assert_problem(resp, 422, "idempotency-key-reused")
    assert await sql(database_url, "SELECT status FROM reviews WHERE id = %s", (rid,)) == [("escalated",)]
    resp = await post_decision(client, rid, {"decision": "approve"}, reviewer, key="k2")
    assert resp.status == 200 and REPLAYED not in resp.headers
    assert await stored(database_url, rid) == [
        ("escalate", "reviewer-bot", "escalated", "k"),
        ("approve", "reviewer-bot", "approved", "k2"),
    ]


async def test_a_keyed_retry_is_replayed_after_the_review_moved_on(
    client: TestClient, api_keys: Keys
) -> None:
    """With its key, an escalation retried after another reviewer approved is still
    answered as applied (200 replay) and shows the review as it now is."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    escalate = decision_body("escalate")
    assert (await post_decision(client, rid, escalate, api_keys.auth("reviewer"), key="e-1")).status == 200
    assert (await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("admin"))).status == 200
    resp = await post_decision(client, rid, escalate, api_keys.auth("reviewer"), key="e-1")
    assert resp.status == 200 and resp.headers[REPLAYED] == "true"
    review = await resp.json()
    assert review["status"] == "approved"
    assert [d["decision"] for d in review["decisions"]] == ["escalate", "approve"]


async def test_a_keyed_retry_of_an_unkeyed_decision_is_replayed(
    client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A key first seen on the retry falls back to the same-reviewer, same-body rule."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    assert (await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("reviewer"))).status == 200
    resp = await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("reviewer"), key="late")
    assert resp.status == 200 and resp.headers[REPLAYED] == "true"
    assert await stored(database_url, rid) == [("approve", "reviewer-bot", "approved", None)]


async def test_keys_are_scoped_to_the_reviewer(client: TestClient, api_keys: Keys) -> None:
    """Another reviewer's request with the same key is a request of its own."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    assert (await post_decision(client, rid, decision_body("escalate"), api_keys.auth("reviewer"), key="same")).status == 200
    resp = await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("admin"), key="same")
    assert resp.status == 200 and REPLAYED not in resp.headers
    assert (await resp.json())["status"] == "approved"


@pytest.mark.parametrize(
    "headers",
    [
        [("Idempotency-Key", "")],
        [("Idempotency-Key", "has space")],
        [("Idempotency-Key", "x" * 256)],
        [("Idempotency-Key", "caf\u00e9")],
        [("Idempotency-Key", "a"), ("Idempotency-Key", "b")],
    ],
    ids=["empty", "space", "256-chars", "non-ascii", "twice"],
)
async def test_a_malformed_key_is_422(
    client: TestClient, api_keys: Keys, database_url: str, headers: list[tuple[str, str]]
) -> None:
    """An empty, over-long, non-visible-ASCII or repeated Idempotency-Key is a 422 problem
    naming the header, and nothing is decided."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]
    sent = CIMultiDict([*api_keys.auth("reviewer").items(), *headers])
    resp = await client.post(f"/api/reviews/{rid}/decision", json={"decision": "approve"}, headers=sent)
    problem = await assert_problem(resp, 422, "validation-failed")
    assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"]
    assert await stored(database_url, rid) == []


# -- the answer needs no query after the commit ------------------------------------------


class AfterCommit:
    """A ReviewRepository double around the real store: ``decide`` commits for real,
    then runs ``after_commit`` (e.g. PostgreSQL goes away); from then on every other
    query of the store fails as a lost connection would."""

    def __init__(self, store: Any, after_commit: Callable[[], Awaitable[None]]) -> None:
        self._store = store
        self._after_commit = after_commit
        self.lost = False

    async def decide(self, review_id: str, request: DecisionRequest, *, notify: Notify | None) -> Decided:
        decided: Decided = await self._store.decide(review_id, request, notify=notify)
        self.lost = True
        await self._after_commit()
        return decided

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.lost:
                raise psycopg2.OperationalError("server closed the connection unexpectedly")
            return await method(*args, **kwargs)

        return call


async def test_the_answer_is_built_without_a_query_after_the_commit(
    client: TestClient, app: Any, api_keys: Keys, database_url: str
) -> None:
    """With every store query failing once the decision committed, the decision is still
    answered 200 with the decided review and its full history (before, the read after
    the commit made it a 503 and the client never learnt it had won)."""
    rid = (await submit(client, api_keys.auth("producer")))["id"]

    async def nothing() -> None:
        return None

    double = AfterCommit(app[REVIEWS].store, nothing)
    app[REVIEWS].store = double
    resp = await post_decision(client, rid, decision_body("modify"), api_keys.auth("reviewer"))
    assert double.lost
    assert resp.status == 200, await resp.text()
    review = await resp.json()
    assert review["status"] == "modified"
    assert len(review["validation"]) == 4
    assert [(d["decision"], d["reviewer"]) for d in review["decisions"]] == [("modify", "reviewer-bot")]
    assert await stored(database_url, rid) == [("modify", "reviewer-bot", "modified", None)]


def start_again(pg: ThrowawayPostgres) -> None:
    """Start a stopped throwaway cluster on its port again (the fixture's own options)."""
    root = pg.datadir.parent
    options = f"-p {pg.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg._run("start", "-w", "-t", "15", "-o", options, "-l", str(root / "log"))


async def test_postgres_lost_after_the_commit_still_answers_and_the_retry_replays(
    aiohttp_client: Any, settings: Settings, api_keys: Keys, throwaway_postgres: ThrowawayPostgres
) -> None:
    """PostgreSQL stopped (immediate) right after a decision commits: the decision is
    answered 200 all the same. Once PostgreSQL is back, the client's retry gets 200
    replayed within 15 s, and exactly one decision is stored and counted."""
    await create_database(throwaway_postgres.url)
    app = create_app(settings.with_changes(database_url=throwaway_postgres.url, db_timeout_seconds=2.0))
    client: TestClient = await aiohttp_client(app)
    rid = (await submit(client, api_keys.auth("producer")))["id"]

    async def stop_postgres() -> None:
        await asyncio.to_thread(throwaway_postgres.stop)

    app[REVIEWS].store = AfterCommit(app[REVIEWS].store, stop_postgres)
    resp = await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("reviewer"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "approved"
    assert (await client.get("/api/health/ready")).status == 503  # it really is gone

    await asyncio.to_thread(start_again, throwaway_postgres)
    app[REVIEWS].store = app[REVIEWS].store._store
    started = time.monotonic()
    statuses = []
    while True:  # a client retrying a decision whose answer it never read
        retry = await post_decision(client, rid, {"decision": "approve"}, api_keys.auth("reviewer"))
        statuses.append(retry.status)
        if retry.status != 503 or time.monotonic() - started > 15:
            break
        await asyncio.sleep(0.2)
    assert retry.status == 200, (statuses, await retry.text())
    assert retry.headers[REPLAYED] == "true"
    assert set(statuses[:-1]) <= {503}
    assert await stored(throwaway_postgres.url, rid) == [("approve", "reviewer-bot", "approved", None)]
    assert await decisions_counted(client, "approve") == 1
