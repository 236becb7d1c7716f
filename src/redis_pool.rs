//! Connections to Redis (one server or a Redis Cluster), with one deadline over every operation.
//!
//! Requirement: a dead or slow Redis never hangs a request. Every call here (connecting, the
//! command itself) finishes within the configured timeout or fails with [`RedisError`], which
//! the api answers with 503.
//!
//! Connections are multiplexed: one TCP connection (per node, on a cluster) carries any number
//! of concurrent commands. So instead of checking a connection out of the pool per call (which
//! costs a health-check round trip, `UNWATCH` + `PING`, every time), each process keeps
//! `pool_size` long-lived connections, made by the deadpool pool with its timeouts and used
//! round-robin. A connection that fails at the transport level is dropped and replaced on next
//! use. On a cluster, the redis crate follows `MOVED`/`ASK` redirects and refreshes the slot map
//! when the topology changes. Measured effect: BENCHMARKS.md, "History".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_redis::{PoolConfig, Runtime, Timeouts};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value};

use crate::config::{RedisMode, RedisSettings};
use crate::keyspace::cluster_slot;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no Redis connection: {0}")]
    Pool(String),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    /// The writes happened, but fewer replicas than required confirmed them in time.
    #[error("writes confirmed by {got} of the {wanted} required replicas")]
    NotReplicated { wanted: u32, got: i64 },
}

/// A cheap-to-clone handle on the connections.
#[derive(Clone)]
pub struct Redis {
    pools: Pools,
    timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Clone)]
enum Pools {
    Standalone(deadpool_redis::Pool),
    Cluster(deadpool_redis::cluster::Pool),
}

struct Shared {
    /// Long-lived multiplexed connections; `None` until first used or after a failure.
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the node that holds `key`, over the connection that wrote it:
    /// how many replicas acknowledged this connection's writes so far.
    async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(cluster_slot(key), SlotAddr::Master);
                let reply = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(reply).map_err(Into::into)
            }
        }
    }
}

impl Redis {
    /// Prepares the connections. They are opened on first use, so a binary can start (and
    /// report itself unready) while Redis is still down.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let mut pool = PoolConfig::new(settings.pool_size);
        pool.timeouts = Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        };
        let pools =
            match settings.mode {
                RedisMode::Standalone => {
                    let mut cfg = deadpool_redis::Config::from_url(settings.url.expose());
                    cfg.pool = Some(pool);
                    Pools::Standalone(cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                        format!("SLUICE__REDIS__URL: cannot build a Redis pool: {e}")
                    })?)
                }
                RedisMode::Cluster => {
                    let mut cfg = deadpool_redis::cluster::Config::from_urls(settings.urls());
                    cfg.pool = Some(pool);
                    Pools::Cluster(cfg.create_pool(Some(Runtime::Tokio1)).map_err(|e| {
                        format!("SLUICE__REDIS__URL: cannot build a Redis Cluster pool: {e}")
                    })?)
                }
            };
        let slots = (0..settings.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(Redis {
            pools,
            timeout: settings.timeout,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// True on a Redis Cluster, where one command may only touch keys of one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.pools, Pools::Cluster(_))
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.with_connection(async |conn| Ok(cmd.query_async(conn).await?))
            .await
    }

    /// Runs a Lua script by its SHA, loading it first where Redis does not have it yet. With
    /// `replicas > 0`, then waits until that many replicas of the node holding `key` confirm the
    /// script's writes.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
    ) -> Result<T, RedisError> {
        let wait_for = self.timeout / 2;
        self.with_connection(async |conn| {
            let reply: T = script.invoke_async(conn).await?;
            if replicas > 0 {
                let got = conn.wait_for_replicas(key, replicas, wait_for).await?;
                if got < i64::from(replicas) {
                    return Err(RedisError::NotReplicated {
                        wanted: replicas,
                        got,
                    });
                }
            }
            Ok(reply)
        })
        .await
    }

    /// `PING`, for readiness checks (on a cluster, every primary must answer).
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Runs `op` on a connection within the deadline; a connection that failed at the
    /// transport level (or did not answer in time) is replaced.
    async fn with_connection<T>(
        &self,
        op: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let slot = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        let attempt = async {
            let mut conn = self.connection(slot).await?;
            op(&mut conn).await.inspect_err(|e| {
                if let RedisError::Command(e) = e
                    && (e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error())
                {
                    self.discard(slot);
                }
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.discard(slot);
                Err(RedisError::Timeout(self.timeout))
            }
        }
    }

    async fn connection(&self, slot: usize) -> Result<Conn, RedisError> {
        if let Some(conn) = self.shared.slots[slot].lock().expect("slot lock").clone() {
            return Ok(conn);
        }
        let conn = match &self.pools {
            Pools::Standalone(pool) => Conn::Standalone(deadpool_redis::Connection::take(
                pool.get()
                    .await
                    .map_err(|e| RedisError::Pool(e.to_string()))?,
            )),
            Pools::Cluster(pool) => Conn::Cluster(deadpool_redis::cluster::Connection::take(
                pool.get()
                    .await
                    .map_err(|e| RedisError::Pool(e.to_string()))?,
            )),
        };
        *self.shared.slots[slot].lock().expect("slot lock") = Some(conn.clone());
        Ok(conn)
    }

    fn discard(&self, slot: usize) {
        self.shared.slots[slot].lock().expect("slot lock").take();
    }
}
