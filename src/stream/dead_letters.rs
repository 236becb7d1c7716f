//! Entries that can never be stored: recorded by the worker, listed and replayed by operators.
//!
//! The `dead_letters` table in PostgreSQL is the record; each partition's dead stream
//! (`sluice:{pNN}:dead`) is a recent view of it for operators who look at Redis. A replayed entry
//! goes back on its tenant's stream with its event id and receipt time, so replaying something
//! that was in fact stored meanwhile stores nothing twice.

use deadpool_postgres::Pool;
use redis::Value as RedisValue;
use serde_json::Value;

use super::group::{Consumer, RawEntry};
use crate::keyspace::Keyspace;
use crate::redis_pool::{Redis, RedisError};

/// Roughly how many entries each dead stream keeps.
const DEAD_STREAM_LEN: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    NotReplayable(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error("Redis: {0}")]
    Redis(#[from] RedisError),
}

impl From<tokio_postgres::Error> for DeadLetterError {
    fn from(e: tokio_postgres::Error) -> Self {
        DeadLetterError::Postgres(crate::pg::describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for DeadLetterError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DeadLetterError::Postgres(format!("cannot connect ({e})"))
    }
}

/// One event of a many-event entry, dead-lettered alone: its position in the entry and its
/// fields as a one-event entry (`EntryEvent::alone`).
pub struct OneEvent<'a> {
    pub position: usize,
    pub fields: &'a [(&'static str, String); 2],
}

/// Records `entry` (or, with `event`, that one event of it) as a dead letter with the reason:
/// in `dead_letters` (again for one recorded before: the reason and count are updated), then on
/// its partition's dead stream; a whole entry is then acknowledged (an event's entry is
/// acknowledged by the caller once its other events are stored). Each step is idempotent, so a
/// retry after a failure at any step records it once.
pub async fn record(
    pg: &Pool,
    consumer: &Consumer,
    entry: &RawEntry,
    event: Option<OneEvent<'_>>,
    reason: &str,
    deliveries: u64,
) -> Result<(), DeadLetterError> {
    let letter = Letter::of(entry, event.as_ref());
    let deliveries = deliveries.min(i32::MAX as u64) as i32;
    pg.get()
        .await?
        .execute(
            "INSERT INTO dead_letters (stream, entry_id, event_id, tenant_id, raw, error, deliveries)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (stream, entry_id) DO UPDATE SET error = excluded.error, deliveries = excluded.deliveries",
            &[
                &Keyspace::stream(entry.partition),
                &letter.entry_id,
                &letter.event_id,
                &letter.tenant,
                &letter.raw_json(),
                &reason,
                &deliveries,
            ],
        )
        .await?;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(Keyspace::dead_stream(entry.partition))
        .arg("MAXLEN")
        .arg("~")
        .arg(DEAD_STREAM_LEN)
        .arg("*");
    for (k, v) in &letter.fields {
        cmd.arg(k).arg(v.as_slice());
    }
    cmd.arg("dead_entry_id")
        .arg(&letter.entry_id)
        .arg("dead_error")
        .arg(reason);
    consumer.redis().query::<String>(&cmd).await?;
    if event.is_none() {
        consumer.ack(std::slice::from_ref(entry)).await?;
    }
    Ok(())
}

/// What is recorded of a dead entry, or of one event of it.
struct Letter {
    /// The stream entry's id; `<entry id>/<position>` for one event of it.
    entry_id: String,
    event_id: Option<String>,
    tenant: Option<String>,
    /// The stream fields as they were (one event's as a one-event entry).
    fields: Vec<(String, Vec<u8>)>,
}

impl Letter {
    fn of(entry: &RawEntry, event: Option<&OneEvent<'_>>) -> Self {
        match event {
            Some(one) => {
                let [(_, m), (_, e)] = one.fields;
                Letter {
                    entry_id: format!("{}/{}", entry.entry_id, one.position),
                    event_id: super::event_id_of(e),
                    tenant: super::Meta::parse(m).map(|meta| meta.tenant.to_owned()),
                    fields: (one.fields.iter())
                        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                        .collect(),
                }
            }
            None => Letter {
                entry_id: entry.entry_id.clone(),
                event_id: entry.event_id(),
                tenant: entry.tenant(),
                fields: (entry.fields.iter())
                    .map(|(k, v)| match v {
                        RedisValue::BulkString(b) => (k.clone(), b.clone()),
                        other => (k.clone(), format!("{other:?}").into_bytes()),
                    })
                    .collect(),
            },
        }
    }

