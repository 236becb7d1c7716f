//! The worker's periodic chores, beside the main loop: trimming streams, publishing stream
//! metrics, rebuilding the Redis registry copy, and managing `events` partitions.

use std::time::{Duration, Instant};

use chrono::Utc;

use super::sink::Sink;
use crate::config::WorkerSettings;
use crate::metrics::WorkerMetrics;
use crate::redis_memory::Memory;
use crate::registry::Registry;
use crate::shutdown::Shutdown;
use crate::stream::Consumer;

/// How often per-partition pending and lag gauges (and Redis memory) are refreshed.
const STATS_EVERY: Duration = Duration::from_secs(5);
/// How often partitions ahead are created and old ones dropped.
const PARTITIONS_EVERY: Duration = Duration::from_secs(3600);
/// Consumers holding nothing for this long are processes that exited.
const FORGET_CONSUMERS_AFTER: Duration = Duration::from_secs(3600);
/// Days of partitions created ahead of need.
const DAYS_AHEAD: i64 = 2;

/// The chores and what they need; runs beside the worker's main loop until shutdown.
pub(super) struct Maintenance {
    pub(super) settings: WorkerSettings,
    /// Rebuilds the Redis registry copy from PostgreSQL.
    pub(super) registry: Registry,
    /// The worker's group membership: trimming, forgetting exited consumers, group figures.
    pub(super) streams: Consumer,
    /// Creates and drops `events` partitions.
    pub(super) sink: Sink,
    pub(super) metrics: WorkerMetrics,
    pub(super) shutdown: Shutdown,
}

impl Maintenance {
    fn stopping(&self) -> bool {
        self.shutdown.is_requested()
    }

    fn partition_count(&self) -> u16 {
        self.streams.partitions()
    }

    pub(super) async fn run(&self) {
        let far_past = Instant::now()
            .checked_sub(Duration::from_secs(86_400))
            .unwrap_or_else(Instant::now);
        let (mut trimmed, mut stats, mut reconciled, mut partitioned) =
            (far_past, far_past, far_past, far_past);
        while !self.stopping() {
            if reconciled.elapsed() >= self.settings.reconcile_interval {
                match self.registry.sync().await {
                    Ok(counts) => {
                        reconciled = Instant::now();
                        let repaired = &counts.repaired;
                        self.metrics
                            .registry_repaired
                            .with_label_values(&["signal"])
                            .inc_by(repaired.signals);
                        self.metrics
                            .registry_repaired
                            .with_label_values(&["key"])
                            .inc_by(repaired.keys);
                        if repaired.signals + repaired.keys > 0 {
                            tracing::info!(?counts, "registry copy reconciled: repaired drift");
                        } else {
                            tracing::debug!(?counts, "registry copy reconciled");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reconciling the registry copy failed"),
                }
            }
            if partitioned.elapsed() >= PARTITIONS_EVERY && self.partitions().await {
                partitioned = Instant::now();
            }
            if trimmed.elapsed() >= self.settings.trim_interval {
                trimmed = Instant::now();
                self.trim().await;
            }
            if stats.elapsed() >= STATS_EVERY {
                stats = Instant::now();
                self.publish_stats().await;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.shutdown.requested() => {}
            }
        }
    }

    async fn partitions(&self) -> bool {
        let today = Utc::now().date_naive();
        let days = (-1..=DAYS_AHEAD).map(|d| today + chrono::Duration::days(d));
        if let Err(e) = self.sink.ensure_partitions(days).await {
            tracing::warn!(error = %e, "creating events partitions failed");
            return false;
        }
        if self.settings.retention_days > 0 {
            match self
                .sink
                .drop_older_than(self.settings.retention_days, today)
                .await
            {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, "dropped expired events partitions")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dropping expired partitions failed");
                    return false;
                }
            }
        }
        true
    }

    async fn trim(&self) {
        for p in 0..self.partition_count() {
            match self.streams.trim(p).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(partition = p, removed = n, "trimmed stream"),
                Err(e) => {
                    tracing::warn!(error = %e, partition = p, "trimming failed");
                    return;
                }
            }
            let idle = FORGET_CONSUMERS_AFTER.as_millis() as u64;
            if let Err(e) = self.streams.forget_idle_consumers(p, idle).await {
                tracing::debug!(error = %e, "forgetting idle consumers failed");
            }
        }
    }

    /// Reads every partition's figures first and only then sets the gauges, so that a scrape
    /// never sees some partitions published and others not yet.
    async fn publish_stats(&self) {
        let keyspace = crate::keyspace::Keyspace::new(self.partition_count());
        if let Ok(memory) = Memory::read(self.streams.redis(), keyspace).await {
            memory.publish(&self.metrics.memory);
        }
        let Ok(now_ms) = self.streams.now_ms().await else {
            return;
        };
        let mut all = Vec::with_capacity(self.partition_count() as usize);
        for p in 0..self.partition_count() {
            match self.streams.stats(p).await {
                Ok(s) => all.push((p, s)),
                Err(_) => return,
            }
        }
        for (p, s) in all {
            let label = p.to_string();
            let age_ms = s
                .oldest_pending_ms
                .map_or(0, |at| now_ms.saturating_sub(at));
            self.metrics
                .oldest_pending
                .with_label_values(&[label.as_str()])
                .set(age_ms as f64 / 1000.0);
            self.metrics
                .stream_pending
                .with_label_values(&[label.as_str()])
                .set(s.pending);
            self.metrics
                .stream_lag
                .with_label_values(&[label.as_str()])
                .set(s.lag);
        }
    }
}
