//! The registry copy in Redis: what the api reads on the request path.
//!
//! Every write — an operator's write-through and the worker's rebuild alike — goes through
//! `lua/registry.lua`, which applies an entry only if its registry version is newer than the one
//! the copy holds. A rebuild therefore never undoes a change made while it ran: the change has a
//! newer version than anything the rebuild read. A revoked key is a tombstone (no entry, its
//! version kept), so no stale write can make it valid again. A rebuild removes an entry its
//! snapshot lacks only when the entry's version is no newer than the snapshot, i.e. when the
//! snapshot would have seen its row. The argument in full: docs/design.md.

use std::collections::{HashMap, HashSet};

use redis::Script;

use crate::keyspace::{API_KEYS, KeyIndexEntry, Keyspace, VERSION_PREFIX};
use crate::redis_pool::{Redis, RedisError};

use super::{KeyRow, Signal};

static REGISTRY_LUA: &str = include_str!("../../lua/registry.lua");

/// Entries per script call: enough to rebuild quickly, few enough that no call holds Redis up.
const CHUNK: usize = 500;

/// What one write did to the copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Entries whose visible value changed (written, or gone where one was).
    pub changed: u64,
    /// Entries removed because the registry no longer has them.
    pub removed: u64,
}

impl std::ops::AddAssign for Applied {
    fn add_assign(&mut self, other: Applied) {
        self.changed += other.changed;
        self.removed += other.removed;
    }
}

/// One entry to apply: the field, the version of its row, and its value (`None`: gone).
struct Entry {
    field: String,
    version: i64,
    value: Option<String>,
}

impl Entry {
    fn key(key: &KeyRow) -> Self {
        Entry {
            field: key.hash.clone(),
            version: key.version,
            value: (!key.revoked).then(|| key_value(key)),
        }
    }

    fn signal(signal: &Signal) -> Self {
        Entry {
            field: signal.slug.clone(),
            version: signal.version,
            value: Some(signal.packed().pack()),
        }
    }
}

/// Writes to the registry copy.
#[derive(Clone)]
pub struct RegistryCopy {
    redis: Redis,
    keyspace: Keyspace,
    script: Script,
}

impl RegistryCopy {
    pub fn new(redis: Redis, keyspace: Keyspace) -> Self {
        RegistryCopy {
            redis,
            keyspace,
            script: crate::scripts::script(REGISTRY_LUA),
        }
    }

    /// Writes a key through (a revoked key becomes a tombstone).
    pub async fn put_key(&self, key: &KeyRow) -> Result<(), RedisError> {
        self.apply(API_KEYS, -1, &[Entry::key(key)], &[])
            .await
            .map(drop)
    }

    /// Removes a key whose creation was rolled back, unless a newer version is there already.
    pub async fn remove_key(&self, hash: &str, version: i64) -> Result<(), RedisError> {
        self.apply(API_KEYS, version, &[], &[hash.to_owned()])
            .await
            .map(drop)
    }

    pub async fn put_signal(&self, signal: &Signal) -> Result<(), RedisError> {
        let hash = self.keyspace.registry(&signal.tenant_id);
        self.apply(&hash, -1, &[Entry::signal(signal)], &[])
            .await
            .map(drop)
    }

    /// Makes the copy agree with a registry snapshot taken at version `horizon`, without
    /// undoing anything newer. Returns what it repaired: (signals, keys).
    pub async fn rebuild(
        &self,
        horizon: i64,
        tenants: &[String],
        signals: &[Signal],
        keys: &[KeyRow],
    ) -> Result<(Applied, Applied), RedisError> {
        let keys: Vec<Entry> = keys.iter().map(Entry::key).collect();
        let repaired_keys = self.rebuild_hash(API_KEYS, horizon, &keys).await?;

        // One registry hash per tenant, including tenants with no signals (emptied).
        let mut by_tenant: HashMap<&str, Vec<Entry>> =
            tenants.iter().map(|t| (t.as_str(), Vec::new())).collect();
        for s in signals {
            by_tenant
                .entry(s.tenant_id.as_str())
                .or_default()
                .push(Entry::signal(s));
        }
        let mut repaired_signals = Applied::default();
        for (tenant, entries) in &by_tenant {
            let hash = self.keyspace.registry(tenant);
            repaired_signals += self.rebuild_hash(&hash, horizon, entries).await?;
        }
        Ok((repaired_signals, repaired_keys))
    }

    /// Applies every wanted entry of hash `key`, then removes the entries the snapshot lacks.
    async fn rebuild_hash(
        &self,
        key: &str,
        horizon: i64,
        wanted: &[Entry],
    ) -> Result<Applied, RedisError> {
        let mut applied = Applied::default();
        for chunk in wanted.chunks(CHUNK) {
            applied += self.apply(key, -1, chunk, &[]).await?;
        }
        let present: Vec<String> = self.redis.query(redis::cmd("HKEYS").arg(key)).await?;
        let wanted_fields: HashSet<&str> = wanted.iter().map(|e| e.field.as_str()).collect();
        let stale: Vec<String> = present
            .into_iter()
            .filter(|f| !f.starts_with(VERSION_PREFIX) && !wanted_fields.contains(f.as_str()))
            .collect();
        for chunk in stale.chunks(CHUNK) {
            applied += self.apply(key, horizon, &[], chunk).await?;
        }
        Ok(applied)
    }

    /// One call of `lua/registry.lua` on hash `key`.
    async fn apply(
        &self,
        key: &str,
        horizon: i64,
        entries: &[Entry],
        remove: &[String],
    ) -> Result<Applied, RedisError> {
        let mut call = self.script.prepare_invoke();
        call.key(key).arg(horizon).arg(entries.len());
        for e in entries {
            call.arg(&e.field)
                .arg(e.version)
                .arg(e.value.as_deref().unwrap_or(""));
        }
        call.arg(remove);
        let (changed, removed): (u64, u64) = self.redis.invoke(&call, key, 0).await?;
        Ok(Applied { changed, removed })
    }
}

/// The key index's value, read back by the api's key lookup.
fn key_value(key: &KeyRow) -> String {
    KeyIndexEntry {
        tenant_id: key.tenant_id.clone(),
        key_id: key.key_id.clone(),
    }
    .to_string()
}