    /// The fields as a JSON object of strings, for the `raw` column.
    fn raw_json(&self) -> String {
        let raw: serde_json::Map<String, Value> = (self.fields.iter())
            .map(|(k, v)| {
                (
                    k.clone(),
                    Value::String(String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect();
        Value::Object(raw).to_string()
    }
}

/// A dead letter as operators see it.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Its number: the id to replay it by, and the list's cursor.
    pub id: i64,
    /// The stream the entry was read from.
    #[schema(example = "sluice:{p07}:events")]
    pub stream: String,
    /// The stream entry's id (`<entry>/<position>` for one event of a many-event entry).
    pub entry_id: String,
    pub event_id: Option<String>,
    pub tenant_id: Option<String>,
    /// Why it could not be stored.
    pub error: String,
    /// How many times it was delivered before it was set aside.
    pub deliveries: i32,
    #[schema(format = DateTime)]
    pub dead_at: String,
    #[schema(format = DateTime)]
    pub replayed_at: Option<String>,
    /// The entry's fields, exactly as read from the stream.
    #[schema(value_type = Object)]
    pub raw: Value,
}

/// The position a page of dead letters starts below: a previous page's `next` (a dead letter's
/// id), given back as text by the admin API and the CLI.
#[derive(Clone, Copy, Debug)]
pub struct Cursor(pub i64);

impl std::str::FromStr for Cursor {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        text.parse::<i64>()
            .ok()
            .filter(|_| text.len() <= 18 && text.bytes().all(|b| b.is_ascii_digit()))
            .map(Cursor)
            .ok_or_else(|| "cursor is not one this list returned".to_owned())
    }
}

/// One page of dead letters, newest first, and the cursor of the next.
pub struct DeadLetterPage {
    pub items: Vec<DeadLetter>,
    pub next: Option<i64>,
}

/// Dead letters, newest first (replayed ones only when `all`), `limit` of them from below
/// `before` (a previous page's cursor).
pub async fn list(
    pg: &Pool,
    all: bool,
    before: Option<Cursor>,
    limit: u32,
) -> Result<DeadLetterPage, DeadLetterError> {
    let before = before.map(|c| c.0);
    let client = pg.get().await?;
    let rows = client
        .query(
            &format!(
                "SELECT id, stream, entry_id, event_id, tenant_id, error, deliveries, {}, {}, raw
                 FROM dead_letters WHERE ($1 OR replayed_at IS NULL) AND ($2::bigint IS NULL OR id < $2)
                 ORDER BY id DESC LIMIT $3",
                crate::pg::iso("dead_at"),
                crate::pg::iso("replayed_at")
            ),
            &[&all, &before, &(i64::from(limit) + 1)],
        )
        .await?;
    let mut items: Vec<DeadLetter> = rows
        .iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            stream: r.get(1),
            entry_id: r.get(2),
            event_id: r.get(3),
            tenant_id: r.get(4),
            error: r.get(5),
            deliveries: r.get(6),
            dead_at: r.get(7),
            replayed_at: r.get(8),
            raw: serde_json::from_str::<Value>(&r.get::<_, String>(9)).unwrap_or(Value::Null),
        })
        .collect();
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    let next = if more {
        items.last().map(|d| d.id)
    } else {
        None
    };
    Ok(DeadLetterPage { items, next })
}

/// A dead letter put back on its stream.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub id: i64,
    /// The id of the new stream entry.
    pub entry_id: String,
}

/// Re-enqueues one dead letter, or every one not replayed yet; returns what was replayed.
pub async fn replay(
    pg: &Pool,
    redis: &Redis,
    keyspace: &Keyspace,
    id: Option<i64>,
) -> Result<Vec<Replayed>, DeadLetterError> {
    let client = pg.get().await?;
    let rows = match id {
        Some(id) => {
            let rows = client
                .query(
                    "SELECT id, tenant_id, raw FROM dead_letters WHERE id = $1",
                    &[&id],
                )
                .await?;
            if rows.is_empty() {
                return Err(DeadLetterError::NotFound(format!(
                    "no dead letter with id {id}"
                )));
            }
            rows
        }
        None => client
            .query(
                "SELECT id, tenant_id, raw FROM dead_letters WHERE replayed_at IS NULL ORDER BY id",
                &[],
            )
            .await?,
    };
    let mut replayed = Vec::new();
    for row in rows {
        let dead_id: i64 = row.get(0);
        let tenant: Option<String> = row.get(1);
        let raw: String = row.get(2);
        let Some(tenant) = tenant else {
            return Err(DeadLetterError::NotReplayable(format!(
                "dead letter {dead_id} has no tenant field, so it has no stream to go back to"
            )));
        };
        let fields: serde_json::Map<String, Value> = serde_json::from_str(&raw).map_err(|e| {
            DeadLetterError::NotReplayable(format!("dead letter {dead_id} is not replayable: {e}"))
        })?;
        let mut cmd = redis::cmd("XADD");
        cmd.arg(Keyspace::stream(keyspace.partition_of(&tenant)))
            .arg("*");
        for (k, v) in fields {
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            cmd.arg(k).arg(v);
        }
        let entry: String = redis.query(&cmd).await?;
        client
            .execute(
                "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
                &[&dead_id],
            )
            .await?;
        replayed.push(Replayed {
            id: dead_id,
            entry_id: entry,
        });
    }
    Ok(replayed)
}
