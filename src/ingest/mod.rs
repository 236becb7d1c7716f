//! Admission: `lua/admit.lua` resolves the slugs, checks versions,
//! applies the per-signal windows and enqueues every admitted event, atomically.
//!
//! This module builds the script's `KEYS`/`ARGV` from validated events and decodes its reply
//! into a [`Verdict`]; it knows nothing of HTTP.
//!
//! With an `Idempotency-Key` the same script call records the answer (or replays the recorded
//! one): see `lua/admit.lua` and [`Idempotency`].

mod lanes;
pub mod windows;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use redis::{ToRedisArgs, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Limits;
use crate::domain::{Event, SchemaVersion, SignalType};
use crate::keyspace::Keyspace;
use crate::redis_pool::{Redis, RedisError};
use crate::stream::entry;
use lanes::{Lanes, Part};

static ADMIT_LUA: &str = include_str!("../../lua/admit.lua");

/// An events field of at least this many bytes is staged under a key of its own, set just
/// before the call, instead of passed to the script: every byte of a script's arguments costs
/// Redis about 1.3 ns before the script runs, while staging costs a request about the same as
/// 2 KiB of arguments (docs/design.md, "Large requests are staged").
const STAGE_FROM: usize = 4 * 1024;

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
    lanes: Lanes,
    keyspace: Keyspace,
}

impl Admission {
    pub fn new(keyspace: Keyspace, limits: Limits, min_replicas_ack: u32) -> Self {
        Admission {
            lanes: Lanes::new(crate::scripts::script(ADMIT_LUA), limits, min_replicas_ack),
            keyspace,
        }
    }

    /// Runs the script for `events` of `tenant`, received at `received_at`, with the request's
    /// Idempotency-Key if it has one (in a call of its own, or with the partition's other
    /// requests waiting on this thread: [`lanes`]).
    pub async fn admit(
        &self,
        redis: &Redis,
        tenant: &str,
        events: &[Event<'_>],
        received_at: DateTime<Utc>,
        idempotency: Option<&Idempotency<'_>>,
    ) -> Result<Verdict, RedisError> {
        let request = Request::of(events);
        // Whole microseconds: the receipt time in the entries and the one ids derive from agree.
        let received_us = received_at.timestamp_micros();
        let received_at = Utc
            .timestamp_micros(received_us)
            .single()
            .unwrap_or(received_at);
        let key = idempotency.map(|i| i.key);
        let ids = event_ids(tenant, key, received_us, events.len());
        let mut part = self.part(tenant, &request, idempotency, received_us);
        let events_field = entry::events_field(
            events,
            &request.event_slugs,
            &request.requested,
            &ids,
            received_at,
        );
        let partition = self.keyspace.partition_of(tenant);
        if events_field.len() >= STAGE_FROM {
            part.keys[3] = Keyspace::staged(partition, &Uuid::now_v7());
            part.args.push(Vec::new());
            part.staged = Some(events_field);
        } else {
            part.args.push(events_field);
        }
        let reply = self.lanes.call(redis, partition, part).await?;
        let replay_ids =
            |first_received_us| event_ids(tenant, key, first_received_us, events.len());
        decode(reply, &request, ids, replay_ids).map_err(|why| {
            RedisError::Command(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "unexpected reply from admit.lua",
                why,
            )))
        })
    }

    /// The request's keys and every argument but the events (see `lua/admit.lua`).
    fn part(
        &self,
        tenant: &str,
        request: &Request<'_>,
        idempotency: Option<&Idempotency<'_>>,
        received_us: i64,
    ) -> Part {
        let windows = self.keyspace.rate_limits(tenant);
        let record = match idempotency {
            Some(i) => self.keyspace.idempotency(tenant, i.key),
            None => windows.clone(),
        };
        let mut args = Vec::with_capacity(6 + 3 * request.slugs.len());
        fn arg(args: &mut Vec<Vec<u8>>, value: impl ToRedisArgs) {
            value.write_redis_args(args);
        }
        arg(&mut args, tenant);
        match idempotency {
            Some(i) => {
                arg(&mut args, i.ttl.as_millis().max(1) as u64);
                arg(&mut args, i.fingerprint);
                arg(&mut args, received_us);
            }
            None => {
                arg(&mut args, 0);
                arg(&mut args, "");
                arg(&mut args, "");
            }
        }
        arg(&mut args, request.slugs.len());
        for (slug, (count, asked)) in request.slugs.iter().zip(&request.per_slug) {
            arg(&mut args, slug);
            arg(&mut args, count);
            arg(&mut args, asked);
        }
        Part {
            keys: [
                self.keyspace.registry(tenant),
                windows.clone(),
                record,
                windows,
            ],
            args,
            staged: None,
        }
    }
}

