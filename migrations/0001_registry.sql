-- The registry: tenants, their API keys, signals and signal schemas.
-- PostgreSQL is the system of record; Redis holds a copy the api reads.

CREATE TABLE tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    name        text,
    -- SHA-256 (hex) of the key; the key itself is shown once and never stored.
    key_hash    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

CREATE TABLE signals (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES tenants (id),
    slug        text NOT NULL,
    name        text NOT NULL,
    type        text NOT NULL CHECK (type IN ('event', 'metric', 'state')),
    active      boolean NOT NULL DEFAULT true,
    -- Events per minute; NULL means the configured default for the type.
    rate_limit  integer CHECK (rate_limit > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, slug)
);

CREATE TABLE signal_schemas (
    signal_id   text NOT NULL REFERENCES signals (id),
    version     integer NOT NULL CHECK (version > 0),
    schema      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (signal_id, version)
);
