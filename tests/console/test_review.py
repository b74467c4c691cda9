"""The review page and deciding from it: every APV field, the diff, the history, each
decision end to end (checked through the JSON API), conflicts in plain words, a
viewer who cannot decide, and hostile text rendered inert."""

from __future__ import annotations

import html
import re
from typing import Any

import markupsafe
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import Keys
from tests.service.helpers import count_rows, submit

from .conftest import SignedIn, csrf_token, element_text, form_id

PATCH = (
    "--- a/lib/parse.c\n"
    "+++ b/lib/parse.c\n"
    "@@ -10,4 +10,5 @@ int parse(const char *s)\n"
    " {\n"
    "-    return strlen(s);\n"
    "+    if (s == NULL) return -1;\n"
    "+    return strnlen(s, MAX);\n"
    " }\n"
    " \n"
)


async def api_review(client: TestClient, keys: Keys, review_id: str) -> dict[str, Any]:
    resp = await client.get(f"/api/reviews/{review_id}", headers=keys.auth("viewer"))
    assert resp.status == 200
    return dict(await resp.json())


async def post_decision(
    browser: TestClient, review_id: str, **fields: str
) -> tuple[int, str, str | None]:
    """Open the review page, fill in its form with ``fields`` and send it; the status,
    the page finally shown (after the redirect, if any) and the redirect's target."""
    page = await (await browser.get(f"/console/reviews/{review_id}")).text()
    form = {
        "csrf_token": csrf_token(page),
        "form_id": form_id(page),
        "justification": "",
        "patch": "",
    }
    form.update(fields)
    resp = await browser.post(
        f"/console/reviews/{review_id}/decision", data=form, allow_redirects=False
    )
    if resp.status == 303:
        location = resp.headers["Location"]
        shown = await browser.get(location)
        return resp.status, await shown.text(), location
    return resp.status, await resp.text(), None


def diff_rows(page: str, table_id: str = "diff") -> list[tuple[str, str, str, str]]:
    table = re.search(rf'<table id="{table_id}".*?</table>', page, re.S)
    assert table, "no diff table"
    return [
        (m.group(1), m.group(2), m.group(3), html.unescape(m.group(4)))
        for m in re.finditer(
            r'<tr class="diff-line ([a-z ]+)"><td class="line-old">(\d*)</td>'
            r'<td class="line-new">(\d*)</td><td class="code">(.*?)</td></tr>',
            table.group(0),
            re.S,
        )
    ]


