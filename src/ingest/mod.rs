//! Admission: one call of `lua/admit.lua` per request resolves the slugs, checks versions,
//! applies the per-signal windows and enqueues every admitted event, atomically.
//!
//! This module builds the script's `KEYS`/`ARGV` from validated events and decodes its reply
//! into a [`Verdict`]; it knows nothing of HTTP.
//!
//! With an `Idempotency-Key` the same script call records the answer (or replays the recorded
//! one): see `lua/admit.lua` and [`Idempotency`].

pub mod windows;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::{Script, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Limits;
use crate::domain::{Event, SchemaVersion, SignalType};
use crate::keyspace::Keyspace;
use crate::redis_pool::{Redis, RedisError};
use crate::stream::entry;

static ADMIT_LUA: &str = include_str!("../../lua/admit.lua");

/// What the script decided for a request.
#[derive(Debug)]
pub enum Verdict {
    /// Distinct slugs, in first-seen order, that are unknown or inactive. Nothing was written.
    NotFound(Vec<String>),
    /// Events that asked for a schema version their signal does not have. Nothing was written.
    BadVersions(Vec<BadVersion>),
    /// The request's Idempotency-Key was used with a different request. Nothing was written.
    KeyReused,
    Admitted(Admitted),
}

/// A request's `Idempotency-Key`, with what identifies the request sent under it.
pub struct Idempotency<'a> {
    /// The key as the client sent it (quotes removed), 1–255 visible ASCII characters.
    pub key: &'a str,
    /// What makes two requests the same: method, path and body (after decompression), hashed
    /// ([`Idempotency::fingerprint`]).
    pub fingerprint: &'a str,
    /// How long the answer is kept for replays.
    pub ttl: Duration,
}

impl Idempotency<'_> {
    /// The fingerprint of a request: SHA-256 of its method, path and body, 128 bits in hex.
    pub fn fingerprint(method: &str, path: &str, body: &[u8]) -> String {
        let mut hash = Sha256::new();
        for part in [method.as_bytes(), path.as_bytes(), body] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        crate::domain::hex(&hash.finalize()[..16])
    }
}

