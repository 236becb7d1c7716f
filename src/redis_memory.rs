//! Redis memory: where the backlog of acknowledged events waits, and what must never happen to it.
//!
//! Requirements. Every event the api acknowledges waits in Redis memory until a worker stores
//! it, and the api admits several times faster than one worker stores, so a burst, a slow
//! PostgreSQL or a stopped worker fills Redis. Therefore:
//!
//! - **No eviction.** Under any `maxmemory-policy` but `noeviction`, a full Redis drops keys:
//!   partition streams with acknowledged events in them, the registry copy, the API-key index.
//!   Every binary reads the policy of every primary (`INFO memory`, which managed services allow
//!   where `CONFIG` is renamed) at start and on every readiness check, and refuses any other
//!   policy: the binary stops with one line naming it, `/readyz` answers 503 naming it, and the
//!   api admits nothing while it holds. `SLUICE__REDIS__ALLOW_EVICTION=true` is the loud
//!   opt-out for those who know better (a warning at start and whenever it is seen).
//! - **A full backlog is a 503, never a loss.** Redis refuses a write past `maxmemory` with
//!   `OOM`; the admission script's first write is where that happens, so nothing is counted or
//!   enqueued, and the api answers 503 with `Retry-After` saying the backlog is full.
//! - **An early brake.** Above `SLUICE__API__MAX_MEMORY_FRACTION` of `maxmemory` on the primary
//!   that holds a tenant's partition, the api answers that 503 before Redis itself refuses, so
//!   rate-limit counters, idempotency records and the worker's own writes (dead letters, the
//!   registry copy) keep room. The api reads memory once a second, so a burst may pass the
//!   fraction by up to a second's admissions; Redis's own refusal is the hard stop.
//! - **Visible.** `used_memory`, `maxmemory` and the policy of every primary are gauges on
//!   `/metrics` (api and worker), with an alert at 80 % (deploy/prometheus/alerts.yml).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::Value;

use crate::keyspace::{Keyspace, cluster_slot};
use crate::metrics::MemoryMetrics;
use crate::redis_layout;
use crate::redis_pool::{Redis, RedisError};

/// The only policy under which a full Redis refuses writes instead of dropping data.
pub const NO_EVICTION: &str = "noeviction";

/// How often the api reads Redis memory for its brake and gauges.
pub const REFRESH_EVERY: Duration = Duration::from_secs(1);

/// What `INFO memory` says of one primary.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeMemory {
    /// `host:port` as the client reaches it.
    pub node: String,
    pub used_memory: u64,
    /// 0: no limit.
    pub maxmemory: u64,
    pub maxmemory_policy: String,
}

impl NodeMemory {
    /// Reads the fields Sluice needs from an `INFO memory` reply.
    pub fn parse(node: &str, info: &str) -> Result<Self, String> {
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))
                .ok_or_else(|| format!("INFO memory of {node} has no {name}"))
        };
        let number = |name: &str| {
            field(name)?
                .parse::<u64>()
                .map_err(|e| format!("INFO memory of {node}: {name}: {e}"))
        };
        Ok(NodeMemory {
            node: node.to_owned(),
            used_memory: number("used_memory")?,
            maxmemory: number("maxmemory")?,
            maxmemory_policy: field("maxmemory_policy")?.to_owned(),
        })
    }

    pub fn evicts(&self) -> bool {
        self.maxmemory_policy != NO_EVICTION
    }

    /// At or above `fraction` of its `maxmemory` (never, without a limit).
    pub fn is_over(&self, fraction: f64) -> bool {
        self.maxmemory > 0 && self.used_memory as f64 >= fraction * self.maxmemory as f64
    }

    /// The one line a binary stops with, and `/readyz` answers, for an evicting primary.
    pub fn refusal(&self) -> String {
        format!(
            "Redis {} has maxmemory-policy {}: when full it would evict acknowledged events; \
             set maxmemory-policy {NO_EVICTION} (or SLUICE__REDIS__ALLOW_EVICTION=true to run \
             anyway)",
            self.node, self.maxmemory_policy
        )
    }
}

/// The memory of every primary, and which one holds each partition.
#[derive(Clone, Debug)]
pub struct Memory {
    pub nodes: Vec<NodeMemory>,
    /// Per partition, its primary in `nodes` (`None` while a cluster's slot map and its
    /// primaries disagree, as during a failover).
    partition_node: Vec<Option<usize>>,
    /// Why this binary's partition count is not the one the streams are laid out over
    /// (`redis_layout`); `None` when they agree or nothing is recorded yet.
    other_layout: Option<String>,
    /// The count is being changed from this binary's (`redis_layout::layout`).
    changing_from_here: bool,
}

impl Memory {
    /// Sets `metrics` to these primaries' figures (primaries no longer there disappear).
    pub fn publish(&self, metrics: &MemoryMetrics) {
        metrics.clear();
        for n in &self.nodes {
            metrics.set(&n.node, n.used_memory, n.maxmemory, &n.maxmemory_policy);
        }
    }