async def test_review_page_shows_every_field_scores_validation_and_the_diff(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """Every APV field, the scores, each validation reason, and the patch as numbered diff rows."""
    review = await submit(
        client,
        api_keys.auth("producer"),
        patch=PATCH,
        cvss_score=9.1,
        severity="critical",
        wargaming={"verdict": "patch_effective", "details": {"runs": 3}},
    )
    viewer = await signed_in(api_keys.viewer)
    resp = await viewer.get(f"/console/reviews/{review['id']}")
    page = await resp.text()
    assert resp.status == 200
    assert f'data-page="review" data-review-id="{review["id"]}"' in page
    assert element_text(page, "review-status") == "pending"
    fields = element_text(page, "apv-fields")
    for value in (
        review["id"], review["apv_id"], review["apv_code"], review["cve_id"], "critical",
        review["source"], review["package"]["name"], review["package"]["version"],
        review["package"]["ecosystem"], "patch_effective", '"runs": 3',
    ):  # fmt: skip
        assert str(value) in fields, value
    scores = element_text(page, "scores")
    assert "9.1" in scores and str(review["confidence"]) in scores
    assert str(review["anomaly_score"]) in scores
    results = element_text(page, "validation-results")
    for result in review["validation"]:
        assert result["pattern_type"] in results and result["reason"] in results
    assert diff_rows(page) == [
        ("meta", "", "", "--- a/lib/parse.c"),
        ("meta", "", "", "+++ b/lib/parse.c"),
        ("hunk", "", "", "@@ -10,4 +10,5 @@ int parse(const char *s)"),
        ("context", "10", "10", " {"),
        ("removed", "11", "", "-    return strlen(s);"),
        ("added", "", "11", "+    if (s == NULL) return -1;"),
        ("added", "", "12", "+    return strnlen(s, MAX);"),
        ("context", "12", "13", " }"),
        ("context", "13", "14", " "),
    ]


async def test_a_patch_that_is_not_a_diff_is_shown_as_plain_lines(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """A patch that is not a unified diff is shown line by line as text."""
    review = await submit(client, api_keys.auth("producer"), patch="replace foo()\nwith bar()\n")
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get(f"/console/reviews/{review['id']}")).text()
    assert "not a unified diff" in page
    assert diff_rows(page) == [
        ("context plain", "", "1", "replace foo()"),
        ("context plain", "", "2", "with bar()"),
    ]


async def test_approve_end_to_end(signed_in: SignedIn, client: TestClient, api_keys: Keys) -> None:
    """Approving from the form stores the decision (read back through the API) and says so."""
    review = await submit(client, api_keys.auth("producer"), patch=PATCH)
    reviewer = await signed_in(api_keys.reviewer)
    status, page, location = await post_decision(reviewer, review["id"], decision="approve")
    assert status == 303
    assert location == f"/console/reviews/{review['id']}?result=approved"
    assert element_text(page, "decision-result") == "Approved."
    assert element_text(page, "review-status").startswith("approved by reviewer-bot at ")
    assert element_text(page, "review-status").endswith(" UTC")
    assert re.search(r'<fieldset id="decision-fieldset" disabled>', page)
    stored = await api_review(client, api_keys, review["id"])
    assert stored["status"] == "approved"
    assert [(d["decision"], d["reviewer"]) for d in stored["decisions"]] == [
        ("approve", "reviewer-bot")
    ]
    history = element_text(page, "history")
    assert "reviewer-bot" in history and "approved" in history


async def test_reject_needs_a_justification(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """Reject without a justification is a 422 that changes nothing; with one it is stored (LF line ends)."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    before = await count_rows(database_url)
    status, page, _ = await post_decision(
        reviewer, review["id"], decision="reject", justification="  "
    )
    assert status == 422
    assert "A justification is required to reject." in element_text(page, "form-errors")
    assert 'id="decision-reject" value="reject" checked' in page
    assert await count_rows(database_url) == before

    status, page, _ = await post_decision(
        reviewer, review["id"], decision="reject", justification="Breaks the ABI.\r\nSee #12."
    )
    assert status == 303
    assert element_text(page, "decision-result") == "Rejected."
    stored = await api_review(client, api_keys, review["id"])
    assert stored["status"] == "rejected"
    assert stored["decisions"][0]["justification"] == "Breaks the ABI.\nSee #12."


async def test_a_too_long_justification_is_refused_without_echoing_it(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """The API's length limit holds in the form too, and the message does not quote
    the 10 kB it refuses."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    text = "why " * 2600
    status, page, _ = await post_decision(
        reviewer, review["id"], decision="reject", justification=text
    )
    assert status == 422
    assert element_text(page, "form-errors") == "The justification is too long."
    assert page.count(text.strip()) == 1  # only in the textarea given back
    assert (await api_review(client, api_keys, review["id"]))["status"] == "pending"


async def test_no_decision_chosen_is_a_422_with_words(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """Sending the form without a decision asks for one and changes nothing."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    status, page, _ = await post_decision(reviewer, review["id"])
    assert status == 422
    assert "Choose a decision" in element_text(page, "form-errors")
    assert (await api_review(client, api_keys, review["id"]))["status"] == "pending"


async def test_modify_stores_the_edited_patch(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """Modify stores the edited textarea patch as the decision's modifications."""
    review = await submit(client, api_keys.auth("producer"), patch=PATCH)
    reviewer = await signed_in(api_keys.reviewer)
    page = await (await reviewer.get(f"/console/reviews/{review['id']}")).text()
    textarea = re.search(r'<textarea id="patch"[^>]*>\n(.*?)</textarea>', page, re.S)
    assert textarea and html.unescape(textarea.group(1)) == PATCH
    edited = PATCH.replace("strnlen(s, MAX)", "strnlen(s, LIMIT)")
    status, page, _ = await post_decision(
        reviewer,
        review["id"],
        decision="modify",
        justification="MAX is not defined here.",
        patch=edited.replace("\n", "\r\n"),  # as a browser sends a textarea
    )
    assert status == 303
    assert element_text(page, "decision-result") == "Modified."
    stored = await api_review(client, api_keys, review["id"])
    assert stored["status"] == "modified"
    assert stored["decisions"][0]["modifications"] == {"patch": edited}
    assert stored["patch"] == PATCH  # the original is kept; the record holds the change
    assert "strnlen(s, LIMIT)" in page  # shown in the history


async def test_escalate_then_approve(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """Escalating leaves the review open (escalate disabled); a senior then approves it."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    status, page, _ = await post_decision(
        reviewer, review["id"], decision="escalate", justification="Needs a second look."
    )
    assert status == 303
    assert element_text(page, "decision-result") == "Escalated."
    # Escalated: open still, but escalating again is not allowed (models.Decision).
    assert 'id="decision-escalate" value="escalate" disabled' in page
    assert 'id="decision-approve" value="approve">' in page
    assert (await api_review(client, api_keys, review["id"]))["status"] == "escalated"
    senior = await signed_in(api_keys.admin)
    status, page, _ = await post_decision(senior, review["id"], decision="approve")
    assert status == 303
    stored = await api_review(client, api_keys, review["id"])
    assert [(d["decision"], d["reviewer"]) for d in stored["decisions"]] == [
        ("escalate", "reviewer-bot"),
        ("approve", "alice"),
    ]
    assert element_text(page, "review-status").startswith("approved by alice at ")


async def test_conflict_says_who_decided_and_when(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A form sent after someone else decided is a 409 naming who and when; nothing stored."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    # The form is open in the browser when someone else approves through the API.
    page = await (await reviewer.get(f"/console/reviews/{review['id']}")).text()
    resp = await client.post(
        f"/api/reviews/{review['id']}/decision",
        json={"decision": "approve"},
        headers=api_keys.auth("admin"),
    )
    assert resp.status == 200
    decided_at = (await resp.json())["decided_at"]
    before = await count_rows(database_url)
    sent = await reviewer.post(
        f"/console/reviews/{review['id']}/decision",
        data={
            "csrf_token": csrf_token(page),
            "form_id": form_id(page),
            "decision": "reject",
            "justification": "Too broad.",
        },
        allow_redirects=False,
    )
    shown = await sent.text()
    assert sent.status == 409
    hhmm = decided_at[11:16]
    assert element_text(shown, "decision-result") == f"Already approved by alice at {hhmm} UTC."
    assert re.search(r'<fieldset id="decision-fieldset" disabled>', shown)
    assert await count_rows(database_url) == before


async def test_sending_the_same_form_twice_is_not_a_conflict(
    signed_in: SignedIn, client: TestClient, api_keys: Keys
) -> None:
    """The same form sent twice (double click, reload) stores one decision and answers both."""
    review = await submit(client, api_keys.auth("producer"))
    reviewer = await signed_in(api_keys.reviewer)
    page = await (await reviewer.get(f"/console/reviews/{review['id']}")).text()
    form = {"csrf_token": csrf_token(page), "form_id": form_id(page), "decision": "approve"}
    url = f"/console/reviews/{review['id']}/decision"
    first = await reviewer.post(url, data=form, allow_redirects=False)
    again = await reviewer.post(url, data=form, allow_redirects=False)
    assert (first.status, again.status) == (303, 303)
    assert len((await api_review(client, api_keys, review["id"]))["decisions"]) == 1


async def test_viewer_reads_but_cannot_decide(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, database_url: str
) -> None:
    """A viewer sees no form, and a viewer's POST is 403 with nothing stored."""
    review = await submit(client, api_keys.auth("producer"))
    viewer = await signed_in(api_keys.viewer)
    page = await (await viewer.get(f"/console/reviews/{review['id']}")).text()
    assert 'id="decision-form"' not in page
    assert element_text(page, "viewer-note") == "Viewers can read reviews but not decide."
    assert element_text(page, "whoami") == "viewer-bot (viewer)"
    before = await count_rows(database_url)
    resp = await viewer.post(
        f"/console/reviews/{review['id']}/decision",
        data={"csrf_token": csrf_token(page), "decision": "approve"},
        allow_redirects=False,
    )
    assert resp.status == 403
    assert "Viewers can read reviews but not decide." in await resp.text()
    assert await count_rows(database_url) == before
    assert (await api_review(client, api_keys, review["id"]))["status"] == "pending"


SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.mark.parametrize("payload", [SCRIPT, IMG])
async def test_hostile_text_renders_inert(
    signed_in: SignedIn, client: TestClient, api_keys: Keys, payload: str
) -> None:
    """Script and attribute-breaking payloads in every review field render escaped everywhere."""
    review = await submit(
        client,
        api_keys.auth("producer"),
        patch=f"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-{payload}\n+{payload}\n{payload}\n",
        source=f"src{payload}"[:100],
        cve_id=f"CVE-{payload}"[:64],
        apv_code=payload,
        package={"name": f"pkg{payload}", "version": payload, "ecosystem": payload},
        wargaming={"verdict": payload[:50], "details": {payload: payload}},
    )
    decided = await client.post(
        f"/api/reviews/{review['id']}/decision",
        json={"decision": "escalate", "justification": payload},
        headers=api_keys.auth("reviewer"),
    )
    assert decided.status == 200
    reviewer = await signed_in(api_keys.admin)
    pages = {
        "queue": await (await reviewer.get("/console/queue")).text(),
        "review": await (await reviewer.get(f"/console/reviews/{review['id']}")).text(),
        "filtered": await (await reviewer.get("/console/queue", params={"source": payload})).text(),
    }
    # And in a modification's patch and in a failed form echoed back.
    status, pages["rejected form"], _ = await post_decision(
        reviewer, review["id"], decision="reject", justification=""
    )
    assert status == 422
    status, pages["modified"], _ = await post_decision(
        reviewer, review["id"], decision="modify", justification=payload, patch=payload
    )
    assert status == 303
    for name, page in pages.items():
        assert payload not in page, name
        assert "<img" not in page and "<script>" not in page, name
        assert "onerror=alert(1)>" not in page, name
    escaped = str(markupsafe.escape(payload))  # what autoescaping writes
    assert escaped in pages["review"]
    assert escaped in pages["queue"]
    assert escaped in pages["modified"]
