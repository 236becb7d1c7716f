//! Admin tokens: the bearer credentials of the admin HTTP API.
//!
//! A token is `sat_` and 32 random bytes in hex, shown once when created; PostgreSQL keeps only
//! its SHA-256. The admin API checks the presented token against PostgreSQL on every request (it
//! serves operators, not traffic), so a revoked token stops working at once.

use deadpool_postgres::Pool;

use super::RegistryError;
use crate::domain::{AdminTokenId, Label, Secret};
use crate::pg::iso;

/// The prefix of every admin token.
pub const TOKEN_PREFIX: &str = "sat_";

/// A token as stored: never the secret.
#[derive(Clone, Debug)]
pub struct AdminToken {
    pub id: String,
    pub name: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// Admin tokens in PostgreSQL.
#[derive(Clone)]
pub struct AdminTokens {
    pg: Pool,
}

impl AdminTokens {
    pub fn new(pg: Pool) -> Self {
        AdminTokens { pg }
    }

    /// Creates a token; returns its id and the secret, which is never seen again.
    pub async fn create(&self, name: Option<&Label>) -> Result<(String, Secret), RegistryError> {
        let name = name.and_then(Label::get);
        let id = AdminTokenId::generate();
        let token = Secret::generate(TOKEN_PREFIX);
        let client = self.pg.get().await?;
        client
            .execute(
                "INSERT INTO admin_tokens (id, name, token_hash) VALUES ($1, $2, $3)",
                &[&id.as_str(), &name, &token.hash()],
            )
            .await?;
        Ok((id.to_string(), token))
    }

    /// Revokes a token; revoking a revoked token again is harmless.
    pub async fn revoke(&self, id: &AdminTokenId) -> Result<AdminToken, RegistryError> {
        let client = self.pg.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE admin_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
                     RETURNING id, name, {}, {}",
                    iso("created_at"),
                    iso("revoked_at")
                ),
                &[&id.as_str()],
            )
            .await?
            .ok_or_else(|| RegistryError::NotFound(format!("no admin token with id {id}")))?;
        Ok(AdminToken {
            id: row.get(0),
            name: row.get(1),
            created_at: row.get(2),
            revoked_at: row.get(3),
        })
    }

    /// The id of the valid token `presented` is, if it is one.
    pub async fn verify(&self, presented: &str) -> Result<Option<String>, RegistryError> {
        let Some(hash) = Secret::hash_presented(TOKEN_PREFIX, presented) else {
            return Ok(None);
        };
        let client = self.pg.get().await?;
        let row = client
            .query_opt(
                "SELECT id FROM admin_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
                &[&hash],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }
}