/// A request as the script sees it: its distinct slugs, and for each event its slug's number
/// and the version it asks for.
#[derive(Debug, PartialEq, Eq)]
struct Request<'a> {
    /// Distinct slugs in first-seen order.
    slugs: Vec<&'a str>,
    /// Per event: its slug, by position in `slugs`.
    event_slugs: Vec<usize>,
    /// Per event: the schema version asked for (0: the latest).
    requested: Vec<u32>,
    /// Per slug: how many events name it, and the highest version they ask for.
    per_slug: Vec<(u32, u32)>,
}

impl<'a> Request<'a> {
    fn of(events: &'a [Event<'_>]) -> Self {
        let mut numbers: HashMap<&str, usize> = HashMap::with_capacity(events.len());
        let mut slugs: Vec<&str> = Vec::new();
        let event_slugs: Vec<usize> = events
            .iter()
            .map(|e| {
                *numbers.entry(e.signal.as_ref()).or_insert_with(|| {
                    slugs.push(e.signal.as_ref());
                    slugs.len() - 1
                })
            })
            .collect();
        let requested: Vec<u32> = events
            .iter()
            .map(|e| match e.version {
                SchemaVersion::Latest => 0,
                SchemaVersion::Exact(v) => v,
            })
            .collect();
        let mut per_slug = vec![(0u32, 0u32); slugs.len()];
        for (&slug, &version) in event_slugs.iter().zip(&requested) {
            per_slug[slug].0 += 1;
            per_slug[slug].1 = per_slug[slug].1.max(version);
        }
        Request {
            slugs,
            event_slugs,
            requested,
            per_slug,
        }
    }
}

/// Decodes the script's reply; `replay_ids` gives the ids of a replayed answer from its first
/// receipt time. A reply of any other shape is an error, never a panic.
fn decode(
    reply: Value,
    request: &Request<'_>,
    ids: Vec<Uuid>,
    replay_ids: impl FnOnce(i64) -> Vec<Uuid>,
) -> Result<Verdict, String> {
    let Value::Array(items) = reply else {
        return Err(format!("not an array: {reply:?}"));
    };
    let mut items = items.into_iter();
    let tag = text(items.next())?;
    let rest: Vec<Value> = items.collect();
    match tag.as_str() {
        "notfound" => rest
            .into_iter()
            .map(|v| slug_at(&request.slugs, int(Some(v))? as usize).map(str::to_owned))
            .collect::<Result<_, _>>()
            .map(Verdict::NotFound),
        "badversion" => bad_versions(&rest, request).map(Verdict::BadVersions),
        "conflict" => Ok(Verdict::KeyReused),
        "ok" => admitted(rest, request, ids, false).map(Verdict::Admitted),
        "replay" => {
            // After the time and the reset: the first request's receipt time.
            let mut rest = rest;
            let first = (rest.len() > 3).then(|| rest.remove(3));
            let first: i64 = text(first)?
                .parse()
                .map_err(|e| format!("recorded receipt time: {e}"))?;
            admitted(rest, request, replay_ids(first), true).map(Verdict::Admitted)
        }
        other => Err(format!("unknown reply tag {other:?}")),
    }
}

/// The events that asked for more than their signal has, from the refused slugs' latest
/// versions (pairs of slug number and version).
fn bad_versions(pairs: &[Value], request: &Request<'_>) -> Result<Vec<BadVersion>, String> {
    let mut latest: Vec<Option<u32>> = vec![None; request.slugs.len()];
    for pair in pairs.chunks(2) {
        let slug = int(pair.first().cloned())? as usize;
        slug_at(&request.slugs, slug)?;
        latest[slug - 1] = Some(int(pair.get(1).cloned())? as u32);
    }
    Ok(request
        .event_slugs
        .iter()
        .zip(&request.requested)
        .enumerate()
        .filter_map(|(index, (&slug, &asked))| {
            let available = latest[slug]?;
            (asked > available).then(|| BadVersion {
                index,
                slug: request.slugs[slug].to_owned(),
                requested: asked,
                available,
            })
        })
        .collect())
}

