-- Reviewer console sessions (service/console/sessions.py). The browser's cookie holds
-- a random token; only its SHA-256 is stored, so a copy of this table signs nobody in.
-- The API key a reviewer signed in with is never stored: data holds the key's id, the
-- name and roles it had, and the session's CSRF token. Each request re-checks that
-- the key still exists and has not expired.
CREATE TABLE console_sessions (
    token_sha256 text        PRIMARY KEY CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    data         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- Expired rows are deleted at each sign-in (the only way a row is added), oldest
-- first through this index, so the table holds at most one TTL's worth of sign-ins.
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
