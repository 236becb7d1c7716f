//! The stream entry format: the api writes it (with `lua/admit.lua`), the worker reads it.
//!
//! One entry holds every event one request admitted (all of one tenant, so of one partition),
//! so the admission script does a handful of commands whatever the batch size, and never looks
//! inside the events. Three fields:
//!
//! - `t`: the tenant id;
//! - `s`: the request's distinct signals, in the order the events first name them, joined by
//!   `;`, each `<signal id>,<signal type>,<latest schema version, 0 = none>,<admitted>`, set by
//!   the admission script; `admitted` is how many of the signal's events the rate limit let in;
//! - `b`: a JSON array of the request's events, written by the api before admission, each
//!   [`StreamEvent`] with `n` (its signal's position in `s`, from 1) and `v` (the schema version
//!   asked for, 0 = latest):
//!
//! ```json
//! [{"n":1,"v":0,"id":"0193…","identity_type":"account","identity_id":"acc-1","data":{...},
//!   "occurred_at":"2026-11-26T10:15:00.000000Z","received_at":"2026-11-26T10:15:00.123456Z",
//!   "reference":"evt-001"}, …]
//! ```
//!
//! An event is admitted when it is among the first `admitted` events of its signal in the
//! array (the limit admits in request order); the others were rate limited and are skipped.
//!
//! A large request's entry has `r` in place of `b`: the key its `b` text is staged under
//! (`keyspace::Keyspace::staged`), so the events never pass through the admission script, which
//! costs Redis about 1.3 ns per byte of its arguments (docs/design.md, "Large requests are
//! staged"). The worker reads the text back with the entry ([`STAGED`]).
//!
//! One event alone has a layout of its own, two fields: a dead letter of one event of an entry
//! is kept and replayed in it, and entries written before requests became entries are read in
//! it too:
//!
//! - `m`: `<tenant>|<signal id>|<signal type>|<schema version, 0 = none>` ([`Meta`]);
//! - `e`: one [`StreamEvent`] (without `n` and `v`).

use std::borrow::Cow;

use bytes::BufMut;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::{Event, SignalType};
use crate::json;

/// The tenant field of an entry.
pub const TENANT: &str = "t";
/// The signals field of an entry.
pub const SIGNALS: &str = "s";
/// The events field of an entry.
pub const EVENTS: &str = "b";
/// The field naming the key that holds a large request's events field.
pub const STAGED: &str = "r";
/// The meta field of a one-event entry.
pub const META: &str = "m";
/// The event field of a one-event entry.
pub const EVENT: &str = "e";

/// One event as entries carry it.
#[derive(Debug, Serialize)]
pub struct StreamEvent<'a> {
    /// The position of the event's signal in the entry's `s` field, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    /// The schema version asked for (0: the latest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<u32>,
    /// The id returned to the client.
    pub id: Uuid,
    pub identity_type: &'a str,
    pub identity_id: &'a str,
    /// The client's JSON object, copied through verbatim.
    pub data: &'a RawValue,
    pub occurred_at: Cow<'a, str>,
    pub received_at: &'a str,
    pub reference: Option<&'a str>,
}

