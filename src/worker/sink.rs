//! Storing a batch in PostgreSQL, exactly once.
//!
//! One transaction per batch: the events go in by binary `COPY` (falling back to an insert with
//! `ON CONFLICT DO NOTHING` when some were stored before), then rollups and states are updated
//! for the rows that were new. A batch seen twice (a crash
//! before `XACK`, a claim from a dead consumer) inserts nothing the second time, so nothing is
//! counted twice.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, NaiveDate, Utc};
use deadpool_postgres::Transaction;
use deadpool_postgres::{GenericClient, Pool};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type};
use uuid::Uuid;

use crate::domain::SignalType;
use crate::stream::StreamEntry;

/// An event ready to store: the entry plus the verdict of validation.
#[derive(Debug)]
pub struct Record {
    pub entry: StreamEntry,
    /// `None`: processed; `Some(reason)`: stored as invalid.
    pub invalid: Option<String>,
    /// `data.value` of a processed metric event.
    pub value: Option<f64>,
}

impl Record {
    /// The `status` it is stored with.
    fn status(&self) -> &'static str {
        if self.invalid.is_some() {
            "invalid"
        } else {
            "processed"
        }
    }
}

/// How a storage attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// PostgreSQL is unreachable, restarting, or the transaction lost a race: try again.
    #[error("PostgreSQL unavailable: {0}")]
    Unavailable(String),
    /// PostgreSQL refused the data itself: retrying the same rows fails the same way.
    #[error("PostgreSQL refused the data: {0}")]
    Refused(String),
}

impl From<tokio_postgres::Error> for SinkError {
    fn from(e: tokio_postgres::Error) -> Self {
        let msg = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        match e.code() {
            // Data exceptions, integrity and "no partition for this row" are about the rows.
            Some(code) if refused(code) => SinkError::Refused(msg),
            _ => SinkError::Unavailable(msg),
        }
    }
}

impl From<deadpool_postgres::PoolError> for SinkError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        SinkError::Unavailable(e.to_string())
    }
}

fn refused(code: &SqlState) -> bool {
    let c = code.code();
    c.starts_with("22") || c.starts_with("54") || (c.starts_with("23") && c != "23505")
}

/// What a stored batch did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stored {
    pub processed: u64,
    pub invalid: u64,
    /// Events already stored by an earlier delivery.
    pub duplicates: u64,
}

/// Clones share the pool and what they know of partitions.
#[derive(Clone)]
pub struct Sink {
    pg: Pool,
    /// Days whose `events` partition is known to exist.
    partitions: std::sync::Arc<std::sync::Mutex<HashSet<NaiveDate>>>,
}

impl Sink {
    pub fn new(pg: Pool) -> Self {
        Sink {
            pg,
            partitions: Default::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pg
    }

    /// Stores `records` in one transaction.
    pub async fn store(&self, records: &[Record]) -> Result<Stored, SinkError> {
        self.ensure_partitions(records.iter().map(|r| r.entry.received_at.date_naive()))
            .await?;
        let mut client = self.pg.get().await?;
        let tx = client.transaction().await?;
        let stored = store_in(&tx, records).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// Stores one event that PostgreSQL refused as it was: status `invalid`, the reason, and
    /// its data kept as a JSON string of the raw text, which PostgreSQL always accepts.
    pub async fn store_refused(&self, record: &Record, reason: &str) -> Result<Stored, SinkError> {
        let raw = serde_json::Value::String(record.entry.data.get().to_owned());
        let fallback = Record {
            entry: StreamEntry {
                data: serde_json::value::to_raw_value(&raw).expect("a string serializes"),
                ..record.entry.clone()
            },
            invalid: Some(format!("stored as text: {reason}")),
            value: None,
        };
        self.store(std::slice::from_ref(&fallback)).await
    }

    /// Creates the daily `events` partitions for `days` where missing.
    pub async fn ensure_partitions(
        &self,
        days: impl IntoIterator<Item = NaiveDate>,
    ) -> Result<(), SinkError> {
        let missing: Vec<NaiveDate> = {
            let known = self.partitions.lock().expect("partition set");
            let mut days: Vec<NaiveDate> =
                days.into_iter().filter(|d| !known.contains(d)).collect();
            days.sort();
            days.dedup();
            days
        };
        if missing.is_empty() {
            return Ok(());
        }
        let mut client = self.pg.get().await?;
        for day in missing {
            let tx = client.transaction().await?;
            // Serialises creation across workers; CREATE ... IF NOT EXISTS alone can still race.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('sluice.events.partitions'))",
                &[],
            )
            .await?;
            let next = day.succ_opt().expect("a representable day");
            tx.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF events FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                partition_name(day)
            ))
            .await?;
            tx.commit().await?;
            self.partitions.lock().expect("partition set").insert(day);
        }
        Ok(())
    }

    /// Drops daily partitions older than `days` days; returns the names dropped.
    pub async fn drop_older_than(
        &self,
        days: u32,
        today: NaiveDate,
    ) -> Result<Vec<String>, SinkError> {
        // Past the calendar's first day, nothing can be older.
        let Some(cutoff) = today.checked_sub_days(chrono::Days::new(u64::from(days))) else {
            return Ok(Vec::new());
        };
        let client = self.pg.get().await?;
        let names: Vec<String> = client
            .query(
                "SELECT c.relname FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'events'",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = Vec::new();
        for name in names {
            let Some(day) = name
                .strip_prefix("events_")
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            else {
                continue;
            };
            if day < cutoff {
                client
                    .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
                self.partitions.lock().expect("partition set").remove(&day);
                dropped.push(name);
            }
        }
        Ok(dropped)
    }
}

