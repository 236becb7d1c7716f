//! Typed settings, read once at start and validated before anything connects.
//!
//! Layers, later ones winning: built-in defaults, the TOML file named by `SLUICE_CONFIG`
//! (optional), then environment variables `SLUICE__<SECTION>__<KEY>`. All three binaries read
//! the same layout. A bad value stops the binary with one line naming the variable, so nothing
//! ever starts half-configured.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

use crate::domain::SignalType;

/// A configuration problem, phrased for the operator who has to fix it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Every setting of every binary. Each binary uses the sections it needs.
#[derive(Clone, Debug)]
pub struct Settings {
    pub redis: RedisSettings,
    pub postgres: PostgresSettings,
    pub api: ApiSettings,
    pub admin: AdminSettings,
    pub worker: WorkerSettings,
    pub limits: Limits,
    pub log: LogSettings,
}

#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Where the registry copy, the rate-limit counters and the partition streams live. In
    /// cluster mode, a comma-separated list of seed nodes.
    pub url: Secret,
    pub mode: RedisMode,
    /// When above 0, the api acknowledges a request only after `WAIT` confirms that this many
    /// replicas hold its writes, so a master's death loses nothing acknowledged.
    pub min_replicas_ack: u32,
    /// How many partition streams tenants are spread over. Fixed once data exists: changing it
    /// moves tenants to other streams and counters.
    pub partitions: u16,
    /// The longest a request waits on Redis (connecting, queueing for a connection, or one
    /// command) before it is answered 503. Keeps a dead or slow Redis from hanging clients.
    pub timeout: Duration,
    /// Connections per process. Each is multiplexed, so a few carry many requests.
    pub pool_size: usize,
    /// With `rediss://` URLs: the CA the servers' certificates must chain to (the system's
    /// roots when unset), and a client certificate and key for servers that ask for one.
    pub tls: crate::tls::TlsFiles,
    /// Run on a Redis whose `maxmemory-policy` evicts keys, which loses acknowledged events
    /// when it fills (see `redis_memory`). Off: such a Redis is refused.
    pub allow_eviction: bool,
}

impl RedisSettings {
    /// The seed URLs, one per node given.
    pub fn urls(&self) -> Vec<String> {
        self.url
            .expose()
            .split(',')
            .map(|u| u.trim().to_owned())
            .filter(|u| !u.is_empty())
            .collect()
    }
}

/// One Redis, or a Redis Cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisMode {
    Standalone,
    Cluster,
}

#[derive(Clone, Debug)]
pub struct PostgresSettings {
    /// The system of record: registry and stored events. Its `sslmode`, `sslrootcert`, `sslcert`
    /// and `sslkey` parameters are honoured as libpq reads them (see `pg::tls`).
    pub url: Secret,
    pub pool_size: usize,
    /// CA, client certificate and key files for TLS, where the URL names none.
    pub tls: crate::tls::TlsFiles,
    /// Where the api's read API queries (a replica, say); `url` when unset.
    pub read_url: Option<Secret>,
    /// Connections of the api's read pool: its own, so reads never wait on ingest or admin.
    pub read_pool_size: usize,
    /// The longest one read may take (a statement timeout, and the wait for a connection):
    /// past it the read answers 503.
    pub read_timeout: Duration,
}

