"""A patch as rows of a unified diff, for the review page's ``table#diff``.

Each row has a kind (``meta``: file headers and anything outside hunks; ``hunk``: an
``@@`` line; ``added`` / ``removed`` / ``context``) and the line numbers it has in the
old and new file. The text keeps its leading ``+`` / ``-`` / space, so the change is
readable without colour. A patch that is not a unified diff (no hunk, a malformed
``@@`` line, a hunk whose lines do not add up to its header, a change line outside
any hunk) comes back as plain
numbered lines instead (``DiffView.is_diff`` False): the page shows it as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")


@dataclass(frozen=True, slots=True)
class DiffRow:
    kind: str  # meta | hunk | added | removed | context
    text: str
    old: int | None = None
    new: int | None = None


@dataclass(frozen=True, slots=True)
class DiffView:
    rows: list[DiffRow]
    is_diff: bool
    added: int = 0
    removed: int = 0


class _NotADiff(Exception):
    pass


def render_diff(patch: str) -> DiffView:
    lines = patch.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no line of its own
    try:
        rows = _parse(lines)
    except _NotADiff:
        return DiffView(
            [DiffRow("context", line, None, n) for n, line in enumerate(lines, 1)], False
        )
    return DiffView(
        rows,
        True,
        added=sum(r.kind == "added" for r in rows),
        removed=sum(r.kind == "removed" for r in rows),
    )


def _parse(lines: list[str]) -> list[DiffRow]:
    rows: list[DiffRow] = []
    old_left = new_left = 0  # lines the current hunk still owes
    old_no = new_no = 0
    hunks = 0
    for line in lines:
        if old_left > 0 or new_left > 0:
            kind = _hunk_line_kind(line)
            if kind == "context":
                if old_left == 0 or new_left == 0:
                    raise _NotADiff
                rows.append(DiffRow("context", line, old_no, new_no))
                old_no, new_no, old_left, new_left = (
                    old_no + 1,
                    new_no + 1,
                    old_left - 1,
                    new_left - 1,
                )
            elif kind == "removed":
                if old_left == 0:
                    raise _NotADiff
                rows.append(DiffRow("removed", line, old_no, None))
                old_no, old_left = old_no + 1, old_left - 1
            elif kind == "added":
                if new_left == 0:
                    raise _NotADiff
                rows.append(DiffRow("added", line, None, new_no))
                new_no, new_left = new_no + 1, new_left - 1
            else:  # "\ No newline at end of file"
                rows.append(DiffRow("meta", line))
            continue
        if line.startswith("@@"):
            match = _HUNK.match(line)
            if match is None:
                raise _NotADiff
            old_no, new_no = int(match[1]), int(match[3])
            old_left = 1 if match[2] is None else int(match[2])
            new_left = 1 if match[4] is None else int(match[4])
            # An empty side starts "before" its first line: -0,0 / -12,0.
            old_no = max(old_no, 1) if old_left else old_no
            new_no = max(new_no, 1) if new_left else new_no
            hunks += 1
            rows.append(DiffRow("hunk", line))
        else:
            if hunks and _looks_like_a_change(line):
                # A change line beyond what its hunk header counted: the header lies
                # about the hunk, and a reader must not take the line as applied.
                raise _NotADiff
            # File headers (diff --git, index, ---, +++), a "\ No newline" after a
            # hunk, a mail's text around a format-patch: shown as they are.
            rows.append(DiffRow("meta", line))
    if hunks == 0 or old_left > 0 or new_left > 0:
        raise _NotADiff
    return rows


def _looks_like_a_change(line: str) -> bool:
    if line.startswith(("--- ", "+++ ")) or line == "-- ":  # file headers, a mail signature
        return False
    return line.startswith(("+", "-", " "))


def _hunk_line_kind(line: str) -> str:
    if line == "" or line.startswith(" "):
        # An empty line inside a hunk is a context line whose space was stripped (by
        # an editor or a mail client).
        return "context"
    if line.startswith("-"):
        return "removed"
    if line.startswith("+"):
        return "added"
    if line.startswith("\\"):
        return "note"
    raise _NotADiff
