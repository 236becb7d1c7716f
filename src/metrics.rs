//! Every Prometheus metric, declared in one place with its help text.
//!
//! Labels are low-cardinality only (route, status code, signal type, reason): never a tenant,
//! key or signal id, which would grow without bound.

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The api's metrics.
#[derive(Clone)]
pub struct ApiMetrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub events_accepted: IntCounterVec,
    pub events_rate_limited: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub script_duration: Histogram,
    pub idempotent_replays: IntCounter,
    /// Ingest requests refused with 503 because the backlog (Redis memory) is full.
    pub backlog_full: IntCounter,
    pub memory: MemoryMetrics,
}

/// Buckets for the worker's batches: 1 ms to 10 s.
const BATCH_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for request and script latency: 250 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// What every binary's exposition carries besides its own metrics: `sluice_build_info` and the
/// standard `process_*` metrics (CPU, memory, file descriptors, start time) of the process.
fn base_registry() -> Registry {
    let registry = Registry::new();
    let build = gauge_vec(
        &registry,
        "sluice_build_info",
        "Always 1; the labels say which build is running.",
        &["version"],
    );
    build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("process metrics register once");
    registry
}

impl ApiMetrics {
    pub fn new() -> Self {
        let registry = base_registry();
        let r = &registry;
        ApiMetrics {
            http_requests: counter_vec(
                r,
                "sluice_http_requests_total",
                "HTTP requests answered, by route and status code.",
                &["route", "status"],
            ),
            http_duration: histogram_vec(
                r,
                "sluice_http_request_duration_seconds",
                "Time from request start to response, by route.",
                LATENCY_BUCKETS,
                &["route"],
            ),
            events_accepted: counter_vec(
                r,
                "sluice_events_accepted_total",
                "Events admitted and enqueued, by signal type.",
                &["signal_type"],
            ),
            events_rate_limited: counter_vec(
                r,
                "sluice_events_rate_limited_total",
                "Events refused by their signal's rate limit, by signal type.",
                &["signal_type"],
            ),
            events_rejected: counter_vec(
                r,
                "sluice_events_rejected_total",
                "Events in ingest requests refused whole (nothing admitted), by reason.",
                &["reason"],
            ),
            script_duration: histogram(
                r,
                "sluice_redis_script_duration_seconds",
                "A request's admission: waiting for its lane's call in flight, then the script call's round trip, including waiting for a connection.",
                LATENCY_BUCKETS,
            ),
            idempotent_replays: counter(
                r,
                "sluice_idempotent_replays_total",
                "Ingest requests answered with the recorded answer of an earlier request with the same Idempotency-Key (nothing admitted again).",
            ),
            backlog_full: counter(
                r,
                "sluice_backlog_full_refusals_total",
                "Ingest requests refused with 503 because Redis memory (the backlog of events not yet stored) is full or above SLUICE__API__MAX_MEMORY_FRACTION; nothing of them was admitted.",
            ),
            memory: MemoryMetrics::new(r),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Redis memory, as both services see it: `INFO memory` of every primary.
#[derive(Clone)]
pub struct MemoryMetrics {
    used: IntGaugeVec,
    max: IntGaugeVec,
    policy: IntGaugeVec,
}

impl MemoryMetrics {
    fn new(r: &Registry) -> Self {
        MemoryMetrics {
            used: gauge_vec(
                r,
                "sluice_redis_used_memory_bytes",
                "Redis used_memory of each primary: mostly the backlog of acknowledged events not yet stored.",
                &["node"],
            ),
            max: gauge_vec(
                r,
                "sluice_redis_maxmemory_bytes",
                "Redis maxmemory of each primary (0: no limit). Writes are refused past it.",
                &["node"],
            ),
            policy: gauge_vec(
                r,
                "sluice_redis_maxmemory_policy_info",
                "Always 1; the labels give each primary's maxmemory-policy (only noeviction keeps acknowledged events).",
                &["node", "policy"],
            ),
        }
    }

    /// Forgets every primary (before the ones there now are set again).
    pub fn clear(&self) {
        for gauge in [&self.used, &self.max, &self.policy] {
            gauge.reset();
        }
    }

    /// Sets one primary's figures.
    pub fn set(&self, node: &str, used: u64, max: u64, policy: &str) {
        let bytes = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.used.with_label_values(&[node]).set(bytes(used));
        self.max.with_label_values(&[node]).set(bytes(max));
        self.policy.with_label_values(&[node, policy]).set(1);
    }
}

/// The worker's metrics.
#[derive(Clone)]
pub struct WorkerMetrics {
    registry: Registry,
    pub events_stored: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub batch_duration: Histogram,
    pub stream_pending: IntGaugeVec,
    pub stream_lag: IntGaugeVec,
    pub oldest_pending: GaugeVec,
    pub claims: IntCounter,
    pub registry_repaired: IntCounterVec,
    pub dead_letters: IntCounter,
    pub redis_up: IntGauge,
    pub postgres_up: IntGauge,
    pub memory: MemoryMetrics,
}

impl WorkerMetrics {
    pub fn new() -> Self {
        let registry = base_registry();
        let r = &registry;
        WorkerMetrics {
            events_stored: counter_vec(
                r,
                "sluice_worker_events_stored_total",
                "Events written to PostgreSQL, by status (processed or invalid).",
                &["status"],
            ),
            events_duplicate: counter(
                r,
                "sluice_worker_duplicates_total",
                "Redelivered events that were already stored, and so were skipped.",
            ),
            batch_duration: histogram(
                r,
                "sluice_worker_batch_duration_seconds",
                "Time to validate, store and acknowledge one batch.",
                BATCH_BUCKETS,
            ),
            stream_pending: gauge_vec(
                r,
                "sluice_worker_stream_pending",
                "Entries delivered to a worker but not yet acknowledged, by partition.",
                &["partition"],
            ),
            stream_lag: gauge_vec(
                r,
                "sluice_worker_stream_lag",
                "Entries in a partition stream not yet delivered to any worker (-1: unknown).",
                &["partition"],
            ),
            oldest_pending: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "sluice_worker_oldest_pending_seconds",
                        "How long the oldest entry delivered but not acknowledged has waited, by \
                         partition (0: none pending). Past the claim idle time it belongs to a \
                         worker that died, and is being claimed.",
                    ),
                    &["partition"],
                ),
            ),
            registry_repaired: counter_vec(
                r,
                "sluice_worker_registry_repaired_total",
                "Registry copy entries a rebuild found missing, stale or left over in \
                 Redis and corrected, by kind (signal or key). Nonzero means drift.",
                &["kind"],
            ),
            claims: counter(
                r,
                "sluice_worker_claimed_total",
                "Entries taken over from consumers that left them pending too long.",
            ),
            dead_letters: counter(
                r,
                "sluice_worker_dead_letters_total",
                "Entries moved to the dead letters because they could not be stored.",
            ),
            redis_up: gauge(
                r,
                "sluice_worker_redis_up",
                "1 while the last Redis read succeeded.",
            ),
            postgres_up: gauge(
                r,
                "sluice_worker_postgres_up",
                "1 while the last PostgreSQL write succeeded.",
            ),
            memory: MemoryMetrics::new(r),
            registry,
        }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("valid metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help))
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help))
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, Histogram::with_opts(opts))
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    register(r, HistogramVec::new(opts, labels))
}

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding to a Vec cannot fail");
    String::from_utf8(out).expect("the text format is UTF-8")
}
