"""APV validation patterns.

Each pattern looks at one aspect of an APV and answers valid, invalid (the APV is
wrong in that respect) or error (the pattern itself could not decide). They run on
intake, where their results are stored beside the review for the human to see, and on
demand through POST /api/apv/validate.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .models import Severity

CVE_PATTERN = re.compile(r"^CVE-(?P<year>\d{4})-\d{4,}$")
HUNK_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")

# CVSS v3 qualitative severity bands (FIRST's specification, table 14).
CVSS_BANDS: dict[str, tuple[float, float]] = {
    Severity.CRITICAL: (9.0, 10.0),
    Severity.HIGH: (7.0, 8.9),
    Severity.MEDIUM: (4.0, 6.9),
    Severity.LOW: (0.1, 3.9),
}


class Result(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class PatternResult:
    pattern_type: str
    result: Result
    reason: str
    duration_seconds: float

    def as_json(self) -> dict[str, Any]:
        return {
            "pattern_type": self.pattern_type,
            "result": self.result.value,
            "reason": self.reason,
            "duration_ms": round(self.duration_seconds * 1000, 3),
        }


Check = Callable[[Mapping[str, Any], float], tuple[Result, str]]


def check_cve_format(apv: Mapping[str, Any], _threshold: float) -> tuple[Result, str]:
    cve_id = apv.get("cve_id")
    if not isinstance(cve_id, str):
        return Result.INVALID, "cve_id is missing"
    match = CVE_PATTERN.match(cve_id)
    if match is None:
        return Result.INVALID, f"{cve_id!r} is not of the form CVE-YYYY-NNNN"
    if int(match["year"]) < 1999:
        return Result.INVALID, "CVE identifiers start in 1999"
    return Result.VALID, "well-formed CVE identifier"


def check_severity_consistency(apv: Mapping[str, Any], _threshold: float) -> tuple[Result, str]:
    severity = apv.get("severity")
    score = apv.get("cvss_score")
    if score is None:
        return Result.VALID, "no CVSS score given; nothing to compare"
    if severity not in CVSS_BANDS:
        return Result.INVALID, f"unknown severity {severity!r}"
    low, high = CVSS_BANDS[severity]
    if low <= float(score) <= high:
        return Result.VALID, f"CVSS {score} lies in the {severity} band {low}-{high}"
    return Result.INVALID, f"CVSS {score} lies outside the {severity} band {low}-{high}"


def check_anomaly_score(apv: Mapping[str, Any], threshold: float) -> tuple[Result, str]:
    score = apv.get("anomaly_score")
    if not isinstance(score, int | float) or isinstance(score, bool):
        return Result.INVALID, "anomaly_score is missing"
    if not 0.0 <= score <= 1.0:
        return Result.INVALID, f"anomaly_score {score} is outside 0..1"
    if score < threshold:
        return Result.INVALID, f"anomaly_score {score} is below the review threshold {threshold}"
    return Result.VALID, f"anomaly_score {score} >= review threshold {threshold}"


def check_patch_format(apv: Mapping[str, Any], _threshold: float) -> tuple[Result, str]:
    patch = apv.get("patch")
    if not isinstance(patch, str) or not patch.strip():
        return Result.INVALID, "patch is empty"
    problem = unified_diff_problem(patch)
    if problem:
        return Result.INVALID, problem
    return Result.VALID, "parseable unified diff"


def unified_diff_problem(patch: str) -> str | None:
    """Why ``patch`` is not a unified diff, or None when it parses."""
    lines = patch.splitlines()
    files = hunks = 0
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- "):
            if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ "):
                return f"line {i + 1}: '---' header without a '+++' header after it"
            files += 1
            i += 2
            continue
        match = HUNK_HEADER.match(line)
        if match:
            if files == 0:
                return f"line {i + 1}: hunk before any '---'/'+++' file header"
            old_len = int(match[2]) if match[2] is not None else 1
            new_len = int(match[4]) if match[4] is not None else 1
            i += 1
            while (old_len > 0 or new_len > 0) and i < len(lines):
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                tag = body[:1]
                if tag in (" ", ""):
                    old_len -= 1
                    new_len -= 1
                elif tag == "-":
                    old_len -= 1
                elif tag == "+":
                    new_len -= 1
                else:
                    return f"line {i + 1}: unexpected line in hunk body"
                i += 1
            if old_len != 0 or new_len != 0:
                return "a hunk's line counts do not match its header"
            hunks += 1
            continue
        i += 1
    if files == 0:
        return "no '---'/'+++' file header"
    if hunks == 0:
        return "no '@@' hunk"
    return None


PATTERNS: Mapping[str, Check] = {
    "cve_format": check_cve_format,
    "severity_consistency": check_severity_consistency,
    "anomaly_score": check_anomaly_score,
    "patch_format": check_patch_format,
}


def validate_apv(apv: Mapping[str, Any], *, anomaly_threshold: float) -> list[PatternResult]:
    results = []
    for name, check in PATTERNS.items():
        started = time.perf_counter()
        try:
            outcome, reason = check(apv, anomaly_threshold)
        except Exception as exc:  # a pattern that breaks must not break intake
            outcome, reason = Result.ERROR, f"pattern failed: {type(exc).__name__}"
        results.append(PatternResult(name, outcome, reason, time.perf_counter() - started))
    return results
