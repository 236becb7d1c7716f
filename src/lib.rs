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
//!   validated once at start; unknown variables and bad values stop the binary.
//! - [`api`]: the actix-web replica. Authenticates the API key (cached lookups), reads the body
//!   (JSON, optional gzip, size limit), and maps every failure to the contract's JSON errors.
//! - [`domain`]: parsed, validated types. The body becomes [`domain::Event`]s here, once; every
//!   problem is collected with its field path.
//! - [`ingest`]: `lua/admit.lua`, which for each request, atomically in Redis, resolves slugs,
//!   checks schema versions, applies the per-signal windows, enqueues the request's admitted
//!   events as one stream entry, and records the answer under an `Idempotency-Key`; requests
//!   waiting on an api thread for its call in flight share the next call.
//! - [`stream`]: the partition streams, the one contract between api and worker: the entry
//!   format, the consumer group (read, claim, acknowledge, trim) and dead letters.
//! - [`worker`]: `sluice-worker`. Reads the streams as one consumer group, validates each event
//!   against its schema version, stores batches in PostgreSQL exactly once (rollups and latest
//!   states in the same transaction), then acknowledges; claims what dead consumers left,
//!   dead-letters what can never be stored, trims what is done, rebuilds the registry copy.
//!
//! Beside the flow:
//!
//! - [`registry`]: tenants, API keys, signals and schemas in PostgreSQL (the system of record),
//!   and the versioned Redis copy the api reads.
//! - [`keyspace`]: every Redis key, hash-tagged by partition so the script is legal on Cluster,
//!   and the values the registry copy holds.
//! - [`redis_pool`]: the Redis connections (TLS with `rediss://`), with one deadline over every
//!   call (503, never a hang).
//! - [`redis_memory`]: Redis's memory, where the backlog waits: evicting policies refused, the
//!   api's early brake before Redis is full, the memory gauges.
//! - [`redis_layout`]: the partition count recorded in Redis, so that no binary lays events out
//!   over another one; `sluice-admin repartition` changes it.
//! - [`pg`]: the PostgreSQL pool (TLS as the URL's `sslmode` says), database creation and the
//!   embedded migrations.
//! - [`ops`]: `/livez`, `/readyz`, `/metrics` and the JSON 404/405 answers, for both services.
//! - [`tls`]: the certificate files both TLS connections read, and TLS to PostgreSQL (`sslmode`).
//! - [`shutdown`]: SIGTERM/SIGINT as one broadcast that every part of a binary listens to.
//! - [`admin`]: the `sluice-admin` commands.
//! - [`metrics`]: every Prometheus metric, in one place.
//! - [`json`]: the JSON text ingest writes per event (the entry's events, the answers), written
//!   straight into a buffer: the bytes serde_json writes, without its escaping pass where
//!   there is nothing to escape.
//!
//! The binaries in `src/bin/` are thin: they read [`config::Settings`] and call into these.
//! `sluice-worker` and `sluice-admin` share code only through these library modules.

pub mod admin;
pub mod api;
pub mod config;
pub mod domain;
pub mod ingest;
pub mod json;
pub mod keyspace;
pub mod metrics;
pub mod ops;
pub mod pg;
pub mod redis_layout;
pub mod redis_memory;
pub mod redis_pool;
pub mod registry;
pub mod scripts;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
pub mod tls;
pub mod worker;
