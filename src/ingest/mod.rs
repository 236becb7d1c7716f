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
use redis::{RedisWrite, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Limits;
use crate::domain::{Event, SchemaVersion, SignalType};
use crate::keyspace::{Keyspace, TenantKeys};
use crate::redis_pool::{Redis, RedisError};
use crate::stream::entry;
use lanes::{Lanes, Part, Staged};

static ADMIT_LUA: &str = include_str!("../../lua/admit.lua");

/// A request whose events field is sized at this many bytes or more (`entry::events_field_size`,
/// judged before it is written) has its events staged under a key of their own, set just before
/// the call, instead of passed to the script: every byte of a script's arguments costs Redis
/// about 1.3 ns before the script runs, while staging costs a request about the same as 2 KiB of
/// arguments (docs/design.md, "Large requests are staged").
const STAGE_FROM: usize = 4 * 1024;

/// Between the parts of the script's answer to a request: each answer is one text (see
/// `lua/admit.lua`, "Reply"), which Redis sends and the api reads at a fraction of the cost of
/// an array of values.
pub const ANSWER_SEP: char = ' ';

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

    /// Runs the script for `events` of `tenant` (whose keys are `keys`), received at
    /// `received_at`, with the request's Idempotency-Key if it has one (in a call of its own, or
    /// with the partition's other requests waiting on this thread: [`lanes`]).
    pub async fn admit(
        &self,
        redis: &Redis,
        tenant: &str,
        keys: &TenantKeys,
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
        let mut part = self.part(tenant, keys, &request, idempotency, received_us);
        let partition = keys.partition;
        let (slugs, requested) = (&request.event_slugs, &request.requested);
        let size = entry::events_field_size(events);
        if size >= STAGE_FROM {
            let key = Keyspace::staged(partition, &Uuid::now_v7()).into();
            part.staged = Some(Staged::new(key, size, |set| {
                let mut out = set.bufmut_for_next_arg(size);
                entry::write_events_field(&mut out, events, slugs, requested, &ids, received_at);
            }));
        } else {
            part.events = entry::events_field(events, slugs, requested, &ids, received_at);
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
        keys: &TenantKeys,
        request: &Request<'_>,
        idempotency: Option<&Idempotency<'_>>,
        received_us: i64,
    ) -> Part {
        // Every argument is a few bytes but the tenant and the slugs.
        let slug_bytes: usize = request.slugs.iter().map(|s| s.len()).sum();
        let mut args = redis::Cmd::with_capacity(
            5 + 3 * request.slugs.len(),
            tenant.len() + slug_bytes + 64 + 10 * request.slugs.len(),
        );
        args.arg(tenant);
        match idempotency {
            Some(i) => {
                args.arg(i.ttl.as_millis().max(1) as u64)
                    .arg(i.fingerprint)
                    .arg(received_us);
            }
            None => {
                args.arg(0);
            }
        }
        args.arg(request.slugs.len());
        for (slug, (count, asked)) in request.slugs.iter().zip(&request.per_slug) {
            args.arg(slug).arg(count).arg(asked);
        }
        Part {
            tenant_keys: [keys.registry.clone(), keys.windows.clone()],
            record: idempotency.map(|i| self.keyspace.idempotency(tenant, i.key).into()),
            args,
            events: Vec::new(),
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

/// Decodes the script's answer to a request; `replay_ids` gives the ids of a replayed answer
/// from its first receipt time. An answer of any other shape is an error, never a panic.
fn decode(
    reply: Value,
    request: &Request<'_>,
    ids: Vec<Uuid>,
    replay_ids: impl FnOnce(i64) -> Vec<Uuid>,
) -> Result<Verdict, String> {
    let answer = match reply {
        Value::BulkString(b) => String::from_utf8(b).map_err(|e| e.to_string())?,
        Value::SimpleString(s) => s,
        other => return Err(format!("not an answer: {other:?}")),
    };
    let (tag, rest) = answer.split_once(ANSWER_SEP).unwrap_or((&answer, ""));
    let parts = (!rest.is_empty())
        .then(|| rest.split(ANSWER_SEP))
        .into_iter()
        .flatten();
    match tag {
        "notfound" => parts
            .map(|n| slug_at(&request.slugs, number(n)?).map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .and_then(|slugs| match slugs.is_empty() {
                true => Err("notfound names no slug".to_owned()),
                false => Ok(Verdict::NotFound(slugs)),
            }),
        "badversion" => bad_versions(parts, request).map(Verdict::BadVersions),
        "conflict" if rest.is_empty() => Ok(Verdict::KeyReused),
        "ok" => admitted(rest, false, request, ids).map(Verdict::Admitted),
        "replay" => {
            // After the time and the reset: the first request's receipt time.
            let received = rest.split(ANSWER_SEP).nth(3).unwrap_or_default();
            let first: i64 = received
                .parse()
                .map_err(|e| format!("recorded receipt time {received:?}: {e}"))?;
            admitted(rest, true, request, replay_ids(first)).map(Verdict::Admitted)
        }
        _ => Err(format!("unexpected answer {answer:?}")),
    }
}

/// The events that asked for more than their signal has, from the refused slugs' latest
/// versions (pairs of slug number and version).
fn bad_versions<'p>(
    mut parts: impl Iterator<Item = &'p str>,
    request: &Request<'_>,
) -> Result<Vec<BadVersion>, String> {
    let mut latest: Vec<Option<u32>> = vec![None; request.slugs.len()];
    while let Some(slug) = parts.next() {
        let slug = number(slug)?;
        slug_at(&request.slugs, slug)?;
        let version = parts.next().ok_or("a slug without its latest version")?;
        latest[slug - 1] = Some(number(version)?);
    }
    let bad: Vec<BadVersion> = request
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
        .collect();
    match bad.is_empty() {
        true => Err("badversion names no event above its version".to_owned()),
        false => Ok(bad),
    }
}

/// An admitted (or replayed) request's answer after its tag:
/// Redis's time, the window's end, [the receipt time,] the entry's signals (id, type, latest
/// version and how many of its events got in, per slug), then per slug its limit and remaining.
fn admitted(
    rest: &str,
    replayed: bool,
    request: &Request<'_>,
    ids: Vec<Uuid>,
) -> Result<Admitted, String> {
    let slugs = request.slugs.len();
    let head = if replayed { 4 } else { 3 };
    let mut front = rest.splitn(head + 1, ANSWER_SEP);
    let now_s: i64 = number(front.next().unwrap_or_default())?;
    let now_us: u32 = number(front.next().unwrap_or_default())?;
    let reset_s: i64 = number(front.next().unwrap_or_default())?;
    let tail = front.nth(head - 3).ok_or("an answer without its signals")?;
    // The signals, then two numbers per slug: read from the end.
    let mut back: Vec<&str> = tail.rsplitn(2 * slugs + 1, ANSWER_SEP).collect();
    if back.len() != 2 * slugs + 1 {
        return Err(format!("expected {slugs} signals in {tail:?}"));
    }
    back.reverse();
    let described = entry::EntrySignal::parse_list(back[0])?;
    if described.len() != slugs {
        return Err(format!("expected {slugs} signals in {:?}", back[0]));
    }
    let mut signals = Vec::with_capacity(slugs);
    let mut latest = Vec::with_capacity(slugs);
    let mut admitted = Vec::with_capacity(slugs);
    for (signal, window) in described.into_iter().zip(back[1..].chunks(2)) {
        signals.push(SignalWindow {
            signal_type: signal.signal_type.parse()?,
            id: signal.id,
            limit: number(window[0])?,
            remaining: number(window[1])?,
        });
        latest.push(signal.latest);
        admitted.push(signal.admitted);
    }
    let now = Utc
        .timestamp_opt(now_s, now_us.saturating_mul(1000))
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

/// A number of the answer.
fn number<T: std::str::FromStr>(part: &str) -> Result<T, String> {
    part.parse()
        .map_err(|_| format!("expected a number, got {part:?}"))
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
        let reply = bulk("notfound 2");
        match decode(reply, &request, ids(4), no_replay).unwrap() {
            Verdict::NotFound(slugs) => assert_eq!(slugs, ["b"]),
            other => panic!("{other:?}"),
        }
        let reply = bulk("badversion 1 1");
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
        let reply = bulk("conflict");
        assert!(matches!(
            decode(reply, &request, ids(4), no_replay),
            Ok(Verdict::KeyReused)
        ));
    }

    /// `ok`: Redis's time, the reset, the signals (id, type, latest, admitted), then per slug
    /// limit and remaining.
    fn ok_reply(tag: &str, received: Option<&str>) -> String {
        let received = received.map(|r| format!("{r} ")).unwrap_or_default();
        format!(
            "{tag} 1764000000 250000 1764000060 {received}sig_a,metric,3,2;sig_b,event,0,1 2 0 100 99"
        )
    }

    #[test]
    fn the_first_admitted_events_of_each_signal_get_in_with_their_versions() {
        let events = events();
        let request = Request::of(&events);
        let sent = ids(4);
        let verdict = decode(
            bulk(&ok_reply("ok", None)),
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
            bulk(&ok_reply("replay", Some("1763999999000001"))),
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
        let ok = ok_reply("ok", None);
        for reply in [
            Value::Nil,
            Value::Array(vec![bulk("ok")]),
            Value::Int(1),
            bulk(""),
            bulk("maybe"),
            bulk("notfound"),
            bulk("notfound 0"),
            bulk("notfound 3"),
            bulk("notfound x"),
            bulk("badversion 9 1"),
            bulk("badversion 1"),
            bulk("badversion 1 7"),
            bulk("conflict 1"),
            bulk("unstaged"),
            bulk("ok soon"),
            bulk(&ok[..ok.len() - 3]),
            bulk(&ok.replace(";sig_b,event,0,1", "")),
            bulk(&ok.replace("metric", "gauge")),
            bulk(&ok.replace("250000", "-1")),
            bulk(&format!("{ok} 7")),
            bulk(&ok_reply("replay", Some("yesterday"))),
            bulk(&ok_reply("replay", None)),
        ] {
            let shown = format!("{reply:?}");
            assert!(
                decode(reply, &request, ids(4), |_| ids(4)).is_err(),
                "{shown}"
            );
        }
    }
}
