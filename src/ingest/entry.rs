//! The stream entry format, shared by the api (which writes it) and the worker (which reads it).
//!
//! An entry's fields: `id` (the event id returned to the client), `tenant`, `signal` (`sig_…`),
//! `type` (signal type), `version` (resolved schema version, 0 for none), set by the admission
//! script; and `event`, this JSON object, built by the api:
//!
//! ```json
//! {"identity_type":"account","identity_id":"acc-1","data":{...},
//!  "occurred_at":"2026-11-26T10:15:00.000000Z","received_at":"2026-11-26T10:15:00.123456Z",
//!  "reference":"evt-001"}
//! ```

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::domain::Event;

/// The `event` field of a stream entry.
#[derive(Debug, Serialize)]
pub struct StreamEvent<'a> {
    pub identity_type: &'a str,
    pub identity_id: &'a str,
    /// The client's JSON object, copied through verbatim.
    pub data: &'a RawValue,
    pub occurred_at: String,
    pub received_at: String,
    pub reference: Option<&'a str>,
}

impl<'a> StreamEvent<'a> {
    pub fn from_event(event: &'a Event<'a>, received_at: DateTime<Utc>) -> Self {
        let occurred_at = event
            .timestamp
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(received_at);
        StreamEvent {
            identity_type: &event.identity_type,
            identity_id: &event.identity_id,
            data: event.data,
            occurred_at: occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            received_at: received_at.to_rfc3339_opts(SecondsFormat::Micros, true),
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
    pub id: uuid::Uuid,
    pub tenant: String,
    pub signal: String,
    pub signal_type: crate::domain::SignalType,
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
    identity_type: String,
    identity_id: String,
    data: Box<RawValue>,
    occurred_at: String,
    received_at: String,
    reference: Option<String>,
}

impl StreamEntry {
    /// Decodes an entry's fields; the error says which field is wrong.
    pub fn decode(field: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |name: &str| field(name).ok_or_else(|| format!("entry has no {name} field"));
        let id = uuid::Uuid::parse_str(&get("id")?).map_err(|e| format!("bad id: {e}"))?;
        let version: u32 = get("version")?
            .parse()
            .map_err(|_| "bad version field".to_owned())?;
        let event: OwnedStreamEvent =
            serde_json::from_str(&get("event")?).map_err(|e| format!("bad event field: {e}"))?;
        let time = |s: &str| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| format!("bad timestamp {s:?}: {e}"))
        };
        Ok(StreamEntry {
            id,
            tenant: get("tenant")?,
            signal: get("signal")?,
            signal_type: get("type")?.parse()?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::parse_single;

    #[test]
    fn what_the_api_writes_the_worker_reads() {
        let body = r#"{"signal":"s","identity":{"type":"deal","id":"d-1"},"data":{"value":3},"timestamp":"2026-01-02T03:04:05.123456789+02:00","reference":"r"}"#;
        let event = parse_single(body).unwrap();
        let received = Utc::now();
        let json = StreamEvent::from_event(&event, received).to_json();
        let fields = [
            ("id", uuid::Uuid::now_v7().to_string()),
            ("tenant", "ten_x".to_owned()),
            ("signal", "sig_x".to_owned()),
            ("type", "metric".to_owned()),
            ("version", "2".to_owned()),
            ("event", json),
        ];
        let entry =
            StreamEntry::decode(|n| fields.iter().find(|(k, _)| *k == n).map(|(_, v)| v.clone()))
                .unwrap();
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
    }
}