/// The ids of a request's events: UUIDv7s of the receipt time's millisecond, with the event's
/// position in `rand_a` (so ids sort in request order) and 62 bits that make the request's ids
/// its own in `rand_b`. Without a key those bits are random (from the thread's generator: no
/// system call per request). With one they derive from the tenant, the key and the first receipt
/// time, so a replay answers the same ids without storing them, and a key used again after its
/// record expired gets new ones.
fn event_ids(tenant: &str, key: Option<&str>, received_us: i64, count: usize) -> Vec<Uuid> {
    let base: u64 = match key {
        Some(key) => {
            let mut hash = Sha256::new();
            for part in [tenant.as_bytes(), key.as_bytes()] {
                hash.update((part.len() as u64).to_be_bytes());
                hash.update(part);
            }
            hash.update(received_us.to_be_bytes());
            let digest = hash.finalize();
            u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
        }
        None => rand::random(),
    };
    let millis = received_us.div_euclid(1000) as u64;
    (0..count)
        .map(|position| {
            let mut bytes = [0u8; 16];
            bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
            bytes[6..8].copy_from_slice(&(position as u16 & 0x0fff).to_be_bytes());
            // An odd multiplier is a bijection: no two positions share these bits either.
            let spread = base.wrapping_add((position as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            bytes[8..].copy_from_slice(&spread.to_be_bytes());
            uuid::Builder::from_bytes(bytes)
                .with_version(uuid::Version::SortRand)
                .with_variant(uuid::Variant::RFC4122)
                .into_uuid()
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadVersion {
    /// Position of the event in the request.
    pub index: usize,
    pub slug: String,
    pub requested: u32,
    /// How many versions the signal has (the latest version; 0 = no schema).
    pub available: u32,
}

/// The outcome of an admitted request: every event either enqueued or rate limited.
#[derive(Debug)]
pub struct Admitted {
    /// One entry per event, in request order.
    pub events: Vec<Outcome>,
    /// One entry per distinct signal of the request.
    pub signals: Vec<SignalWindow>,
    /// Redis's clock when the script ran.
    pub now: DateTime<Utc>,
    /// When the current window ends.
    pub reset: DateTime<Utc>,
    /// The recorded answer to an earlier request with the same Idempotency-Key: nothing was
    /// enqueued or counted this time.
    pub replayed: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted {
        id: Uuid,
        signal: usize,
        schema_version: Option<u32>,
    },
    RateLimited {
        signal: usize,
    },
}

/// A signal's state in the current window, after this request.
#[derive(Debug)]
pub struct SignalWindow {
    pub id: String,
    pub signal_type: SignalType,
    pub limit: u32,
    pub remaining: u32,
}

/// The admission script and what it needs to build its arguments.
pub struct Admission {
    script: Script,
    keyspace: Keyspace,
    limits: Limits,
    /// Replicas that must confirm a request's writes before it is acknowledged (0: none).
    min_replicas_ack: u32,
}

impl Admission {
    pub fn new(keyspace: Keyspace, limits: Limits, min_replicas_ack: u32) -> Self {
        Admission {
            script: crate::scripts::script(ADMIT_LUA),
            keyspace,
            limits,
            min_replicas_ack,
        }
    }

    /// Runs the script for `events` of `tenant`, received at `received_at`, with the request's
    /// Idempotency-Key if it has one.
    pub async fn admit(
        &self,
        redis: &Redis,
        tenant: &str,
        events: &[Event<'_>],
        received_at: DateTime<Utc>,
        idempotency: Option<&Idempotency<'_>>,
    ) -> Result<Verdict, RedisError> {
        // Distinct slugs in first-seen order; each event refers to its slug by number.
        let mut slug_numbers: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        let mut slugs: Vec<&str> = Vec::new();
        let event_slugs: Vec<usize> = events
            .iter()
            .map(|e| {
                *slug_numbers.entry(e.signal.as_ref()).or_insert_with(|| {
                    slugs.push(e.signal.as_ref());
                    slugs.len() - 1
                })
            })
            .collect();

        // Whole microseconds: the receipt time in the entries and the one ids derive from agree.
        let received_us = received_at.timestamp_micros();
        let received_at = Utc
            .timestamp_micros(received_us)
            .single()
            .unwrap_or(received_at);
        let key = idempotency.map(|i| i.key);
        let ids = event_ids(tenant, key, received_us, events.len());
        let requested: Vec<u32> = events
            .iter()
            .map(|e| match e.version {
                SchemaVersion::Latest => 0,
                SchemaVersion::Exact(v) => v,
            })
            .collect();
        // Per slug: how many events name it, and the highest version they ask for.
        let mut per_slug = vec![(0u32, 0u32); slugs.len()];
        for (&slug, &version) in event_slugs.iter().zip(&requested) {
            per_slug[slug].0 += 1;
            per_slug[slug].1 = per_slug[slug].1.max(version);
        }

        let mut call = self.script.prepare_invoke();
        call.key(self.keyspace.registry(tenant));
        let stream = Keyspace::stream(self.keyspace.partition_of(tenant));
        call.key(&stream);
        call.key(self.keyspace.rate_limits(tenant));
        call.arg(tenant)
            .arg(self.limits.event)
            .arg(self.limits.metric)
            .arg(self.limits.state);
        match idempotency {
            Some(i) => {
                call.key(self.keyspace.idempotency(tenant, i.key));
                call.arg(i.ttl.as_millis().max(1) as u64)
                    .arg(i.fingerprint)
                    .arg(received_us);
            }
            None => {
                call.arg(0).arg("").arg("");
            }
        }
        call.arg(slugs.len());
        for (slug, (count, asked)) in slugs.iter().zip(&per_slug) {
            call.arg(slug).arg(count).arg(asked);
        }
        call.arg(entry::events_field(
            events,
            &event_slugs,
            &requested,
            &ids,
            received_at,
        ));

        let reply: Value = redis.invoke(&call, &stream, self.min_replicas_ack).await?;
        let replay_ids =
            |first_received_us| event_ids(tenant, key, first_received_us, events.len());
        decode(reply, &slugs, &event_slugs, &requested, ids, replay_ids).map_err(|why| {
            RedisError::Command(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from admit.lua",
                why,
            )))
        })
    }
}

/// Decodes the script's reply. `requested` holds each event's requested version (0: latest);
/// `replay_ids` gives the ids of a replayed answer from its first receipt time.
fn decode(
    reply: Value,
    slugs: &[&str],
    event_slugs: &[usize],
    requested: &[u32],
    ids: Vec<Uuid>,
    replay_ids: impl FnOnce(i64) -> Vec<Uuid>,
) -> Result<Verdict, String> {
    let Value::Array(items) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let mut items = items.into_iter();
    let tag = text(items.next())?;
    let ints: Vec<Value> = items.collect();
    match tag.as_str() {
        "notfound" => ints
            .into_iter()
            .map(|v| slug_at(slugs, int(Some(v))? as usize).map(str::to_owned))
            .collect::<Result<_, _>>()
            .map(Verdict::NotFound),
        "badversion" => {
            // Per refused slug its latest version; the events above it are the bad ones.
            let mut latest: Vec<Option<u32>> = vec![None; slugs.len()];
            for pair in ints.chunks(2) {
                let slug = int(pair.first().cloned())? as usize;
                slug_at(slugs, slug)?;
                latest[slug - 1] = Some(int(pair.get(1).cloned())? as u32);
            }
            Ok(Verdict::BadVersions(
                event_slugs
                    .iter()
                    .zip(requested)
                    .enumerate()
                    .filter_map(|(index, (&slug, &asked))| {
                        let available = latest[slug]?;
                        (asked > available).then(|| BadVersion {
                            index,
                            slug: slugs[slug].to_owned(),
                            requested: asked,
                            available,
                        })
                    })
                    .collect(),
            ))
        }
        "conflict" => Ok(Verdict::KeyReused),
        "ok" | "replay" => {
            let replayed = tag == "replay";
            let mut it = ints.into_iter();
            let now_s = int(it.next())?;
            let now_us = int(it.next())?;
            let reset_s = int(it.next())?;
            let ids = if replayed {
                let first: i64 = text(it.next())?
                    .parse()
                    .map_err(|e| format!("recorded receipt time: {e}"))?;
                replay_ids(first)
            } else {
                ids
            };
            let mut signals = Vec::with_capacity(slugs.len());
            let mut latest = Vec::with_capacity(slugs.len());
            let mut admitted = Vec::with_capacity(slugs.len());
            for _ in slugs {
                signals.push(SignalWindow {
                    id: text(it.next())?,
                    signal_type: text(it.next())?.parse()?,
                    limit: int(it.next())? as u32,
                    remaining: int(it.next())? as u32,
                });
                latest.push(int(it.next())? as u32);
                admitted.push(int(it.next())? as u32);
            }
            // The first `admitted` events of each signal, in request order, got in.
            let mut seen = vec![0u32; slugs.len()];
            let events = event_slugs
                .iter()
                .zip(requested)
                .zip(ids)
                .map(|((&signal, &version), id)| {
                    seen[signal] += 1;
                    if seen[signal] <= admitted[signal] {
                        Outcome::Accepted {
                            id,
                            signal,
                            // The version asked for, or the latest for "latest" (0: no schema).
                            schema_version: Some(if version > 0 {
                                version
                            } else {
                                latest[signal]
                            })
                            .filter(|&v| v > 0),
                        }
                    } else {
                        Outcome::RateLimited { signal }
                    }
                })
                .collect::<Vec<_>>();
            let now = Utc
                .timestamp_opt(now_s, (now_us as u32).saturating_mul(1000))
                .single()
                .ok_or("bad TIME")?;
            let reset = Utc.timestamp_opt(reset_s, 0).single().ok_or("bad reset")?;
            Ok(Verdict::Admitted(Admitted {
                events,
                signals,
                now,
                reset,
                replayed,
            }))
        }
        other => Err(format!("unknown reply tag {other:?}")),
    }
}

fn slug_at<'a>(slugs: &[&'a str], number: usize) -> Result<&'a str, String> {
    number
        .checked_sub(1)
        .and_then(|i| slugs.get(i).copied())
        .ok_or_else(|| format!("slug number {number} out of range"))
}

fn int(v: Option<Value>) -> Result<i64, String> {
    match v {
        Some(Value::Int(n)) => Ok(n),
        other => Err(format!("expected an integer, got {other:?}")),
    }
}

fn text(v: Option<Value>) -> Result<String, String> {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8(b).map_err(|e| e.to_string()),
        Some(Value::SimpleString(s)) => Ok(s),
        other => Err(format!("expected a string, got {other:?}")),
    }
}