/// An admitted (or replayed) request: Redis's time, the window's end, then per slug its id,
/// type, limit, remaining, latest version and how many of its events got in.
fn admitted(
    values: Vec<Value>,
    request: &Request<'_>,
    ids: Vec<Uuid>,
    replayed: bool,
) -> Result<Admitted, String> {
    let mut it = values.into_iter();
    let now_s = int(it.next())?;
    let now_us = int(it.next())?;
    let reset_s = int(it.next())?;
    let slugs = request.slugs.len();
    let mut signals = Vec::with_capacity(slugs);
    let mut latest = Vec::with_capacity(slugs);
    let mut admitted = Vec::with_capacity(slugs);
    for _ in 0..slugs {
        signals.push(SignalWindow {
            id: text(it.next())?,
            signal_type: text(it.next())?.parse()?,
            limit: int(it.next())? as u32,
            remaining: int(it.next())? as u32,
        });
        latest.push(int(it.next())? as u32);
        admitted.push(int(it.next())? as u32);
    }
    let now = Utc
        .timestamp_opt(now_s, (now_us as u32).saturating_mul(1000))
        .single()
        .ok_or("bad TIME")?;
    let reset = Utc.timestamp_opt(reset_s, 0).single().ok_or("bad reset")?;
    Ok(Admitted {
        events: outcomes(request, &admitted, &latest, ids),
        signals,
        now,
        reset,
        replayed,
    })
}

