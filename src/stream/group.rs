//! The consumer group over the partition streams: reading, claiming from dead consumers,
//! acknowledging, and trimming only what the group no longer needs.

use std::collections::{HashMap, HashSet};

use redis::Value;
use redis::streams::{
    StreamId, StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamPendingReply, StreamReadReply,
};

use super::entry::{EVENTS, STAGED};
use crate::keyspace::Keyspace;
use crate::redis_pool::{Redis, RedisError};

/// The consumer group every worker joins.
pub const GROUP: &str = "sluice";

/// One entry read from a stream.
#[derive(Debug, Clone)]
pub struct RawEntry {
    pub partition: u16,
    /// The stream entry id, e.g. `1764151200000-0`.
    pub entry_id: String,
    pub fields: HashMap<String, Value>,
    /// The key the entry's events were staged under, read back into its `b` field
    /// ([`Consumer::read`]); deleted once the entry is acknowledged.
    pub staged: Option<String>,
}

impl RawEntry {
    pub fn field(&self, name: &str) -> Option<String> {
        match self.fields.get(name)? {
            Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
            Value::SimpleString(s) => Some(s.clone()),
            Value::Int(n) => Some(n.to_string()),
            _ => None,
        }
    }

    /// The event id of a one-event entry, when it is readable that far.
    pub fn event_id(&self) -> Option<String> {
        self.field(super::entry::EVENT)
            .as_deref()
            .and_then(super::event_id_of)
    }

    /// The tenant, when the entry is readable that far.
    pub fn tenant(&self) -> Option<String> {
        if let Some(tenant) = self.field(super::entry::TENANT) {
            return Some(tenant);
        }
        let m = self.field(super::entry::META)?;
        super::Meta::parse(&m).map(|meta| meta.tenant.to_owned())
    }

    fn from_stream_id(partition: u16, id: StreamId) -> Self {
        RawEntry {
            partition,
            entry_id: id.id,
            fields: id.map,
            staged: None,
        }
    }
}

/// A pending entry that sat idle past the claim time.
#[derive(Debug)]
pub struct Stale {
    pub entry_id: String,
    pub deliveries: u64,
}

/// Per-partition group state, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub pending: i64,
    /// Entries not yet delivered to the group (Redis 7 `lag`); -1 when Redis cannot tell.
    pub lag: i64,
    /// When the oldest pending entry was added (Redis clock, unix ms): its id's time part.
    pub oldest_pending_ms: Option<u64>,
}

/// One member of the consumer group: a worker, under its consumer name.
#[derive(Clone)]
pub struct Consumer {
    redis: Redis,
    keyspace: Keyspace,
    /// The name entries are delivered to. A worker restarted under the same name replays the
    /// entries it left unacknowledged.
    consumer: String,
}

impl Consumer {
    pub fn new(redis: Redis, keyspace: Keyspace, consumer: String) -> Self {
        Consumer {
            redis,
            keyspace,
            consumer,
        }
    }

    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// How many partition streams the group spans.
    pub fn partitions(&self) -> u16 {
        self.keyspace.partitions()
    }

    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// Creates the group on every partition stream (and the stream itself) where missing.
    /// The group starts at `0`, so entries added before any worker ran are delivered too.
    pub async fn ensure_groups(&self) -> Result<(), RedisError> {
        for p in 0..self.keyspace.partitions() {
            // Asked first: on a full Redis, `XGROUP CREATE` is refused (OOM) even where the
            // group exists, and a worker must still start there to drain it.
            if self.group_info(&Keyspace::stream(p)).await?.is_some() {
                continue;
            }
            let created: Result<(), RedisError> = self
                .redis
                .query(
                    redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(Keyspace::stream(p))
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM"),
                )
                .await;
            match created {
                Err(RedisError::Command(e)) if e.code() == Some("BUSYGROUP") => {}
                other => other?,
            }
        }
        Ok(())
    }

