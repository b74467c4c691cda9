"""A span context's ids as the lowercase hex that W3C ``traceparent`` and our log
lines carry, formatted once per span rather than once per use.

A traced request names its span three times — the ``traceparent`` response header,
its access line and any line the handler logs — and formatting a 128-bit int with
``format(x, "032x")`` costs more than the rest of a log field. ``int.to_bytes().hex()``
gives the same text (zero-padded, lowercase) at a third of the cost, and the last
span context's strings are kept, so the second and third use are a lookup.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.trace import SpanContext

__all__ = ["hex_ids"]

_FLAGS_HEX: Final = tuple(f"{flags:02x}" for flags in range(256))

# (span context, its hex ids), swapped in one assignment so a log call on another
# thread (the span exporter's) never reads one context's ids paired with another's.
# Holding the context keeps it alive, so an identity match is never a reused address.
_LAST: list[tuple[SpanContext | None, tuple[str, str, str]]] = [(None, ("", "", ""))]


def hex_ids(ctx: SpanContext) -> tuple[str, str, str]:
    """(trace_id as 32 hex, span_id as 16 hex, trace_flags as 2 hex) of ``ctx``."""
    last = _LAST[0]
    if last[0] is ctx:
        return last[1]
    ids = (
        ctx.trace_id.to_bytes(16, "big").hex(),
        ctx.span_id.to_bytes(8, "big").hex(),
        _FLAGS_HEX[ctx.trace_flags & 0xFF],
    )
    _LAST[0] = (ctx, ids)
    return ids
