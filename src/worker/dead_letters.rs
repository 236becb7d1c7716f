//! What operators do with dead letters: list them, and put them back on their streams.
//!
//! A replayed entry keeps its event id and receipt time, so replaying something that was in
//! fact stored meanwhile stores nothing twice.

use deadpool_postgres::Pool;
use serde_json::{Value, json};

use super::streams::Streams;
use crate::registry::RegistryError;

/// Dead letters, newest first; replayed ones only when `all`.
pub async fn list(pg: &Pool, all: bool, limit: i64) -> Result<Value, RegistryError> {
    let client = pg.get().await?;
    let rows = client
        .query(
            "SELECT id, stream, entry_id, event_id, tenant_id, error, deliveries,
                    to_char(dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    to_char(replayed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    raw
             FROM dead_letters WHERE $1 OR replayed_at IS NULL
             ORDER BY id DESC LIMIT $2",
            &[&all, &limit],
        )
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>(0),
                "stream": r.get::<_, String>(1),
                "entry_id": r.get::<_, String>(2),
                "event_id": r.get::<_, Option<String>>(3),
                "tenant_id": r.get::<_, Option<String>>(4),
                "error": r.get::<_, String>(5),
                "deliveries": r.get::<_, i32>(6),
                "dead_at": r.get::<_, String>(7),
                "replayed_at": r.get::<_, Option<String>>(8),
                "raw": serde_json::from_str::<Value>(&r.get::<_, String>(9)).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(json!({"count": items.len(), "dead_letters": items}))
}

/// Re-enqueues one dead letter, or every one not replayed yet; returns what was replayed.
pub async fn replay(pg: &Pool, streams: &Streams, id: Option<i64>) -> Result<Value, RegistryError> {
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
                return Err(RegistryError::NotFound(format!(
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
            return Err(RegistryError::Invalid(format!(
                "dead letter {dead_id} has no tenant field, so it has no stream to go back to"
            )));
        };
        let fields: serde_json::Map<String, Value> = serde_json::from_str(&raw).map_err(|e| {
            RegistryError::Invalid(format!("dead letter {dead_id} is not replayable: {e}"))
        })?;
        let fields: Vec<(String, String)> = fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k,
                    v.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect();
        let entry = streams
            .requeue(&tenant, &fields)
            .await
            .map_err(|e| RegistryError::Redis(e.to_string()))?;
        client
            .execute(
                "UPDATE dead_letters SET replayed_at = now() WHERE id = $1",
                &[&dead_id],
            )
            .await?;
        replayed.push(json!({"id": dead_id, "entry_id": entry}));
    }
    Ok(json!({"replayed": replayed.len(), "entries": replayed}))
}