    /// Reads up to `count` entries per stream: `pending_only` re-reads this consumer's own
    /// unacknowledged entries (after a restart with the same name), otherwise new entries,
    /// waiting up to `block_ms` for some to arrive (0: not at all). Staged events come back in
    /// their entries ([`Consumer::with_staged`]), as with [`Consumer::claim`].
    pub async fn read(
        &self,
        count: usize,
        block_ms: u64,
        pending_only: bool,
    ) -> Result<Vec<RawEntry>, RedisError> {
        let start = if pending_only { "0" } else { ">" };
        if !self.redis.is_cluster() {
            // One command over every stream, waiting up to block_ms for any of them.
            let block = (!pending_only && block_ms > 0).then_some(block_ms);
            let streams: Vec<String> = self.keyspace.streams().collect();
            return self.read_streams(&streams, count, block, start).await;
        }
        // A cluster refuses one command over keys of several slots: read each partition on its
        // own, concurrently and without blocking (a blocked read would hold up the node
        // connection every other command shares), and pause when all are empty.
        let reads = (0..self.keyspace.partitions()).map(|p| async move {
            self.read_streams(&[Keyspace::stream(p)], count, None, start)
                .await
        });
        let mut entries = Vec::new();
        let mut failed = None;
        let mut ok = 0;
        for read in futures_util::future::join_all(reads).await {
            match read {
                Ok(e) => {
                    ok += 1;
                    entries.extend(e);
                }
                // One shard failing over must not stop the others from draining.
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            if ok == 0 {
                return Err(e);
            }
            tracing::warn!(error = %e, "reading some partitions failed; the others go on");
        }
        if entries.is_empty() && !pending_only && block_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(block_ms)).await;
        }
        Ok(entries)
    }

    async fn read_streams(
        &self,
        streams: &[String],
        count: usize,
        block_ms: Option<u64>,
        start: &str,
    ) -> Result<Vec<RawEntry>, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(streams);
        for _ in streams {
            cmd.arg(start);
        }
        let reply: Option<StreamReadReply> = self.redis.query(&cmd).await?;
        let mut entries = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            let partition = self.partition_of(&key.key);
            entries.extend(
                key.ids
                    .into_iter()
                    // A pending entry that was trimmed or deleted comes back without fields.
                    .filter(|id| !id.map.is_empty())
                    .map(|id| RawEntry::from_stream_id(partition, id)),
            );
        }
        // One `MGET` for all (on a cluster, `streams` is one partition's).
        self.with_staged(entries).await
    }

    /// `entries` with the events staged for them (the key in their `r` field) in their `b`
    /// field, as if they had carried them. Staged events are deleted only after their entry is
    /// acknowledged, so where they are gone and the entry is no longer pending, another
    /// consumer stored it meanwhile: it is left out. An entry still pending whose staged events
    /// are gone keeps only its `r` field, and cannot be read.
    async fn with_staged(&self, mut entries: Vec<RawEntry>) -> Result<Vec<RawEntry>, RedisError> {
        let staged: Vec<(usize, String)> = entries
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.field(STAGED).map(|key| (i, key)))
            .collect();
        if staged.is_empty() {
            return Ok(entries);
        }
        let keys: Vec<&str> = staged.iter().map(|(_, key)| key.as_str()).collect();
        let values: Vec<Option<Vec<u8>>> = self.redis.query(redis::cmd("MGET").arg(keys)).await?;
        let mut gone = Vec::new();
        for ((i, key), value) in staged.into_iter().zip(values) {
            let entry = &mut entries[i];
            match value {
                Some(events) => {
                    entry.fields.remove(STAGED);
                    entry
                        .fields
                        .insert(EVENTS.to_owned(), Value::BulkString(events));
                    entry.staged = Some(key);
                }
                None => gone.push(i),
            }
        }
        let mut handled = HashSet::new();
        for i in gone {
            let (id, partition) = (&entries[i].entry_id, entries[i].partition);
            if self.pending(partition, 0, id, id, 1).await?.is_empty() {
                handled.insert(id.clone());
            } else {
                tracing::error!(entry = %id, partition, "the entry's staged events are gone");
            }
        }
        entries.retain(|e| !handled.contains(&e.entry_id));
        Ok(entries)
    }

    /// Entries of `partition` pending longer than `idle_ms` with any consumer.
    pub async fn stale(
        &self,
        partition: u16,
        idle_ms: u64,
        count: usize,
    ) -> Result<Vec<Stale>, RedisError> {
        Ok(self
            .pending(partition, idle_ms, "-", "+", count)
            .await?
            .into_iter()
            .map(|p| Stale {
                entry_id: p.id,
                deliveries: p.times_delivered as u64,
            })
            .collect())
    }

    /// `XPENDING` of `partition`: entries from `start` to `end` pending at least `idle_ms`
    /// with any consumer, at most `count`.
    async fn pending(
        &self,
        partition: u16,
        idle_ms: u64,
        start: &str,
        end: &str,
        count: usize,
    ) -> Result<Vec<redis::streams::StreamPendingId>, RedisError> {
        let reply: StreamPendingCountReply = self
            .redis
            .query(
                redis::cmd("XPENDING")
                    .arg(Keyspace::stream(partition))
                    .arg(GROUP)
                    .arg("IDLE")
                    .arg(idle_ms)
                    .arg(start)
                    .arg(end)
                    .arg(count),
            )
            .await?;
        Ok(reply.ids)
    }

    /// Takes over entries idle longer than `idle_ms`; each claim counts as a delivery.
    pub async fn claim(
        &self,
        partition: u16,
        idle_ms: u64,
        ids: &[String],
    ) -> Result<Vec<RawEntry>, RedisError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let reply: Value = self
            .redis
            .query(&self.xclaim(partition, idle_ms, ids))
            .await?;
        let claimed: redis::streams::StreamClaimReply = redis::from_redis_value(strip_nils(reply))
            .map_err(|e| RedisError::Command(e.into()))?;
        let entries = claimed
            .ids
            .into_iter()
            .filter(|id| !id.map.is_empty())
            .map(|id| RawEntry::from_stream_id(partition, id))
            .collect();
        self.with_staged(entries).await
    }

    /// Re-asserts this consumer's ownership of entries it is still working on (a batch held up
    /// by a PostgreSQL outage), so no other worker claims them meanwhile. `JUSTID` leaves the
    /// delivery count alone: waiting is not a failed delivery.
    pub async fn touch(&self, entries: &[RawEntry]) -> Result<(), RedisError> {
        for (partition, ids) in by_partition(entries) {
            let _: Value = self
                .redis
                .query(self.xclaim(partition, 0, &ids).arg("JUSTID"))
                .await?;
        }
        Ok(())
    }

    /// `XCLAIM` of `ids` in `partition` to this consumer, for entries idle at least `min_idle_ms`.
    fn xclaim(
        &self,
        partition: u16,
        min_idle_ms: u64,
        ids: &[impl redis::ToRedisArgs],
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(Keyspace::stream(partition))
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(min_idle_ms)
            .arg(ids);
        cmd
    }

    /// Acknowledges entries, one `XACK` per partition (a cluster keeps partitions apart), then
    /// deletes their staged events: once an entry is acknowledged no consumer reads it again.
    pub async fn ack(&self, entries: &[RawEntry]) -> Result<(), RedisError> {
        let acks = by_partition(entries)
            .into_iter()
            .map(|(partition, ids)| async move {
                let staged: Vec<&str> = entries
                    .iter()
                    .filter(|e| e.partition == partition)
                    .filter_map(|e| e.staged.as_deref())
                    .collect();
                // In this order, in one round trip.
                let mut pipeline = redis::pipe();
                pipeline
                    .cmd("XACK")
                    .arg(Keyspace::stream(partition))
                    .arg(GROUP)
                    .arg(ids)
                    .ignore();
                if !staged.is_empty() {
                    pipeline.cmd("DEL").arg(staged).ignore();
                }
                self.redis.query_pipeline::<()>(&pipeline).await
            });
        for ack in futures_util::future::join_all(acks).await {
            ack?;
        }
        Ok(())
    }

    /// Trims `partition`'s stream below the oldest entry the group still needs: the first
    /// pending entry, or the first not yet delivered. Entries below both have been stored and
    /// acknowledged. Returns how many entries were removed.
    pub async fn trim(&self, partition: u16) -> Result<u64, RedisError> {
        let stream = Keyspace::stream(partition);
        let Some(info) = self.group_info(&stream).await? else {
            return Ok(0); // no group yet: nothing is known to be consumed
        };
        let first_undelivered = next_id(&info.last_delivered);
        let first_pending: Option<String> = if info.pending > 0 {
            let reply: StreamPendingCountReply = self
                .redis
                .query(
                    redis::cmd("XPENDING")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg("-")
                        .arg("+")
                        .arg(1),
                )
                .await?;
            reply.ids.into_iter().next().map(|p| p.id)
        } else {
            None
        };
        let keep_from = match first_pending {
            Some(p) if id_lt(&p, &first_undelivered) => p,
            _ => first_undelivered,
        };
        self.redis
            .query(
                redis::cmd("XTRIM")
                    .arg(&stream)
                    .arg("MINID")
                    .arg(&keep_from),
            )
            .await
    }

    /// Removes consumers that hold nothing and have been idle for `idle_ms` (processes that
    /// exited), so `XINFO CONSUMERS` stays readable.
    pub async fn forget_idle_consumers(
        &self,
        partition: u16,
        idle_ms: u64,
    ) -> Result<(), RedisError> {
        let stream = Keyspace::stream(partition);
        let reply: StreamInfoConsumersReply = self
            .redis
            .query(redis::cmd("XINFO").arg("CONSUMERS").arg(&stream).arg(GROUP))
            .await?;
        for c in reply.consumers {
            if c.pending == 0 && c.idle as u64 > idle_ms && c.name != self.consumer {
                let name = c.name;
                let _: i64 = self
                    .redis
                    .query(
                        redis::cmd("XGROUP")
                            .arg("DELCONSUMER")
                            .arg(&stream)
                            .arg(GROUP)
                            .arg(&name),
                    )
                    .await?;
            }
        }
        Ok(())
    }

    pub async fn stats(&self, partition: u16) -> Result<GroupStats, RedisError> {
        let stream = Keyspace::stream(partition);
        let Some(info) = self.group_info(&stream).await? else {
            return Ok(GroupStats::default());
        };
        let oldest_pending_ms = if info.pending > 0 {
            // The summary form: count, smallest and largest pending id, consumers.
            let summary: StreamPendingReply = self
                .redis
                .query(redis::cmd("XPENDING").arg(&stream).arg(GROUP))
                .await?;
            match summary {
                StreamPendingReply::Data(data) => Some(parse_id(&data.start_id).0),
                _ => None,
            }
        } else {
            None
        };
        Ok(GroupStats {
            pending: info.pending,
            lag: info.lag,
            oldest_pending_ms,
        })
    }

    /// Redis's clock in unix milliseconds: the clock stream ids are made from.
    pub async fn now_ms(&self) -> Result<u64, RedisError> {
        let (secs, micros): (u64, u64) = self.redis.query(&redis::cmd("TIME")).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    async fn group_info(&self, stream: &str) -> Result<Option<GroupInfo>, RedisError> {
        let reply: Result<StreamInfoGroupsReply, RedisError> = self
            .redis
            .query(redis::cmd("XINFO").arg("GROUPS").arg(stream))
            .await;
        let groups = match reply {
            Ok(reply) => reply.groups,
            // A stream not created yet: Redis answers a plain ERR, with this detail.
            Err(RedisError::Command(e))
                if e.code() == Some("ERR") && e.detail() == Some("no such key") =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(groups
            .into_iter()
            .find(|g| g.name == GROUP)
            .map(|g| GroupInfo {
                last_delivered: g.last_delivered_id,
                pending: g.pending as i64,
                // Unknown (Redis cannot tell after some deletions): reported as -1.
                lag: g.lag.map_or(-1, |l| l as i64),
            }))
    }

    fn partition_of(&self, stream: &str) -> u16 {
        (0..self.keyspace.partitions())
            .find(|p| Keyspace::stream(*p) == stream)
            .expect("replies name only the streams asked for")
    }
}

struct GroupInfo {
    last_delivered: String,
    pending: i64,
    lag: i64,
}

fn by_partition(entries: &[RawEntry]) -> Vec<(u16, Vec<&str>)> {
    let mut map: HashMap<u16, Vec<&str>> = HashMap::new();
    for e in entries {
        map.entry(e.partition).or_default().push(&e.entry_id);
    }
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by_key(|(p, _)| *p);
    v
}

/// XCLAIM answers nil for entries deleted meanwhile; drop those before decoding.
fn strip_nils(v: Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|i| !matches!(i, Value::Nil))
                .collect(),
        ),
        other => other,
    }
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

fn id_lt(a: &str, b: &str) -> bool {
    parse_id(a) < parse_id(b)
}

/// The smallest stream id greater than `id`.
fn next_id(id: &str) -> String {
    let (ms, seq) = parse_id(id);
    match seq.checked_add(1) {
        Some(s) => format!("{ms}-{s}"),
        None => format!("{}-0", ms + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_order_numerically() {
        assert!(id_lt("999-5", "1000-0"));
        assert!(id_lt("1000-2", "1000-10"));
        assert!(!id_lt("1000-10", "1000-10"));
        assert_eq!(next_id("1000-9"), "1000-10");
        assert_eq!(next_id("0-0"), "0-1");
    }
}
