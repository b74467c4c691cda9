-- The backlog metrics (review_queue_pending, review_queue_oldest_pending_seconds) group
-- the open reviews by status and severity and take the oldest created_at: an index on
-- the open states only, so the cost follows the backlog, not years of decided history.
-- IF NOT EXISTS: harmless where the index already exists (e.g. created by hand).
CREATE INDEX IF NOT EXISTS reviews_open_queue_idx
    ON reviews (status, severity, created_at)
    WHERE status IN ('pending', 'escalated');
