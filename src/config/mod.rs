//! Typed settings, read once at start and validated before anything connects.
//!
//! Layers, later ones winning: built-in defaults, the TOML file named by `SLUICE_CONFIG`
//! (optional), then environment variables `SLUICE__<SECTION>__<KEY>`. All three binaries read
//! the same layout. Each setting is a field of its section's struct below, read straight into its
//! type by the rule named beside it ([`read`]), with its default in the section's `DEFAULTS`; a
//! bad value stops the binary with one line naming the variable, so nothing ever starts
//! half-configured. The checks that involve more than one setting are in [`Settings::validate`].

mod read;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

use crate::domain::SignalType;
use crate::tls::TlsFiles;
use crate::tls::postgres::Target;

/// The most connections one pool may hold (Redis's and PostgreSQL's own connection limits are
/// far below what a larger value could ask for).
const MAX_POOL_SIZE: usize = 1000;

/// The most events a worker batch may aim for per partition: one batch is held in memory and
/// stored in one transaction.
const MAX_BATCH_SIZE: usize = 1_000_000;

/// A configuration problem, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Every setting of every binary. Each binary uses the sections it needs.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub api: ApiSettings,
    pub admin: AdminSettings,
    pub worker: WorkerSettings,
    pub limits: Limits,
    pub log: LogSettings,
}

/// One section's settings and their defaults, as the file and the environment would spell them.
type Defaults = &'static [(&'static str, &'static str)];

/// Every section, with its defaults: the settings that exist are the keys listed here.
const SECTIONS: &[(&str, Defaults)] = &[
    ("redis", RedisSettings::DEFAULTS),
    ("postgres", PostgresSettings::DEFAULTS),
    ("api", ApiSettings::DEFAULTS),
    ("admin", AdminSettings::DEFAULTS),
    ("worker", WorkerSettings::DEFAULTS),
    ("limits", Limits::DEFAULTS),
    ("log", LogSettings::DEFAULTS),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// Where the registry copy, the rate-limit counters and the partition streams live. In
    /// cluster mode, a comma-separated list of seed nodes.
    #[serde(deserialize_with = "read::redis_urls")]
    pub url: Secret,
    #[serde(deserialize_with = "read::named")]
    pub mode: RedisMode,
    /// When above 0, the api acknowledges a request only after `WAIT` confirms that this many
    /// replicas hold its writes, so a master's death loses nothing acknowledged.
    #[serde(deserialize_with = "read::whole")]
    pub min_replicas_ack: u32,
    /// How many partition streams tenants are spread over. Fixed once data exists: changing it
    /// moves tenants to other streams and counters.
    #[serde(deserialize_with = "read::partitions")]
    pub partitions: u16,
    /// The longest a request waits on Redis (connecting, queueing for a connection, or one
    /// command) before it is answered 503. Keeps a dead or slow Redis from hanging clients.
    #[serde(rename = "timeout_ms", deserialize_with = "read::positive_ms")]
    pub timeout: Duration,
    /// Connections per process. Each is multiplexed, so a few carry many requests.
    #[serde(deserialize_with = "read::up_to::<_, MAX_POOL_SIZE>")]
    pub pool_size: usize,
    /// With `rediss://` URLs: the CA the servers' certificates must chain to (the system's
    /// roots when unset), and a client certificate and key for servers that ask for one.
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Run on a Redis whose `maxmemory-policy` evicts keys, which loses acknowledged events
    /// when it fills (see `redis_memory`). Off: such a Redis is refused.
    #[serde(deserialize_with = "read::boolean")]
    pub allow_eviction: bool,
}

impl RedisSettings {
    const DEFAULTS: Defaults = &[
        ("url", "redis://127.0.0.1:6379"),
        ("mode", "standalone"),
        ("min_replicas_ack", "0"),
        ("partitions", "16"),
        ("timeout_ms", "1000"),
        ("pool_size", "8"),
        ("tls_ca_file", ""),
        ("tls_cert_file", ""),
        ("tls_key_file", ""),
        ("allow_eviction", "false"),
    ];

