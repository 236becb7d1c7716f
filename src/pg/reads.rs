//! What a tenant reads back of what was stored: its events (by id, or listed by signal, status,
//! identity and time), an identity's latest states, and a metric's rollups.
//!
//! Requirements: a read never touches another tenant's rows (every query is bounded by the
//! tenant), never gets in ingest's way (the api's own small pool, on the primary or on
//! `SLUICE__POSTGRES__READ_URL`; ingest uses no PostgreSQL at all), and never hangs (a statement
//! timeout on the connection and one deadline over the whole read). Lists use keyset pages on
//! `(occurred_at, id)`, served by the indexes of `migrations/0005_reads.sql`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Pool, Timeouts};
use serde_json::value::RawValue;
use tokio_postgres::types::{FromSql, ToSql, Type};
use uuid::Uuid;

use super::PgError;
use crate::config::PostgresSettings;
use crate::domain::SignalType;

/// Why a read could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("PostgreSQL did not answer within {0:?}")]
    Timeout(Duration),
    #[error("PostgreSQL: {0}")]
    Failed(String),
}

impl From<tokio_postgres::Error> for ReadError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReadError::Failed(super::describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for ReadError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ReadError::Failed(PgError::from(e).to_string())
    }
}

/// A stored event, as a client reads it back.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: Uuid,
    pub signal: String,
    pub signal_id: String,
    pub schema_version: Option<i32>,
    pub status: String,
    pub error: Option<String>,
    pub identity_type: String,
    pub identity_id: String,
    pub data: StoredJson,
    pub timestamp: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub reference: Option<String>,
}

impl StoredEvent {
    fn from_row(row: &tokio_postgres::Row) -> Result<Self, ReadError> {
        Ok(StoredEvent {
            id: row.try_get("id")?,
            signal: row.try_get("slug")?,
            signal_id: row.try_get("signal_id")?,
            schema_version: row.try_get("schema_version")?,
            status: row.try_get("status")?,
            error: row.try_get("error")?,
            identity_type: row.try_get("identity_type")?,
            identity_id: row.try_get("identity_id")?,
            data: row.try_get("data")?,
            timestamp: row.try_get("occurred_at")?,
            received_at: row.try_get("received_at")?,
            reference: row.try_get("reference")?,
        })
    }

    /// Where a page that ended with this event goes on from.
    pub fn position(&self) -> Position {
        Position {
            at: self.timestamp,
            id: self.id,
        }
    }
}

const EVENT_COLUMNS: &str = "e.id, s.slug, e.signal_id, e.schema_version, e.status, e.error, \
     e.identity_type, e.identity_id, e.data, e.occurred_at, e.received_at, e.reference";

/// A `jsonb` value as PostgreSQL stores it, to be written into an answer as it is: its numbers
/// exactly as stored (read into a `serde_json::Value`, those beyond a 64-bit integer or with
/// more digits than a float keeps would be rounded), without the spaces `jsonb`'s text puts after
/// each `:` and `,`.
#[derive(Debug, Clone)]
pub struct StoredJson(Box<RawValue>);

impl StoredJson {
    /// `text` (valid JSON) without whitespace outside its strings.
    fn compact(text: &str) -> Result<Self, serde_json::Error> {
        let mut out = String::with_capacity(text.len());
        let (mut in_string, mut escaped) = (false, false);
        for c in text.chars() {
            if in_string {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    in_string = false;
                }
            } else if c == '"' {
                in_string = true;
            } else if matches!(c, ' ' | '\n' | '\r' | '\t') {
                continue;
            }
            out.push(c);
        }
        RawValue::from_string(out).map(StoredJson)
    }
}

impl serde::Serialize for StoredJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'a> FromSql<'a> for StoredJson {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form is a version byte (1) and the text; json's is the text.
        let text = match (ty, raw) {
            (&Type::JSONB, [1, text @ ..]) => text,
            (&Type::JSONB, _) => return Err("unsupported jsonb version".into()),
            _ => raw,
        };
        Ok(StoredJson::compact(std::str::from_utf8(text)?)?)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::JSONB | Type::JSON)
    }
}

/// A place in the newest-first order of events: a page continues below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub at: DateTime<Utc>,
    pub id: Uuid,
}

/// Which events a list holds; every field narrows it.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub signal_id: Option<String>,
    /// `processed` or `invalid`.
    pub status: Option<String>,
    /// (type, id).
    pub identity: Option<(String, String)>,
    /// Events whose timestamp is at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Events whose timestamp is before this.
    pub until: Option<DateTime<Utc>>,
}

/// A signal of the tenant, as reads need it.
#[derive(Debug, Clone)]
pub struct SignalRef {
    pub id: String,
    pub signal_type: SignalType,
}

/// The latest state of an identity for one state signal.
#[derive(Debug, Clone)]
pub struct State {
    pub signal: String,
    pub signal_id: String,
    pub data: StoredJson,
    pub timestamp: DateTime<Utc>,
    pub event_id: Uuid,
}

/// One bucket of a metric's rollup.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

