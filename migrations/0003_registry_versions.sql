-- Registry versions: every change to a signal or an API key takes the next value of one clock,
-- and the Redis copy keeps the version beside each entry, so a stale write can never overwrite a
-- newer one (docs/design.md, "The registry copy is versioned").
--
-- The clock is one row. A change bumps it first thing in its transaction, which holds the row's
-- lock until commit: changes are numbered in commit order, and a snapshot that sees version H
-- sees every change numbered H or below, and none above.
CREATE TABLE registry_clock (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO registry_clock (id, version) VALUES (true, 0);

-- Rows that predate versions start at 0: above "no version" in the copy, below any change.
ALTER TABLE signals ADD COLUMN version bigint NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN version bigint NOT NULL DEFAULT 0;
