//! Tenants, API keys, signals and schemas.
//!
//! PostgreSQL is the system of record. Every change is written through to the Redis copy the
//! api reads ([`copy`]), and [`Registry::sync`] rebuilds that copy whole. Every change takes the
//! next version of the registry clock (one row, locked until commit, so versions follow commit
//! order) and the copy applies an entry only when its version is newer than what it holds: no
//! interleaving of write-throughs and rebuilds can revert a change.
//!
//! Ordering keeps the copy from ever promising more than PostgreSQL holds: signals are committed
//! before they are copied; a key is copied inside its creating transaction, so a key is never
//! shown to an operator unless both stores have it.

pub mod admin_tokens;
pub mod copy;
pub mod listing;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;

use crate::domain::{
    ApiKey, KeyId, Label, PerMinute, SignalId, SignalType, Slug, TenantId, TenantName,
};
use crate::keyspace::{Keyspace, PackedSignal};
use crate::redis_pool::Redis;
use copy::RegistryCopy;
use listing::KeyInfo;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("PostgreSQL: {0}")]
    Postgres(String),
    #[error(
        "saved in PostgreSQL, but the Redis registry copy could not be updated ({0}); \
         run `sluice-admin sync` once Redis is reachable"
    )]
    CopyStale(String),
    #[error("Redis: {0}")]
    Redis(String),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(e: tokio_postgres::Error) -> Self {
        RegistryError::Postgres(crate::pg::describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for RegistryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        RegistryError::Postgres(format!(
            "cannot connect ({e}); this needs access to the database named by SLUICE__POSTGRES__URL"
        ))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    pub id: String,
    pub tenant_id: String,
    pub slug: String,
    pub name: String,
    pub signal_type: SignalType,
    pub active: bool,
    pub limit: Option<u32>,
    /// Versions are 1..=n; n is also the latest (0: no schema).
    pub schema_versions: u32,
    /// The registry clock's value at this row's last change; the copy keeps the newest.
    pub version: i64,
}

impl Signal {
    pub fn packed(&self) -> PackedSignal {
        PackedSignal {
            id: self.id.clone(),
            signal_type: self.signal_type,
            active: self.active,
            limit: self.limit,
            schema_versions: self.schema_versions,
        }
    }

    fn from_row(row: &Row) -> Result<Self, RegistryError> {
        let kind: String = row.get("type");
        Ok(Signal {
            id: row.get("id"),
            tenant_id: row.get("tenant_id"),
            slug: row.get("slug"),
            name: row.get("name"),
            signal_type: kind.parse().map_err(RegistryError::Postgres)?,
            active: row.get("active"),
            limit: row.get::<_, Option<i32>>("rate_limit").map(|l| l as u32),
            schema_versions: row.get::<_, i32>("schema_versions") as u32,
            version: row.get("version"),
        })
    }
}

/// An API key as the copy needs it.
#[derive(Clone, Debug)]
pub struct KeyRow {
    /// SHA-256 (hex) of the key: the field the api looks up.
    pub hash: String,
    pub tenant_id: String,
    pub key_id: String,
    /// The registry clock's value at the key's last change (creation or revocation).
    pub version: i64,
    /// A revoked key is a tombstone in the copy: no entry, its version kept.
    pub revoked: bool,
}

/// A change to a signal: each field set is applied, the others left as they are.
#[derive(Clone, Debug, Default)]
pub struct SignalChange {
    pub active: Option<bool>,
    /// `Some(None)`: back to the configured default for the signal's type.
    pub limit: Option<Option<PerMinute>>,
}

/// What `sync` copied, and what it had to repair.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct SyncCounts {
    pub tenants: usize,
    pub signals: usize,
    /// Active keys.
    pub keys: usize,
    pub repaired: Repaired,
}

