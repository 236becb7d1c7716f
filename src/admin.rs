//! `sluice-admin`: the operator CLI. Every command prints one JSON object on stdout and exits 0,
//! or prints a clear message on stderr and exits non-zero.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::api::admin::{KeyView, SignalView, TenantView};
use crate::config::Settings;
use crate::domain::{
    AdminTokenId, KeyId, Label, PageLimit, PerMinute, SignalType, Slug, TenantId, TenantName,
};
use crate::keyspace::Keyspace;
use crate::pg::{self, PgError};
use crate::redis_layout;
use crate::redis_memory::{Memory, NodeMemory, REFRESH_EVERY};
use crate::redis_pool::Redis;
use crate::registry::admin_tokens::AdminTokens;
use crate::registry::listing::{Page, PageRequest};
use crate::registry::{Registry, RegistryError, SignalChange};
use crate::stream::dead_letters::{self, DeadLetterError};

/// Why a command failed; printed on stderr as it reads.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A setting that cannot work (the message names it).
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {error}")]
    ReadFile { path: String, error: String },
    #[error("{path} is not JSON: {error}")]
    NotJson { path: String, error: String },
    #[error(transparent)]
    Pg(#[from] PgError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    DeadLetters(#[from] DeadLetterError),
    /// Redis cannot be used to hold acknowledged events (the message says why).
    #[error("{0}")]
    Redis(String),
}

#[derive(Parser, Debug)]
#[command(
    name = "sluice-admin",
    version,
    about = "Operate Sluice: migrations, tenants, API keys, signals, schemas, admin tokens.",
    after_help = "Reads the same settings as the services (SLUICE__* variables, SLUICE_CONFIG). Every \
                  command prints one JSON object on success."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create the database if needed and apply pending migrations.
    Migrate,
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage API keys.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Manage signals.
    Signal {
        #[command(subcommand)]
        command: SignalCommand,
    },
    /// Manage signal schemas.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Rebuild the Redis registry copy from PostgreSQL.
    Sync,
    /// Check that Redis can hold the backlog: every primary answers and evicts nothing
    /// (maxmemory-policy noeviction); prints each one's memory.
    Doctor,
    /// Lay the streams out over SLUICE__REDIS__PARTITIONS partitions: stops admission on every
    /// api replica, waits until the streams of the recorded count are drained, then records the
    /// new count and rebuilds the registry copy (docs/operations.md, "Changing the partition
    /// count"); if they do not drain within --wait, the count stays and ingest resumes.
    Repartition {
        /// Seconds the streams may take to drain.
        #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        wait: u64,
    },
    /// Inspect and replay entries the worker could not store.
    DeadLetters {
        #[command(subcommand)]
        command: DeadLetterCommand,
    },
    /// Manage the bearer tokens of the admin HTTP API (SLUICE__ADMIN__BIND).
    AdminToken {
        #[command(subcommand)]
        command: AdminTokenCommand,
    },
}