    /// The seed URLs, one per node given.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .expose()
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }

    /// The TLS files named for Redis.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls_ca_file.clone(),
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
        }
    }
}

/// One Redis, or a Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
}

impl FromStr for RedisMode {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "standalone" => Ok(RedisMode::Standalone),
            "cluster" => Ok(RedisMode::Cluster),
            _ => Err("must be standalone or cluster".to_owned()),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// The system of record: registry and stored events. Its `sslmode`, `sslrootcert`, `sslcert`
    /// and `sslkey` parameters are honoured as libpq reads them (see `tls::postgres`).
    #[serde(deserialize_with = "read::secret")]
    pub url: Secret,
    #[serde(deserialize_with = "read::up_to::<_, MAX_POOL_SIZE>")]
    pub pool_size: usize,
    /// CA, client certificate and key files for TLS, where the URL names none.
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "read::optional_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Where the api's read API queries (a replica, say); `url` when unset.
    #[serde(deserialize_with = "read::optional_secret")]
    pub read_url: Option<Secret>,
    /// Connections of the api's read pool: its own, so reads never wait on ingest or admin.
    #[serde(deserialize_with = "read::up_to::<_, MAX_POOL_SIZE>")]
    pub read_pool_size: usize,
    /// The longest one read may take (a statement timeout, and the wait for a connection):
    /// past it the read answers 503.
    #[serde(rename = "read_timeout_ms", deserialize_with = "read::positive_ms")]
    pub read_timeout: Duration,
}

impl PostgresSettings {
    const DEFAULTS: Defaults = &[
        ("url", "postgres://postgres@127.0.0.1:5432/sluice"),
        ("pool_size", "8"),
        ("tls_ca_file", ""),
        ("tls_cert_file", ""),
        ("tls_key_file", ""),
        ("read_url", ""),
        ("read_pool_size", "4"),
        ("read_timeout_ms", "2000"),
    ];

    /// The settings of the read pool: the read URL (or the primary's) and the read pool's size.
    pub fn for_reads(&self) -> PostgresSettings {
        PostgresSettings {
            url: self.read_url.clone().unwrap_or_else(|| self.url.clone()),
            pool_size: self.read_pool_size,
            ..self.clone()
        }
    }

