-- Stats whose cost does not grow with history (GET /api/reviews/stats).
--
-- Time to decision and decisions by type cover a window (HITL_STATS_WINDOW_SECONDS):
-- these indexes on the decision time reach the window's rows without reading older
-- ones, and INCLUDE what the aggregates need, so the scans are index-only.
CREATE INDEX reviews_decided_at_idx ON reviews (decided_at) INCLUDE (created_at)
    WHERE decided_at IS NOT NULL;
CREATE INDEX review_decisions_decided_at_idx ON review_decisions (decided_at)
    INCLUDE (decision);
-- The open reviews only: counts by status and severity read the backlog, never the
-- decided history, and the oldest open review is this index's first entry.
CREATE INDEX reviews_open_created_idx ON reviews (created_at) INCLUDE (status, severity)
    WHERE status IN ('pending', 'escalated');
