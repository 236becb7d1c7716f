-- Indexes for the tenants' read API (GET /v1/events, /v1/identities, /v1/signals/{slug}/rollups):
-- every list is newest (or, for rollups, oldest) first with the event id breaking ties, so each
-- index ends in (occurred_at, id) and a page starts where the previous one ended without a sort.
-- A lookup by id needs none: the id's time is its receipt time, which selects one daily
-- partition, and the primary key (received_at, id) finds it there.

DROP INDEX events_signal_occurred;
CREATE INDEX events_signal_occurred ON events (signal_id, occurred_at, id);
DROP INDEX events_identity;
CREATE INDEX events_identity ON events (tenant_id, identity_type, identity_id, occurred_at, id);
CREATE INDEX events_tenant_occurred ON events (tenant_id, occurred_at, id);
-- Invalid events are few: the ones a client looks for when something went wrong.
CREATE INDEX events_tenant_invalid ON events (tenant_id, occurred_at, id) WHERE status = 'invalid';

-- An identity's latest states, whatever the signal.
CREATE INDEX signal_states_identity ON signal_states (tenant_id, identity_type, identity_id);
-- A metric's rollups over all identities.
CREATE INDEX metric_rollups_signal ON metric_rollups (signal_id, granularity, bucket_start);