#[derive(Subcommand, Debug)]
enum AdminTokenCommand {
    /// Create an admin token; the token is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        name: Option<Label>,
    },
    /// Revoke an admin token: the admin API refuses it from the next request on.
    Revoke {
        #[arg(long)]
        id: AdminTokenId,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterCommand {
    /// List dead letters, newest first (not yet replayed ones unless --all).
    List {
        #[arg(long)]
        all: bool,
        /// Dead letters per page, 1-1000.
        #[arg(long, default_value = "100")]
        limit: PageLimit,
        /// The `next_cursor` of the previous page.
        #[arg(long)]
        cursor: Option<dead_letters::Cursor>,
    },
    /// Put dead letters back on their streams: one by --id, or every one not yet replayed.
    Replay {
        #[arg(long)]
        id: Option<i64>,
    },
}

/// Where a page of a list starts and how long it is, as the admin API's `limit` and `cursor`.
#[derive(Args, Debug)]
struct Paging {
    /// Items per page, 1-1000.
    #[arg(long, default_value = "100")]
    limit: PageLimit,
    /// The `next_cursor` of the previous page.
    #[arg(long)]
    cursor: Option<String>,
}

impl Paging {
    fn request(self) -> Result<PageRequest, AdminError> {
        PageRequest::new(self.limit, self.cursor).map_err(AdminError::Config)
    }
}

/// A page of a list as the CLI prints it: `{"count": n, "<what>": [...], "next_cursor": ...}`.
fn page_of<T, V: serde::Serialize>(what: &str, page: Page<T>, view: impl FnMut(T) -> V) -> Value {
    let items: Vec<V> = page.items.into_iter().map(view).collect();
    json!({"count": items.len(), what: items, "next_cursor": page.next})
}

#[derive(Subcommand, Debug)]
enum TenantCommand {
    /// Create a tenant.
    Create {
        #[arg(long)]
        name: TenantName,
    },
    /// List tenants by id, a page at a time.
    List {
        #[command(flatten)]
        paging: Paging,
    },
    /// Show a tenant with its partition and stream key (where its events queue in Redis).
    Show {
        #[arg(long)]
        id: TenantId,
    },
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create an API key; the key is printed once and only its hash is stored.
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        name: Option<Label>,
    },
    /// Revoke an API key: it stops working on every api replica within 5 seconds.
    Revoke {
        #[arg(long)]
        id: KeyId,
    },
    /// List a tenant's API keys by id (names, when made and revoked; never the secret).
    List {
        #[arg(long)]
        tenant: TenantId,
        #[command(flatten)]
        paging: Paging,
    },
}