impl PostgresSettings {
    /// The settings of the read pool: the read URL (or the primary's) and the read pool's size.
    pub fn for_reads(&self) -> PostgresSettings {
        PostgresSettings {
            url: self.read_url.clone().unwrap_or_else(|| self.url.clone()),
            pool_size: self.read_pool_size,
            ..self.clone()
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiSettings {
    pub bind: SocketAddr,
    /// Largest accepted request body, counted after gzip decompression.
    pub body_limit_bytes: usize,
    /// How long a replica trusts its cached answer for an API key. Bounded so that a revoked
    /// key stops working on every replica within the contract's 5 seconds.
    pub key_cache_ttl: Duration,
    /// HTTP worker threads; 0 means one per CPU.
    pub workers: usize,
    /// After SIGTERM, how long in-flight requests may take to finish before the process exits.
    pub shutdown_grace: Duration,
    /// How long a client may take to send the request line and headers (slow clients are cut off).
    pub client_timeout: Duration,
    /// How long a client may take to send the whole body once the headers are in.
    pub body_timeout: Duration,
    /// Open connections per HTTP worker thread; past it, new connections wait in the backlog.
    pub max_connections: usize,
    /// How long an idle keep-alive connection stays open.
    pub keep_alive: Duration,
    /// How long the answer to a request with an `Idempotency-Key` is kept for replays.
    pub idempotency_ttl: Duration,
    /// Share of Redis `maxmemory` from which ingest is refused with 503 before Redis refuses
    /// writes itself, keeping room for counters, idempotency records and the worker's writes.
    pub max_memory_fraction: f64,
}

#[derive(Clone, Debug)]
pub struct AdminSettings {
    /// Where the api binary serves the admin HTTP API; `None` (the default): not served.
    pub bind: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Where the worker serves `/metrics`, `/livez` and `/readyz`.
    pub metrics_bind: SocketAddr,
    /// This process's name in the consumer group; unique per process unless set.
    pub consumer: String,
    /// Most entries read from each partition stream per `XREADGROUP`.
    pub batch_size: usize,
    /// How long one read waits for new entries before handing back a short batch.
    pub block: Duration,
    /// Pending entries idle longer than this belong to a consumer presumed dead, and are claimed.
    pub claim_idle: Duration,
    /// Deliveries after which an entry that still is not stored goes to the dead letters.
    pub max_deliveries: u32,
    /// Days of `events` partitions to keep; 0 keeps everything.
    pub retention_days: u32,
    /// How often the Redis registry copy is rebuilt from PostgreSQL.
    pub reconcile_interval: Duration,
    /// How often streams are trimmed below what the group still needs.
    pub trim_interval: Duration,
}

/// Default per-minute limits by signal type; a signal may carry its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub event: u32,
    pub metric: u32,
    pub state: u32,
}

impl Limits {
    pub fn for_type(&self, signal_type: SignalType) -> u32 {
        match signal_type {
            SignalType::Event => self.event,
            SignalType::Metric => self.metric,
            SignalType::State => self.state,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LogSettings {
    /// A `tracing` filter directive such as `info` or `sluice=debug,actix_web=warn`.
    pub level: String,
    pub format: LogFormat,
}

/// `json`: one JSON object per line, for log pipelines; `text`: for people.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
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

/// The longest an idempotency record may be kept: 7 days.
const MAX_IDEMPOTENCY_TTL_SECS: u64 = 7 * 24 * 3600;

/// The longest key-cache lifetime allowed: revocation must reach every replica within 5 s,
/// and a cache miss itself may take up to the Redis timeout.
const MAX_KEY_CACHE_TTL_MS: u64 = 4000;

/// The environment variables Sluice reads start with this; any other variable starting with it
/// is a mistake (a misspelt setting), and stops the binary.
const ENV_PREFIX: &str = "SLUICE__";

/// Settings as the file and the environment spell them, before validation: one struct per
/// section, each field's default beside it (in the section's `Default`), values as text so that
/// every problem is reported by [`Field`] with the variable's name. Unknown keys are refused.
#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Raw {
    redis: RawRedis,
    postgres: RawPostgres,
    api: RawApi,
    admin: RawAdmin,
    worker: RawWorker,
    limits: RawLimits,
    log: RawLog,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRedis {
    url: String,
    mode: String,
    min_replicas_ack: String,
    partitions: String,
    timeout_ms: String,
    pool_size: String,
    tls_ca_file: String,
    tls_cert_file: String,
    tls_key_file: String,
    allow_eviction: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: "redis://127.0.0.1:6379".into(),
            mode: "standalone".into(),
            min_replicas_ack: "0".into(),
            partitions: "16".into(),
            timeout_ms: "1000".into(),
            pool_size: "8".into(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            allow_eviction: "false".into(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawPostgres {
    url: String,
    pool_size: String,
    tls_ca_file: String,
    tls_cert_file: String,
    tls_key_file: String,
    read_url: String,
    read_pool_size: String,
    read_timeout_ms: String,
}

impl Default for RawPostgres {
    fn default() -> Self {
        RawPostgres {
            url: "postgres://postgres@127.0.0.1:5432/sluice".into(),
            pool_size: "8".into(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            read_url: String::new(),
            read_pool_size: "4".into(),
            read_timeout_ms: "2000".into(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawApi {
    bind: String,
    body_limit_bytes: String,
    key_cache_ttl_ms: String,
    workers: String,
    shutdown_grace_secs: String,
    client_timeout_ms: String,
    body_timeout_ms: String,
    max_connections: String,
    keep_alive_secs: String,
    idempotency_ttl_secs: String,
    max_memory_fraction: String,
}

impl Default for RawApi {
    fn default() -> Self {
        RawApi {
            bind: "0.0.0.0:8080".into(),
            body_limit_bytes: "1048576".into(),
            key_cache_ttl_ms: "2000".into(),
            workers: "0".into(),
            shutdown_grace_secs: "25".into(),
            client_timeout_ms: "5000".into(),
            body_timeout_ms: "10000".into(),
            max_connections: "10000".into(),
            keep_alive_secs: "30".into(),
            idempotency_ttl_secs: "86400".into(),
            max_memory_fraction: "0.9".into(),
        }
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAdmin {
    bind: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawWorker {
    metrics_bind: String,
    consumer: String,
    batch_size: String,
    block_ms: String,
    claim_idle_ms: String,
    max_deliveries: String,
    retention_days: String,
    reconcile_interval_ms: String,
    trim_interval_ms: String,
}

impl Default for RawWorker {
    fn default() -> Self {
        RawWorker {
            metrics_bind: "0.0.0.0:9091".into(),
            consumer: String::new(),
            batch_size: "5000".into(),
            block_ms: "50".into(),
            claim_idle_ms: "30000".into(),
            max_deliveries: "5".into(),
            retention_days: "0".into(),
            reconcile_interval_ms: "30000".into(),
            trim_interval_ms: "10000".into(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLimits {
    event: String,
    metric: String,
    state: String,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            event: "100".into(),
            metric: "1000".into(),
            state: "30".into(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawLog {
    level: String,
    format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Settings whose values may carry a password: a rejected value is never echoed.
const SECRET_KEYS: &[&str] = &["redis.url", "postgres.url", "postgres.read_url"];

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
        let raw: Raw = builder
            .add_source(env)
            .build()
            .and_then(Config::try_deserialize)
            .map_err(|e| ConfigError(format!("SLUICE_CONFIG or SLUICE__*: {e}")))?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Self, ConfigError> {
        Ok(Settings {
            redis: redis(&raw)?,
            postgres: postgres(&raw)?,
            api: api(&raw)?,
            admin: admin(&raw)?,
            worker: worker(&raw)?,
            limits: limits(&raw)?,
            log: log(&raw)?,
        })
    }
}

/// The setting `section.key` of `raw`, named by that path (so its variable is
/// `SLUICE__SECTION__KEY`), for [`Field`]'s parsing and errors.
macro_rules! field {
    ($raw:ident, $section:ident . $key:ident) => {
        Field {
            key: concat!(stringify!($section), ".", stringify!($key)),
            value: $raw.$section.$key.clone(),
        }
    };
}

/// The `redis` section.
fn redis(raw: &Raw) -> Result<RedisSettings, ConfigError> {
    Ok(RedisSettings {
        url: Secret(field!(raw, redis.url).parse_with(parse_redis_urls)?),
        mode: field!(raw, redis.mode).parse_with(|v| match v {
            "standalone" => Ok(RedisMode::Standalone),
            "cluster" => Ok(RedisMode::Cluster),
            _ => Err("must be standalone or cluster".to_owned()),
        })?,
        tls: redis_tls(raw)?,
        min_replicas_ack: field!(raw, redis.min_replicas_ack)
            .parsed("a whole number of replicas")?,
        partitions: field!(raw, redis.partitions).parse_with(|v| {
            let n: u16 = v.parse().map_err(|_| "must be a whole number".to_owned())?;
            if (1..=1024).contains(&n) {
                Ok(n)
            } else {
                Err("must be between 1 and 1024".to_owned())
            }
        })?,
        timeout: Duration::from_millis(field!(raw, redis.timeout_ms).positive()?),
        pool_size: field!(raw, redis.pool_size).positive()?,
        allow_eviction: field!(raw, redis.allow_eviction).parsed("true or false")?,
    })
}

/// The `postgres` section.
fn postgres(raw: &Raw) -> Result<PostgresSettings, ConfigError> {
    let tls = crate::tls::TlsFiles {
        ca: field!(raw, postgres.tls_ca_file).parse_with(readable_file)?,
        cert: field!(raw, postgres.tls_cert_file).parse_with(readable_file)?,
        key: field!(raw, postgres.tls_key_file).parse_with(readable_file)?,
    };
    Ok(PostgresSettings {
        url: Secret(
            field!(raw, postgres.url)
                .parse_with(|v| crate::pg::tls::Target::parse(v, &tls).map(|_| v.to_owned()))?,
        ),
        pool_size: field!(raw, postgres.pool_size).positive()?,
        read_url: field!(raw, postgres.read_url).parse_with(|v| {
            if v.is_empty() {
                return Ok(None);
            }
            crate::pg::tls::Target::parse(v, &tls)?;
            Ok(Some(Secret(v.to_owned())))
        })?,
        read_pool_size: field!(raw, postgres.read_pool_size).positive()?,
        read_timeout: Duration::from_millis(field!(raw, postgres.read_timeout_ms).positive()?),
        tls,
    })
}

/// The `api` section.
fn api(raw: &Raw) -> Result<ApiSettings, ConfigError> {
    Ok(ApiSettings {
        bind: field!(raw, api.bind).parsed("a socket address such as 0.0.0.0:8080")?,
        body_limit_bytes: field!(raw, api.body_limit_bytes).positive()?,
        key_cache_ttl: Duration::from_millis(
            field!(raw, api.key_cache_ttl_ms).parse_with(|v| {
                let ms: u64 = v.parse().map_err(|_| "must be a whole number".to_owned())?;
                if ms <= MAX_KEY_CACHE_TTL_MS {
                    Ok(ms)
                } else {
                    Err(format!(
                        "must be at most {MAX_KEY_CACHE_TTL_MS} so that revoked keys stop within 5 s"
                    ))
                }
            })?,
        ),
        workers: field!(raw, api.workers).parsed("a whole number")?,
        shutdown_grace: Duration::from_secs(
            field!(raw, api.shutdown_grace_secs)
                .parsed("a whole number of seconds")?,
        ),
        client_timeout: Duration::from_millis(
            field!(raw, api.client_timeout_ms).positive()?,
        ),
        body_timeout: Duration::from_millis(
            field!(raw, api.body_timeout_ms).positive()?,
        ),
        max_connections: field!(raw, api.max_connections).positive()?,
        keep_alive: Duration::from_secs(
            field!(raw, api.keep_alive_secs)
                .parsed("a whole number of seconds")?,
        ),
        idempotency_ttl: Duration::from_secs(
            field!(raw, api.idempotency_ttl_secs).parse_with(|v| {
                match v.parse::<u64>() {
                    Ok(secs) if (1..=MAX_IDEMPOTENCY_TTL_SECS).contains(&secs) => Ok(secs),
                    _ => Err(format!(
                        "must be a whole number of seconds from 1 to {MAX_IDEMPOTENCY_TTL_SECS} (7 days)"
                    )),
                }
            })?,
        ),
        max_memory_fraction: field!(raw, api.max_memory_fraction)
            .parse_with(|v| match v.parse::<f64>() {
                Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
                _ => Err("must be a number above 0 and at most 1 (a share of Redis maxmemory)"
                    .to_owned()),
            })?,
    })
}

/// The `admin` section.
fn admin(raw: &Raw) -> Result<AdminSettings, ConfigError> {
    Ok(AdminSettings {
        bind: field!(raw, admin.bind).parse_with(|v| {
            if v.is_empty() {
                return Ok(None);
            }
            let addr: SocketAddr = v
                .parse()
                .map_err(|_| "must be a socket address such as 127.0.0.1:8081".to_owned())?;
            let api = raw.api.bind.trim().parse::<SocketAddr>().ok();
            if api.is_some_and(|api| same_listener(api, addr)) {
                return Err(
                    "must not be the ingest listener's address (SLUICE__API__BIND): the admin API has a port of its own"
                        .to_owned(),
                );
            }
            Ok(Some(addr))
        })?,
    })
}

/// The `worker` section.
fn worker(raw: &Raw) -> Result<WorkerSettings, ConfigError> {
    Ok(WorkerSettings {
        metrics_bind: field!(raw, worker.metrics_bind)
            .parsed("a socket address such as 0.0.0.0:9091")?,
        consumer: field!(raw, worker.consumer).parse_with(|v| {
            if v.len() > 200 || v.chars().any(|c| c.is_whitespace() || c.is_control()) {
                Err("must be at most 200 characters with no spaces".to_owned())
            } else if v.is_empty() {
                Ok(default_consumer_name())
            } else {
                Ok(v.to_owned())
            }
        })?,
        batch_size: field!(raw, worker.batch_size).positive()?,
        block: Duration::from_millis(field!(raw, worker.block_ms).positive()?),
        claim_idle: Duration::from_millis(field!(raw, worker.claim_idle_ms).positive()?),
        max_deliveries: field!(raw, worker.max_deliveries).positive()?,
        retention_days: field!(raw, worker.retention_days).parsed("a whole number of days")?,
        reconcile_interval: Duration::from_millis(
            field!(raw, worker.reconcile_interval_ms).positive()?,
        ),
        trim_interval: Duration::from_millis(field!(raw, worker.trim_interval_ms).positive()?),
    })
}

/// The `limits` section.
fn limits(raw: &Raw) -> Result<Limits, ConfigError> {
    Ok(Limits {
        event: field!(raw, limits.event).positive()?,
        metric: field!(raw, limits.metric).positive()?,
        state: field!(raw, limits.state).positive()?,
    })
}

/// The `log` section.
fn log(raw: &Raw) -> Result<LogSettings, ConfigError> {
    Ok(LogSettings {
        level: field!(raw, log.level).parse_with(|v| {
            tracing_subscriber::EnvFilter::try_new(v)
                .map(|_| v.to_owned())
                .map_err(|e| format!("is not a log filter ({e})"))
        })?,
        format: field!(raw, log.format).parse_with(|v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("must be text or json".to_owned()),
        })?,
    })
}

/// Whether two listeners would take the same port on some address.
fn same_listener(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.port() != 0
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Every `section.key` there is, from the sections' own fields.
fn known_keys() -> Vec<String> {
    let raw = serde_json::to_value(Raw::default()).expect("plain strings serialize");
    let mut keys = Vec::new();
    for (section, fields) in raw.as_object().into_iter().flatten() {
        for key in fields.as_object().into_iter().flatten().map(|(k, _)| k) {
            keys.push(format!("{section}.{key}"));
        }
    }
    keys
}

/// Stops at `SLUICE__*` variables that name no setting, all of them in one line.
fn refuse_unknown_variables(vars: &HashMap<String, String>) -> Result<(), ConfigError> {
    let known: Vec<String> = known_keys().iter().map(|k| env_name(k)).collect();
    let mut unknown: Vec<&str> = vars
        .keys()
        .map(String::as_str)
        .filter(|k| k.starts_with(ENV_PREFIX) && !known.iter().any(|n| n == k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(ConfigError(format!(
        "unknown setting{} {}: no such variable is read (see the README's settings table)",
        if unknown.len() > 1 { "s" } else { "" },
        unknown.join(", ")
    )))
}

/// The environment variable of `section.key`.
fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.replace('.', "__").to_uppercase())
}

/// One setting's value, with errors that name its environment variable.
struct Field {
    key: &'static str,
    value: String,
}

impl Field {
    fn parse_with<T>(
        &self,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        parse(self.value.trim()).map_err(|why| {
            let name = env_name(self.key);
            if SECRET_KEYS.contains(&self.key) {
                // The value may hold a password: say what is wrong, never what was given.
                ConfigError(format!("{name} ({}) {why}", self.key))
            } else {
                ConfigError(format!("{name} ({}) {why}, got {:?}", self.key, self.value))
            }
        })
    }

    fn parsed<T: FromStr>(&self, expected: &str) -> Result<T, ConfigError> {
        self.parse_with(|v| v.parse().map_err(|_| format!("must be {expected}")))
    }

    fn positive<T: FromStr + PartialOrd + Default>(&self) -> Result<T, ConfigError> {
        self.parse_with(|v| match v.parse::<T>() {
            Ok(n) if n > T::default() => Ok(n),
            _ => Err("must be a positive whole number".to_owned()),
        })
    }
}

/// An optional file that must exist and be readable when given.
fn readable_file(v: &str) -> Result<Option<std::path::PathBuf>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    std::fs::File::open(v)
        .map(|_| Some(std::path::PathBuf::from(v)))
        .map_err(|e| format!("names a file that cannot be read ({e})"))
}

/// `<host>-<pid>-<random>`: unique per process, readable in `XINFO CONSUMERS`.
fn default_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && !h.contains(char::is_whitespace))
        .unwrap_or_else(|| "worker".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        crate::domain::random_base62(6)
    )
}

/// One Redis URL, or (for cluster mode) several separated by commas.
/// One Redis URL, or a comma-separated list of cluster seeds, all with TLS (`rediss://`) or
/// all without. Certificate checks cannot be turned off (`#insecure`): a server whose
/// certificate the system does not trust is reached by naming its CA instead.
fn parse_redis_urls(v: &str) -> Result<String, String> {
    use redis::IntoConnectionInfo;
    let mut schemes = std::collections::BTreeSet::new();
    for url in v.split(',').map(str::trim) {
        let info = url
            .into_connection_info()
            .map_err(|e| format!("is not a Redis URL or list of them ({e})"))?;
        if let redis::ConnectionAddr::TcpTls { insecure: true, .. } = info.addr() {
            return Err(
                "asks for #insecure: certificate checks cannot be turned off; \
                        give the server's CA in SLUICE__REDIS__TLS_CA_FILE instead"
                    .to_owned(),
            );
        }
        schemes.insert(url.starts_with("rediss://"));
    }
    if schemes.len() > 1 {
        return Err("mixes rediss:// and redis:// seeds; a cluster is all TLS or none".to_owned());
    }
    Ok(v.to_owned())
}

/// The Redis TLS files: only with `rediss://` URLs (files that would go unused are a mistake
/// worth stopping for), a client certificate only with its key.
fn redis_tls(raw: &Raw) -> Result<crate::tls::TlsFiles, ConfigError> {
    let files = crate::tls::TlsFiles {
        ca: field!(raw, redis.tls_ca_file).parse_with(readable_file)?,
        cert: field!(raw, redis.tls_cert_file).parse_with(readable_file)?,
        key: field!(raw, redis.tls_key_file).parse_with(readable_file)?,
    };
    let refuse = |message: &str| Err(ConfigError(message.to_owned()));
    if files.cert.is_some() != files.key.is_some() {
        return refuse(
            "SLUICE__REDIS__TLS_CERT_FILE and SLUICE__REDIS__TLS_KEY_FILE go together: \
             give both or neither",
        );
    }
    if !files.is_empty() && !raw.redis.url.trim_start().starts_with("rediss://") {
        return refuse(
            "SLUICE__REDIS__TLS_* files are set but SLUICE__REDIS__URL is not rediss://; \
             use rediss:// to connect over TLS",
        );
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's settings table lists every setting once, with the default the code has:
    /// the table is where operators look, so it must not drift from `Raw`'s defaults.
    #[test]
    fn the_readme_table_is_every_setting_with_its_default() {
        let readme = include_str!("../README.md");
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
        let defaults = serde_json::to_value(Raw::default()).unwrap();
        for key in known_keys() {
            let name = env_name(&key);
            let Some(shown) = documented.remove(&name) else {
                panic!("{name} is missing from the README's settings table");
            };
            let (section, field) = key.split_once('.').unwrap();
            let default = defaults[section][field].as_str().unwrap();
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
        ] {
            let err = load(&[(var, value)]).unwrap_err().to_string();
            assert!(err.contains(var), "{var}={value}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
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
        for key in known_keys() {
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
}
