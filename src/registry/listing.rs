//! Reads of the registry for operators: one tenant, and pages of tenants, keys, signals and
//! schemas. Every list is ordered by a unique column and continues after a cursor (the last
//! item's value of that column), so pages stay consistent while rows are added.

use serde_json::Value;

use super::{Registry, RegistryError, SIGNAL_COLUMNS, Signal, Tenant};
use crate::domain::{Slug, TenantId};
use crate::pg::iso;

/// The most items one page may hold.
pub const MAX_PAGE: u32 = crate::domain::PageLimit::MAX;

/// Where a page starts and how long it is.
#[derive(Clone, Debug)]
pub struct PageRequest {
    /// The cursor a previous page returned: the page starts after it.
    pub after: Option<String>,
    /// 1..=[`MAX_PAGE`].
    pub limit: u32,
}

impl PageRequest {
    /// A page of `limit` items after `cursor`, which must be text a list could have returned.
    pub fn new(limit: crate::domain::PageLimit, cursor: Option<String>) -> Result<Self, String> {
        if let Some(c) = &cursor
            && (c.is_empty() || c.chars().count() > 300 || c.contains('\0'))
        {
            return Err("cursor is not one this list returned".into());
        }
        Ok(PageRequest {
            after: cursor,
            limit: limit.get(),
        })
    }
}

/// One page of a list, and the cursor of the next (none on the last page).
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Takes rows fetched with `LIMIT limit + 1`: one row beyond the page means there is a next.
    fn of(mut items: Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Self {
        let more = items.len() > limit as usize;
        items.truncate(limit as usize);
        let next = if more { items.last().map(cursor) } else { None };
        Page { items, next }
    }
}

/// An API key as listed: never its secret or hash.
#[derive(Clone, Debug)]
pub struct KeyInfo {
    pub id: String,
    pub tenant_id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

impl KeyInfo {
    /// The columns [`KeyInfo::from_row`] reads, in its order.
    pub(super) fn columns() -> String {
        format!(
            "id, tenant_id, name, {}, {}",
            iso("created_at"),
            iso("revoked_at")
        )
    }

    pub(super) fn from_row(row: &tokio_postgres::Row) -> Self {
        KeyInfo {
            id: row.get(0),
            tenant_id: row.get(1),
            name: row.get(2),
            created_at: row.get(3),
            revoked_at: row.get(4),
        }
    }
}

/// One version of a signal's schema.
#[derive(Clone, Debug)]
pub struct SchemaVersion {
    pub signal_id: String,
    pub version: u32,
    pub schema: Value,
    pub created_at: String,
}

impl Registry {
    pub async fn tenants(&self, page: &PageRequest) -> Result<Page<Tenant>, RegistryError> {
        let client = self.pg.get().await?;
        let rows = client
            .query(
                "SELECT id, name FROM tenants WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
                &[&page.after, &(i64::from(page.limit) + 1)],
            )
            .await?;
        let items = rows
            .iter()
            .map(|r| Tenant {
                id: r.get(0),
                name: r.get(1),
            })
            .collect();
        Ok(Page::of(items, page.limit, |t: &Tenant| t.id.clone()))
    }

    pub async fn keys(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<KeyInfo>, RegistryError> {
        self.tenant(tenant).await?;
        let client = self.pg.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {} FROM api_keys
                     WHERE tenant_id = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3",
                    KeyInfo::columns()
                ),
                &[&tenant.as_str(), &page.after, &(i64::from(page.limit) + 1)],
            )
            .await?;
        let items = rows.iter().map(KeyInfo::from_row).collect();
        Ok(Page::of(items, page.limit, |k: &KeyInfo| k.id.clone()))
    }

    pub async fn signals(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<Signal>, RegistryError> {
        self.tenant(tenant).await?;
        let client = self.pg.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals s
                     WHERE s.tenant_id = $1 AND ($2::text IS NULL OR s.slug > $2)
                     ORDER BY s.slug LIMIT $3"
                ),
                &[&tenant.as_str(), &page.after, &(i64::from(page.limit) + 1)],
            )
            .await?;
        let items = rows
            .iter()
            .map(Signal::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(items, page.limit, |s: &Signal| s.slug.clone()))
    }

    pub async fn signal(&self, tenant: &TenantId, slug: &Slug) -> Result<Signal, RegistryError> {
        self.tenant(tenant).await?;
        let client = self.pg.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT {SIGNAL_COLUMNS} FROM signals s WHERE s.tenant_id = $1 AND s.slug = $2"
                ),
                &[&tenant.as_str(), &slug.as_str()],
            )
            .await?
            .ok_or_else(|| self.no_signal(tenant.as_str(), slug.as_str()))?;
        Signal::from_row(&row)
    }

    /// A signal's schema versions, oldest first; the cursor is a version number.
    pub async fn schemas(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        page: &PageRequest,
    ) -> Result<Page<SchemaVersion>, RegistryError> {
        let signal = self.signal(tenant, slug).await?;
        let after: i32 = match page.after.as_deref() {
            None => 0,
            Some(c) => c.parse().ok().filter(|v| *v >= 0).ok_or_else(|| {
                RegistryError::Invalid(format!("cursor {c:?} is not one this list returned"))
            })?,
        };
        let client = self.pg.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT signal_id, version, schema, {} FROM signal_schemas
                     WHERE signal_id = $1 AND version > $2 ORDER BY version LIMIT $3",
                    iso("created_at")
                ),
                &[&signal.id, &after, &(i64::from(page.limit) + 1)],
            )
            .await?;
        let items = rows.iter().map(schema_version).collect();
        Ok(Page::of(items, page.limit, |v: &SchemaVersion| {
            v.version.to_string()
        }))
    }

    pub async fn schema(
        &self,
        tenant: &TenantId,
        slug: &Slug,
        version: u32,
    ) -> Result<SchemaVersion, RegistryError> {
        let signal = self.signal(tenant, slug).await?;
        let client = self.pg.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "SELECT signal_id, version, schema, {} FROM signal_schemas WHERE signal_id = $1 AND version = $2",
                    iso("created_at")
                ),
                &[&signal.id, &i32::try_from(version).unwrap_or(i32::MAX)],
            )
            .await?
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "signal {slug} of tenant {tenant} has no schema version {version}"
                ))
            })?;
        Ok(schema_version(&row))
    }
}

/// A `signal_schemas` row read as `signal_id, version, schema, created_at`.
pub(super) fn schema_version(row: &tokio_postgres::Row) -> SchemaVersion {
    SchemaVersion {
        signal_id: row.get(0),
        version: row.get::<_, i32>(1) as u32,
        schema: row.get(2),
        created_at: row.get(3),
    }
}
