-- Concurrent delivery with per-review order, and leases renewed while a delivery runs.
--
-- leased_until is set while a worker holds the row (NULL once it is delivered or
-- rescheduled), so a lease renewal never overwrites a retry's backoff.
ALTER TABLE webhook_outbox ADD COLUMN leased_until timestamptz;
-- Only the oldest undelivered row of a review may be leased: this index answers
-- "is there an earlier undelivered row of this review?".
CREATE INDEX webhook_outbox_pending_review_idx ON webhook_outbox (review_id, id)
    WHERE delivered_at IS NULL;