#[derive(Subcommand, Debug)]
enum SignalCommand {
    /// Register a signal.
    Create {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
        #[arg(long = "type")]
        signal_type: SignalType,
        #[arg(long)]
        name: Option<Label>,
        /// Events per minute; default: the configured limit for the type.
        #[arg(long)]
        limit: Option<PerMinute>,
    },
    /// Stop accepting events for a signal.
    Deactivate {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
    },
    /// Accept events for a signal again.
    Activate {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
    },
    /// List a tenant's signals by slug, with the limit in force and schema versions.
    List {
        #[arg(long)]
        tenant: TenantId,
        #[command(flatten)]
        paging: Paging,
    },
    /// Show one signal, with the limit in force and its schema versions.
    Show {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
    },
    /// Set a signal's own limit (--limit), or put it back on its type's default (--default).
    #[command(group(clap::ArgGroup::new("value").required(true).args(["limit", "default"])))]
    Limit {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
        /// Events per minute.
        #[arg(long)]
        limit: Option<PerMinute>,
        /// The configured default for the signal's type (SLUICE__LIMITS__*).
        #[arg(long)]
        default: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Add the next schema version of a signal from a JSON Schema file.
    Add {
        #[arg(long)]
        tenant: TenantId,
        #[arg(long)]
        slug: Slug,
        #[arg(long)]
        file: PathBuf,
    },
}

/// Runs one command; the JSON to print on success.
pub async fn run(cli: Cli, settings: &Settings) -> Result<Value, AdminError> {
    if let Command::Migrate = cli.command {
        pg::ensure_database(&settings.postgres).await?;
    }
    let pg = pg::pool(&settings.postgres)?;
    let redis = Redis::new(&settings.redis).map_err(AdminError::Config)?;
    let keyspace = Keyspace::new(settings.redis.partitions);
    let registry = Registry::new(pg.clone(), redis.clone(), keyspace);
    let allow_eviction = settings.redis.allow_eviction;
    if uses_the_layout(&cli.command) {
        same_layout(&redis, keyspace).await?;
    }
    Ok(match cli.command {
        Command::Migrate => {
            let applied = pg::migrate(&pg).await?;
            json!({"applied": applied, "version": pg::migrate::latest()})
        }
        Command::Tenant { command } => tenant(&registry, keyspace, command).await?,
        Command::Key { command } => key(&registry, command).await?,
        Command::Signal { command } => signal(&registry, settings, command).await?,
        Command::Schema {
            command: SchemaCommand::Add { tenant, slug, file },
        } => {
            let schema = read_json(&file)?;
            let (signal, added) = registry.add_schema(&tenant, &slug, &schema).await?;
            json!({"signal_id": signal.id, "version": added.version})
        }
        Command::Sync => {
            fit_for_the_backlog(&redis, keyspace, allow_eviction).await?;
            serde_json::to_value(registry.sync().await?).expect("counts serialize")
        }
        Command::Doctor => {
            let nodes = fit_for_the_backlog(&redis, keyspace, allow_eviction).await?;
            json!({"redis": nodes, "partitions": keyspace.partitions(), "ok": true})
        }
        Command::Repartition { wait } => {
            // Admissions already past an api's check when the record changes reach Redis within
            // its deadline; the replicas read the record every REFRESH_EVERY.
            let settle = 2 * (REFRESH_EVERY + settings.redis.timeout);
            let wait = Duration::from_secs(wait);
            let changed = redis_layout::change(&redis, keyspace.partitions(), settle, wait)
                .await
                .map_err(|e| AdminError::Redis(e.to_string()))?;
            let registry = serde_json::to_value(registry.sync().await?).expect("counts serialize");
            json!({"partitions": changed.partitions, "was": changed.was, "moved": changed.moved,
                   "registry": registry})
        }
        Command::DeadLetters {
            command: DeadLetterCommand::List { all, limit, cursor },
        } => {
            let page = dead_letters::list(&pg, all, cursor, limit.get()).await?;
            json!({"count": page.items.len(), "dead_letters": page.items,
                   "next_cursor": page.next.map(|id| id.to_string())})
        }
        Command::DeadLetters {
            command: DeadLetterCommand::Replay { id },
        } => {
            let replayed = dead_letters::replay(&pg, &redis, &keyspace, id).await?;
            json!({"replayed": replayed.len(), "entries": replayed})
        }
        Command::AdminToken {
            command: AdminTokenCommand::Create { name },
        } => {
            let (id, token) = AdminTokens::new(pg).create(name.as_ref()).await?;
            json!({"id": id, "token": token.expose()})
        }
        Command::AdminToken {
            command: AdminTokenCommand::Revoke { id },
        } => {
            let token = AdminTokens::new(pg).revoke(&id).await?;
            json!({"id": token.id, "revoked": true})
        }
    })
}

async fn tenant(
    registry: &Registry,
    keyspace: Keyspace,
    command: TenantCommand,
) -> Result<Value, AdminError> {
    Ok(match command {
        TenantCommand::Create { name } => {
            let tenant = registry.create_tenant(&name).await?;
            json!({"id": tenant.id, "name": tenant.name})
        }
        TenantCommand::Show { id } => {
            let tenant = registry.tenant(&id).await?;
            view(TenantView::new(tenant, keyspace))
        }
        TenantCommand::List { paging } => {
            let page = registry.tenants(&paging.request()?).await?;
            page_of("tenants", page, |t| TenantView::new(t, keyspace))
        }
    })
}

async fn key(registry: &Registry, command: KeyCommand) -> Result<Value, AdminError> {
    Ok(match command {
        KeyCommand::Create { tenant, name } => {
            let (id, key) = registry.create_key(&tenant, name.as_ref()).await?;
            json!({"id": id.as_str(), "key": key.expose()})
        }
        KeyCommand::Revoke { id } => {
            registry.revoke_key(&id).await?;
            json!({"id": id.as_str(), "revoked": true})
        }
        KeyCommand::List { tenant, paging } => {
            let page = registry.keys(&tenant, &paging.request()?).await?;
            page_of("keys", page, KeyView::from)
        }
    })
}

async fn signal(
    registry: &Registry,
    settings: &Settings,
    command: SignalCommand,
) -> Result<Value, AdminError> {
    let (tenant, slug, active) = match command {
        SignalCommand::Create {
            tenant,
            slug,
            signal_type,
            name,
            limit,
        } => {
            let s = registry
                .create_signal(&tenant, &slug, signal_type, name.as_ref(), limit)
                .await?;
            let limit = s
                .limit
                .unwrap_or_else(|| settings.limits.for_type(s.signal_type));
            return Ok(
                json!({"id": s.id, "slug": s.slug, "type": s.signal_type.as_str(),
                             "active": s.active, "limit": limit}),
            );
        }
        SignalCommand::Deactivate { tenant, slug } => (tenant, slug, false),
        SignalCommand::Activate { tenant, slug } => (tenant, slug, true),
        SignalCommand::List { tenant, paging } => {
            let page = registry.signals(&tenant, &paging.request()?).await?;
            return Ok(page_of("signals", page, |s| {
                SignalView::new(s, &settings.limits)
            }));
        }
        SignalCommand::Show { tenant, slug } => {
            let s = registry.signal(&tenant, &slug).await?;
            return Ok(view(SignalView::new(s, &settings.limits)));
        }
        SignalCommand::Limit {
            tenant,
            slug,
            limit,
            default: _,
        } => {
            // clap lets through exactly one of --limit and --default: no limit means the default.
            let change = SignalChange {
                active: None,
                limit: Some(limit),
            };
            let s = registry.update_signal(&tenant, &slug, &change).await?;
            return Ok(view(SignalView::new(s, &settings.limits)));
        }
    };
    let s = registry.set_active(&tenant, &slug, active).await?;
    Ok(json!({"id": s.id, "active": s.active}))
}

/// What the admin API shows as `data`, as the CLI prints it.
fn view(v: impl serde::Serialize) -> Value {
    serde_json::to_value(v).expect("a view serializes")
}

/// The JSON document in `file`.
fn read_json(file: &std::path::Path) -> Result<Value, AdminError> {
    let path = || file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| AdminError::ReadFile {
        path: path(),
        error: e.to_string(),
    })?;
    let text = text.strip_prefix(crate::json::BOM).unwrap_or(&text);
    serde_json::from_str(text).map_err(|e| AdminError::NotJson {
        path: path(),
        error: e.to_string(),
    })
}