    /// The TLS files named for PostgreSQL.
    pub fn tls(&self) -> TlsFiles {
        TlsFiles {
            ca: self.tls_ca_file.clone(),
            cert: self.tls_cert_file.clone(),
            key: self.tls_key_file.clone(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    #[serde(deserialize_with = "read::socket_addr")]
    pub bind: SocketAddr,
    /// Largest accepted request body, counted after gzip decompression.
    #[serde(deserialize_with = "read::positive")]
    pub body_limit_bytes: usize,
    /// How long a replica trusts its cached answer for an API key. Bounded so that a revoked
    /// key stops working on every replica within the contract's 5 seconds.
    #[serde(rename = "key_cache_ttl_ms", deserialize_with = "read::key_cache_ttl")]
    pub key_cache_ttl: Duration,
    /// HTTP worker threads; 0 means one per CPU.
    #[serde(deserialize_with = "read::api_workers")]
    pub workers: usize,
    /// After SIGTERM, how long in-flight requests may take to finish before the process exits.
    #[serde(rename = "shutdown_grace_secs", deserialize_with = "read::secs")]
    pub shutdown_grace: Duration,
    /// How long a client may take to send the request line and headers (slow clients are cut off).
    #[serde(rename = "client_timeout_ms", deserialize_with = "read::positive_ms")]
    pub client_timeout: Duration,
    /// How long a client may take to send the whole body once the headers are in.
    #[serde(rename = "body_timeout_ms", deserialize_with = "read::positive_ms")]
    pub body_timeout: Duration,
    /// Open connections per HTTP worker thread; past it, new connections wait in the backlog.
    #[serde(deserialize_with = "read::positive")]
    pub max_connections: usize,
    /// How long an idle keep-alive connection stays open.
    #[serde(rename = "keep_alive_secs", deserialize_with = "read::secs")]
    pub keep_alive: Duration,
    /// How long the answer to a request with an `Idempotency-Key` is kept for replays.
    #[serde(
        rename = "idempotency_ttl_secs",
        deserialize_with = "read::idempotency_ttl"
    )]
    pub idempotency_ttl: Duration,
    /// Share of Redis `maxmemory` from which ingest is refused with 503 before Redis refuses
    /// writes itself, keeping room for counters, idempotency records and the worker's writes.
    #[serde(deserialize_with = "read::fraction")]
    pub max_memory_fraction: f64,
}

impl ApiSettings {
    const DEFAULTS: Defaults = &[
        ("bind", "0.0.0.0:8080"),
        ("body_limit_bytes", "1048576"),
        ("key_cache_ttl_ms", "2000"),
        ("workers", "0"),
        ("shutdown_grace_secs", "25"),
        ("client_timeout_ms", "5000"),
        ("body_timeout_ms", "10000"),
        ("max_connections", "10000"),
        ("keep_alive_secs", "30"),
        ("idempotency_ttl_secs", "86400"),
        ("max_memory_fraction", "0.9"),
    ];
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the api binary serves the admin HTTP API; `None` (the default): not served.
    #[serde(deserialize_with = "read::optional_socket_addr")]
    pub bind: Option<SocketAddr>,
}

impl AdminSettings {
    const DEFAULTS: Defaults = &[("bind", "")];
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Where the worker serves `/metrics`, `/livez` and `/readyz`.
    #[serde(deserialize_with = "read::socket_addr")]
    pub metrics_bind: SocketAddr,
    /// This process's name in the consumer group; unique per process unless set.
    #[serde(deserialize_with = "read::consumer")]
    pub consumer: String,
    /// Most entries read from each partition stream per `XREADGROUP`.
    #[serde(deserialize_with = "read::up_to::<_, MAX_BATCH_SIZE>")]
    pub batch_size: usize,
    /// How long one read waits for new entries before handing back a short batch.
    #[serde(rename = "block_ms", deserialize_with = "read::positive_ms")]
    pub block: Duration,
    /// Pending entries idle longer than this belong to a consumer presumed dead, and are claimed.
    #[serde(rename = "claim_idle_ms", deserialize_with = "read::positive_ms")]
    pub claim_idle: Duration,
    /// Deliveries after which an entry that still is not stored goes to the dead letters.
    #[serde(deserialize_with = "read::positive")]
    pub max_deliveries: u32,
    /// Days of `events` partitions to keep; 0 keeps everything.
    #[serde(deserialize_with = "read::whole")]
    pub retention_days: u32,
    /// How often the Redis registry copy is rebuilt from PostgreSQL.
    #[serde(
        rename = "reconcile_interval_ms",
        deserialize_with = "read::positive_ms"
    )]
    pub reconcile_interval: Duration,
    /// How often streams are trimmed below what the group still needs.
    #[serde(rename = "trim_interval_ms", deserialize_with = "read::positive_ms")]
    pub trim_interval: Duration,
}

impl WorkerSettings {
    const DEFAULTS: Defaults = &[
        ("metrics_bind", "0.0.0.0:9091"),
        ("consumer", ""),
        ("batch_size", "5000"),
        ("block_ms", "50"),
        ("claim_idle_ms", "30000"),
        ("max_deliveries", "5"),
        ("retention_days", "0"),
        ("reconcile_interval_ms", "30000"),
        ("trim_interval_ms", "10000"),
    ];
}

/// Default per-minute limits by signal type; a signal may carry its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(deserialize_with = "read::per_minute")]
    pub event: u32,
    #[serde(deserialize_with = "read::per_minute")]
    pub metric: u32,
    #[serde(deserialize_with = "read::per_minute")]
    pub state: u32,
}

impl Limits {
    const DEFAULTS: Defaults = &[("event", "100"), ("metric", "1000"), ("state", "30")];

