//! The partition count a deployment's streams are laid out over, recorded in Redis.
//!
//! A tenant's partition is its id's hash modulo `SLUICE__REDIS__PARTITIONS` ([`Keyspace`]). Two
//! binaries that disagree on the count send a tenant's events to different streams and split its
//! rate limits, and a worker reads only the streams of its own count, so events queued under a
//! larger count would wait where no worker reads them. Therefore the first binary to reach Redis
//! records its count under [`RECORD`], and every binary refuses another count: at start it does
//! not start (one line naming both counts), and while running (read with Redis memory, by the
//! api every second and by both services on every readiness check) `/readyz` answers 503 naming
//! them and the api admits nothing. A Redis that lost its data has no record, and the next
//! reading makes it again.
//!
//! The count changes only through `sluice-admin repartition` ([`change`]): it marks the record
//! as changing (`16->8`), which stops admission on every api replica within a second; waits
//! until every stream of the old count is drained (everything in it delivered to the workers
//! and acknowledged); moves each tenant whose partition changes — its rate-limit windows and
//! its idempotency records, so that limits carry on through the minute of the change and a
//! retry of a request answered before it is answered from its record — and drops its registry
//! copy under the old partition; then records the new count. If the streams do not drain in
//! time, it puts the old count back, and ingest resumes as before.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use redis::streams::{StreamInfoGroupsReply, StreamInfoStreamReply};

use crate::keyspace::{Keyspace, TenantKey, TenantKind};
use crate::redis_pool::{Redis, RedisError};
use crate::stream::group::GROUP;

/// The record: the partition count as decimal text, or `<old>-><new>` while it changes.
pub const RECORD: &str = "sluice:partitions";

/// The record as it stands, made `partitions` when there is none. A Redis that refuses the write
/// (full, or a replica mid-failover) leaves it unmade this time: `None`, and no refusal.
async fn recorded(redis: &Redis, partitions: u16) -> Result<Option<String>, RedisError> {
    let found: Option<String> = redis.query(redis::cmd("GET").arg(RECORD)).await?;
    if found.is_some() {
        return Ok(found);
    }
    let mut record = redis::cmd("SET");
    record.arg(RECORD).arg(partitions).arg("NX").arg("GET");
    match redis.query::<Option<String>>(&record).await {
        // Another binary recorded its count first: that one stands.
        Ok(earlier) => Ok(Some(earlier.unwrap_or_else(|| partitions.to_string()))),
        Err(e) => {
            tracing::debug!(error = %e, "recording the partition count failed; recorded at the next reading");
            Ok(None)
        }
    }
}

/// Why a binary configured with `partitions` must not use this Redis (the refusal of the
/// record, made first if missing); `None` when it may.
pub async fn other_layout(redis: &Redis, partitions: u16) -> Result<Option<String>, RedisError> {
    Ok(layout(redis, partitions).await?.0)
}

/// As [`other_layout`], and whether the record says the count is being changed from
/// `partitions`: a worker of that count drains the old streams meanwhile, which the change waits
/// for, so it may start and run then.
pub async fn layout(redis: &Redis, partitions: u16) -> Result<(Option<String>, bool), RedisError> {
    let Some(recorded) = recorded(redis, partitions).await? else {
        return Ok((None, false));
    };
    let changing_from_here = recorded
        .split_once("->")
        .is_some_and(|(from, _)| from == partitions.to_string());
    Ok((refusal(partitions, &recorded), changing_from_here))
}

/// Why a binary configured with `partitions` must not use a Redis whose record is `recorded`.
fn refusal(partitions: u16, recorded: &str) -> Option<String> {
    if recorded == partitions.to_string() {
        return None;
    }
    Some(match recorded.split_once("->") {
        Some((from, to)) => format!(
            "the partition count is being changed from {from} to {to} (sluice-admin repartition, \
             {RECORD} in Redis): nothing is admitted until it is done"
        ),
        None => format!(
            "SLUICE__REDIS__PARTITIONS is {partitions}, but the streams in this Redis are laid out \
             over {recorded} partitions ({RECORD}): run every binary with {recorded}, or change \
             the count with sluice-admin repartition (docs/operations.md, \"Changing the \
             partition count\")"
        ),
    })
}

/// What [`change`] did.
#[derive(Debug, serde::Serialize)]
pub struct Changed {
    /// The count recorded before; `None` when there was none.
    pub was: Option<u16>,
    pub partitions: u16,
    /// The keys of the tenants whose partition changed.
    pub moved: Moved,
}

