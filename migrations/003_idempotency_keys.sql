-- The first answer to each Idempotency-Key, per caller, written in the same transaction as the
-- events the request recorded: a retry gets the same answer and records nothing new.
CREATE TABLE idempotency_keys (
    caller      text        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    status_code integer     NOT NULL,
    headers     jsonb       NOT NULL,
    body        bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