    /// Reads `INFO memory` from every primary (and, on a cluster, which serves each partition).
    pub async fn read(redis: &Redis, keyspace: Keyspace) -> Result<Self, RedisError> {
        let replies = redis
            .on_each_primary(redis::cmd("INFO").arg("memory"))
            .await?;
        let nodes = replies
            .iter()
            .map(|(node, reply)| {
                let info = redis::from_redis_value_ref::<String>(reply)
                    .map_err(|e| format!("INFO memory of {node}: {e}"))?;
                NodeMemory::parse(node, &info)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|why| {
                RedisError::Command(redis::RedisError::from((
                    redis::ErrorKind::Parse,
                    "unexpected INFO memory reply",
                    why,
                )))
            })?;
        let partition_node = if redis.is_cluster() {
            let slots: Value = redis.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
            let primaries = slot_primaries(&slots);
            (0..keyspace.partitions())
                .map(|p| {
                    let slot = cluster_slot(&Keyspace::stream(p));
                    let (_, _, node) = primaries
                        .iter()
                        .find(|(a, b, _)| (*a..=*b).contains(&slot))?;
                    nodes.iter().position(|n| &n.node == node)
                })
                .collect()
        } else {
            vec![Some(0); usize::from(keyspace.partitions())]
        };
        let (other_layout, changing_from_here) =
            redis_layout::layout(redis, keyspace.partitions()).await?;
        Ok(Memory {
            nodes,
            partition_node,
            other_layout,
            changing_from_here,
        })
    }

    /// The first primary with an evicting policy.
    pub fn evicting(&self) -> Option<&NodeMemory> {
        self.nodes.iter().find(|n| n.evicts())
    }

    /// Refuses a Redis that would lose or strand acknowledged events: streams laid out over
    /// another partition count than this binary's (`redis_layout`), or an evicting policy
    /// unless `allowed`, in which case that is only logged.
    pub fn check(&self, allowed: bool) -> Result<(), String> {
        self.check_as(Role::Api, allowed)
    }

    /// As [`Memory::check`], for `role`: a worker of the count being changed from is fit (it
    /// drains the old streams, which the change waits for).
    pub fn check_as(&self, role: Role, allowed: bool) -> Result<(), String> {
        if let Some(line) = &self.other_layout
            && !(role == Role::Worker && self.changing_from_here)
        {
            return Err(line.clone());
        }
        match self.evicting() {
            Some(node) if allowed => {
                tracing::warn!(
                    node = %node.node,
                    policy = %node.maxmemory_policy,
                    "SLUICE__REDIS__ALLOW_EVICTION is set: running on an evicting Redis, which \
                     loses acknowledged events when it fills"
                );
                Ok(())
            }
            Some(node) => Err(node.refusal()),
            None => Ok(()),
        }
    }
}

/// (first slot, last slot, `host:port` of the primary) of each range in a `CLUSTER SLOTS` reply.
fn slot_primaries(reply: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(ranges) = reply else {
        return Vec::new();
    };
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let int = |v: &Value| match v {
                Value::Int(n) => u16::try_from(*n).ok(),
                _ => None,
            };
            let Some(Value::Array(primary)) = fields.get(2) else {
                return None;
            };
            let host = redis::from_redis_value_ref::<String>(primary.first()?).ok()?;
            let port = int(primary.get(1)?)?;
            Some((
                int(&fields[0])?,
                int(fields.get(1)?)?,
                format!("{host}:{port}"),
            ))
        })
        .collect()
}

/// Which binary checks (`Memory::check_as`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Api,
    Worker,
}

/// A binary's check at start: an evicting Redis (unless allowed) or one laid out over another
/// partition count stops it; an unreachable one does not (the binary starts unready and checks
/// again on every readiness probe).
pub async fn refuse_unfit_at_start(
    redis: &Redis,
    keyspace: Keyspace,
    role: Role,
    allow_eviction: bool,
) -> Result<(), String> {
    match Memory::read(redis, keyspace).await {
        Ok(memory) => memory.check_as(role, allow_eviction),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read Redis's maxmemory-policy yet; checked again when ready");
            Ok(())
        }
    }
}

/// Why the api refuses a request before sending it to Redis.
#[derive(Debug)]
pub enum Refusal {
    /// A primary evicts, or the streams are laid out over another partition count (the line
    /// says which, and how to fix it).
    Unfit(String),
    /// The tenant's primary is above the brake's share of `maxmemory`.
    Full,
}

/// The api's view of Redis memory, refreshed every [`REFRESH_EVERY`] and on every readiness
/// check, and consulted (two atomic loads) before every admission.
pub struct Brake {
    keyspace: Keyspace,
    /// Share of `maxmemory` from which requests are refused; 1.0 leaves it to Redis.
    fraction: f64,
    allow_eviction: bool,
    /// Set while Redis is unfit for the backlog ([`Memory::check`]).
    unfit: AtomicBool,
    /// The refusal line while `unfit`.
    why: Mutex<String>,
    /// Per partition: its primary is over `fraction`.
    full: Vec<AtomicBool>,
    metrics: MemoryMetrics,
    readings: Readings,
}

