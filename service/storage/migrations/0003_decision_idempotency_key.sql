-- A client's Idempotency-Key, stored with the decision it made: a retry carrying the
-- same key is answered with the stored decision (or refused when the key comes back
-- with a different decision), never applied twice. Keys are scoped to the review and
-- the reviewer, so two reviewers' keys never collide. Older records have none.
ALTER TABLE review_decisions
    ADD COLUMN idempotency_key text
    CHECK (idempotency_key IS NULL OR length(idempotency_key) BETWEEN 1 AND 255);

CREATE UNIQUE INDEX review_decisions_idempotency_key_idx
    ON review_decisions (review_id, reviewer, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