/// Entries of the copy a rebuild found wrong (missing, stale or left over) and corrected. Zero
/// while write-through works; anything else is drift: a flushed or failed-over Redis, a write-
/// through that failed, or a hand edit.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Repaired {
    pub signals: u64,
    pub keys: u64,
}

const SIGNAL_COLUMNS: &str = "s.id, s.tenant_id, s.slug, s.name, s.type, s.active, s.rate_limit, s.version, \
     (SELECT coalesce(max(version), 0) FROM signal_schemas v WHERE v.signal_id = s.id) AS schema_versions";

/// The registry in PostgreSQL, with its Redis copy.
#[derive(Clone)]
pub struct Registry {
    pg: Pool,
    copy: RegistryCopy,
}

/// Takes the next registry version. The first statement of every changing transaction: the
/// clock row stays locked until commit, so changes are numbered in the order they commit.
const NEXT_VERSION: &str = "UPDATE registry_clock SET version = version + 1 RETURNING version";

async fn next_version(tx: &tokio_postgres::Transaction<'_>) -> Result<i64, RegistryError> {
    Ok(tx.query_one(NEXT_VERSION, &[]).await?.get(0))
}

impl Registry {
    pub fn new(pg: Pool, redis: Redis, keyspace: Keyspace) -> Self {
        Registry {
            pg,
            copy: RegistryCopy::new(redis, keyspace),
        }
    }

    pub async fn create_tenant(&self, name: &TenantName) -> Result<Tenant, RegistryError> {
        let name = name.as_str();
        let id = TenantId::generate();
        let client = self.pg.get().await?;
        client
            .execute(
                "INSERT INTO tenants (id, name) VALUES ($1, $2)",
                &[&id.as_str(), &name],
            )
            .await?;
        Ok(Tenant {
            id: id.to_string(),
            name: name.to_owned(),
        })
    }

    pub async fn tenant(&self, id: &TenantId) -> Result<Tenant, RegistryError> {
        let client = self.pg.get().await?;
        let row = client
            .query_opt("SELECT name FROM tenants WHERE id = $1", &[&id.as_str()])
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no tenant with id {id}")))?;
        Ok(Tenant {
            id: id.to_string(),
            name: row.get(0),
        })
    }

    /// Creates a key for `tenant`; returns its id and the secret, which is never seen again.
    pub async fn create_key(
        &self,
        tenant: &TenantId,
        name: Option<&Label>,
    ) -> Result<(KeyId, ApiKey), RegistryError> {
        let name = name.and_then(Label::get);
        self.tenant(tenant).await?;
        let id = KeyId::generate();
        let key = ApiKey::generate_api_key();
        let hash = key.hash();
        let mut client = self.pg.get().await?;
        let tx = client.transaction().await?;
        let version = next_version(&tx).await?;
        tx.execute(
            "INSERT INTO api_keys (id, tenant_id, name, key_hash, version) VALUES ($1, $2, $3, $4, $5)",
            &[&id.as_str(), &tenant.as_str(), &name, &hash, &version],
        )
        .await?;
        let row = KeyRow {
            hash,
            tenant_id: tenant.to_string(),
            key_id: id.to_string(),
            version,
            revoked: false,
        };
        self.copy
            .put_key(&row)
            .await
            .map_err(|e| RegistryError::Redis(e.to_string()))?;
        if let Err(e) = tx.commit().await {
            let _ = self.copy.remove_key(&row.hash, version).await;
            return Err(e.into());
        }
        Ok((id, key))
    }

