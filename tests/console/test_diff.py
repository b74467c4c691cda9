"""The unified-diff reader behind table#diff, and the console's words for times."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.console import words
from service.console.diff import DiffRow, render_diff


def test_a_git_diff_with_two_hunks_numbers_both_sides() -> None:
    """Headers are meta rows, each hunk restarts the numbering its @@ line gives, +/- keep their sign."""
    view = render_diff(
        "diff --git a/f b/f\n"
        "index 1..2 100644\n"
        "--- a/f\n"
        "+++ b/f\n"
        "@@ -1,2 +1,2 @@\n"
        "-a\n"
        "+A\n"
        " b\n"
        "@@ -20 +20,2 @@ def g():\n"
        " x\n"
        "+y\n"
        "\\ No newline at end of file\n"
    )
    assert view.is_diff and (view.added, view.removed) == (2, 1)
    assert view.rows == [
        DiffRow("meta", "diff --git a/f b/f"),
        DiffRow("meta", "index 1..2 100644"),
        DiffRow("meta", "--- a/f"),
        DiffRow("meta", "+++ b/f"),
        DiffRow("hunk", "@@ -1,2 +1,2 @@"),
        DiffRow("removed", "-a", 1, None),
        DiffRow("added", "+A", None, 1),
        DiffRow("context", " b", 2, 2),
        DiffRow("hunk", "@@ -20 +20,2 @@ def g():"),
        DiffRow("context", " x", 20, 20),
        DiffRow("added", "+y", None, 21),
        DiffRow("meta", "\\ No newline at end of file"),
    ]


def test_a_new_file_starts_at_line_one_and_a_stripped_context_line_counts() -> None:
    """A -0,0 side starts at line 1; an empty line inside a hunk is a context line."""
    view = render_diff("--- /dev/null\n+++ b/n\n@@ -0,0 +1,2 @@\n+one\n+two\n")
    assert [(r.kind, r.old, r.new) for r in view.rows[2:]] == [
        ("hunk", None, None), ("added", None, 1), ("added", None, 2),
    ]  # fmt: skip
    view = render_diff("@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n")
    assert view.is_diff
    assert view.rows[2] == DiffRow("context", "", 2, 2)


@pytest.mark.parametrize(
    "patch",
    [
        "just some text\n",
        "",
        "@@ broken header @@\n+x\n",
        "@@ -1,3 +1,3 @@\n a\n",  # the hunk promises more lines than it has
        "@@ -1,2 +1,2 @@\n a\n?b\n",  # a line no hunk can hold
        "@@ -1 +1 @@\n-a\n+b\n+c\n",  # a change beyond the hunk's count
    ],
)
def test_what_is_not_a_unified_diff_comes_back_as_plain_lines(patch: str) -> None:
    """No hunk, a bad @@ line, a short hunk or a stray line: every line shown as text, numbered."""
    view = render_diff(patch)
    assert not view.is_diff
    lines = patch.splitlines()
    assert [(r.kind, r.new, r.text) for r in view.rows] == [
        ("context", n, line) for n, line in enumerate(lines, 1)
    ]


def test_text_after_a_complete_hunk_is_shown_as_it_is() -> None:
    """A format-patch signature after the last hunk is meta, not a change."""
    view = render_diff("@@ -1 +1 @@\n-a\n+b\n-- \n2.43.0\n")
    assert view.is_diff
    assert view.rows[-2:] == [DiffRow("meta", "-- "), DiffRow("meta", "2.43.0")]


def test_crlf_patches_read_like_lf_ones() -> None:
    """A patch with CRLF line ends renders like the same patch with LF."""
    assert render_diff("@@ -1 +1 @@\r\n-a\r\n+b\r\n") == render_diff("@@ -1 +1 @@\n-a\n+b\n")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (59.9, "59 s"), (60, "1 min"), (3599, "59 min"), (3600 * 3 + 720, "3 h 12 min"),
     (86400 * 2 + 3600 * 5 + 59, "2 d 5 h"), (-5, "0 s")],
)  # fmt: skip
def test_ages(seconds: float, text: str) -> None:
    """Ages are coarse and never negative."""
    assert words.age(seconds) == text


def test_times_and_statuses_in_words() -> None:
    """Status and conflict texts name who decided and when, in UTC, with the date unless today."""
    now = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
    review = {
        "status": "approved",
        "decisions": [
            {"decision": "escalate", "reviewer": "bob", "decided_at": "2026-11-28T09:00:00Z"},
            {"decision": "approve", "reviewer": "triage-bot", "decided_at": "2026-11-29T14:02:31Z"},
        ],
    }
    assert words.status_text(review) == "approved by triage-bot at 2026-11-29 14:02 UTC"
    assert words.conflict_text(review, now) == "Already approved by triage-bot at 14:02 UTC."
    tomorrow = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    assert words.conflict_text(review, tomorrow) == (
        "Already approved by triage-bot at 2026-11-29 14:02 UTC."
    )
    assert words.status_text({"status": "pending", "decisions": []}) == "pending"