/// Each event's outcome: the first `admitted` events of each signal, in request order, got
/// in, with the version asked for or the signal's latest for "latest" (0: no schema).
fn outcomes(
    request: &Request<'_>,
    admitted: &[u32],
    latest: &[u32],
    ids: Vec<Uuid>,
) -> Vec<Outcome> {
    let mut seen = vec![0u32; request.slugs.len()];
    request
        .event_slugs
        .iter()
        .zip(&request.requested)
        .zip(ids)
        .map(|((&signal, &version), id)| {
            seen[signal] += 1;
            if seen[signal] > admitted[signal] {
                return Outcome::RateLimited { signal };
            }
            let version = if version > 0 { version } else { latest[signal] };
            Outcome::Accepted {
                id,
                signal,
                schema_version: Some(version).filter(|&v| v > 0),
            }
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    /// Events of slugs `a`, `b`, `a`, `a`, the second `a` asking for version 2.
    fn events() -> Vec<Event<'static>> {
        const BODY: &str = r#"{"events":[
            {"signal":"a","identity":{"type":"deal","id":"1"}},
            {"signal":"b","identity":{"type":"deal","id":"2"}},
            {"signal":"a","version":2,"identity":{"type":"deal","id":"3"}},
            {"signal":"a","identity":{"type":"deal","id":"4"}}]}"#;
        crate::domain::parse_batch(BODY).unwrap()
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::now_v7()).collect()
    }

    #[test]
    fn a_request_names_each_slug_once_in_first_seen_order() {
        let events = events();
        let request = Request::of(&events);
        assert_eq!(request.slugs, ["a", "b"]);
        assert_eq!(request.event_slugs, [0, 1, 0, 0]);
        assert_eq!(request.requested, [0, 0, 2, 0]);
        assert_eq!(request.per_slug, [(3, 2), (1, 0)]);
    }

    #[test]
    fn refusals_name_slugs_and_the_events_above_their_latest_version() {
        let events = events();
        let request = Request::of(&events);
        let no_replay = |_| unreachable!();
        let reply = Value::Array(vec![bulk("notfound"), Value::Int(2)]);
        match decode(reply, &request, ids(4), no_replay).unwrap() {
            Verdict::NotFound(slugs) => assert_eq!(slugs, ["b"]),
            other => panic!("{other:?}"),
        }
        let reply = Value::Array(vec![bulk("badversion"), Value::Int(1), Value::Int(1)]);
        match decode(reply, &request, ids(4), no_replay).unwrap() {
            Verdict::BadVersions(bad) => assert_eq!(
                bad,
                [BadVersion {
                    index: 2,
                    slug: "a".into(),
                    requested: 2,
                    available: 1
                }]
            ),
            other => panic!("{other:?}"),
        }
        let reply = Value::Array(vec![bulk("conflict")]);
        assert!(matches!(
            decode(reply, &request, ids(4), no_replay),
            Ok(Verdict::KeyReused)
        ));
    }

    /// `ok`: Redis's time, the reset, then per slug id, type, limit, remaining, latest, admitted.
    fn ok_reply(tag: &str, received: Option<&str>) -> Value {
        let mut items = vec![
            bulk(tag),
            Value::Int(1_764_000_000),
            Value::Int(250_000),
            Value::Int(1_764_000_060),
        ];
        items.extend(received.map(bulk));
        for v in [bulk("sig_a"), bulk("metric"), Value::Int(2), Value::Int(0)] {
            items.push(v);
        }
        items.extend([Value::Int(3), Value::Int(2)]);
        items.extend([
            bulk("sig_b"),
            bulk("event"),
            Value::Int(100),
            Value::Int(99),
        ]);
        items.extend([Value::Int(0), Value::Int(1)]);
        Value::Array(items)
    }

    #[test]
    fn the_first_admitted_events_of_each_signal_get_in_with_their_versions() {
        let events = events();
        let request = Request::of(&events);
        let sent = ids(4);
        let verdict = decode(
            ok_reply("ok", None),
            &request,
            sent.clone(),
            |_| unreachable!(),
        );
        let Ok(Verdict::Admitted(a)) = verdict else {
            panic!("{verdict:?}");
        };
        assert!(!a.replayed);
        assert_eq!(a.now.timestamp_micros(), 1_764_000_000_250_000);
        assert_eq!(a.reset.timestamp(), 1_764_000_060);
        assert_eq!((a.signals[0].limit, a.signals[0].remaining), (2, 0));
        let accepted = |id, signal, schema_version| Outcome::Accepted {
            id,
            signal,
            schema_version,
        };
        assert_eq!(
            a.events,
            [
                accepted(sent[0], 0, Some(3)),
                accepted(sent[1], 1, None),
                accepted(sent[2], 0, Some(2)),
                Outcome::RateLimited { signal: 0 },
            ]
        );
    }

    #[test]
    fn a_replay_answers_the_ids_of_its_first_receipt() {
        let events = events();
        let request = Request::of(&events);
        let first = ids(4);
        let verdict = decode(
            ok_reply("replay", Some("1763999999000001")),
            &request,
            ids(4),
            |received| {
                assert_eq!(received, 1_763_999_999_000_001);
                first.clone()
            },
        );
        let Ok(Verdict::Admitted(a)) = verdict else {
            panic!("{verdict:?}");
        };
        assert!(a.replayed);
        assert!(matches!(a.events[0], Outcome::Accepted { id, .. } if id == first[0]));
    }

    #[test]
    fn replies_of_another_shape_are_errors_not_panics() {
        let events = events();
        let request = Request::of(&events);
        let short = match ok_reply("ok", None) {
            Value::Array(mut items) => {
                items.truncate(9);
                Value::Array(items)
            }
            _ => unreachable!(),
        };
        for reply in [
            Value::Nil,
            Value::Array(vec![]),
            Value::Array(vec![bulk("maybe")]),
            Value::Array(vec![bulk("notfound"), Value::Int(0)]),
            Value::Array(vec![bulk("notfound"), Value::Int(3)]),
            Value::Array(vec![bulk("badversion"), Value::Int(9), Value::Int(1)]),
            Value::Array(vec![bulk("badversion"), Value::Int(1)]),
            Value::Array(vec![bulk("ok"), bulk("soon")]),
            short,
            ok_reply("replay", Some("yesterday")),
        ] {
            let shown = format!("{reply:?}");
            assert!(
                decode(reply, &request, ids(4), |_| ids(4)).is_err(),
                "{shown}"
            );
        }
    }
}
