//! Waiting out outages: a step that fails because Redis or PostgreSQL does not answer is retried
//! with capped, jittered backoff, its entries kept claimed, and the dependency reported down
//! until it answers again.

use std::time::{Duration, Instant};

use super::Worker;
use super::sink::SinkError;
use crate::pg::PgError;
use crate::redis_pool::RedisError;
use crate::shutdown::Shutdown;
use crate::stream::RawEntry;
use crate::stream::dead_letters::DeadLetterError;

impl Worker {
    /// Retries a storage step while PostgreSQL is unavailable; a refusal is handed back.
    pub(super) async fn retry_sink<T, F, Fut>(
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
    pub(super) async fn retry<T, F, Fut>(
        &self,
        what: &str,
        held: &[RawEntry],
        mut step: F,
    ) -> Option<T>
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
pub(super) enum Dependency {
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
pub(super) struct StepError {
    dependency: Dependency,
    error: String,
}

impl StepError {
    pub(super) fn of(dependency: Dependency, error: impl std::fmt::Display) -> Self {
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

/// Capped exponential backoff with jitter, so restarting workers do not retry in lockstep.
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    pub(super) fn new() -> Self {
        Backoff { next: Self::FIRST }
    }

    pub(super) fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps for the next interval, or until shutdown.
    pub(super) async fn wait(&mut self, shutdown: &Shutdown) {
        let jitter = rand::random_range(0.5..1.5);
        let pause = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(Self::MAX);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.requested() => {}
        }
    }
}
