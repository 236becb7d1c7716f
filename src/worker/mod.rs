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

mod maintenance;
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
use crate::stream::dead_letters::{self, DeadLetterError};
use crate::stream::{Consumer, RawEntry, StreamEntry};
use sink::{Record, Sink, SinkError};

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
        redis_memory::refuse_evicting_at_start(&self.redis, keyspace, self.allow_eviction).await?;
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
    ///
    /// Claiming keeps up with draining: a claim takes up to a full batch per partition, and while
    /// claims come back full, claiming and reading new entries take turns without waiting for
    /// the next claim cycle, so a crashed worker's backlog is stored at drain speed and new
    /// entries are not starved meanwhile.
    async fn consume(&self) {
        let mut own_pending = true;
        let mut last_claim = Instant::now();
        let claim_every = (self.settings.claim_idle / 4).max(Duration::from_millis(100));
        // The last claim came back full: more is waiting to be claimed.
        let mut claim_backlog = false;
        let mut claimed_last = false;
        let mut backoff = Backoff::new();
        // A batch read but not yet stored.
        let mut in_hand: Option<Vec<RawEntry>> = None;
        while !self.stopping() {
            let step = if own_pending {
                Step::OwnPending
            } else if (claim_backlog && !claimed_last) || last_claim.elapsed() >= claim_every {
                Step::Claim
            } else {
                // With a claim backlog, a read that finds nothing new returns at once.
                Step::New {
                    block: !claim_backlog,
                }
            };
            let batch_size = self.entries_per_read();
            let read = async {
                match step {
                    Step::OwnPending => self.streams.read(batch_size, 0, true).await,
                    Step::Claim => {
                        last_claim = Instant::now();
                        let claim = self.claim().await;
                        if let Ok(claimed) = &claim {
                            claim_backlog = claimed.full;
                        }
                        claim.map(|c| c.entries)
                    }
                    Step::New { block } => {
                        let block_ms = if block {
                            self.settings.block.as_millis() as u64
                        } else {
                            0
                        };
                        self.streams.read(batch_size, block_ms, false).await
                    }
                }
            };
            let read = match in_hand.take() {
                // Re-reading our own pending entries while storing them would return them again.
                Some(batch) if own_pending => {
                    self.process(batch).await;
                    read.await
                }
                Some(batch) => tokio::join!(read, self.process(batch)).0,
                None => read.await,
            };
            claimed_last = matches!(step, Step::Claim);
            let entries = match read {
                Ok(entries) => {
                    backoff.reset();
                    entries
                }
                Err(e) => {
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
            if entries.is_empty() {
                own_pending = false;
                continue;
            }
            in_hand = Some(entries);
        }
        // Shutdown: the batch in hand is finished (stored, acknowledged) before exiting.
        if let Some(batch) = in_hand {
            self.process(batch).await;
        }
    }

    /// Takes over entries pending too long with consumers presumed dead, up to a batch per
    /// partition; those delivered `max_deliveries` times already go to the dead letters instead.
    async fn claim(&self) -> Result<Claimed, RedisError> {
        let idle = self.settings.claim_idle.as_millis() as u64;
        let count = self.entries_per_read();
        let mut claimed = Claimed::default();
        for p in 0..self.partition_count() {
            let stale = self.streams.stale(p, idle, count).await?;
            if stale.is_empty() {
                continue;
            }
            claimed.full |= stale.len() >= count;
            let (dead, retry): (Vec<_>, Vec<_>) = stale
                .into_iter()
                .partition(|s| s.deliveries >= u64::from(self.settings.max_deliveries));
            if !dead.is_empty() {
                let ids: Vec<String> = dead.iter().map(|s| s.entry_id.clone()).collect();
                let entries = self.streams.claim(p, idle, &ids).await?;
                for entry in &entries {
                    let deliveries = dead
                        .iter()
                        .find(|s| s.entry_id == entry.entry_id)
                        .map_or(0, |s| s.deliveries);
                    let reason = format!("not stored after {deliveries} deliveries");
                    if self
                        .dead_letter(entry, None, &reason, deliveries)
                        .await
                        .is_none()
                    {
                        return Ok(claimed);
                    }
                }
            }
            let ids: Vec<String> = retry.into_iter().map(|s| s.entry_id).collect();
            let entries = self.streams.claim(p, idle, &ids).await?;
            self.metrics.claims.inc_by(entries.len() as u64);
            claimed.entries.extend(entries);
        }
        if !claimed.entries.is_empty() {
            tracing::info!(
                entries = claimed.entries.len(),
                more = claimed.full,
                "claimed entries from idle consumers"
            );
        }
        Ok(claimed)
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

    /// Stores one batch of entries and acknowledges them: every event of an entry is stored
    /// (or dead-lettered alone) before the entry is acknowledged. Returns early only on
    /// shutdown while a dependency is down, leaving the entries pending for another worker.
    async fn process(&self, entries: Vec<RawEntry>) {
        let timer = Instant::now();
        let mut decoded = Vec::with_capacity(entries.len());
        // Where each decoded event came from: its entry (in `held`) and its place in it.
        let mut origins = Vec::with_capacity(entries.len());
        let mut held = Vec::with_capacity(entries.len());
        let mut unreadable = Vec::new();
        for raw in entries {
            match StreamEntry::decode_all(|f| raw.field(f)) {
                Ok(events) => {
                    for event in events {
                        match event.event {
                            Ok(entry) => {
                                decoded.push(entry);
                                origins.push(Origin {
                                    entry: held.len(),
                                    position: event.position,
                                    alone: event.alone,
                                });
                            }
                            Err(reason) => unreadable.push((
                                Origin {
                                    entry: held.len(),
                                    position: event.position,
                                    alone: event.alone,
                                },
                                reason.to_string(),
                            )),
                        }
                    }
                    held.push(raw);
                }
                Err(reason) => {
                    // An entry that cannot even be read will never be storable.
                    if self
                        .dead_letter(&raw, None, &format!("unreadable entry: {reason}"), 1)
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
            }
        }
        for (origin, reason) in &unreadable {
            let reason = format!("unreadable event: {reason}");
            if self
                .dead_letter(&held[origin.entry], origin.one_event(), &reason, 1)
                .await
                .is_none()
            {
                return;
            }
        }

        let entries = &decoded;
        let loaded = self
            .retry("loading schemas", &held, move || async move {
                let mut validator = self.validator.lock().await;
                Ok(validator.load_missing(self.sink.pool(), entries).await?)
            })
            .await;
        if loaded.is_none() {
            return;
        }
        let records: Vec<Record> = {
            let validator = self.validator.lock().await;
            decoded.into_iter().map(|e| validator.check(e)).collect()
        };

        let records = &records;
        let stored = self
            .retry_sink("storing a batch", &held, move || self.sink.store(records))
            .await;
        match stored {
            None => return,
            Some(Ok(stored)) => self.count(&stored),
            Some(Err(reason)) => {
                tracing::warn!(%reason, events = records.len(), "batch refused; storing its events one by one");
                for (record, origin) in records.iter().zip(&origins) {
                    if !self.store_alone(record, &held[origin.entry], origin).await {
                        return;
                    }
                }
            }
        }

        if let Err(e) = self.streams.ack(&held).await {
            // Stored but still pending: a later claim redelivers them and the insert is a no-op.
            tracing::warn!(error = %e, "acknowledging failed; entries will be claimed again");
        }
        self.metrics
            .batch_duration
            .observe(timer.elapsed().as_secs_f64());
        if !held.is_empty() {
            let per_entry = records
                .len()
                .div_ceil(held.len())
                .clamp(1, crate::domain::MAX_BATCH);
            self.events_per_entry
                .store(per_entry as u32, Ordering::Relaxed);
        }
    }

    /// Stores one event of a refused batch: as it is, else as invalid with its data kept as
    /// text, else in the dead letters. False on shutdown during an outage.
    async fn store_alone(&self, record: &Record, raw: &RawEntry, origin: &Origin) -> bool {
        let Some(result) = self
            .retry_sink("storing an event", std::slice::from_ref(raw), move || {
                self.sink.store(std::slice::from_ref(record))
            })
            .await
        else {
            return false;
        };
        let reason = match result {
            Ok(stored) => {
                self.count(&stored);
                return true;
            }
            Err(reason) => reason,
        };
        let Some(result) = self
            .retry_sink("storing a refused event", std::slice::from_ref(raw), || {
                self.sink.store_refused(record, reason.as_str())
            })
            .await
        else {
            return false;
        };
        match result {
            Ok(stored) => {
                self.count(&stored);
                true
            }
            Err(again) => self
                .dead_letter(
                    raw,
                    origin.one_event(),
                    &format!("{reason}; then {again}"),
                    1,
                )
                .await
                .is_some(),
        }
    }

    /// Records an entry, or one event of it, in `dead_letters` and the dead stream; a whole
    /// entry is then acknowledged. `None` on shutdown during an outage.
    async fn dead_letter(
        &self,
        raw: &RawEntry,
        event: Option<dead_letters::OneEvent<'_>>,
        reason: &str,
        deliveries: u64,
    ) -> Option<()> {
        let reason = reason.replace('\0', "\u{fffd}");
        let reason_ref = &reason;
        let event = &event;
        self.retry(
            "recording a dead letter",
            std::slice::from_ref(raw),
            move || async move {
                let one = event.as_ref().map(|e| dead_letters::OneEvent {
                    position: e.position,
                    fields: e.fields,
                });
                Ok(dead_letters::record(
                    self.sink.pool(),
                    &self.streams,
                    raw,
                    one,
                    reason_ref,
                    deliveries,
                )
                .await?)
            },
        )
        .await?;
        self.metrics.dead_letters.inc();
        let stream = Keyspace::stream(raw.partition);
        let position = event.as_ref().map(|e| e.position);
        tracing::warn!(entry = %raw.entry_id, ?position, %stream, %reason, "moved to dead letters");
        Some(())
    }

    fn count(&self, stored: &sink::Stored) {
        self.metrics
            .events_stored
            .with_label_values(&["processed"])
            .inc_by(stored.processed);
        self.metrics
            .events_stored
            .with_label_values(&["invalid"])
            .inc_by(stored.invalid);
        self.metrics.events_duplicate.inc_by(stored.duplicates);
        self.metrics.postgres_up.set(1);
    }

    /// Retries a storage step while PostgreSQL is unavailable; a refusal is handed back.
    async fn retry_sink<T, F, Fut>(
        &self,
        what: &str,
        held: &[RawEntry],
        mut step: F,
    ) -> Option<Result<T, String>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        self.retry(what, held, || {
            let attempt = step();
            async move {
                match attempt.await {
                    Ok(v) => Ok(Ok(v)),
                    Err(SinkError::Refused(reason)) => Ok(Err(reason)),
                    Err(e @ SinkError::Unavailable(_)) => Err(e.into()),
                }
            }
        })
        .await
    }

    /// Runs `step` until it succeeds, backing off between failures and keeping `held` entries
    /// claimed meanwhile. A failure marks the dependency it came from as down
    /// (`sluice_worker_redis_up` or `sluice_worker_postgres_up`); success marks it up again.
    /// `None` when shutdown comes first.
    async fn retry<T, F, Fut>(&self, what: &str, held: &[RawEntry], mut step: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StepError>>,
    {
        let mut backoff = Backoff::new();
        let mut last_touch = Instant::now();
        let mut failed: Option<Dependency> = None;
        loop {
            match step().await {
                Ok(v) => {
                    if let Some(dependency) = failed {
                        self.dependency_up(dependency, true);
                    }
                    return Some(v);
                }
                Err(StepError { dependency, error }) => {
                    self.dependency_up(dependency, false);
                    failed = Some(dependency);
                    tracing::warn!(%error, dependency = dependency.name(), "{what} failed; retrying");
                    if self.stopping() {
                        tracing::warn!(
                            "stopping with {} entries unacknowledged; another worker will claim them",
                            held.len()
                        );
                        return None;
                    }
                    if !held.is_empty() && last_touch.elapsed() >= self.settings.claim_idle / 3 {
                        last_touch = Instant::now();
                        let _ = self.streams.touch(held).await;
                    }
                    backoff.wait(&self.shutdown).await;
                }
            }
        }
    }
}

/// What the main loop does next.
#[derive(Clone, Copy)]
enum Step {
    /// Re-read this consumer's own unacknowledged entries (after a restart under the same name).
    OwnPending,
    /// Claim entries other consumers left idle.
    Claim,
    /// Read new entries, waiting for some to arrive or not.
    New { block: bool },
}

/// Where a decoded event came from.
struct Origin {
    /// Its entry, by index in the batch's entries.
    entry: usize,
    /// Its place in that entry.
    position: usize,
    /// Its fields as a one-event entry; `None` when the entry is that one event.
    alone: Option<[(&'static str, String); 2]>,
}

impl Origin {
    /// The event alone, for a dead letter of just it; `None`: the whole entry.
    fn one_event(&self) -> Option<dead_letters::OneEvent<'_>> {
        self.alone.as_ref().map(|fields| dead_letters::OneEvent {
            position: self.position,
            fields,
        })
    }
}

/// One claim's take.
#[derive(Default)]
struct Claimed {
    entries: Vec<RawEntry>,
    /// Some partition had a full batch of idle entries: claim again soon.
    full: bool,
}

impl Worker {
    fn dependency_up(&self, dependency: Dependency, up: bool) {
        let gauge = match dependency {
            Dependency::Redis => &self.metrics.redis_up,
            Dependency::Postgres => &self.metrics.postgres_up,
        };
        gauge.set(i64::from(up));
    }
}

/// The stores a worker's steps depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dependency {
    Redis,
    Postgres,
}

impl Dependency {
    fn name(self) -> &'static str {
        match self {
            Dependency::Redis => "redis",
            Dependency::Postgres => "postgres",
        }
    }
}

/// A step that failed because a dependency did not answer: worth retrying. Refusals of the data
/// itself never become a `StepError`; they are handed back to the caller.
#[derive(Debug)]
struct StepError {
    dependency: Dependency,
    error: String,
}

impl StepError {
    fn of(dependency: Dependency, error: impl std::fmt::Display) -> Self {
        StepError {
            dependency,
            error: error.to_string(),
        }
    }
}

impl From<RedisError> for StepError {
    fn from(e: RedisError) -> Self {
        StepError::of(Dependency::Redis, e)
    }
}

impl From<PgError> for StepError {
    fn from(e: PgError) -> Self {
        StepError::of(Dependency::Postgres, e)
    }
}

impl From<SinkError> for StepError {
    fn from(e: SinkError) -> Self {
        StepError::of(Dependency::Postgres, e)
    }
}

impl From<DeadLetterError> for StepError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::Redis(e) => e.into(),
            other => StepError::of(Dependency::Postgres, other),
        }
    }
}