/// Readings of memory taken concurrently (the periodic one, readiness checks) can finish out of
/// order, on a Redis Cluster especially (one `INFO` per primary, on different threads): only a
/// reading started after the one in force may replace it, so an older reading never undoes a
/// newer one.
#[derive(Default)]
struct Readings {
    started: AtomicU64,
    /// The newest reading applied.
    applied: Mutex<u64>,
}

impl Readings {
    /// A new reading's number.
    fn start(&self) -> u64 {
        self.started.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Runs `apply` unless a reading started after `reading` has been applied.
    fn apply(&self, reading: u64, apply: impl FnOnce()) -> bool {
        let mut applied = self.applied.lock().expect("readings lock");
        if *applied > reading {
            return false;
        }
        *applied = reading;
        apply();
        true
    }
}

impl Brake {
    pub fn new(
        keyspace: Keyspace,
        fraction: f64,
        allow_eviction: bool,
        metrics: MemoryMetrics,
    ) -> Self {
        Brake {
            keyspace,
            fraction,
            allow_eviction,
            unfit: AtomicBool::new(false),
            why: Mutex::new(String::new()),
            full: (0..keyspace.partitions())
                .map(|_| AtomicBool::new(false))
                .collect(),
            metrics,
            readings: Readings::default(),
        }
    }

    /// Whether a request of a tenant of `partition` may go to Redis.
    pub fn check(&self, partition: u16) -> Result<(), Refusal> {
        if self.unfit.load(Ordering::Relaxed) {
            return Err(Refusal::Unfit(
                self.why.lock().expect("refusal lock").clone(),
            ));
        }
        if self.full[usize::from(partition)].load(Ordering::Relaxed) {
            return Err(Refusal::Full);
        }
        Ok(())
    }

    /// Reads memory and updates the brake and the gauges; the refusal line while a primary
    /// evicts and that is not allowed.
    pub async fn refresh(&self, redis: &Redis) -> Result<Option<String>, RedisError> {
        let reading = self.readings.start();
        let memory = Memory::read(redis, self.keyspace).await?;
        let refusal = memory.check(self.allow_eviction).err();
        self.readings.apply(reading, || {
            memory.publish(&self.metrics);
            if let Some(line) = &refusal {
                if !self.unfit.load(Ordering::Relaxed) {
                    tracing::error!("{line}; admitting nothing until it is fixed");
                }
                line.clone_into(&mut self.why.lock().expect("refusal lock"));
            }
            self.unfit.store(refusal.is_some(), Ordering::Relaxed);
            for (partition, full) in self.full.iter().enumerate() {
                let over = memory.partition_node[partition]
                    .is_some_and(|n| memory.nodes[n].is_over(self.fraction));
                full.store(over, Ordering::Relaxed);
            }
        });
        Ok(refusal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n\
                        maxmemory:2097152\r\nmaxmemory_human:2.00M\r\nmaxmemory_policy:allkeys-lru\r\n";

    #[test]
    fn a_reading_never_replaces_one_started_after_it() {
        let readings = Readings::default();
        let (older, newer) = (readings.start(), readings.start());
        let mut applied = Vec::new();
        assert!(readings.apply(newer, || applied.push(newer)));
        assert!(!readings.apply(older, || applied.push(older)));
        let newest = readings.start();
        assert!(readings.apply(newest, || applied.push(newest)));
        assert_eq!(applied, [newer, newest]);
    }

    #[test]
    fn info_memory_gives_usage_limit_and_policy() {
        let node = NodeMemory::parse("127.0.0.1:6379", INFO).unwrap();
        assert_eq!(node.used_memory, 1 << 20);
        assert_eq!(node.maxmemory, 2 << 20);
        assert_eq!(node.maxmemory_policy, "allkeys-lru");
        assert!(node.evicts());
        assert!(node.is_over(0.5) && !node.is_over(0.51));
        let line = node.refusal();
        assert!(line.contains("maxmemory-policy allkeys-lru") && line.contains("127.0.0.1:6379"));
        assert!(NodeMemory::parse("n", "used_memory:1\r\n").is_err());
    }

    #[test]
    fn no_limit_is_never_over() {
        let node = NodeMemory::parse(
            "n",
            "used_memory:99\nmaxmemory:0\nmaxmemory_policy:noeviction\n",
        )
        .unwrap();
        assert!(!node.evicts());
        assert!(!node.is_over(0.0));
    }

    #[test]
    fn cluster_slots_name_each_range_primary() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
            ]),
        ]);
        assert_eq!(
            slot_primaries(&reply),
            vec![
                (0, 5460, "127.0.0.1:7000".to_owned()),
                (5461, 16383, "10.0.0.2:7001".to_owned())
            ]
        );
    }
}
