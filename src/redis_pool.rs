//! Connections to Redis, with one deadline over every operation.
//!
//! Requirement: a dead or slow Redis never hangs a request. Every call here (connecting, the
//! command itself) finishes within the configured timeout or fails with [`RedisError`], which
//! the api answers with 503.
//!
//! Connections are multiplexed: one TCP connection carries any number of concurrent commands.
//! So instead of checking a connection out of the pool per call (which costs a health-check
//! round trip, `UNWATCH` + `PING`, every time), each process keeps `pool_size` long-lived
//! connections, made by the deadpool pool with its timeouts and used round-robin. A connection
//! that fails at the transport level is dropped and replaced on next use. Measured effect:
//! BENCHMARKS.md, "History".

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, ScriptInvocation};

use crate::config::RedisSettings;

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("no Redis connection: {0}")]
    Pool(#[from] deadpool_redis::PoolError),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

/// A cheap-to-clone handle on the connections.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    timeout: Duration,
    shared: Arc<Shared>,
}

struct Shared {
    /// Long-lived multiplexed connections; `None` until first used or after a failure.
    slots: Vec<Mutex<Option<MultiplexedConnection>>>,
    next: AtomicUsize,
}

impl Redis {
    /// Prepares the connections. They are opened on first use, so a binary can start (and
    /// report itself unready) while Redis is still down.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let mut cfg = deadpool_redis::Config::from_url(settings.url.expose());
        let mut pool = PoolConfig::new(settings.pool_size);
        pool.timeouts = Timeouts {
            wait: Some(settings.timeout),
            create: Some(settings.timeout),
            recycle: Some(settings.timeout),
        };
        cfg.pool = Some(pool);
        let pool = cfg
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| format!("SLUICE__REDIS__URL: cannot build a Redis pool: {e}"))?;
        let slots = (0..settings.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(Redis {
            pool,
            timeout: settings.timeout,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.with_connection(async |conn| cmd.query_async(conn).await)
            .await
    }

    /// Runs a pipeline of commands in one round trip.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.with_connection(async |conn| pipe.query_async(conn).await)
            .await
    }

    /// Runs a Lua script by its SHA, loading it first where Redis does not have it yet.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.with_connection(async |conn| script.invoke_async(conn).await)
            .await
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Runs `op` on a connection within the deadline; a connection that failed at the
    /// transport level (or did not answer in time) is replaced.
    async fn with_connection<T>(
        &self,
        op: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let slot = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        let attempt = async {
            let mut conn = self.connection(slot).await?;
            op(&mut conn).await.map_err(|e| {
                if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
                    self.discard(slot);
                }
                RedisError::Command(e)
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

    async fn connection(&self, slot: usize) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.shared.slots[slot].lock().expect("slot lock").clone() {
            return Ok(conn);
        }
        let conn = deadpool_redis::Connection::take(self.pool.get().await?);
        *self.shared.slots[slot].lock().expect("slot lock") = Some(conn.clone());
        Ok(conn)
    }

    fn discard(&self, slot: usize) {
        self.shared.slots[slot].lock().expect("slot lock").take();
    }
}