/// A change's moves (see the module's documentation).
#[derive(Debug, Default, serde::Serialize)]
pub struct Moved {
    /// Tenants' rate-limit windows, each one hash.
    pub windows: u64,
    /// Idempotency records still within their expiry.
    pub idempotency_records: u64,
    /// Registry copies dropped under the old partitions (the registry sync writes the new ones).
    pub registry_copies: u64,
}

/// Why [`change`] did not change the count.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(
        "{RECORD} holds {0:?}, which is not a partition count: set it to the count the streams are laid out over"
    )]
    Unreadable(String),
    #[error(
        "partition {partition} of {from} still holds events no worker has stored ({what}) after \
         {waited}s: the count stays {from} and ingest resumes; let the workers drain the streams \
         (sluice_worker_stream_lag and sluice_worker_pending at 0), then run this again"
    )]
    NotDrained {
        from: u16,
        partition: u16,
        what: String,
        waited: u64,
    },
}

/// Lays the streams out over `to` partitions (see the module's documentation). `settle` is how
/// long admissions already under way may take to reach Redis once the record says the count is
/// changing; `wait` how long the old streams may take to drain after that.
pub async fn change(
    redis: &Redis,
    to: u16,
    settle: Duration,
    wait: Duration,
) -> Result<Changed, ChangeError> {
    let found: Option<String> = redis.query(redis::cmd("GET").arg(RECORD)).await?;
    let Some(found) = found else {
        set(redis, &to.to_string()).await?;
        return Ok(Changed {
            was: None,
            partitions: to,
            moved: Moved::default(),
        });
    };
    // A change that stopped half-way (the command was killed) resumes from its old count.
    let old = found
        .split_once("->")
        .map_or(found.as_str(), |(from, _)| from);
    let from: u16 = old
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ChangeError::Unreadable(found.clone()))?;
    if from == to {
        // Nothing moves (a change to another count, killed, and now given up).
        if found != to.to_string() {
            set(redis, &to.to_string()).await?;
        }
        return Ok(Changed {
            was: Some(from),
            partitions: to,
            moved: Moved::default(),
        });
    }
    set(redis, &format!("{from}->{to}")).await?;
    tokio::time::sleep(settle).await;
    let deadline = Instant::now() + wait;
    loop {
        let mut left = None;
        for partition in 0..from {
            if let Some(what) = undrained(redis, partition).await? {
                left = Some((partition, what));
                break;
            }
        }
        match left {
            None => {
                // Nothing admits meanwhile; a run killed half-way moves the rest when run again.
                let moved = move_tenant_keys(redis, Keyspace::new(from), Keyspace::new(to)).await?;
                set(redis, &to.to_string()).await?;
                return Ok(Changed {
                    was: Some(from),
                    partitions: to,
                    moved,
                });
            }
            Some((partition, what)) if Instant::now() >= deadline => {
                set(redis, &from.to_string()).await?;
                return Err(ChangeError::NotDrained {
                    from,
                    partition,
                    what,
                    waited: wait.as_secs(),
                });
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Every key of a partition (the API-key index and [`RECORD`] have none).
const PARTITIONED: &str = "sluice:{p*}:*";

/// Moves the keys of each tenant whose partition differs between `from` and `to` (see the
/// module's documentation), primary by primary.
async fn move_tenant_keys(
    redis: &Redis,
    from: Keyspace,
    to: Keyspace,
) -> Result<Moved, RedisError> {
    let mut moved = Moved::default();
    for (node, _) in redis.on_each_primary(&redis::cmd("PING")).await? {
        let mut cursor = 0_u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(PARTITIONED)
                .arg("COUNT")
                .arg(1000);
            let (next, names): (u64, Vec<String>) = redis.on_primary(&node, &scan).await?;
            // By old partition: on a cluster a pipeline's keys share one slot.
            let mut by_partition: BTreeMap<u16, Vec<TenantKey>> = BTreeMap::new();
            for key in names
                .iter()
                .filter_map(|name| Keyspace::parse_tenant_key(name))
            {
                // Only what the old count laid out, and only where the new one moves it.
                let old = from.partition_of(key.tenant);
                if key.partition == old && to.partition_of(key.tenant) != old {
                    by_partition.entry(old).or_default().push(key);
                }
            }
            for keys in by_partition.values() {
                move_keys(redis, from, to, keys, &mut moved).await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(moved)
}

/// Copies `keys` (of one old partition) to their names under `to`, with the time each had
/// left, then deletes them.
async fn move_keys(
    redis: &Redis,
    from: Keyspace,
    to: Keyspace,
    keys: &[TenantKey<'_>],
    moved: &mut Moved,
) -> Result<(), RedisError> {
    let copied: Vec<&TenantKey> = keys
        .iter()
        .filter(|key| key.kind != TenantKind::Registry)
        .collect();
    let mut read = redis::pipe();
    for key in &copied {
        let name = from.name_of(key);
        match key.kind {
            TenantKind::Windows => read.cmd("HGETALL").arg(&name),
            _ => read.cmd("GET").arg(&name),
        };
        read.cmd("PTTL").arg(&name);
    }
    let values: Vec<redis::Value> = if copied.is_empty() {
        Vec::new()
    } else {
        redis.query_pipeline(&read).await?
    };
    let mut writes: BTreeMap<u16, redis::Pipeline> = BTreeMap::new();
    let mut replies = values.into_iter();
    for key in &copied {
        let (Some(value), Some(ttl)) = (replies.next(), replies.next()) else {
            break;
        };
        // -2: gone meanwhile (expired); -1: kept for good.
        let ttl: i64 = redis::from_redis_value(ttl).map_err(redis::RedisError::from)?;
        if ttl == -2 || value == redis::Value::Nil {
            continue;
        }
        let name = to.name_of(key);
        let write = writes.entry(to.partition_of(key.tenant)).or_default();
        match key.kind {
            TenantKind::Windows => {
                let fields: Vec<(String, String)> =
                    redis::from_redis_value(value).map_err(redis::RedisError::from)?;
                if fields.is_empty() {
                    continue;
                }
                write.cmd("HSET").arg(&name).arg(fields).ignore();
                if ttl > 0 {
                    write.cmd("PEXPIRE").arg(&name).arg(ttl).ignore();
                }
                moved.windows += 1;
            }
            _ => {
                let text: String =
                    redis::from_redis_value(value).map_err(redis::RedisError::from)?;
                let set = write.cmd("SET").arg(&name).arg(text);
                if ttl > 0 {
                    set.arg("PX").arg(ttl);
                }
                set.arg("NX").ignore();
                moved.idempotency_records += 1;
            }
        }
    }
    for write in writes.values() {
        redis.query_pipeline::<()>(write).await?;
    }
    let mut drop = redis::pipe();
    for key in keys {
        drop.cmd("DEL").arg(from.name_of(key)).ignore();
        if key.kind == TenantKind::Registry {
            moved.registry_copies += 1;
        }
    }
    redis.query_pipeline::<()>(&drop).await
}

async fn set(redis: &Redis, value: &str) -> Result<(), RedisError> {
    redis
        .query::<()>(redis::cmd("SET").arg(RECORD).arg(value))
        .await
}

/// What a partition's stream still holds that no worker has stored: entries not delivered to
/// the workers' group, or delivered and not acknowledged. `None` when drained.
async fn undrained(redis: &Redis, partition: u16) -> Result<Option<String>, RedisError> {
    let stream = Keyspace::stream(partition);
    let length: u64 = redis.query(redis::cmd("XLEN").arg(&stream)).await?;
    if length == 0 {
        return Ok(None);
    }
    let info: StreamInfoStreamReply = redis
        .query(redis::cmd("XINFO").arg("STREAM").arg(&stream))
        .await?;
    let groups: StreamInfoGroupsReply = redis
        .query(redis::cmd("XINFO").arg("GROUPS").arg(&stream))
        .await?;
    let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
        return Ok(Some(format!("{length} entries and no worker group")));
    };
    if group.last_delivered_id != info.last_generated_id {
        return Ok(Some(format!(
            "entries after {} not yet delivered",
            group.last_delivered_id
        )));
    }
    if group.pending > 0 {
        return Ok(Some(format!("{} entries pending", group.pending)));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_count_passes() {
        assert_eq!(refusal(16, "16"), None);
        let other = refusal(8, "16").unwrap();
        assert!(
            other.starts_with(
                "SLUICE__REDIS__PARTITIONS is 8, but the streams in this Redis are laid out over \
                 16 partitions"
            ),
            "{other}"
        );
        let changing = refusal(16, "16->8").unwrap();
        assert!(
            changing.contains("being changed from 16 to 8"),
            "{changing}"
        );
        assert!(refusal(8, "16->8").is_some(), "not until it is done");
        assert!(refusal(16, "016").is_some());
    }
}