    /// Revokes a key; returns it as revoked. Revoking a revoked key again is harmless and
    /// re-applies the removal.
    pub async fn revoke_key(&self, id: &KeyId) -> Result<KeyInfo, RegistryError> {
        let mut client = self.pg.get().await?;
        let tx = client.transaction().await?;
        let version = next_version(&tx).await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()), version = $2
                     WHERE id = $1 RETURNING {}, key_hash",
                    KeyInfo::columns()
                ),
                &[&id.as_str(), &version],
            )
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no API key with id {id}")))?;
        tx.commit().await?;
        let key = KeyInfo::from_row(&row);
        let revoked = KeyRow {
            hash: row.get("key_hash"),
            tenant_id: key.tenant_id.clone(),
            key_id: key.id.clone(),
            version,
            revoked: true,
        };
        self.copy
            .put_key(&revoked)
            .await
            .map_err(|e| RegistryError::CopyStale(e.to_string()))?;
        Ok(key)
    }

    pub async fn create_signal(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        signal_type: SignalType,
        name: Option<&Label>,
        limit: Option<PerMinute>,
    ) -> Result<Signal, RegistryError> {
        self.tenant(tenant).await?;
        let name = name.and_then(Label::get).unwrap_or(slug.as_str());
        let mut client = self.pg.get().await?;
        let signal = loop {
            let id = SignalId::generate();
            let tx = client.transaction().await?;
            let version = next_version(&tx).await?;
            let inserted = tx
                .query_one(
                    &format!(
                        "INSERT INTO signals AS s (id, tenant_id, slug, name, type, rate_limit, version)
                         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {SIGNAL_COLUMNS}"
                    ),
                    &[
                        &id.as_str(),
                        &tenant.as_str(),
                        &slug.as_str(),
                        &name,
                        &signal_type.as_str(),
                        &limit.map(|l| l.get() as i32),
                        &version,
                    ],
                )
                .await;
            match inserted {
                Ok(row) => {
                    tx.commit().await?;
                    break Signal::from_row(&row)?;
                }
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    let constraint = e.as_db_error().and_then(|d| d.constraint()).unwrap_or("");
                    if constraint == "signals_pkey" {
                        continue; // a random id collided; draw another
                    }
                    return Err(RegistryError::Conflict(format!(
                        "tenant {tenant} already has a signal with slug {slug}"
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.copy_signal(&signal).await?;
        Ok(signal)
    }

    /// Turns a signal on or off.
    pub async fn set_active(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        active: bool,
    ) -> Result<Signal, RegistryError> {
        let change = SignalChange {
            active: Some(active),
            limit: None,
        };
        self.update_signal(tenant, slug, &change).await
    }

    /// Applies `change` to a signal in one step. Setting a field to the value it has is
    /// harmless (the change is re-applied to the copy), so a retried change does no harm.
    pub async fn update_signal(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        change: &SignalChange,
    ) -> Result<Signal, RegistryError> {
        self.tenant(tenant).await?;
        let mut client = self.pg.get().await?;
        let tx = client.transaction().await?;
        let version = next_version(&tx).await?;
        let row = tx
            .query_opt(
                &format!(
                    "UPDATE signals AS s SET active = coalesce($3, active),
                         rate_limit = CASE WHEN $4 THEN $5 ELSE rate_limit END,
                         updated_at = now(), version = $6
                     WHERE tenant_id = $1 AND slug = $2 RETURNING {SIGNAL_COLUMNS}"
                ),
                &[
                    &tenant.as_str(),
                    &slug.as_str(),
                    &change.active,
                    &change.limit.is_some(),
                    &change.limit.flatten().map(|l| l.get() as i32),
                    &version,
                ],
            )
            .await?
            .ok_or_else(|| self.no_signal(tenant.as_str(), slug.as_str()))?;
        tx.commit().await?;
        let signal = Signal::from_row(&row)?;
        self.copy_signal(&signal).await?;
        Ok(signal)
    }

    /// Adds the next schema version of a signal. The document must be a valid JSON Schema.
    pub async fn add_schema(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        schema: &Value,
    ) -> Result<(Signal, listing::SchemaVersion), RegistryError> {
        if !(schema.is_object() || schema.is_boolean()) {
            return Err(RegistryError::Invalid(
                "a JSON Schema must be an object (or true/false)".into(),
            ));
        }
        if let Some(why) = crate::domain::json_guard::unstorable(&schema.to_string()) {
            return Err(RegistryError::Invalid(format!(
                "the schema cannot be stored: {why}"
            )));
        }
        jsonschema::validator_for(schema)
            .map_err(|e| RegistryError::Invalid(format!("not a valid JSON Schema: {e}")))?;
        self.tenant(tenant).await?;
        let (tenant, slug) = (tenant.as_str(), slug.as_str());
        let mut client = self.pg.get().await?;
        let tx = client.transaction().await?;
        let registry_version = next_version(&tx).await?;
        // Locking the signal row numbers concurrent additions 1, 2, 3 without gaps or clashes.
        let row = tx
            .query_opt(
                "UPDATE signals SET version = $3, updated_at = now()
                 WHERE tenant_id = $1 AND slug = $2 RETURNING id",
                &[&tenant, &slug, &registry_version],
            )
            .await?
            .ok_or_else(|| self.no_signal(tenant, slug))?;
        let signal_id: String = row.get(0);
        let added = listing::schema_version(
            &tx.query_one(
                &format!(
                    "INSERT INTO signal_schemas (signal_id, version, schema)
                     SELECT $1, coalesce(max(version), 0) + 1, $2 FROM signal_schemas WHERE signal_id = $1
                     RETURNING signal_id, version, schema, {}",
                    crate::pg::iso("created_at")
                ),
                &[&signal_id, schema],
            )
            .await?,
        );
        let row = tx
            .query_one(
                &format!("SELECT {SIGNAL_COLUMNS} FROM signals s WHERE s.id = $1"),
                &[&signal_id],
            )
            .await?;
        tx.commit().await?;
        let signal = Signal::from_row(&row)?;
        self.copy_signal(&signal).await?;
        Ok((signal, added))
    }

    /// Rebuilds the Redis copy from one consistent snapshot of PostgreSQL. Entries changed
    /// since the snapshot are newer in the copy and stay as they are.
    pub async fn sync(&self) -> Result<SyncCounts, RegistryError> {
        let mut client = self.pg.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let horizon: i64 = tx
            .query_one("SELECT version FROM registry_clock", &[])
            .await?
            .get(0);
        let tenants: Vec<String> = tx
            .query("SELECT id FROM tenants", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let signals = tx
            .query(
                &format!("SELECT {SIGNAL_COLUMNS} FROM signals s ORDER BY s.tenant_id"),
                &[],
            )
            .await?
            .iter()
            .map(Signal::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let keys: Vec<KeyRow> = tx
            .query(
                "SELECT key_hash, tenant_id, id, version, revoked_at IS NOT NULL FROM api_keys",
                &[],
            )
            .await?
            .iter()
            .map(|r| KeyRow {
                hash: r.get(0),
                tenant_id: r.get(1),
                key_id: r.get(2),
                version: r.get(3),
                revoked: r.get(4),
            })
            .collect();
        tx.commit().await?;
        drop(client);
        let (signals_fixed, keys_fixed) = self
            .copy
            .rebuild(horizon, &tenants, &signals, &keys)
            .await
            .map_err(|e| RegistryError::Redis(e.to_string()))?;
        Ok(SyncCounts {
            tenants: tenants.len(),
            signals: signals.len(),
            keys: keys.iter().filter(|k| !k.revoked).count(),
            repaired: Repaired {
                signals: signals_fixed.changed + signals_fixed.removed,
                keys: keys_fixed.changed + keys_fixed.removed,
            },
        })
    }

    async fn copy_signal(&self, signal: &Signal) -> Result<(), RegistryError> {
        self.copy
            .put_signal(signal)
            .await
            .map_err(|e| RegistryError::CopyStale(e.to_string()))
    }

    fn no_signal(&self, tenant: &str, slug: &str) -> RegistryError {
        RegistryError::NotFound(format!("tenant {tenant} has no signal with slug {slug}"))
    }
}