/// Whether a command names the partitions' keys (the registry copy, a tenant's stream, dead
/// letters replayed into the streams), and so must use the deployment's partition count.
/// `sync` and `doctor` check it with Redis memory (`fit_for_the_backlog`).
fn uses_the_layout(command: &Command) -> bool {
    match command {
        Command::Tenant { .. }
        | Command::Key { .. }
        | Command::Signal { .. }
        | Command::Schema { .. } => true,
        Command::DeadLetters { command } => matches!(command, DeadLetterCommand::Replay { .. }),
        Command::Sync
        | Command::Doctor
        | Command::Migrate
        | Command::Repartition { .. }
        | Command::AdminToken { .. } => false,
    }
}

/// Refuses to write under another partition count than the one recorded in Redis
/// (`redis_layout`). An unreachable Redis is left to the command: registry changes are saved in
/// PostgreSQL and copied once Redis answers.
async fn same_layout(redis: &Redis, keyspace: Keyspace) -> Result<(), AdminError> {
    match redis_layout::other_layout(redis, keyspace.partitions()).await {
        Ok(Some(line)) => Err(AdminError::Redis(line)),
        Ok(None) | Err(_) => Ok(()),
    }
}

/// Every primary's memory, once Redis has answered and keeps what it is given (an evicting
/// policy is an error unless `allow_eviction`).
async fn fit_for_the_backlog(
    redis: &Redis,
    keyspace: Keyspace,
    allow_eviction: bool,
) -> Result<Vec<NodeMemory>, AdminError> {
    let memory = Memory::read(redis, keyspace)
        .await
        .map_err(|e| AdminError::Redis(e.to_string()))?;
    memory.check(allow_eviction).map_err(AdminError::Redis)?;
    Ok(memory.nodes)
}
