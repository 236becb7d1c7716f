//! PostgreSQL plumbing shared by every binary: the connection pool, creating the database on a
//! fresh server, and the embedded migrations. What is stored lives with its owner: the registry
//! in [`crate::registry`], events in [`crate::worker::sink`], dead letters in
//! [`crate::stream::dead_letters`].

pub mod migrate;

use deadpool_postgres::{Pool, PoolConfig, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;

use crate::config::PostgresSettings;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot connect ({0}); this needs access to the database named by SLUICE__POSTGRES__URL"
    )]
    Unreachable(String),
    #[error("PostgreSQL: {0}")]
    Failed(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError::Failed(describe(&e))
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        PgError::Unreachable(e.to_string())
    }
}

/// The server's own message where there is one: it says more than the driver's summary.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    }
}

/// Builds a PostgreSQL pool; connections open on first use.
pub fn pool(settings: &PostgresSettings) -> Result<Pool, PgError> {
    let mut cfg = deadpool_postgres::Config::new();
    cfg.url = Some(settings.url.expose().to_owned());
    cfg.pool = Some(PoolConfig::new(settings.pool_size));
    cfg.create_pool(Some(Runtime::Tokio1), NoTls).map_err(|e| {
        PgError::Config(format!(
            "SLUICE__POSTGRES__URL: cannot build a PostgreSQL pool: {e}"
        ))
    })
}

/// Creates the configured database when the server does not have it yet, so a fresh
/// PostgreSQL needs no manual step before `sluice-admin migrate`.
pub async fn ensure_database(settings: &PostgresSettings) -> Result<(), PgError> {
    let config: tokio_postgres::Config = settings
        .url
        .expose()
        .parse()
        .map_err(|e| PgError::Config(format!("SLUICE__POSTGRES__URL: {e}")))?;
    match config.connect(NoTls).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) if e.as_db_error().is_none() => return Err(PgError::Unreachable(e.to_string())),
        Err(e) => return Err(e.into()),
    }
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (client, connection) = maintenance.connect(NoTls).await?;
    tokio::spawn(connection);
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    match client
        .batch_execute(&format!("CREATE DATABASE {quoted}"))
        .await
    {
        Ok(()) => Ok(()),
        // Someone else created it meanwhile.
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Applies pending migrations; returns the versions applied now.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, PgError> {
    let mut client = pool.get().await?;
    Ok(migrate::run(&mut client).await?)
}
