"""schemathesis (PyPI) against the real service, driven by the service's own
/api/openapi.json: what the document allows is accepted, what it forbids is refused,
nothing is a 5xx, every response matches the document, and refused requests change
no stored row.

The app runs on a real aiohttp server on loopback (real PostgreSQL and Redis test
database); schemathesis runs as its own process (`st run`), so this test's event loop
keeps serving while it works, and a failure is reported in schemathesis' own words,
with a curl command to reproduce it. Generation is deterministic (Hypothesis'
derandomize: the same cases on every run, so no seed is involved) and bounded: the
examples and fuzzing phases draw at most MAX_EXAMPLES cases per operation; the
coverage phase (boundary values of every constraint, e.g. maxLength + 1) runs on every
operation but the two whose many optional fields make it combinatorial (thousands of
cases: submit and validate), which fuzzing covers instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from service.app import create_app
from service.config import Settings
from tests.conftest import Keys
from tests.service.conftest import closed_port
from tests.service.helpers import count_rows, sql, submission

pytestmark = pytest.mark.timeout(150)

MAX_EXAMPLES = 20
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
RUN_TIMEOUT_SECONDS = 100
OPERATIONS = 9  # every operation of the document, test-only routes off

COMMON_CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
]

CONFIG = """\
# A real review for the operations that take a review_id, so reads and decisions reach
# the service's logic instead of stopping at 404.
[parameters]
"path.review_id" = "{review_id}"

[[operations]]
include-operation-id = ["submit_review", "validate_apv"]
phases.coverage.enabled = false
"""


@pytest.fixture
async def live_server(aiohttp_server: Any, settings: Settings) -> TestServer:
    """The service as deployed (no test-only routes) on a loopback port, with decision
    webhooks on (to a closed port), so an accepted decision would also leave an outbox
    row behind."""
    app = create_app(
        settings.with_changes(
            enable_test_routes=False,
            decision_webhook_url=f"http://127.0.0.1:{closed_port()}/decisions",
            webhook_poll_seconds=5.0,
        )
    )
    server: TestServer = await aiohttp_server(app, host="127.0.0.1")
    return server


async def pending_review(server: TestServer, keys: Keys) -> str:
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            server.make_url("/api/reviews"), json=submission(), headers=keys.auth("producer")
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])


def schemathesis_command() -> list[str]:
    """The CLI of the schemathesis installed beside this interpreter (the dev extra)."""
    try:
        import schemathesis  # noqa: F401 - only whether it is installed
    except ImportError:
        message = "schemathesis is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())"]


async def run_schemathesis(
    server: TestServer, keys: Keys, review_id: str, tmp_path: Path, *, mode: str, checks: list[str]
) -> dict[str, Any]:
    """`st run` against ``server`` in ``mode``: asserts it passed (its own output is the
    message otherwise) and returns its JSON report."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(review_id=review_id))
    report = tmp_path / f"schemathesis-{mode}.json"
    negative = mode == "negative"
    command = [
        *schemathesis_command(),
        "--config-file", str(config),
        "run", str(server.make_url("/api/openapi.json")),
        "--mode", mode,
        "--checks", ",".join(checks),
        # The examples phase sends the document's (valid) examples whatever the mode.
        "--phases", "coverage,fuzzing" if negative else "examples,coverage,fuzzing",
        "--generation-deterministic",
        "--max-examples", str(MAX_EXAMPLES),
        "--workers", "1",
        "--request-timeout", "10",
        # The admin key holds every role, so each operation is reachable; it is sent as
        # given (a negated Authorization would be overwritten by it, and test_auth.py
        # covers bad credentials).
        "--header", f"Authorization: Bearer {keys.admin}",
        "--generation-with-security-parameters", "false",
        "--report", "json",
        "--report-json-path", str(report),
        "--no-color",
    ]
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    env.pop("SCHEMATHESIS_HOOKS", None)
    if negative:
        env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd=tmp_path
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_SECONDS)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"schemathesis ({mode}) did not finish within {RUN_TIMEOUT_SECONDS}s")
    text = output.decode(errors="replace")
    print(text)  # its summary, shown with -s
    assert proc.returncode == 0, f"schemathesis ({mode}) found problems:\n{text}"
    result = dict(json.loads(report.read_text()))
    assert result["failures"] == [] and result["errors"] == [], text
    assert result["operations"]["tested"] == OPERATIONS, result["operations"]
    # Every pattern of the document is one schemathesis can generate from (a pattern it
    # drops would let it send what the document means to forbid).
    assert result["warnings"]["unsupported_regex"] == [], result["warnings"]
    return result


async def test_schema_valid_requests_are_accepted_and_answered_as_documented(
    live_server: TestServer, api_keys: Keys, database_url: str, tmp_path: Path
) -> None:
    """Positive mode: no request the document allows is refused (400/413/415/422), none
    is a 5xx, and every response's status, content type, headers and body are the
    documented ones."""
    review_id = await pending_review(live_server, api_keys)
    report = await run_schemathesis(
        live_server, api_keys, review_id, tmp_path, mode="positive",
        checks=[*COMMON_CHECKS, "positive_data_acceptance"],
    )
    assert report["test_cases"]["generated"] >= 100, report["test_cases"]
    # The run reached the service's logic: it stored reviews and decided the real one.
    assert (await count_rows(database_url))["reviews"] > 1
    decided = await sql(database_url, "SELECT count(*) FROM review_decisions WHERE review_id = %s", (review_id,))
    assert decided[0][0] >= 1


async def test_schema_violating_requests_are_refused_and_change_nothing(
    live_server: TestServer, api_keys: Keys, database_url: str, tmp_path: Path
) -> None:
    """Negative mode: every request the document forbids is refused with a documented
    4xx, none is a 5xx, and reviews, validation results, decisions and the outbox hold
    exactly the rows they held (the real pending review included stays pending)."""
    review_id = await pending_review(live_server, api_keys)
    before = await count_rows(database_url)
    report = await run_schemathesis(
        live_server, api_keys, review_id, tmp_path, mode="negative",
        checks=[*COMMON_CHECKS, "negative_data_rejection"],
    )
    assert report["test_cases"]["generated"] >= 100, report["test_cases"]
    assert await count_rows(database_url) == before
    assert await sql(database_url, "SELECT status FROM reviews WHERE id = %s", (review_id,)) == [("pending",)]
