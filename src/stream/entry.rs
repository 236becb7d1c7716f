//! The stream entry format: the api writes it (with `lua/admit.lua`), the worker reads it.
//!
//! An entry has two fields, few so that `XADD` inside the admission script stays cheap:
//!
//! - `m`: `<tenant>|<signal id>|<signal type>|<schema version>`, set by the admission script
//!   (the version resolved from "latest"; 0 when the signal has no schema);
//! - `e`: this JSON object, built by the api:
//!
//! ```json
//! {"id":"0193…","identity_type":"account","identity_id":"acc-1","data":{...},
//!  "occurred_at":"2026-11-26T10:15:00.000000Z","received_at":"2026-11-26T10:15:00.123456Z",
//!  "reference":"evt-001"}
//! ```

use std::borrow::Cow;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::domain::{Event, SignalType};

/// The meta field of an entry.
pub const META: &str = "m";
/// The event field of an entry.
pub const EVENT: &str = "e";

/// The `e` field of a stream entry.
#[derive(Debug, Serialize)]
pub struct StreamEvent<'a> {
    /// The id returned to the client.
    pub id: String,
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
            id: id.hyphenated().to_string(),
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

/// The parts of `m`, as `lua/admit.lua` writes them:
/// `<tenant>|<signal id>|<signal type>|<resolved schema version, 0 = none>`.
pub struct Meta<'a> {
    pub tenant: &'a str,
    pub signal: &'a str,
    pub signal_type: &'a str,
    pub version: &'a str,
}

impl<'a> Meta<'a> {
    pub fn parse(m: &'a str) -> Option<Self> {
        let mut parts = m.split('|');
        let meta = Meta {
            tenant: parts.next()?,
            signal: parts.next()?,
            signal_type: parts.next()?,
            version: parts.next()?,
        };
        parts.next().is_none().then_some(meta)
    }
}

impl StreamEntry {
    /// Decodes an entry's fields; the error says what is wrong.
    pub fn decode(field: impl Fn(&str) -> Option<String>) -> Result<Self, BadEntry> {
        let m = field(META).ok_or("entry has no m field")?;
        let meta = Meta::parse(&m).ok_or_else(|| format!("bad m field {m:?}"))?;
        let version: u32 = meta
            .version
            .parse()
            .map_err(|_| BadEntry::from("bad schema version in m"))?;
        let e = field(EVENT).ok_or("entry has no e field")?;
        let event: OwnedStreamEvent =
            serde_json::from_str(&e).map_err(|e| format!("bad e field: {e}"))?;
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
}