/// The worker is ready only while both Redis and PostgreSQL answer, and Redis keeps what it is
/// given (`maxmemory-policy noeviction`).
impl crate::ops::Probe for Worker {
    async fn failing(&self) -> Vec<crate::ops::Failing> {
        let mut failing = Vec::new();
        let keyspace = Keyspace::new(self.streams.partitions());
        let redis = match self.redis.ping().await {
            Ok(()) => match redis_memory::Memory::read(&self.redis, keyspace).await {
                Ok(memory) => memory.check_policy(self.allow_eviction).err(),
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.to_string()),
        };
        if let Some(error) = redis {
            failing.push(crate::ops::Failing {
                dependency: "redis",
                error,
            });
        }
        let pg = async {
            let client = self.pg().get().await.map_err(|e| e.to_string())?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| e.to_string())
        };
        let error = match tokio::time::timeout(Duration::from_secs(2), pg).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some("no answer within 2s".to_owned()),
        };
        if let Some(error) = error {
            failing.push(crate::ops::Failing {
                dependency: "postgres",
                error,
            });
        }
        failing
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

fn is_nogroup(e: &RedisError) -> bool {
    matches!(e, RedisError::Command(err) if err.code() == Some("NOGROUP"))
}

/// Capped exponential backoff with jitter, so restarting workers do not retry in lockstep.
struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the next interval, or until shutdown.
    async fn wait(&mut self, shutdown: &Shutdown) {
        let jitter = rand::random_range(0.5..1.5);
        let pause = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.requested() => {}
        }
    }
}
