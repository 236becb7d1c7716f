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
