-- Stored events and what is derived from them.

-- One row per accepted event. Range-partitioned by receipt day (UTC) so old days can be
-- detached or dropped cheaply; the worker creates partitions ahead of need. The primary key
-- holds the partition key, as PostgreSQL requires; an event's received_at never changes, so
-- (received_at, id) is as unique as id and makes inserts idempotent.
CREATE TABLE events (
    id              uuid NOT NULL,
    tenant_id       text NOT NULL,
    signal_id       text NOT NULL,
    schema_version  integer,
    identity_type   text NOT NULL,
    identity_id     text NOT NULL,
    data            jsonb NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    reference       text,
    status          text NOT NULL CHECK (status IN ('processed', 'invalid')),
    error           text,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (received_at, id)
) PARTITION BY RANGE (received_at);

CREATE INDEX events_id ON events (id);
CREATE INDEX events_signal_occurred ON events (signal_id, occurred_at);
CREATE INDEX events_identity ON events (tenant_id, identity_type, identity_id, occurred_at);

-- Hourly and daily aggregates of data.value for processed metric events.
CREATE TABLE metric_rollups (
    signal_id      text NOT NULL,
    identity_type  text NOT NULL,
    identity_id    text NOT NULL,
    granularity    text NOT NULL CHECK (granularity IN ('hour', 'day')),
    bucket_start   timestamptz NOT NULL,
    tenant_id      text NOT NULL,
    count          bigint NOT NULL,
    sum            double precision NOT NULL,
    min            double precision NOT NULL,
    max            double precision NOT NULL,
    PRIMARY KEY (signal_id, identity_type, identity_id, granularity, bucket_start)
);

-- The latest state per identity, by event timestamp (ties broken by event id).
CREATE TABLE signal_states (
    signal_id      text NOT NULL,
    identity_type  text NOT NULL,
    identity_id    text NOT NULL,
    tenant_id      text NOT NULL,
    data           jsonb NOT NULL,
    occurred_at    timestamptz NOT NULL,
    event_id       uuid NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (signal_id, identity_type, identity_id)
);

-- Stream entries that could not be stored after repeated tries. `raw` is the entry's fields
-- as a JSON object, exactly as read from the stream, so it can be replayed.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    stream       text NOT NULL,
    entry_id     text NOT NULL,
    event_id     text,
    tenant_id    text,
    raw          text NOT NULL,
    error        text NOT NULL,
    deliveries   integer NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz,
    UNIQUE (stream, entry_id)
);
