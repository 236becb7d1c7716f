//! The Redis connection pool, with one deadline over every operation.
//!
//! Requirement: a dead or slow Redis never hangs a request. Every call here (waiting for a
//! connection, connecting, the command itself) finishes within the configured timeout or fails
//! with [`RedisError`], which the api answers with 503.

use std::time::Duration;

use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};
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

/// A cheap-to-clone handle on the pool.
#[derive(Clone)]
pub struct Redis {
    pool: Pool,
    timeout: Duration,
}

impl Redis {
    /// Builds the pool. Connections are opened on first use, so a binary can start (and report
    /// itself unready) while Redis is still down.
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
        Ok(Redis {
            pool,
            timeout: settings.timeout,
        })
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.deadline(async {
            let mut conn = self.pool.get().await?;
            Ok(cmd.query_async(&mut conn).await?)
        })
        .await
    }

    /// Runs a pipeline of commands in one round trip.
    pub async fn pipeline<T: FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.deadline(async {
            let mut conn = self.pool.get().await?;
            Ok(pipe.query_async(&mut conn).await?)
        })
        .await
    }

    /// Runs a Lua script by its SHA, loading it first where Redis does not have it yet.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.deadline(async {
            let mut conn = self.pool.get().await?;
            Ok(script.invoke_async(&mut conn).await?)
        })
        .await
    }

    /// `PING`, for readiness checks.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    async fn deadline<T>(
        &self,
        op: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, RedisError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or(Err(RedisError::Timeout(self.timeout)))
    }
}