/// A time as entries carry it: RFC 3339 in UTC with microseconds (PostgreSQL's precision).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl<'a> StreamEvent<'a> {
    /// `received` is the request's receipt time, formatted once by [`timestamp`] for all its
    /// events; it is also the time of an event that gives none.
    pub fn from_event(id: Uuid, event: &'a Event<'a>, received: &'a str) -> Self {
        let occurred_at = match event.timestamp {
            Some(t) => Cow::Owned(timestamp(t.with_timezone(&Utc))),
            None => Cow::Borrowed(received),
        };
        StreamEvent {
            n: None,
            v: None,
            id,
            identity_type: &event.identity_type,
            identity_id: &event.identity_id,
            data: event.data,
            occurred_at,
            received_at: received,
            reference: event.reference.as_deref(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("strings and raw JSON always serialize")
    }
}

/// An entry's `b` field: the request's events, each with its signal's number (`event_slugs`,
/// from 0) and the version it asks for, in one buffer: the text serde writes for each
/// [`StreamEvent`], written by [`crate::json`] (no escaping pass over what needs none).
pub fn events_field(
    events: &[Event<'_>],
    event_slugs: &[usize],
    requested: &[u32],
    ids: &[Uuid],
    received_at: DateTime<Utc>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(events_field_size(events));
    write_events_field(&mut out, events, event_slugs, requested, ids, received_at);
    out
}

/// The room the events field of `events` is given, and the size staging is judged by: the fixed
/// text of an event is under 250 bytes, and its own texts come on top. Texts that need escapes
/// can make the field longer; the buffer then grows.
pub fn events_field_size(events: &[Event<'_>]) -> usize {
    let each: usize = events
        .iter()
        .map(|e| {
            let reference = e.reference.as_deref().map_or(0, str::len);
            250 + e.identity_type.len() + e.identity_id.len() + e.data.get().len() + reference
        })
        .sum();
    each + 2
}

/// Writes [`events_field`] into `out`: a buffer of its own, or the argument of the command that
/// stages it (no copy of tens of kilobytes on the way to Redis).
pub fn write_events_field(
    out: &mut impl BufMut,
    events: &[Event<'_>],
    event_slugs: &[usize],
    requested: &[u32],
    ids: &[Uuid],
    received_at: DateTime<Utc>,
) {
    // The receipt time's JSON text, made once for every event.
    let mut received = Vec::with_capacity(32);
    json::string(&mut received, &timestamp(received_at));
    let items = events.iter().zip(event_slugs).zip(requested).zip(ids);
    json::array(out, items, |out, (((event, &slug), &version), id)| {
        out.put_slice(b"{\"n\":");
        json::number(out, slug as u64 + 1);
        out.put_slice(b",\"v\":");
        json::number(out, version);
        out.put_slice(b",\"id\":");
        json::uuid(out, id);
        out.put_slice(b",\"identity_type\":");
        json::string(out, &event.identity_type);
        out.put_slice(b",\"identity_id\":");
        json::string(out, &event.identity_id);
        out.put_slice(b",\"data\":");
        out.put_slice(event.data.get().as_bytes());
        out.put_slice(b",\"occurred_at\":");
        match event.timestamp {
            Some(t) => json::string(out, &timestamp(t.with_timezone(&Utc))),
            None => out.put_slice(&received),
        }
        out.put_slice(b",\"received_at\":");
        out.put_slice(&received);
        out.put_slice(b",\"reference\":");
        json::optional_string(out, event.reference.as_deref());
        out.put_u8(b'}');
    });
}

/// A stream entry as the worker reads it back.
#[derive(Debug, Clone)]
pub struct StreamEntry {
    pub id: Uuid,
    pub tenant: String,
    pub signal: String,
    pub signal_type: SignalType,
    /// Resolved schema version; `None` when the signal had no schema.
    pub schema_version: Option<u32>,
    pub identity_type: String,
    pub identity_id: String,
    /// The client's JSON object, verbatim.
    pub data: Box<RawValue>,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub reference: Option<String>,
}

#[derive(serde::Deserialize)]
struct OwnedStreamEvent {
    /// In a many-event entry: the event's signal (from 1) and the version it asked for.
    #[serde(default)]
    n: Option<usize>,
    #[serde(default)]
    v: Option<u32>,
    id: String,
    identity_type: String,
    identity_id: String,
    data: Box<RawValue>,
    occurred_at: String,
    received_at: String,
    reference: Option<String>,
}

/// Why an entry cannot be read. Such an entry can never be stored: it is dead-lettered at once.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BadEntry(String);

impl From<String> for BadEntry {
    fn from(reason: String) -> Self {
        BadEntry(reason)
    }
}

impl From<&str> for BadEntry {
    fn from(reason: &str) -> Self {
        BadEntry(reason.to_owned())
    }
}

/// The parts of a one-event entry's `m` field:
/// `<tenant>|<signal id>|<signal type>|<resolved schema version, 0 = none>`.
pub struct Meta<'a> {
    pub tenant: &'a str,
    pub signal: &'a str,
    pub signal_type: &'a str,
    pub version: u32,
}

impl<'a> Meta<'a> {
    /// Between the parts.
    pub const SEP: char = '|';

    /// The parts of `m`; `None` when it is not four parts, or the version is not a number.
    pub fn parse(m: &'a str) -> Option<Self> {
        let mut parts = m.split(Self::SEP);
        let meta = Meta {
            tenant: parts.next()?,
            signal: parts.next()?,
            signal_type: parts.next()?,
            version: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(meta)
    }
}

impl std::fmt::Display for Meta<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = Self::SEP;
        write!(
            f,
            "{}{sep}{}{sep}{}{sep}{}",
            self.tenant, self.signal, self.signal_type, self.version
        )
    }
}

/// One event of an entry, as the worker takes it.
#[derive(Debug)]
pub struct EntryEvent {
    /// Its position in the entry (0 for a one-event entry).
    pub position: usize,
    /// The event, or why it cannot be read (it is then dead-lettered alone).
    pub event: Result<StreamEntry, BadEntry>,
    /// The event as a one-event entry's fields (`m`, `e`): what a dead letter of it keeps, and
    /// what replaying that puts back on the stream (for an event whose signal cannot be read,
    /// `m` names only the tenant). `None` for an entry that is one event already: the entry
    /// itself is that.
    pub alone: Option<[(&'static str, String); 2]>,
}

impl StreamEntry {
    /// Every admitted event of an entry, each decoded on its own, so that one bad event does
    /// not spoil its neighbours. An error when the entry as a whole cannot be read.
    pub fn decode_all(field: impl Fn(&str) -> Option<String>) -> Result<Vec<EntryEvent>, BadEntry> {
        let Some(tenant) = field(TENANT) else {
            // The one-event layout.
            return Ok(vec![EntryEvent {
                position: 0,
                event: Self::decode(field),
                alone: None,
            }]);
        };
        let signals = field(SIGNALS).ok_or("entry has no s field")?;
        let signals = EntrySignal::parse_list(&signals)?;
        let events = field(EVENTS).ok_or_else(|| match field(STAGED) {
            Some(key) => format!("the events staged for it under {key} are gone"),
            None => "entry has no b field".to_owned(),
        })?;
        let events: Vec<&RawValue> =
            serde_json::from_str(&events).map_err(|e| format!("bad b field: {e}"))?;
        let mut seen = vec![0u32; signals.len()];
        let mut out = Vec::with_capacity(events.len());
        for (position, raw) in events.into_iter().enumerate() {
            let e = raw.get().to_owned();
            // Each event is parsed once: its signal and version come with the rest of it.
            let parsed = serde_json::from_str::<OwnedStreamEvent>(&e);
            let numbers = parsed.as_ref().ok().and_then(|p| Some((p.n?, p.v?)));
            let Some((index, version)) = numbers
                .filter(|(n, _)| (1..=signals.len()).contains(n))
                .map(|(n, v)| (n - 1, v))
            else {
                // Its signal is unknown, so whether it was admitted is too: kept, as it is.
                let reason = match parsed {
                    Err(why) => format!("bad event: {why}"),
                    Ok(_) => "event without a valid n or v".to_owned(),
                };
                let unplaced = Meta {
                    tenant: &tenant,
                    signal: "",
                    signal_type: "",
                    version: 0,
                };
                out.push(EntryEvent {
                    position,
                    event: Err(BadEntry(reason)),
                    alone: Some([(META, unplaced.to_string()), (EVENT, e)]),
                });
                continue;
            };
            let signal = &signals[index];
            seen[index] += 1;
            if seen[index] > signal.admitted {
                continue; // rate limited
            }
            let meta = Meta {
                tenant: &tenant,
                signal: &signal.id,
                signal_type: &signal.signal_type,
                version: if version > 0 { version } else { signal.latest },
            };
            let event = parsed
                .map_err(|why| BadEntry(format!("bad e field: {why}")))
                .and_then(|parsed| Self::from_parts(&meta, parsed));
            out.push(EntryEvent {
                position,
                event,
                alone: Some([(META, meta.to_string()), (EVENT, e)]),
            });
        }
        Ok(out)
    }

    /// Decodes a one-event entry's fields; the error says what is wrong.
    pub fn decode(field: impl Fn(&str) -> Option<String>) -> Result<Self, BadEntry> {
        let m = field(META).ok_or("entry has no m field")?;
        let e = field(EVENT).ok_or("entry has no e field")?;
        let meta = Meta::parse(&m).ok_or_else(|| format!("bad m field {m:?}"))?;
        let event: OwnedStreamEvent =
            serde_json::from_str(&e).map_err(|e| format!("bad e field: {e}"))?;
        Self::from_parts(&meta, event)
    }

    /// An event from its signal and tenant and its parsed JSON.
    fn from_parts(meta: &Meta<'_>, event: OwnedStreamEvent) -> Result<Self, BadEntry> {
        let version = meta.version;
        let time = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("bad timestamp {s:?}: {e}"))
        };
        Ok(StreamEntry {
            id: Uuid::parse_str(&event.id).map_err(|e| format!("bad id: {e}"))?,
            tenant: meta.tenant.to_owned(),
            signal: meta.signal.to_owned(),
            signal_type: meta.signal_type.parse()?,
            schema_version: (version > 0).then_some(version),
            identity_type: event.identity_type,
            identity_id: event.identity_id,
            occurred_at: time(&event.occurred_at)?,
            received_at: time(&event.received_at)?,
            data: event.data,
            reference: event.reference,
        })
    }
}

/// One signal of an entry's `s` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntrySignal {
    pub id: String,
    pub signal_type: String,
    /// Its latest schema version when admitted (0: none), for events that asked for the latest.
    pub latest: u32,
    /// How many of its events (the first ones in the entry) were admitted.
    pub admitted: u32,
}

impl EntrySignal {
    /// Between the parts of one signal.
    pub const SEP: char = ',';
    /// Between the signals of an `s` field.
    pub const LIST_SEP: char = ';';

    /// The signals of an `s` field, in order.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, String> {
        s.split(Self::LIST_SEP).map(str::parse).collect()
    }
}