    pub fn for_type(&self, signal_type: SignalType) -> u32 {
        match signal_type {
            SignalType::Event => self.event,
            SignalType::Metric => self.metric,
            SignalType::State => self.state,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// A `tracing` filter directive such as `info` or `sluice=debug,actix_web=warn`.
    #[serde(deserialize_with = "read::log_filter")]
    pub level: String,
    #[serde(deserialize_with = "read::named")]
    pub format: LogFormat,
}

impl LogSettings {
    const DEFAULTS: Defaults = &[("level", "info"), ("format", "text")];
}

/// `json`: one JSON object per line, for log pipelines; `text`: for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(v: &str) -> Result<Self, String> {
        match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json".to_owned()),
        }
    }
}

/// A connection string that may hold a password: printed as `<redacted>` in debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The environment variables Sluice reads start with this; any other variable starting with it
/// is a mistake (a misspelt setting), and stops the binary.
const ENV_PREFIX: &str = "SLUICE__";

impl Settings {
    /// Reads defaults, `SLUICE_CONFIG` and the process environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var("SLUICE_CONFIG")
            .ok()
            .filter(|p| !p.is_empty());
        let vars: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::load_from(file.as_deref(), &vars)
    }

    /// Reads defaults, an optional TOML file and the given `SLUICE__*` variables, in one pass.
    pub fn load_from(
        file: Option<&str>,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        refuse_unknown_variables(vars)?;
        let mut builder = Config::builder();
        for (key, value) in every_setting() {
            builder = builder
                .set_default(&key, value)
                .map_err(|e| ConfigError(format!("{key}: {e}")))?;
        }
        if let Some(path) = file {
            if !std::path::Path::new(path).is_file() {
                return Err(ConfigError(format!(
                    "SLUICE_CONFIG names {path}, which is not a readable file"
                )));
            }
            builder = builder.add_source(File::new(path, FileFormat::Toml));
        }
        let env = Environment::with_prefix("SLUICE")
            .prefix_separator("__")
            .separator("__")
            .source(Some(vars.clone()));
        let config = builder.add_source(env).build().map_err(explain)?;
        if let Some(path) = file {
            refuse_unknown_keys(&config, path)?;
        }
        let settings: Settings = config.try_deserialize().map_err(explain)?;
        settings.validate()
    }

    /// The checks that involve more than one setting.
    fn validate(self) -> Result<Self, ConfigError> {
        self.redis_tls()?;
        self.postgres_urls()?;
        self.admin_port()?;
        self.worker_block()?;
        Ok(self)
    }

    /// A worker's read that waits for new entries must answer within the Redis deadline, with
    /// room to spare: past it the read fails (and, the connection being shared, so may the
    /// acknowledgements and trims queued behind it) whenever the streams are idle.
    fn worker_block(&self) -> Result<(), ConfigError> {
        if self.worker.block * 2 > self.redis.timeout {
            return Err(ConfigError(format!(
                "SLUICE__WORKER__BLOCK_MS (worker.block_ms) must be at most half of \
                 SLUICE__REDIS__TIMEOUT_MS (redis.timeout_ms, {} ms): a read waiting for new \
                 entries must answer within Redis's deadline, got {} ms",
                self.redis.timeout.as_millis(),
                self.worker.block.as_millis()
            )));
        }
        Ok(())
    }

    /// The Redis TLS files: only with `rediss://` URLs (files that would go unused are a
    /// mistake worth stopping for), a client certificate only with its key.
    fn redis_tls(&self) -> Result<(), ConfigError> {
        let files = self.redis.tls();
        let refuse = |message: &str| Err(ConfigError(message.to_owned()));
        if files.cert.is_some() != files.key.is_some() {
            return refuse(
                "SLUICE__REDIS__TLS_CERT_FILE and SLUICE__REDIS__TLS_KEY_FILE go together: \
                 give both or neither",
            );
        }
        if !files.is_empty() && !self.redis.url.expose().starts_with("rediss://") {
            return refuse(
                "SLUICE__REDIS__TLS_* files are set but SLUICE__REDIS__URL is not rediss://; \
                 use rediss:// to connect over TLS",
            );
        }
        Ok(())
    }

    /// Both PostgreSQL URLs, with the TLS files they may be given (never echoed: they may hold
    /// a password).
    fn postgres_urls(&self) -> Result<(), ConfigError> {
        let tls = self.postgres.tls();
        let urls = [
            ("postgres.url", Some(&self.postgres.url)),
            ("postgres.read_url", self.postgres.read_url.as_ref()),
        ];
        for (key, url) in urls {
            if let Some(url) = url {
                Target::parse(url.expose(), &tls)
                    .map_err(|why| ConfigError(format!("{} ({key}) {why}", env_name(key))))?;
            }
        }
        Ok(())
    }

    /// The admin API has a port of its own.
    fn admin_port(&self) -> Result<(), ConfigError> {
        match self.admin.bind {
            Some(admin) if same_listener(self.api.bind, admin) => Err(ConfigError(
                "SLUICE__ADMIN__BIND (admin.bind) must not be the ingest listener's address \
                 (SLUICE__API__BIND): the admin API has a port of its own"
                    .to_owned(),
            )),
            _ => Ok(()),
        }
    }
}

