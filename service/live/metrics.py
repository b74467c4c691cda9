"""The live updates' metrics, on the app's telemetry registry (like service/metrics.py)."""

from __future__ import annotations

from telemetry import Metrics, require_label

from .events import REVIEW_EVENT_TYPES


class LiveMetrics:
    """Open live connections, and review events published to Redis and delivered to
    browsers. Delivered / published, summed over replicas, is the fan-out: about the
    number of open console pages when every page keeps up."""

    def __init__(self, metrics: Metrics) -> None:
        self.hitl_live_connections_open = metrics.gauge(
            "hitl_live_connections_open", "Console live-update streams (SSE) open now."
        )
        self.hitl_live_events_published_total = metrics.counter(
            "hitl_live_events_published_total",
            "Review events published to the live-update channel after their commit, by type.",
        )
        self.hitl_live_events_delivered_total = metrics.counter(
            "hitl_live_events_delivered_total",
            "Review events written to a console live-update stream, by type.",
        )
        self.hitl_live_connections_open.set({}, 0)
        for event_type in REVIEW_EVENT_TYPES:
            self.hitl_live_events_published_total.set({"type": event_type}, 0)
            self.hitl_live_events_delivered_total.set({"type": event_type}, 0)

    def set_connections_open(self, count: int) -> None:
        self.hitl_live_connections_open.set({}, count)

    def record_published(self, event_type: str) -> None:
        require_label(event_type, REVIEW_EVENT_TYPES, "type")
        self.hitl_live_events_published_total.inc({"type": event_type})

    def record_delivered(self, event_type: str) -> None:
        require_label(event_type, REVIEW_EVENT_TYPES, "type")
        self.hitl_live_events_delivered_total.inc({"type": event_type})
