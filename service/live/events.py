"""The live stream's wire formats: a review change as JSON on the Redis channel, and
the Server-Sent Events frames a browser reads (docs: the console contract).

Frames are encoded once per event and the same bytes are queued to every connection.
Data is always one line of JSON (``json.dumps`` escapes newlines), so nothing a
review holds can end a frame early or forge another one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from ..domain.ports import ReviewChange
from ..domain.reviews import DECIDED, SUBMITTED

REVIEW_EVENT_TYPES: Final = (SUBMITTED, DECIDED)

# How long a browser waits before reconnecting after the stream ends (a drain, a
# restart); sent in the first frame.
RETRY_MILLISECONDS: Final = 3000

KEEPALIVE: Final = b": keepalive\n\n"


def channel_name(redis_key_prefix: str) -> str:
    """The pub/sub channel of one deployment (or test run): named with its key
    prefix, so deployments sharing a Redis never hear each other."""
    return f"{redis_key_prefix}live:reviews"


def change_json(change: ReviewChange) -> dict[str, Any]:
    return {
        "type": change.type,
        "review_id": change.review_id,
        "status": change.status,
        "severity": change.severity,
        "source": change.source,
        "cve_id": change.cve_id,
        "package": change.package,
        "decision": change.decision,
        "decided_by": change.decided_by,
        "decided_at": _iso(change.decided_at),
        "at": _iso(change.at),
    }


def encode_change(change: ReviewChange) -> bytes:
    return json.dumps(change_json(change), separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE frame, encoded. ``review_type``: the event type of a review frame
    (counted when delivered); None for hello and mode frames."""

    data: bytes
    review_type: str | None = None


def frame(event: str, data: Any, *, retry_ms: int | None = None) -> bytes:
    head = f"retry: {retry_ms}\n" if retry_ms is not None else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {event}\ndata: {body}\n\n".encode()


def hello_frame(live: bool) -> Frame:
    return Frame(frame("hello", {"live": live}, retry_ms=RETRY_MILLISECONDS))


def mode_frame(live: bool) -> Frame:
    return Frame(frame("mode", {"live": live}))


def review_frame(message: bytes | str) -> Frame | None:
    """The frame for one message read from the channel; None if it is not a review
    event (nothing else publishes there, but a stray message must not reach a page)."""
    try:
        event = json.loads(message)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or event.get("type") not in REVIEW_EVENT_TYPES:
        return None
    return Frame(frame("review", event), review_type=str(event["type"]))


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