/// A refusal from [`read`], or from the file, as one line naming the variable.
fn explain(error: config::ConfigError) -> ConfigError {
    match error {
        config::ConfigError::At {
            error,
            key: Some(key),
            ..
        } => ConfigError(format!("{} ({key}) {error}", env_name(&key))),
        other => ConfigError(format!("SLUICE_CONFIG or SLUICE__*: {other}")),
    }
}

/// Whether two listeners would take the same port on some address.
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Every setting there is, as `section.key`, with its default.
fn every_setting() -> impl Iterator<Item = (String, &'static str)> {
    SECTIONS.iter().flat_map(|(section, defaults)| {
        defaults
            .iter()
            .map(move |(key, value)| (format!("{section}.{key}"), *value))
    })
}

/// Stops at `SLUICE__*` variables that name no setting, all of them in one line.
fn refuse_unknown_variables(vars: &HashMap<String, String>) -> Result<(), ConfigError> {
    let known: Vec<String> = every_setting().map(|(k, _)| env_name(&k)).collect();
    let unknown = vars
        .keys()
        .filter(|k| k.starts_with(ENV_PREFIX) && !known.contains(k))
        .cloned();
    refuse_unknown(unknown.collect(), "no such variable is read")
}

/// Stops at keys of the settings file that name no setting, all of them in one line. (Run once
/// the variables have passed, so whatever is left over came from the file.)
fn refuse_unknown_keys(config: &Config, path: &str) -> Result<(), ConfigError> {
    let known: Vec<String> = every_setting().map(|(k, _)| k).collect();
    let mut given = Vec::new();
    let sections: HashMap<String, config::Value> =
        config.clone().try_deserialize().map_err(explain)?;
    for (section, value) in sections {
        match value.into_table() {
            Ok(keys) => given.extend(keys.into_keys().map(|k| format!("{section}.{k}"))),
            Err(_) => given.push(section),
        }
    }
    given.retain(|k| !known.contains(k));
    refuse_unknown(given, &format!("{path} has no such section or key"))
}

fn refuse_unknown(mut unknown: Vec<String>, why: &str) -> Result<(), ConfigError> {
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ConfigError(format!(
        "unknown setting{} {}: {why} (see the README's settings table)",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    )))
}

