//! Embedded, numbered SQL migrations, applied in order under an advisory lock so that several
//! processes starting at once (a worker and `sluice-admin migrate`) apply each exactly once.

use tokio_postgres::Client;

/// Every migration, in order. Append only: an applied migration never changes.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "registry",
        include_str!("../../migrations/0001_registry.sql"),
    ),
    (
        2,
        "events",
        include_str!("../../migrations/0002_events.sql"),
    ),
    (
        3,
        "registry versions",
        include_str!("../../migrations/0003_registry_versions.sql"),
    ),
    (
        4,
        "admin tokens",
        include_str!("../../migrations/0004_admin_tokens.sql"),
    ),
    (5, "reads", include_str!("../../migrations/0005_reads.sql")),
    (
        6,
        "rollup totals",
        include_str!("../../migrations/0006_rollup_totals.sql"),
    ),
];

/// An arbitrary constant naming Sluice's migration lock.
const LOCK_ID: i64 = 0x51_1CE0_5EED;

/// Applies every pending migration; returns the versions applied now.
pub async fn run(client: &mut Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_ID])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             name       text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut now = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await?;
        now.push(*version);
    }
    tx.commit().await?;
    Ok(now)
}

/// The newest migration this binary knows.
pub fn latest() -> i32 {
    MIGRATIONS.last().map(|m| m.0).unwrap_or(0)
}
