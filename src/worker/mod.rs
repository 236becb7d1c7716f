//! `sluice-worker`: drains every partition stream into PostgreSQL.
//!
//! Requirements, in order of importance:
//! 1. An entry leaves the stream only after PostgreSQL has committed it (or, when it can never
//!    be stored, after it is in `dead_letters`). Acknowledge after commit, never before.
//! 2. Storage is idempotent on the event id, so redelivery (a crash before `XACK`, a claim from
//!    a consumer presumed dead) never stores or counts anything twice.
//! 3. One bad entry never blocks the rest of its batch: PostgreSQL's refusals are isolated to
//!    the entry, which is stored as `invalid` with its raw data, or dead-lettered.
//! 4. Outages are waited out: while PostgreSQL or Redis is down the worker retries with capped,
//!    jittered backoff, acknowledges nothing, and reports itself unready.
//!
//! The loop: replay this consumer's own pending entries, then read new ones; every so often,
//! claim entries that other consumers left pending too long. Each batch is decoded, validated
//! against its schema version, stored in one transaction, then acknowledged.
//!
//! Claiming uses `XPENDING … IDLE` then `XCLAIM` rather than `XAUTOCLAIM`: the dead-letter rule
//! needs each entry's delivery count, which `XPENDING` reports and `XAUTOCLAIM` does not. A worker
//! waiting out an outage re-claims its own entries with `XCLAIM … JUSTID` (which leaves the
//! delivery count alone), so a long outage never turns healthy entries into dead letters.

mod claim;
mod maintenance;
mod probe;
mod process;
mod retry;
mod schedule;
pub mod sink;
mod validate;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;

use crate::config::{PostgresSettings, Settings, WorkerSettings};
use crate::keyspace::Keyspace;
use crate::metrics::WorkerMetrics;
use crate::pg::{self, PgError};
use crate::redis_memory;
use crate::redis_pool::{Redis, RedisError};
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::stream::{Consumer, RawEntry};
use retry::Backoff;
use schedule::{Read, Schedule, Step};
use sink::Sink;

/// Everything the worker's tasks share.
pub struct Worker {
    settings: WorkerSettings,
    postgres: PostgresSettings,
    /// Compiled schemas, kept across batches.
    validator: tokio::sync::Mutex<validate::Validator>,
    /// This worker's membership of the consumer group.
    streams: Consumer,
    sink: Sink,
    /// The periodic chores, run beside the main loop.
    maintenance: maintenance::Maintenance,
    redis: Redis,
    metrics: WorkerMetrics,
    /// Once requested: finish the batch in hand, then stop.
    shutdown: Shutdown,
    /// Events per entry in the last batch, to size reads in events.
    events_per_entry: AtomicU32,
    /// Run on an evicting Redis all the same (`SLUICE__REDIS__ALLOW_EVICTION`).
    allow_eviction: bool,
}

impl Worker {
    pub fn new(
        settings: &Settings,
        metrics: WorkerMetrics,
        shutdown: Shutdown,
    ) -> Result<Self, String> {
        let redis = Redis::new(&settings.redis)?;
        let pg: Pool = pg::pool(&settings.postgres).map_err(|e| e.to_string())?;
        let keyspace = Keyspace::new(settings.redis.partitions);
        let streams = Consumer::new(redis.clone(), keyspace, settings.worker.consumer.clone());
        let sink = Sink::new(pg.clone());
        let maintenance = maintenance::Maintenance {
            settings: settings.worker.clone(),
            registry: Registry::new(pg, redis.clone(), keyspace),
            streams: streams.clone(),
            sink: sink.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
        };
        Ok(Worker {
            settings: settings.worker.clone(),
            postgres: settings.postgres.clone(),
            validator: Default::default(),
            streams,
            sink,
            maintenance,
            redis,
            metrics,
            shutdown,
            events_per_entry: AtomicU32::new(crate::domain::MAX_BATCH as u32),
            allow_eviction: settings.redis.allow_eviction,
        })
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    pub fn pg(&self) -> &Pool {
        self.sink.pool()
    }

    fn stopping(&self) -> bool {
        self.shutdown.is_requested()
    }

    /// Runs until shutdown is signalled; returns once the batch in hand is finished.
    /// An error when the worker cannot start as configured (PostgreSQL refuses it: TLS or
    /// authorization); outages are waited out instead.
    pub async fn run(&self) -> Result<(), String> {
        tracing::info!(consumer = self.streams.consumer(), "worker starting");
        let keyspace = Keyspace::new(self.streams.partitions());
        redis_memory::refuse_unfit_at_start(
            &self.redis,
            keyspace,
            redis_memory::Role::Worker,
            self.allow_eviction,
        )
        .await?;
        // One attempt first: a server that refuses this configuration stops the worker with the
        // reason, rather than a retry loop that could never succeed. Other failures (an outage)
        // are retried by `start`.
        let migrated = match self.migrate().await {
            Ok(_) => true,
            Err(e @ (PgError::Refused(_) | PgError::Config(_))) => return Err(e.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "migrating PostgreSQL failed; retrying");
                false
            }
        };
        if !self.start(migrated).await {
            return Ok(());
        }
        tokio::join!(self.consume(), self.maintenance.run());
        tracing::info!("worker stopped");
        Ok(())
    }

