-- Revoked token ids (the JWT `jti`), when no Redis is configured to hold them. A row can go once
-- the token has expired anyway.
CREATE TABLE revoked_tokens (
    jti        text        PRIMARY KEY,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX revoked_tokens_recent ON revoked_tokens (revoked_at);