pub fn partition_name(day: NaiveDate) -> String {
    format!("events_{}", day.format("%Y%m%d"))
}

async fn store_in(tx: &Transaction<'_>, records: &[Record]) -> Result<Stored, SinkError> {
    // The same event may arrive twice in one batch (its own pending entry and a claim).
    let mut seen = HashSet::with_capacity(records.len());
    let records: Vec<&Record> = records.iter().filter(|r| seen.insert(r.entry.id)).collect();

    // The fast path: binary COPY, the quickest way into PostgreSQL. A redelivered event makes
    // it fail on the primary key; then the batch goes in again with ON CONFLICT DO NOTHING,
    // which tells which rows are new (rare: after a crash, a claim, a replayed dead letter).
    tx.batch_execute("SAVEPOINT fast").await?;
    let inserted: HashSet<Uuid> = match copy_events(tx, &records).await {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT fast").await?;
            records.iter().map(|r| r.entry.id).collect()
        }
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tx.batch_execute("ROLLBACK TO SAVEPOINT fast").await?;
            insert_new(tx, &records).await?
        }
        Err(e) => return Err(e.into()),
    };

    let fresh: Vec<&Record> = records
        .iter()
        .copied()
        .filter(|r| inserted.contains(&r.entry.id))
        .collect();
    upsert_rollups(tx, &fresh).await?;
    upsert_states(tx, &fresh).await?;

    let invalid = fresh.iter().filter(|r| r.invalid.is_some()).count() as u64;
    Ok(Stored {
        processed: fresh.len() as u64 - invalid,
        invalid,
        duplicates: (records.len() - fresh.len()) as u64,
    })
}

/// Inserts those of `records` not stored yet, and says which they were.
async fn insert_new(
    tx: &Transaction<'_>,
    records: &[&Record],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let ids = column(records, |r| r.entry.id);
    let tenants = column(records, |r| r.entry.tenant.as_str());
    let signals = column(records, |r| r.entry.signal.as_str());
    let versions = column(records, |r| r.entry.schema_version.map(|v| v as i32));
    let itypes = column(records, |r| r.entry.identity_type.as_str());
    let iids = column(records, |r| r.entry.identity_id.as_str());
    let datas = column(records, |r| r.entry.data.get());
    let occurred = column(records, |r| r.entry.occurred_at);
    let received = column(records, |r| r.entry.received_at);
    let refs = column(records, |r| r.entry.reference.as_deref());
    let statuses = column(records, |r| r.status());
    let errors = column(records, |r| r.invalid.as_deref());
    let rows = tx
        .query(
            "INSERT INTO events (id, tenant_id, signal_id, schema_version, identity_type, identity_id,
                                 data, occurred_at, received_at, reference, status, error)
             SELECT id, t, s, v, it, iid, d::jsonb, o, r, ref, st, err
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[],
                         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::text[])
                  AS u(id, t, s, v, it, iid, d, o, r, ref, st, err)
             ON CONFLICT DO NOTHING
             RETURNING id",
            &[
                &ids, &tenants, &signals, &versions, &itypes, &iids, &datas, &occurred, &received,
                &refs, &statuses, &errors,
            ],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// One column of `records`, for an `unnest` array parameter.
