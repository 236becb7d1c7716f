//! The worker's readiness: both stores answer, and Redis keeps what it is given.

use std::time::Duration;

use super::Worker;
use crate::keyspace::Keyspace;
use crate::redis_memory;

/// The worker is ready only while both Redis and PostgreSQL answer, and Redis keeps what it is
/// given (`maxmemory-policy noeviction`).
impl crate::ops::Probe for Worker {
    async fn failing(&self) -> Vec<crate::ops::Failing> {
        let mut failing = Vec::new();
        let keyspace = Keyspace::new(self.streams.partitions());
        let redis = match self.redis.ping().await {
            Ok(()) => match redis_memory::Memory::read(&self.redis, keyspace).await {
                Ok(memory) => memory
                    .check_as(redis_memory::Role::Worker, self.allow_eviction)
                    .err(),
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