    /// Creates the database where missing and applies pending migrations.
    async fn migrate(&self) -> Result<Vec<i32>, PgError> {
        pg::ensure_database(&self.postgres).await?;
        pg::migrate(self.sink.pool()).await
    }

    /// Migrations (unless `migrated` already) and consumer groups: retried until they succeed.
    async fn start(&self, migrated: bool) -> bool {
        if !migrated
            && self
                .retry("migrating PostgreSQL", &[], move || async move {
                    Ok(self.migrate().await?)
                })
                .await
                .is_none()
        {
            return false;
        }
        let grouped = self
            .retry("creating consumer groups", &[], move || async move {
                Ok(self.streams.ensure_groups().await?)
            })
            .await;
        grouped.is_some()
    }

    /// The main loop. While one batch is being stored, the next is already being read, so
    /// PostgreSQL and Redis work at the same time; batches are still stored one after another.
    /// Which read comes next is [`Schedule`]'s decision.
    async fn consume(&self) {
        let claim_every = (self.settings.claim_idle / 4).max(Duration::from_millis(100));
        let mut schedule = Schedule::new(claim_every, Instant::now());
        let mut backoff = Backoff::new();
        // A batch read but not yet stored.
        let mut in_hand: Option<Vec<RawEntry>> = None;
        while !self.stopping() {
            let now = Instant::now();
            let step = schedule.next_step(now);
            let read = self.read(step);
            let read = match in_hand.take() {
                // Re-reading our own pending entries while storing them would return them again.
                Some(batch) if step == Step::OwnPending => {
                    self.process(batch).await;
                    read.await
                }
                Some(batch) => tokio::join!(read, self.process(batch)).0,
                None => read.await,
            };
            let entries = match read {
                Ok((entries, full)) => {
                    backoff.reset();
                    let found = entries.len();
                    schedule.record(step, now, Some(Read { found, full }));
                    entries
                }
                Err(e) => {
                    schedule.record(step, now, None);
                    self.metrics.redis_up.set(0);
                    tracing::warn!(error = %e, "reading streams failed; retrying");
                    if is_nogroup(&e) {
                        // Redis lost its data (a restart without persistence, a failover).
                        let _ = self.streams.ensure_groups().await;
                    }
                    backoff.wait(&self.shutdown).await;
                    continue;
                }
            };
            self.metrics.redis_up.set(1);
            if !entries.is_empty() {
                in_hand = Some(entries);
            }
        }
        // Shutdown: the batch in hand is finished (stored, acknowledged) before exiting.
        if let Some(batch) = in_hand {
            self.process(batch).await;
        }
    }

    /// Takes `step`: the entries it read, and (for a claim) whether a partition had a full
    /// batch of idle entries.
    async fn read(&self, step: Step) -> Result<(Vec<RawEntry>, bool), RedisError> {
        let batch_size = self.entries_per_read();
        match step {
            Step::OwnPending => Ok((self.streams.read(batch_size, 0, true).await?, false)),
            Step::Claim => self.claim().await.map(|c| (c.entries, c.full)),
            Step::New { block } => {
                let block_ms = if block {
                    self.settings.block.as_millis() as u64
                } else {
                    0
                };
                Ok((self.streams.read(batch_size, block_ms, false).await?, false))
            }
        }
    }

    /// How many entries to read (or claim) per partition so that a batch holds about
    /// `batch_size` events: entries hold one request each, 1 to 100 events, so this follows
    /// the sizes seen in the last batch (assuming the largest until one is seen).
    fn entries_per_read(&self) -> usize {
        let per_entry = self.events_per_entry.load(Ordering::Relaxed).max(1) as usize;
        (self.settings.batch_size / per_entry).max(1)
    }

    /// How many partition streams there are.
    fn partition_count(&self) -> u16 {
        self.streams.partitions()
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    matches!(e, RedisError::Command(err) if err.code() == Some("NOGROUP"))
}