fn column<'r, T>(records: &[&'r Record], value: impl Fn(&'r Record) -> T) -> Vec<T> {
    records.iter().map(|&r| value(r)).collect()
}

/// `COPY events … FROM STDIN BINARY` of `records`.
async fn copy_events(
    tx: &Transaction<'_>,
    records: &[&Record],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx
        .copy_in::<_, bytes::Bytes>(
            "COPY events (id, tenant_id, signal_id, schema_version, identity_type, identity_id,
                          data, occurred_at, received_at, reference, status, error)
             FROM STDIN BINARY",
        )
        .await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::UUID,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::TEXT,
            Type::JSONB,
            Type::TIMESTAMPTZ,
            Type::TIMESTAMPTZ,
            Type::TEXT,
            Type::TEXT,
            Type::TEXT,
        ],
    );
    let mut writer = std::pin::pin!(writer);
    for r in records {
        let e = &r.entry;
        let version = e.schema_version.map(|v| v as i32);
        let (status, error) = (r.status(), r.invalid.as_deref());
        writer
            .as_mut()
            .write(&[
                &e.id,
                &e.tenant,
                &e.signal,
                &version,
                &e.identity_type,
                &e.identity_id,
                &Jsonb(e.data.get()),
                &e.occurred_at,
                &e.received_at,
                &e.reference,
                &status,
                &error,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// JSON text sent as `jsonb` in binary form (a version byte, then the text), as COPY BINARY
/// takes it; PostgreSQL parses and checks it as it would the text form.
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    fn to_sql_checked(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        tokio_postgres::types::__to_sql_checked(self, ty, out)
    }
}

/// Which rollup row an event counts in.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct BucketKey<'a> {
    signal: &'a str,
    identity_type: &'a str,
    identity_id: &'a str,
    granularity: &'static str,
    start: DateTime<Utc>,
}

/// What a batch adds to one rollup row.
struct Aggregate<'a> {
    tenant: &'a str,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
}