/// Which rollup buckets to read.
#[derive(Debug)]
pub struct RollupQuery<'a> {
    pub signal_id: &'a str,
    /// One identity's buckets; without one, the buckets over every identity of the tenant.
    pub identity: Option<(&'a str, &'a str)>,
    /// `hour` or `day`.
    pub granularity: &'a str,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Buckets starting after this one (the previous page's last).
    pub after: Option<DateTime<Utc>>,
    pub limit: u32,
}

/// A query's parameters, numbered as they are bound.
#[derive(Default)]
struct Params<'a>(Vec<&'a (dyn ToSql + Sync)>);

impl<'a> Params<'a> {
    /// Binds `value`; its placeholder.
    fn bind(&mut self, value: &'a (dyn ToSql + Sync)) -> String {
        self.0.push(value);
        format!("${}", self.0.len())
    }
}

/// The read pool and its deadline.
#[derive(Clone)]
pub struct Reads {
    pool: Pool,
    timeout: Duration,
}

impl Reads {
    /// The api's read pool (connections open on first use, so the api starts without
    /// PostgreSQL): every statement limited to `read_timeout`, and so is the wait for a
    /// connection.
    pub fn new(settings: &PostgresSettings) -> Result<Self, PgError> {
        let reads = settings.for_reads();
        let timeout = settings.read_timeout;
        let statement_timeout = format!("-c statement_timeout={}", timeout.as_millis());
        let pool = super::pool_with(
            &reads,
            |config| {
                config.options(&statement_timeout).connect_timeout(timeout);
            },
            Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            },
        )?;
        Ok(Reads { pool, timeout })
    }

    /// Runs `read` on a connection of the pool, within the deadline.
    async fn run<T>(
        &self,
        read: impl AsyncFnOnce(&deadpool_postgres::Client) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        // The statement timeout bounds the query; this bounds connecting and waiting too.
        let deadline = self.timeout + Duration::from_millis(500);
        let attempt = async {
            let client = self.pool.get().await?;
            read(&client).await
        };
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or(Err(ReadError::Timeout(deadline)))
    }

    /// The tenant's event `id`, once stored. The id's time (a UUIDv7's) is the receipt time,
    /// which selects the one daily partition to look in.
    pub async fn event(&self, tenant: &str, id: Uuid) -> Result<Option<StoredEvent>, ReadError> {
        let Some(received) = receipt_millis(id) else {
            return Ok(None);
        };
        let from = received;
        let to = received + chrono::Duration::milliseconds(1);
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e JOIN signals s ON s.id = e.signal_id
             WHERE e.received_at >= $1 AND e.received_at < $2 AND e.id = $3 AND e.tenant_id = $4"
        );
        self.run(async |client| {
            let row = client.query_opt(&sql, &[&from, &to, &id, &tenant]).await?;
            row.as_ref().map(StoredEvent::from_row).transpose()
        })
        .await
    }

    /// Up to `limit` of the tenant's events that `filter` admits, newest first (by timestamp,
    /// then id), below `after` when given.
    pub async fn events(
        &self,
        tenant: &str,
        filter: &EventFilter,
        after: Option<Position>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, ReadError> {
        let limit = i64::from(limit);
        let after = after.map(|p| (p.at, p.id));
        let mut q = Params::default();
        let mut conditions = vec![format!("e.tenant_id = {}", q.bind(&tenant))];
        if let Some(signal_id) = &filter.signal_id {
            conditions.push(format!("e.signal_id = {}", q.bind(signal_id)));
        }
        if let Some(status) = &filter.status {
            conditions.push(format!("e.status = {}", q.bind(status)));
        }
        if let Some((identity_type, identity_id)) = &filter.identity {
            conditions.push(format!(
                "e.identity_type = {} AND e.identity_id = {}",
                q.bind(identity_type),
                q.bind(identity_id)
            ));
        }
        if let Some(since) = &filter.since {
            conditions.push(format!("e.occurred_at >= {}", q.bind(since)));
        }
        if let Some(until) = &filter.until {
            conditions.push(format!("e.occurred_at < {}", q.bind(until)));
        }
        if let Some((at, id)) = &after {
            conditions.push(format!(
                "(e.occurred_at, e.id) < ({}, {})",
                q.bind(at),
                q.bind(id)
            ));
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e JOIN signals s ON s.id = e.signal_id
             WHERE {} ORDER BY e.occurred_at DESC, e.id DESC LIMIT {}",
            conditions.join(" AND "),
            q.bind(&limit)
        );
        let params = q.0;
        self.run(async |client| {
            let rows = client.query(&sql, &params).await?;
            rows.iter().map(StoredEvent::from_row).collect()
        })
        .await
    }

    /// The tenant's signal `slug`, active or not.
    pub async fn signal(&self, tenant: &str, slug: &str) -> Result<Option<SignalRef>, ReadError> {
        self.run(async |client| {
            let row = client
                .query_opt(
                    "SELECT id, type FROM signals WHERE tenant_id = $1 AND slug = $2",
                    &[&tenant, &slug],
                )
                .await?;
            Ok(row.map(|r| SignalRef {
                id: r.get(0),
                signal_type: r.get::<_, String>(1).parse().unwrap_or(SignalType::Event),
            }))
        })
        .await
    }

    /// The latest state of the identity for each state signal, by slug.
    pub async fn states(
        &self,
        tenant: &str,
        identity_type: &str,
        identity_id: &str,
    ) -> Result<Vec<State>, ReadError> {
        self.run(async |client| {
            let rows = client
                .query(
                    "SELECT s.slug, st.signal_id, st.data, st.occurred_at, st.event_id
                     FROM signal_states st JOIN signals s ON s.id = st.signal_id
                     WHERE st.tenant_id = $1 AND st.identity_type = $2 AND st.identity_id = $3
                     ORDER BY s.slug",
                    &[&tenant, &identity_type, &identity_id],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(State {
                        signal: r.try_get(0)?,
                        signal_id: r.try_get(1)?,
                        data: r.try_get(2)?,
                        timestamp: r.try_get(3)?,
                        event_id: r.try_get(4)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Rollup buckets of the tenant's metric, oldest first.
    pub async fn rollups(
        &self,
        tenant: &str,
        q: &RollupQuery<'_>,
    ) -> Result<Vec<Bucket>, ReadError> {
        // Every time an RFC 3339 timestamp can write (and PostgreSQL can hold).
        let first = DateTime::parse_from_rfc3339("0001-01-01T00:00:00Z").expect("a time");
        let after_last = DateTime::parse_from_rfc3339("9999-12-31T23:59:59.999999Z")
            .expect("a time")
            + chrono::Duration::microseconds(1);
        let since = q.since.unwrap_or(first.into());
        let until = q.until.unwrap_or(after_last.into());
        // Buckets after the cursor: at or after the next microsecond.
        let from = match q.after {
            Some(after) => since.max(after + chrono::Duration::microseconds(1)),
            None => since,
        };
        let limit = i64::from(q.limit);
        self.run(async |client| {
            let rows =
                match q.identity {
                    Some((identity_type, identity_id)) => {
                        client
                            .query(
                                "SELECT bucket_start, count, sum, min, max FROM metric_rollups
                             WHERE signal_id = $1 AND identity_type = $2 AND identity_id = $3
                               AND granularity = $4 AND bucket_start >= $5 AND bucket_start < $6
                               AND tenant_id = $7
                             ORDER BY bucket_start LIMIT $8",
                                &[
                                    &q.signal_id,
                                    &identity_type,
                                    &identity_id,
                                    &q.granularity,
                                    &from,
                                    &until,
                                    &tenant,
                                    &limit,
                                ],
                            )
                            .await?
                    }
                    None => client
                        .query(
                            "SELECT bucket_start, count, sum, min, max FROM metric_rollup_totals
                             WHERE signal_id = $1 AND granularity = $2 AND bucket_start >= $3
                               AND bucket_start < $4 AND tenant_id = $5
                             ORDER BY bucket_start LIMIT $6",
                            &[&q.signal_id, &q.granularity, &from, &until, &tenant, &limit],
                        )
                        .await?,
                };
            Ok(rows
                .iter()
                .map(|r| Bucket {
                    start: r.get(0),
                    count: r.get(1),
                    sum: r.get(2),
                    min: r.get(3),
                    max: r.get(4),
                })
                .collect())
        })
        .await
    }
}

/// The receipt time a UUIDv7 event id carries (to the millisecond); `None` for other UUIDs,
/// which no event has.
pub fn receipt_millis(id: Uuid) -> Option<DateTime<Utc>> {
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    DateTime::from_timestamp(i64::try_from(secs).ok()?, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_json_is_jsonb_text_without_the_spaces_outside_its_strings() {
        let jsonb = |text: &str| [&[1u8][..], text.as_bytes()].concat();
        let text =
            r#"{"s": "a: b, \"c\" \\", "n": 18446744073709551616, "l": [1, 2.50, {"é": null}]}"#;
        let json = StoredJson::from_sql(&Type::JSONB, &jsonb(text)).unwrap();
        assert_eq!(
            serde_json::to_string(&json).unwrap(),
            r#"{"s":"a: b, \"c\" \\","n":18446744073709551616,"l":[1,2.50,{"é":null}]}"#
        );
        assert!(StoredJson::from_sql(&Type::JSONB, &[2, b'{', b'}']).is_err());
        assert!(StoredJson::from_sql(&Type::JSONB, &jsonb("{")).is_err());
    }

    #[test]
    fn an_event_id_carries_its_receipt_millisecond() {
        let at = DateTime::parse_from_rfc3339("2026-11-27T10:15:00.123456Z")
            .unwrap()
            .with_timezone(&Utc);
        let id = uuid::Builder::from_unix_timestamp_millis(at.timestamp_millis() as u64, &[7; 10])
            .into_uuid();
        assert_eq!(
            receipt_millis(id).unwrap().to_rfc3339(),
            "2026-11-27T10:15:00.123+00:00"
        );
        assert_eq!(receipt_millis(Uuid::nil()), None);
        assert_eq!(receipt_millis(Uuid::from_u128(0x4 << 76)), None);
    }
}
