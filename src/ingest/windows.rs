//! What a tenant's signals are and how much of the current window each has left, read by
//! `lua/signals.lua` in one call from the registry copy and the counters admission raises.

use chrono::{DateTime, TimeZone, Utc};
use redis::{Script, Value};

use crate::config::Limits;
use crate::keyspace::{Keyspace, PackedSignal, WindowCount};
use crate::redis_pool::{Redis, RedisError};

static SIGNALS_LUA: &str = include_str!("../../lua/signals.lua");

/// One signal with its window, as admission sees it now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalStatus {
    pub slug: String,
    pub signal: PackedSignal,
    /// The limit in force: the signal's own, or the configured default for its type.
    pub limit: u32,
    /// Events admitted in the current window.
    pub used: u32,
    /// When the current window ends.
    pub reset: DateTime<Utc>,
}

impl SignalStatus {
    pub fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }
}

/// Reads signals with their windows.
pub struct Windows {
    script: Script,
    keyspace: Keyspace,
    limits: Limits,
}

impl Windows {
    pub fn new(keyspace: Keyspace, limits: Limits) -> Self {
        Windows {
            script: crate::scripts::script(SIGNALS_LUA),
            keyspace,
            limits,
        }
    }

    /// Every signal of `tenant` by slug (or only `slug`), active or not.
    pub async fn read(
        &self,
        redis: &Redis,
        tenant: &str,
        slug: Option<&str>,
    ) -> Result<Vec<SignalStatus>, RedisError> {
        let mut call = self.script.prepare_invoke();
        let registry = self.keyspace.registry(tenant);
        call.key(&registry)
            .key(self.keyspace.rate_limits(tenant))
            .arg(slug.unwrap_or(""));
        let reply: Value = redis.invoke(&call, &registry, 0).await?;
        self.decode(reply).map_err(|why| {
            RedisError::Command(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from signals.lua",
                why,
            )))
        })
    }

    fn decode(&self, reply: Value) -> Result<Vec<SignalStatus>, String> {
        let Value::Array(items) = reply else {
            return Err(format!("not an array: {reply:?}"));
        };
        let text = |v: &Value| -> Result<String, String> {
            redis::from_redis_value_ref::<String>(v).map_err(|e| e.to_string())
        };
        let now: i64 = items
            .first()
            .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
            .ok_or("no time")?;
        let window = now - now.rem_euclid(60);
        let reset = Utc
            .timestamp_opt(window + 60, 0)
            .single()
            .ok_or("time out of range")?;
        let mut signals = Vec::with_capacity(items.len() / 3);
        for triple in items[1..].chunks(3) {
            let [slug, packed, counter] = triple else {
                return Err("a signal of fewer than 3 values".into());
            };
            let signal: PackedSignal = text(packed)?.parse()?;
            let used = WindowCount::used_in(&text(counter)?, window);
            let limit = signal
                .limit
                .unwrap_or_else(|| self.limits.for_type(signal.signal_type));
            signals.push(SignalStatus {
                slug: text(slug)?,
                signal,
                limit,
                used,
                reset,
            });
        }
        signals.sort_by(|a, b| a.slug.cmp(&b.slug));
        Ok(signals)
    }
}
