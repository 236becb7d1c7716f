//! PostgreSQL plumbing shared by every binary: the connection pool, creating the database on a
//! fresh server, and the embedded migrations. What is stored lives with its owner: the registry
//! in [`crate::registry`], events in [`crate::worker::sink`], dead letters in
//! [`crate::stream::dead_letters`].

pub mod migrate;
pub mod reads;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::error::SqlState;

use crate::config::PostgresSettings;
use crate::tls::postgres as tls;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{0}")]
    Config(String),
    #[error(
        "cannot connect ({0}); this needs access to the database named by SLUICE__POSTGRES__URL"
    )]
    Unreachable(String),
    /// The server answered but will not let us in as configured (TLS required or refused, a
    /// certificate not trusted, no `pg_hba.conf` entry, a wrong password): retrying cannot help.
    #[error(
        "PostgreSQL refused the connection: {0} (check SLUICE__POSTGRES__URL and its TLS settings)"
    )]
    Refused(String),
    #[error("PostgreSQL: {0}")]
    Failed(String),
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_refusal(&e) {
            PgError::Refused(describe(&e))
        } else {
            PgError::Failed(describe(&e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match &e {
            deadpool_postgres::PoolError::Backend(pg) if is_refusal(pg) => {
                PgError::Refused(describe(pg))
            }
            _ => PgError::Unreachable(e.to_string()),
        }
    }
}

/// A connection the server will never accept as configured, as opposed to one it cannot
/// accept now: a TLS failure, or an authorization error (SQLSTATE class 28).
pub fn is_refusal(e: &tokio_postgres::Error) -> bool {
    if let Some(db) = e.as_db_error() {
        return db.code().code().starts_with("28");
    }
    // The driver's TLS failures (handshake refused, certificate rejected, server without TLS)
    // all read so; the kind itself is private.
    e.to_string().starts_with("error performing TLS handshake")
}

/// The server's own message where there is one: it says more than the driver's summary.
/// Otherwise the driver's message with its causes, which carry the detail ("error performing
/// TLS handshake: invalid peer certificate: UnknownIssuer").
pub fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

/// The configured server and how to reach it (TLS as its `sslmode` says: [`tls`]).
fn target(settings: &PostgresSettings) -> Result<(tls::Target, tls::Connector), PgError> {
    let target = tls::Target::parse(settings.url.expose(), &settings.tls())
        .map_err(|e| PgError::Config(format!("SLUICE__POSTGRES__URL {e}")))?;
    let connector = target
        .connector()
        .map_err(|e| PgError::Config(format!("PostgreSQL TLS: {e}")))?;
    Ok((target, connector))
}

/// Builds a PostgreSQL pool; connections open on first use.
pub fn pool(settings: &PostgresSettings) -> Result<Pool, PgError> {
    pool_with(settings, |_| {}, Timeouts::default())
}

/// [`pool`], with the connection settings adjusted by `adjust` first, and bounds on waiting for
/// a connection, making one and recycling one.
pub fn pool_with(
    settings: &PostgresSettings,
    adjust: impl FnOnce(&mut tokio_postgres::Config),
    timeouts: Timeouts,
) -> Result<Pool, PgError> {
    let (mut target, connector) = target(settings)?;
    adjust(&mut target.config);
    let manager = Manager::from_config(
        target.config,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pool_size)
        .timeouts(timeouts)
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| PgError::Config(format!("cannot build a PostgreSQL pool: {e}")))
}

/// Creates the configured database when the server does not have it yet, so a fresh
/// PostgreSQL needs no manual step before `sluice-admin migrate`.
pub async fn ensure_database(settings: &PostgresSettings) -> Result<(), PgError> {
    let (target, connector) = target(settings)?;
    let config = target.config;
    match config.connect(connector.clone()).await {
        Ok(_) => return Ok(()),
        Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {}
        Err(e) if is_refusal(&e) => return Err(e.into()),
        Err(e) if e.as_db_error().is_none() => return Err(PgError::Unreachable(e.to_string())),
        Err(e) => return Err(e.into()),
    }
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut maintenance = config.clone();
    maintenance.dbname("postgres");
    let (client, connection) = maintenance.connect(connector).await?;
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

/// SQL for `timestamptz` column `c` as ISO 8601 text in UTC, to the second.
pub fn iso(c: &str) -> String {
    format!("to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
}
