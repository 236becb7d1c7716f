-- A metric's rollups over every identity, kept by the worker in the same transaction as the
-- per-identity rows of metric_rollups (so exactly once, as they are): reading them is one row
-- per bucket, where adding up the per-identity rows at read time cost one row per identity
-- and bucket (seconds, or a read timeout, for a tenant with many identities).
CREATE TABLE metric_rollup_totals (
    signal_id    text NOT NULL,
    granularity  text NOT NULL,
    bucket_start timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    count        bigint NOT NULL,
    sum          double precision NOT NULL,
    min          double precision NOT NULL,
    max          double precision NOT NULL,
    PRIMARY KEY (signal_id, granularity, bucket_start)
);

-- The totals of what is stored already. A sum past a double's range (possible only for values
-- stored before metric values were bounded) is kept as an infinity instead of failing.
INSERT INTO metric_rollup_totals
SELECT signal_id, granularity, bucket_start, tenant_id, sum(count)::bigint,
       CASE WHEN abs(sum(sum::numeric)) <= 1.7976931348623157e308::numeric
            THEN sum(sum::numeric)::float8
            ELSE sign(sum(sum::numeric))::float8 * 'Infinity'::float8 END,
       min(min), max(max)
FROM metric_rollups
GROUP BY signal_id, granularity, bucket_start, tenant_id;

-- Only the totals' reads used it.
DROP INDEX metric_rollups_signal;