/// The environment variable of `section.key`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's settings table lists every setting once, with the default the code has:
    /// the table is where operators look, so it must not drift from the sections' `DEFAULTS`.
    #[test]
    fn the_readme_table_is_every_setting_with_its_default() {
        let readme = include_str!("../../README.md");
        let mut documented: HashMap<String, String> = HashMap::new();
        for row in readme.lines().filter(|l| l.starts_with("| `SLUICE__")) {
            let cells: Vec<&str> = row.split(" | ").collect();
            let default = cells.last().unwrap().trim_end_matches(" |").trim();
            for name in cells[0].trim_start_matches("| ").split(", ") {
                let name = name.trim_matches('`').to_owned();
                assert!(
                    documented
                        .insert(name.clone(), default.to_owned())
                        .is_none(),
                    "{name} is in the table twice"
                );
            }
        }
        for (key, default) in every_setting() {
            let name = env_name(&key);
            let Some(shown) = documented.remove(&name) else {
                panic!("{name} is missing from the README's settings table");
            };
            let expected = match (key.as_str(), default) {
                // Derived at start, not a fixed value.
                ("worker.consumer", "") => "`<host>-<pid>-<random>`".to_owned(),
                ("postgres.read_url", "") => "`SLUICE__POSTGRES__URL`".to_owned(),
                ("admin.bind", "") => "empty".to_owned(),
                (_, "") => "none".to_owned(),
                (_, value) => format!("`{value}`"),
            };
            assert_eq!(shown, expected, "{name}'s default in the README");
        }
        assert!(
            documented.is_empty(),
            "documented but not read: {documented:?}"
        );
    }
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let source: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(None, &source)
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load(&[]).unwrap();
        assert_eq!(s.redis.url.expose(), "redis://127.0.0.1:6379");
        assert_eq!(
            s.postgres.url.expose(),
            "postgres://postgres@127.0.0.1:5432/sluice"
        );
        assert_eq!(s.api.bind, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(s.worker.metrics_bind, "0.0.0.0:9091".parse().unwrap());
        assert_eq!(
            s.limits,
            Limits {
                event: 100,
                metric: 1000,
                state: 30
            }
        );
        assert_eq!(s.redis.partitions, 16);
        assert_eq!(s.api.body_limit_bytes, 1 << 20);
        assert_eq!(s.api.max_memory_fraction, 0.9);
        assert!(
            !s.redis.allow_eviction,
            "an evicting Redis is refused unless asked"
        );
    }

    #[test]
    fn environment_overrides_defaults() {
        let s = load(&[
            ("SLUICE__LIMITS__STATE", "7"),
            ("SLUICE__REDIS__PARTITIONS", "4"),
        ])
        .unwrap();
        assert_eq!(s.limits.state, 7);
        assert_eq!(s.redis.partitions, 4);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("SLUICE__REDIS__PARTITIONS", "0"),
            ("SLUICE__LIMITS__EVENT", "lots"),
            ("SLUICE__LIMITS__METRIC", "2147483648"),
            ("SLUICE__API__WORKERS", "513"),
            ("SLUICE__API__KEEP_ALIVE_SECS", "18446744073709551615"),
            ("SLUICE__WORKER__CLAIM_IDLE_MS", "31536000001"),
            ("SLUICE__REDIS__PARTITIONS", "100000"),
            ("SLUICE__REDIS__URL", "not a url"),
            ("SLUICE__REDIS__MODE", "sentinel"),
            ("SLUICE__REDIS__URL", "redis://a:1,nope"),
            (
                "SLUICE__POSTGRES__URL",
                "postgres://x:y@:/?sslmode=sometimes",
            ),
            ("SLUICE__API__BIND", "localhost"),
            ("SLUICE__API__KEY_CACHE_TTL_MS", "60000"),
            ("SLUICE__ADMIN__BIND", "localhost:8081"),
            ("SLUICE__ADMIN__BIND", "127.0.0.1:8080"),
            ("SLUICE__API__MAX_MEMORY_FRACTION", "0"),
            ("SLUICE__API__MAX_MEMORY_FRACTION", "1.5"),
            ("SLUICE__API__MAX_MEMORY_FRACTION", "NaN"),
            ("SLUICE__REDIS__ALLOW_EVICTION", "yes"),
            ("SLUICE__REDIS__POOL_SIZE", "18446744073709551615"),
            ("SLUICE__POSTGRES__POOL_SIZE", "1001"),
            ("SLUICE__POSTGRES__READ_POOL_SIZE", "0"),
            ("SLUICE__WORKER__BATCH_SIZE", "1000001"),
        ] {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        // A default limit is bounded as a signal's own limit is.
        let most = load(&[("SLUICE__LIMITS__METRIC", "2147483647")]).unwrap();
        assert_eq!(most.limits.metric, i32::MAX as u32);
    }

    #[test]
    fn the_admin_api_is_off_unless_bound_and_never_on_the_ingest_port() {
        assert_eq!(load(&[]).unwrap().admin.bind, None);
        let on = load(&[("SLUICE__ADMIN__BIND", "127.0.0.1:8081")]).unwrap();
        assert_eq!(on.admin.bind, Some("127.0.0.1:8081".parse().unwrap()));
        let err = load(&[
            ("SLUICE__API__BIND", "127.0.0.1:9000"),
            ("SLUICE__ADMIN__BIND", "0.0.0.0:9000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("ingest listener"), "{err}");
    }

    #[test]
    fn a_blocking_read_answers_within_the_redis_deadline() {
        let ok = load(&[("SLUICE__WORKER__BLOCK_MS", "500")]).unwrap();
        assert_eq!(ok.worker.block, Duration::from_millis(500));
        for (block, timeout) in [("501", "1000"), ("2000", "1000"), ("60", "100")] {
            let err = load(&[
                ("SLUICE__WORKER__BLOCK_MS", block),
                ("SLUICE__REDIS__TIMEOUT_MS", timeout),
            ])
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("SLUICE__WORKER__BLOCK_MS (worker.block_ms) must be at most half"),
                "{err}"
            );
            assert!(err.ends_with(&format!("got {block} ms")), "{err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = load(&[("SLUICE__POSTGRES__URL", "postgres://u:hunter2@db/sluice")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        // Nor does a rejected one.
        for (var, value) in [
            (
                "SLUICE__POSTGRES__URL",
                "postgres://u:hunter2@db/sluice?sslmode=sometimes",
            ),
            ("SLUICE__REDIS__URL", "redis://:hunter2@host:notaport"),
        ] {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn unknown_variables_stop_the_binary_naming_them() {
        let err = load(&[
            ("SLUICE__REDIS__URLL", "redis://x"),
            ("SLUICE__WORKER__BATCHSIZE", "5"),
            ("SLUICE__LIMITS__STATE", "7"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("SLUICE__REDIS__URLL") && err.contains("SLUICE__WORKER__BATCHSIZE"),
            "{err}"
        );
        assert!(!err.contains("SLUICE__LIMITS__STATE"), "{err}");
        assert!(!err.contains('\n'));
        // Every setting's own variable is known.
        for (key, _) in every_setting() {
            let result = load(&[(env_name(&key).as_str(), "1")]);
            assert!(
                result
                    .map(drop)
                    .err()
                    .is_none_or(|e| !e.to_string().contains("unknown")),
                "{key}"
            );
        }
    }

    /// A TOML file gives numbers and booleans as such; they are read by the same rules as text.
    #[test]
    fn a_settings_file_is_read_by_the_same_rules() {
        let file = |text: &str| {
            let path = std::env::temp_dir().join(format!(
                "sluice-settings-{}-{}.toml",
                std::process::id(),
                crate::domain::random_base62(8)
            ));
            std::fs::write(&path, text).unwrap();
            let loaded = Settings::load_from(path.to_str(), &HashMap::new());
            std::fs::remove_file(&path).unwrap();
            loaded
        };
        let s = file(
            "[redis]\npartitions = 4\nallow_eviction = true\n\
             [api]\nmax_memory_fraction = 0.5\nbind = \"127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(s.redis.partitions, 4);
        assert!(s.redis.allow_eviction);
        assert_eq!(s.api.max_memory_fraction, 0.5);
        assert_eq!(s.api.bind, "127.0.0.1:9000".parse().unwrap());

        let err = file("[redis]\npartitions = 4000\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SLUICE__REDIS__PARTITIONS (redis.partitions) must be a whole number between 1 and 1024"),
            "{err}"
        );
        let err = file("[redis]\npartitions = [4]\n").unwrap_err().to_string();
        assert!(err.contains("SLUICE__REDIS__PARTITIONS"), "{err}");

        let err = file("[api]\nbodylimit = 3\n[cache]\nsize = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown settings api.bodylimit, cache.size:"),
            "{err}"
        );
        assert!(!err.contains('\n'), "one line: {err}");
    }
}
