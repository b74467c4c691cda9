"""The /metrics text: aioprometheus' text format, histograms written faster.

aioprometheus' ``TextFormatter`` formats every sample line on its own: for a histogram
label set that is 16 lines (14 buckets, ``_sum``, ``_count``), each copying, merging and
sorting the same labels again. With 10,000 series that is most of a scrape. This
formatter sorts a label set once and writes its lines from it; everything else
(counters, gauges, headers, the registry walk) is aioprometheus' own. The bytes are the
same (tests/telemetry/test_exposition.py renders a registry both ways).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from aioprometheus.collectors import Registry
from aioprometheus.formats.text import NEG_INF, POS_INF, TextFormatter

__all__ = ["render_text"]


def _pairs(items: Sequence[tuple[str, Any]]) -> list[str]:
    return [f'{key}="{value}"' for key, value in items]


class _TextFormatter(TextFormatter):
    def _format_histogram(  # type: ignore[override]  # same signature, precise types
        self,
        histogram: tuple[Mapping[str, str], Mapping[Any, float]],
        name: str,
        const_labels: Mapping[str, str],
    ) -> list[str]:
        labels, values = histogram
        merged = {**const_labels, **labels} if const_labels else dict(labels or {})
        merged.pop("le", None)  # aioprometheus' own "le" replaces any such label
        items = sorted(merged.items())
        before = _pairs([item for item in items if item[0] < "le"])
        after = _pairs([item for item in items if item[0] > "le"])
        plain = "{" + ",".join([*before, *after]) + "}" if items else ""
        timestamp = f" {self._get_timestamp()}" if self.timestamp else ""
        lines = []
        for key, value in values.items():
            if isinstance(key, float):
                bound = "+Inf" if key == POS_INF else "-Inf" if key == NEG_INF else str(key)
                pairs = ",".join([*before, f'le="{bound}"', *after])
                lines.append(f"{name}_bucket{{{pairs}}} {float(value)}{timestamp}")
            else:
                lines.append(f"{name}_{key}{plain} {float(value)}{timestamp}")
        return lines


def render_text(registry: Registry) -> tuple[bytes, dict[str, str]]:
    """The registry in the Prometheus text format, and the response headers."""
    formatter = _TextFormatter()
    headers = formatter.get_headers()
    return formatter.marshall(registry), {str(k): str(v) for k, v in headers.items()}
