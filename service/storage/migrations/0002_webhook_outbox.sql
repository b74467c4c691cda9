-- Decision notifications, written in the same transaction as the decision and
-- delivered at least once by the outbox worker.
CREATE TABLE webhook_outbox (
    id              bigserial PRIMARY KEY,
    review_id       uuid NOT NULL REFERENCES reviews (id),
    decision_id     bigint NOT NULL UNIQUE REFERENCES review_decisions (id),
    payload         jsonb NOT NULL,
    -- W3C trace context of the decision request, so the delivery joins its trace
    trace_context   jsonb NOT NULL DEFAULT '{}'::jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbox_due_idx ON webhook_outbox (next_attempt_at) WHERE delivered_at IS NULL;
