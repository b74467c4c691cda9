-- Reviews, their append-only decision history and their validation results.
-- Rules that protect the data live here, not only in Python.

CREATE TABLE reviews (
    id                uuid PRIMARY KEY,
    apv_id            text NOT NULL UNIQUE CHECK (length(apv_id) BETWEEN 1 AND 200),
    apv_code          text NOT NULL,
    cve_id            text NOT NULL,
    severity          text NOT NULL CHECK (severity IN ('critical', 'high', 'medium', 'low')),
    source            text NOT NULL,
    package_name      text NOT NULL,
    package_version   text NOT NULL,
    package_ecosystem text NOT NULL,
    patch             text NOT NULL,
    confidence        double precision NOT NULL CHECK (confidence BETWEEN 0 AND 1),
    anomaly_score     double precision NOT NULL,
    cvss_score        double precision CHECK (cvss_score BETWEEN 0 AND 10),
    wargaming         jsonb,
    -- sha256 of the canonical submitted payload: a resubmission with the same apv_id
    -- is idempotent only when this matches.
    payload_sha256    text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'escalated', 'approved', 'rejected', 'modified')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz,
    -- a review has a decision time exactly when it is final
    CONSTRAINT decided_iff_final CHECK ((status IN ('approved', 'rejected', 'modified')) = (decided_at IS NOT NULL))
);

-- Newest-first keyset pagination and the usual filters.
CREATE INDEX reviews_created_id_idx ON reviews (created_at DESC, id DESC);
CREATE INDEX reviews_status_severity_idx ON reviews (status, severity);
CREATE INDEX reviews_cve_idx ON reviews (cve_id);

CREATE TABLE review_decisions (
    id             bigserial PRIMARY KEY,
    review_id      uuid NOT NULL REFERENCES reviews (id),
    decision       text NOT NULL CHECK (decision IN ('approve', 'reject', 'modify', 'escalate')),
    reviewer       text NOT NULL,
    justification  text,
    modifications  jsonb,
    from_status    text NOT NULL,
    to_status      text NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (decision = 'approve' OR justification IS NOT NULL),
    CHECK (decision <> 'modify' OR modifications IS NOT NULL)
);
CREATE INDEX review_decisions_review_idx ON review_decisions (review_id, id);

-- The decision history is an audit trail: rows are appended, never changed.
CREATE FUNCTION review_decisions_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'review_decisions is append-only';
END;
$$;
CREATE TRIGGER review_decisions_no_update_delete
    BEFORE UPDATE OR DELETE ON review_decisions
    FOR EACH ROW EXECUTE FUNCTION review_decisions_append_only();

CREATE TABLE validation_results (
    review_id    uuid NOT NULL REFERENCES reviews (id),
    pattern_type text NOT NULL,
    result       text NOT NULL CHECK (result IN ('valid', 'invalid', 'error')),
    reason       text NOT NULL,
    duration_ms  double precision NOT NULL,
    PRIMARY KEY (review_id, pattern_type)
);
