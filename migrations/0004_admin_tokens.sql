-- Admin tokens: the bearer credentials of the admin HTTP API (SLUICE__ADMIN__BIND).
-- Created and revoked with `sluice-admin admin-token`; like API keys, the token is shown once
-- and only its SHA-256 is stored. The admin API reads this table on every request, so a
-- revocation takes effect at once.
CREATE TABLE admin_tokens (
    id          text PRIMARY KEY,
    name        text,
    token_hash  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
