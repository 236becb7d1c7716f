//! # Sluice
//!
//! Event ingestion for CRM signals. Clients send events about accounts, contacts, deals, leads
//! and custom objects; each is checked against the tenant's registered signals, rate limited
//! per signal, acknowledged at once, and then stored durably exactly once.
//!
//! # Layout
//!
//! The modules follow the data flow of a request, in order:
//!
//! - [`config`]: typed settings from defaults, an optional TOML file and `SLUICE__*` variables,
//!   validated once at start.
//! - [`api`]: the actix-web replica. Authenticates the API key (cached lookups), reads the body
//!   (JSON, optional gzip, size limit), and maps every failure to the contract's JSON errors.
//! - [`domain`]: parsed, validated types. The body becomes [`domain::Event`]s here, once; every
//!   problem is collected with its field path.
//! - [`ingest`]: one call of `lua/admit.lua` per request which, atomically in Redis, resolves
//!   slugs, checks schema versions, applies the per-signal windows and `XADD`s every admitted
//!   event to the tenant's partition stream.
//! - [`keyspace`]: every Redis key, hash-tagged by partition so the script is legal on Cluster.
//! - [`redis_pool`]: the connection pool, with one deadline over every call (503, never a hang).
//! - [`registry`]: tenants, API keys, signals and schemas in PostgreSQL (the system of record),
//!   the migrations, and the Redis registry copy the api reads.
//! - [`worker`]: `sluice-worker`. Reads the partition streams as one consumer group, validates
//!   each event against its schema version, stores batches in PostgreSQL exactly once (rollups
//!   and latest states in the same transaction), then acknowledges; claims what dead consumers
//!   left, dead-letters what can never be stored, trims what is done.
//! - [`admin`]: the `sluice-admin` commands.
//! - [`metrics`]: every Prometheus metric, in one place.
//!
//! The binaries in `src/bin/` are thin: they read [`config::Settings`] and call into these.

pub mod admin;
pub mod api;
pub mod config;
pub mod domain;
pub mod ingest;
pub mod keyspace;
pub mod metrics;
pub mod redis_pool;
pub mod registry;
pub mod telemetry;
pub mod worker;
