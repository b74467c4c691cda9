-- Retention: delivered rows older than HITL_OUTBOX_RETENTION_SECONDS are pruned in small
-- batches (OutboxStore.prune_delivered). This index finds them without scanning the
-- undelivered rows or the whole table; undelivered rows are never in it.
CREATE INDEX IF NOT EXISTS webhook_outbox_delivered_idx ON webhook_outbox (delivered_at)
    WHERE delivered_at IS NOT NULL;