impl std::fmt::Display for EntrySignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = Self::SEP;
        write!(
            f,
            "{}{sep}{}{sep}{}{sep}{}",
            self.id, self.signal_type, self.latest, self.admitted
        )
    }
}

impl std::str::FromStr for EntrySignal {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad s field {s:?}");
        let mut parts = s.split(Self::SEP);
        let mut next = || parts.next().ok_or_else(bad);
        let signal = EntrySignal {
            id: next()?.to_owned(),
            signal_type: next()?.to_owned(),
            latest: next()?.parse().map_err(|_| bad())?,
            admitted: next()?.parse().map_err(|_| bad())?,
        };
        match parts.next() {
            None => Ok(signal),
            Some(_) => Err(bad()),
        }
    }
}

/// The event id in an `e` field, for naming entries that do not decode whole.
pub fn event_id_of(e: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: String,
    }
    serde_json::from_str::<IdOnly>(e).ok().map(|i| i.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_single;

    #[test]
    fn what_the_api_writes_the_worker_reads() {
        let body = r#"{"signal":"s","identity":{"type":"deal","id":"d-1"},"data":{"value":3},"timestamp":"2026-01-02T03:04:05.123456789+02:00","reference":"r"}"#;
        let event = parse_single(body).unwrap();
        let received = Utc::now();
        let id = Uuid::now_v7();
        let json = StreamEvent::from_event(id, &event, &timestamp(received)).to_json();
        assert_eq!(event_id_of(&json), Some(id.to_string()));
        let fields = [("m", "ten_x|sig_x|metric|2".to_owned()), ("e", json)];
        let entry =
            StreamEntry::decode(|n| fields.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
                .unwrap();
        assert_eq!(entry.id, id);
        assert_eq!(entry.tenant, "ten_x");
        assert_eq!(entry.signal, "sig_x");
        assert_eq!(entry.identity_type, "deal");
        assert_eq!(entry.schema_version, Some(2));
        assert_eq!(entry.data.get(), r#"{"value":3}"#);
        assert_eq!(
            entry.occurred_at.to_rfc3339(),
            "2026-01-02T01:04:05.123456+00:00"
        );
        assert_eq!(
            entry.received_at.timestamp_micros(),
            received.timestamp_micros()
        );
        assert!(StreamEntry::decode(|_| None).is_err());
        assert!(Meta::parse("a|b|c").is_none() && Meta::parse("a|b|c|d|e").is_none());
    }

    #[test]
    fn the_events_field_is_the_text_serde_writes_for_each_event() {
        let body = r#"{"events":[
            {"signal":"a","identity":{"type":"deal","id":"d \"1\" \\ \t é"},"data":{"x":"\n","y":[1,2.5]},"reference":"r\u0001"},
            {"signal":"b","identity":{"type":"my_type-2","id":"😀"},"timestamp":"2026-01-02T03:04:05.123456789+02:00"},
            {"signal":"a","identity":{"type":"lead","id":"l"},"data":{},"reference":"</script>"}
        ]}"#;
        let events = crate::domain::parse_batch(body).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let (slugs, versions) = ([0, 1, 0], [0, 7, u32::MAX]);
        let received = Utc::now();
        let b = events_field(&events, &slugs, &versions, &ids, received);
        let received = timestamp(received);
        let expected: Vec<String> = (0..3)
            .map(|i| {
                let mut event = StreamEvent::from_event(ids[i], &events[i], &received);
                event.n = Some(slugs[i] + 1);
                event.v = Some(versions[i]);
                event.to_json()
            })
            .collect();
        assert_eq!(
            String::from_utf8(b).unwrap(),
            format!("[{}]", expected.join(","))
        );
    }

    #[test]
    fn a_many_event_entry_decodes_each_event_alone_and_skips_the_limited() {
        let body = r#"{"events":[{"signal":"a","identity":{"type":"deal","id":"1"}},{"signal":"a","identity":{"type":"deal","id":"2"}},{"signal":"b","identity":{"type":"deal","id":"3"}}]}"#;
        let events = crate::domain::parse_batch(body).unwrap();
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let b = events_field(&events, &[0, 0, 1], &[0, 0, 2], &ids, Utc::now());
        let mut b: Vec<serde_json::Value> = serde_json::from_slice(&b).unwrap();
        // The third event loses its signal number: it cannot be placed, so it is kept alone.
        b[2].as_object_mut().unwrap().remove("n");
        let fields = [
            (TENANT, "ten_x".to_owned()),
            // Signal a: one of its two events admitted; signal b: its one event.
            (SIGNALS, "sig_a,event,3,1;sig_b,state,0,1".to_owned()),
            (EVENTS, serde_json::Value::Array(b).to_string()),
        ];
        let decoded = StreamEntry::decode_all(|n| {
            fields.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone())
        })
        .unwrap();
        assert_eq!(decoded.len(), 2, "the limited event is skipped");
        let first = decoded[0].event.as_ref().unwrap();
        assert_eq!((first.id, first.schema_version), (ids[0], Some(3)));
        assert_eq!(first.signal, "sig_a");
        assert_eq!(decoded[1].position, 2);
        assert!(decoded[1].event.is_err());
        let alone = decoded[1]
            .alone
            .as_ref()
            .expect("dead-lettered alone, not with its entry");
        assert!(alone[0].1.starts_with("ten_x|") && alone[1].1.contains(&ids[2].to_string()));
    }
}