async fn upsert_rollups(tx: &impl GenericClient, fresh: &[&Record]) -> Result<(), SinkError> {
    // Sorted keys: concurrent workers lock rollup rows in the same order, avoiding deadlocks.
    let mut buckets: BTreeMap<BucketKey, Aggregate> = BTreeMap::new();
    for r in fresh {
        let (Some(value), None) = (r.value, &r.invalid) else {
            continue;
        };
        if r.entry.signal_type != SignalType::Metric {
            continue;
        }
        let e = &r.entry;
        for (granularity, unit) in [("hour", Duration::hours(1)), ("day", Duration::days(1))] {
            let key = BucketKey {
                signal: &e.signal,
                identity_type: &e.identity_type,
                identity_id: &e.identity_id,
                granularity,
                start: truncate(e.occurred_at, unit),
            };
            let agg = buckets.entry(key).or_insert(Aggregate {
                tenant: &e.tenant,
                count: 0,
                sum: 0.0,
                min: value,
                max: value,
            });
            agg.count += 1;
            agg.sum += value;
            agg.min = agg.min.min(value);
            agg.max = agg.max.max(value);
        }
    }
    if buckets.is_empty() {
        return Ok(());
    }
    let n = buckets.len();
    let (mut signals, mut itypes, mut iids, mut grans) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut starts, mut tenants) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut counts, mut sums, mut mins, mut maxs) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for (k, a) in &buckets {
        signals.push(k.signal);
        itypes.push(k.identity_type);
        iids.push(k.identity_id);
        grans.push(k.granularity);
        starts.push(k.start);
        tenants.push(a.tenant);
        counts.push(a.count);
        sums.push(a.sum);
        mins.push(a.min);
        maxs.push(a.max);
    }
    tx.execute(
        "INSERT INTO metric_rollups AS m (signal_id, identity_type, identity_id, granularity, bucket_start,
                                         tenant_id, count, sum, min, max)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[],
                              $7::bigint[], $8::float8[], $9::float8[], $10::float8[])
         ON CONFLICT (signal_id, identity_type, identity_id, granularity, bucket_start) DO UPDATE SET
             count = m.count + excluded.count,
             sum = m.sum + excluded.sum,
             min = least(m.min, excluded.min),
             max = greatest(m.max, excluded.max)",
        &[&signals, &itypes, &iids, &grans, &starts, &tenants, &counts, &sums, &mins, &maxs],
    )
    .await?;
    // The same rows added up over every identity, one per signal and bucket, locked in key
    // order as above.
    tx.execute(
        "INSERT INTO metric_rollup_totals AS m (signal_id, granularity, bucket_start, tenant_id,
                                              count, sum, min, max)
         SELECT s, g, b, min(t), sum(c)::bigint, sum(v), min(lo), max(hi)
         FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[],
                     $5::bigint[], $6::float8[], $7::float8[], $8::float8[]) AS r(s, g, b, t, c, v, lo, hi)
         GROUP BY s, g, b ORDER BY s, g, b
         ON CONFLICT (signal_id, granularity, bucket_start) DO UPDATE SET
             count = m.count + excluded.count,
             sum = m.sum + excluded.sum,
             min = least(m.min, excluded.min),
             max = greatest(m.max, excluded.max)",
        &[
            &signals, &grans, &starts, &tenants, &counts, &sums, &mins, &maxs,
        ],
    )
    .await?;
    Ok(())
}

async fn upsert_states(tx: &impl GenericClient, fresh: &[&Record]) -> Result<(), SinkError> {
    // The newest event per identity in this batch, by (timestamp, id); sorted keys as above.
    let mut latest: BTreeMap<(&str, &str, &str), &StreamEntry> = BTreeMap::new();
    for r in fresh {
        if r.entry.signal_type != SignalType::State || r.invalid.is_some() {
            continue;
        }
        let e = &r.entry;
        let slot = latest
            .entry((&e.signal, &e.identity_type, &e.identity_id))
            .or_insert(e);
        if (e.occurred_at, e.id) > (slot.occurred_at, slot.id) {
            *slot = e;
        }
    }
    if latest.is_empty() {
        return Ok(());
    }
    let entries: Vec<&StreamEntry> = latest.into_values().collect();
    let column = |f: fn(&StreamEntry) -> &str| entries.iter().map(|e| f(e)).collect::<Vec<&str>>();
    let (signals, itypes, iids, tenants) = (
        column(|e| &e.signal),
        column(|e| &e.identity_type),
        column(|e| &e.identity_id),
        column(|e| &e.tenant),
    );
    let datas = column(|e| e.data.get());
    let occurred: Vec<DateTime<Utc>> = entries.iter().map(|e| e.occurred_at).collect();
    let ids: Vec<Uuid> = entries.iter().map(|e| e.id).collect();
    // An older event arriving later never overwrites a newer state.
    tx.execute(
        "INSERT INTO signal_states AS s (signal_id, identity_type, identity_id, tenant_id, data, occurred_at, event_id)
         SELECT sig, it, iid, t, d::jsonb, o, e
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::uuid[])
              AS u(sig, it, iid, t, d, o, e)
         ON CONFLICT (signal_id, identity_type, identity_id) DO UPDATE SET
             data = excluded.data, occurred_at = excluded.occurred_at, event_id = excluded.event_id,
             tenant_id = excluded.tenant_id, updated_at = now()
         WHERE (s.occurred_at, s.event_id) < (excluded.occurred_at, excluded.event_id)",
        &[&signals, &itypes, &iids, &tenants, &datas, &occurred, &ids],
    )
    .await?;
    Ok(())
}

fn truncate(t: DateTime<Utc>, unit: Duration) -> DateTime<Utc> {
    t.duration_trunc(unit)
        .expect("timestamps are far from the representable range")
}
