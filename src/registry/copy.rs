//! The registry copy in Redis: what the api reads on the request path.
//!
//! Single changes are one `HSET`/`HDEL`. A full rebuild writes every current entry first and
//! only then removes stale ones, so a valid key or signal never disappears, even briefly.

use std::collections::{HashMap, HashSet};

use crate::keyspace::{API_KEYS, Keyspace};
use crate::redis_pool::{Redis, RedisError};

use super::{ActiveKey, Signal};

pub async fn put_key(redis: &Redis, key: &ActiveKey) -> Result<(), RedisError> {
    redis
        .query(
            redis::cmd("HSET")
                .arg(API_KEYS)
                .arg(&key.hash)
                .arg(key_value(key)),
        )
        .await
}

pub async fn remove_key(redis: &Redis, hash: &str) -> Result<(), RedisError> {
    redis
        .query(redis::cmd("HDEL").arg(API_KEYS).arg(hash))
        .await
}

pub async fn put_signal(
    redis: &Redis,
    keyspace: &Keyspace,
    signal: &Signal,
) -> Result<(), RedisError> {
    redis
        .query(
            redis::cmd("HSET")
                .arg(keyspace.registry(&signal.tenant_id))
                .arg(&signal.slug)
                .arg(signal.packed().pack()),
        )
        .await
}

/// Makes the copy equal to the given registry contents.
pub async fn replace_all(
    redis: &Redis,
    keyspace: &Keyspace,
    tenants: &[String],
    signals: &[Signal],
    keys: &[ActiveKey],
) -> Result<(), RedisError> {
    // API keys.
    let wanted: HashMap<&str, String> = keys
        .iter()
        .map(|k| (k.hash.as_str(), key_value(k)))
        .collect();
    replace_hash(redis, API_KEYS, &wanted).await?;

    // One registry hash per tenant, including tenants with no signals (emptied).
    let mut by_tenant: HashMap<&str, HashMap<&str, String>> = tenants
        .iter()
        .map(|t| (t.as_str(), HashMap::new()))
        .collect();
    for s in signals {
        by_tenant
            .entry(s.tenant_id.as_str())
            .or_default()
            .insert(s.slug.as_str(), s.packed().pack());
    }
    for (tenant, entries) in &by_tenant {
        replace_hash(redis, &keyspace.registry(tenant), entries).await?;
    }
    Ok(())
}

/// Sets every wanted field of hash `key`, then deletes the fields not wanted.
async fn replace_hash(
    redis: &Redis,
    key: &str,
    wanted: &HashMap<&str, String>,
) -> Result<(), RedisError> {
    // Chunked so no single command grows without bound.
    let entries: Vec<(&&str, &String)> = wanted.iter().collect();
    for chunk in entries.chunks(1000) {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key);
        for (field, value) in chunk {
            cmd.arg(**field).arg(*value);
        }
        redis.query::<()>(&cmd).await?;
    }
    let present: Vec<String> = redis.query(redis::cmd("HKEYS").arg(key)).await?;
    let wanted_fields: HashSet<&str> = wanted.keys().copied().collect();
    let stale: Vec<&String> = present
        .iter()
        .filter(|f| !wanted_fields.contains(f.as_str()))
        .collect();
    for chunk in stale.chunks(1000) {
        redis
            .query::<()>(redis::cmd("HDEL").arg(key).arg(chunk))
            .await?;
    }
    Ok(())
}

fn key_value(key: &ActiveKey) -> String {
    format!("{} {}", key.tenant_id, key.key_id)
}
