//! Request bodies → validated [`Event`]s.
//!
//! Parsing borrows from the request body: `data` stays the client's raw JSON text (checked,
//! never re-encoded), so an event costs a few small strings, not a tree of allocations.
//! Every problem in every event is collected, so a client fixes a batch in one round.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset};
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{IdentityId, IdentityType, json_guard};

/// Most events one batch request may carry.
pub const MAX_BATCH: usize = 100;
const MAX_SIGNAL_LEN: usize = 64;
const MAX_REFERENCE_LEN: usize = 256;

/// One validated event, borrowing its `data` from the request body.
#[derive(Debug)]
pub struct Event<'a> {
    /// The signal's slug, resolved against the tenant's registry by the admission script.
    /// Text fields borrow from the body unless they hold escapes.
    pub signal: Cow<'a, str>,
    pub version: SchemaVersion,
    pub identity_type: Cow<'a, str>,
    pub identity_id: Cow<'a, str>,
    /// A JSON object, exactly as the client sent it.
    pub data: &'a RawValue,
    /// When it happened; `None` means "at receipt".
    pub timestamp: Option<DateTime<FixedOffset>>,
    pub reference: Option<Cow<'a, str>>,
}

/// Which schema version an event claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaVersion {
    Latest,
    Exact(u32),
}

impl SchemaVersion {
    /// A schema version number: 1 to `i32::MAX` (the registry's column).
    pub fn number(n: i64) -> Option<u32> {
        (1..=i64::from(i32::MAX)).contains(&n).then_some(n as u32)
    }
}

/// One problem with one field of one event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The event's position in the request (0 for a single event).
    pub index: usize,
    /// The field's path, e.g. `events[3].identity.id`.
    pub field: String,
    pub message: String,
}

/// Why a body was refused before any event was looked at.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Not JSON, or not an object.
    InvalidJson(String),
    /// `events` missing, not an array, or empty.
    NoEvents,
    /// More than [`MAX_BATCH`] events; how many there were.
    TooMany(usize),
    /// One or more events break a rule: every problem found, in request order, and how many
    /// events the body held.
    Invalid(Vec<FieldError>, usize),
}

fn empty_object() -> &'static RawValue {
    serde_json::from_str("{}").expect("literal JSON")
}

/// Parses `{"events": [...]}`.
pub fn parse_batch(body: &str) -> Result<Vec<Event<'_>>, BodyError> {
    #[derive(Deserialize)]
    struct Body<'a> {
        // Read in the same pass as the body, element by element.
        #[serde(borrow)]
        events: Option<BoundedList<'a>>,
    }
    if !body.trim_start().starts_with('{') {
        // Report a syntax error where there is one, else the wrong kind of value.
        let raw: &RawValue = serde_json::from_str(body).map_err(invalid_json)?;
        return Err(BodyError::InvalidJson(format!(
            "expected a JSON object, found {}",
            kind_of(raw)
        )));
    }
    let body: Body = serde_json::from_str(body).map_err(invalid_json)?;
    let events = body.events.ok_or(BodyError::NoEvents)?;
    if events.total == 0 {
        return Err(BodyError::NoEvents);
    }
    if events.total > MAX_BATCH {
        return Err(BodyError::TooMany(events.total));
    }
    let mut errors = Vec::new();
    let mut parsed = Vec::with_capacity(events.items.len());
    for (index, item) in events.items.into_iter().enumerate() {
        let path = EventPath { index, batch: true };
        parsed.extend(check_event(item, path, &mut errors));
    }
    if errors.is_empty() {
        Ok(parsed)
    } else {
        Err(BodyError::Invalid(errors, events.total))
    }
}

/// Parses a single event object (`POST /v1/events`). Field names in errors have no `events[i]`
/// prefix.
pub fn parse_single(body: &str) -> Result<Event<'_>, BodyError> {
    let raw: &RawValue = serde_json::from_str(body).map_err(invalid_json)?;
    if !raw.get().starts_with('{') {
        return Err(BodyError::InvalidJson(format!(
            "expected a JSON object, found {}",
            kind_of(raw)
        )));
    }
    let item: Item = serde_json::from_str(raw.get()).map_err(invalid_json)?;
    let mut errors = Vec::new();
    match check_event(
        item,
        EventPath {
            index: 0,
            batch: false,
        },
        &mut errors,
    ) {
        Some(event) if errors.is_empty() => Ok(event),
        _ => Err(BodyError::Invalid(errors, 1)),
    }
}

fn invalid_json(e: serde_json::Error) -> BodyError {
    BodyError::InvalidJson(e.to_string())
}

fn kind_of(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A visitor's answer to every JSON value that is neither an array nor an object: `$value`.
macro_rules! scalars_give {
    ($value:expr) => {
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

/// The first [`MAX_BATCH`] elements of a JSON array, and how many it had in all. Elements
/// past the limit are skipped without being stored, so a huge array costs no memory. Any other
/// JSON value reads as a list of none (`events` must be a non-empty array).
#[derive(Default)]
struct BoundedList<'a> {
    items: Vec<Item<'a>>,
    total: usize,
}

impl<'de: 'a, 'a> Deserialize<'de> for BoundedList<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for ListVisitor<'a> {
            type Value = BoundedList<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                // serde_json gives no size hint: room for a full batch up front saves the
                // copies of growing one element at a time.
                let mut items = Vec::with_capacity(MAX_BATCH);
                while items.len() < MAX_BATCH {
                    match seq.next_element::<Item<'de>>()? {
                        Some(item) => items.push(item),
                        None => {
                            let total = items.len();
                            return Ok(BoundedList { items, total });
                        }
                    }
                }
                let mut total = items.len();
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(BoundedList { items, total })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(BoundedList::default())
            }
            scalars_give!(BoundedList::default());
        }
        d.deserialize_any(ListVisitor(std::marker::PhantomData))
    }
}

/// Where an event sits, for naming its fields in errors: `events[2].version` in a batch,
/// `version` alone for a single event.
#[derive(Clone, Copy)]
pub struct EventPath {
    pub index: usize,
    pub batch: bool,
}

impl EventPath {
    pub fn field(self, name: &str) -> String {
        match (self.batch, name.is_empty()) {
            (true, true) => format!("events[{}]", self.index),
            (true, false) => format!("events[{}].{name}", self.index),
            (false, true) => "event".to_owned(),
            (false, false) => name.to_owned(),
        }
    }

    fn error(self, name: &str, problem: &str) -> FieldError {
        let field = self.field(name);
        FieldError {
            index: self.index,
            message: format!("{field} {problem}"),
            field,
        }
    }
}

/// One event's fields as the client wrote them (`null` reads as absent).
#[derive(Default)]
struct RawEvent<'a> {
    signal: Option<&'a RawValue>,
    version: Option<&'a RawValue>,
    identity: Option<Object<RawIdentity<'a>>>,
    data: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    reference: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Fields<'de> for RawEvent<'a> {
    const NAMES: &'static [&'static str] = &[
        "signal",
        "version",
        "identity",
        "data",
        "timestamp",
        "reference",
    ];

    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.signal = map.next_value()?,
            1 => self.version = map.next_value()?,
            2 => self.identity = map.next_value()?,
            3 => self.data = map.next_value()?,
            4 => self.timestamp = map.next_value()?,
            _ => self.reference = map.next_value()?,
        }
        Ok(())
    }
}

/// One element of the events array (or the single event).
type Item<'a> = Object<RawEvent<'a>>;

/// An event's `identity` as the client wrote it (`null` reads as absent).
#[derive(Default)]
struct RawIdentity<'a> {
    kind: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
}

impl<'de: 'a, 'a> Fields<'de> for RawIdentity<'a> {
    const NAMES: &'static [&'static str] = &["type", "id"];

    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error> {
        match field {
            0 => self.kind = map.next_value()?,
            _ => self.id = map.next_value()?,
        }
        Ok(())
    }
}

/// The named fields of a JSON object, each kept as the client wrote it.
trait Fields<'de>: Default {
    /// The names kept; any other field is skipped.
    const NAMES: &'static [&'static str];
    /// Reads the value of the field `NAMES[field]`.
    fn read<A: MapAccess<'de>>(&mut self, field: usize, map: &mut A) -> Result<(), A::Error>;
}

/// A value the rules want to be an object of known fields (an event, its identity), read in the
/// same pass as the body: what is wrong with one event is that event's error, never the whole
/// body's.
enum Object<T> {
    Fields(T),
    /// Any value but an object.
    Other,
    /// An object naming a field twice: that field.
    Duplicate(&'static str),
}

impl<'de, T: Fields<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Fields<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = T::default();
                let mut seen = 0u64;
                let mut duplicate = None;
                while let Some(field) = map.next_key_seed(FieldOf(T::NAMES))? {
                    let Some(n) = field else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    fields.read(n, &mut map)?;
                    if seen & (1 << n) != 0 {
                        duplicate.get_or_insert(T::NAMES[n]);
                    }
                    seen |= 1 << n;
                }
                Ok(match duplicate {
                    Some(name) => Object::Duplicate(name),
                    None => Object::Fields(fields),
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Object::Other)
            }
            scalars_give!(Object::Other);
        }
        d.deserialize_any(ObjectVisitor(std::marker::PhantomData))
    }
}

/// A field's name as its place among `names` (`None` for another name), escaped names included.
struct FieldOf(&'static [&'static str]);

impl<'de> serde::de::DeserializeSeed<'de> for FieldOf {
    type Value = Option<usize>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for FieldOf {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == name))
    }
}

fn check_event<'a>(
    item: Item<'a>,
    at: EventPath,
    errors: &mut Vec<FieldError>,
) -> Option<Event<'a>> {
    let ev = match item {
        Object::Fields(ev) => ev,
        Object::Other => {
            errors.push(at.error("", "must be an object"));
            return None;
        }
        Object::Duplicate(name) => {
            let problem = format!("is not a valid event: duplicate field `{name}`");
            errors.push(at.error("", &problem));
            return None;
        }
    };
    let before = errors.len();

    let signal = parse_signal(ev.signal, at, errors);
    let version = match ev.version {
        None => Some(SchemaVersion::Latest),
        Some(v) => parse_version(v.get()).or_else(|| {
            errors.push(at.error("version", "must be a positive integer or \"latest\""));
            None
        }),
    };
    let (identity_type, identity_id) = parse_identity(ev.identity, at, errors);
    let data = parse_data(ev.data, at, errors);
    let timestamp = parse_timestamp(ev.timestamp, at, errors);
    let reference = match ev.reference {
        None => Some(None),
        Some(raw) => match string_of(raw) {
            Ok(s) => bounded_text(s, MAX_REFERENCE_LEN, at, "reference", errors).map(Some),
            Err(problem) => {
                errors.push(at.error("reference", problem));
                None
            }
        },
    };

    if errors.len() > before {
        return None;
    }
    Some(Event {
        signal: signal?,
        version: version?,
        identity_type: identity_type?,
        identity_id: identity_id?,
        data: data?,
        timestamp: timestamp?,
        reference: reference?,
    })
}

/// `signal`: a required string of at most [`MAX_SIGNAL_LEN`] characters.
fn parse_signal<'a>(
    raw: Option<&'a RawValue>,
    at: EventPath,
    errors: &mut Vec<FieldError>,
) -> Option<Cow<'a, str>> {
    let s = required_string(raw, at, "signal", errors)?;
    if s.len() > MAX_SIGNAL_LEN && s.chars().count() > MAX_SIGNAL_LEN {
        let problem = format!("must be at most {MAX_SIGNAL_LEN} characters");
        errors.push(at.error("signal", &problem));
        return None;
    }
    Some(s)
}

/// `identity`: a required object of a valid `type` and `id`.
fn parse_identity<'a>(
    identity: Option<Object<RawIdentity<'a>>>,
    at: EventPath,
    errors: &mut Vec<FieldError>,
) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
    let (kind, id) = match identity {
        None => {
            errors.push(at.error("identity", "is required"));
            return (None, None);
        }
        Some(Object::Other) => {
            errors.push(at.error("identity", "must be an object with type and id"));
            return (None, None);
        }
        Some(Object::Duplicate(name)) => {
            let problem = format!("is not valid: duplicate field `{name}`");
            errors.push(at.error("identity", &problem));
            return (None, None);
        }
        Some(Object::Fields(RawIdentity { kind, id })) => (kind, id),
    };
    let kind = required_string(kind, at, "identity.type", errors).and_then(|t| {
        if IdentityType::is_valid(&t) {
            return Some(t);
        }
        errors.push(at.error(
            "identity.type",
            "must be account, contact, deal, lead, or a custom type of 1-64 characters of a-z, 0-9, '_' and '-'",
        ));
        None
    });
    let id = required_string(id, at, "identity.id", errors)
        .and_then(|id| bounded_text(id, IdentityId::MAX_CHARS, at, "identity.id", errors));
    (kind, id)
}

/// `data`: a JSON object PostgreSQL can store; `{}` when absent.
fn parse_data<'a>(
    raw: Option<&'a RawValue>,
    at: EventPath,
    errors: &mut Vec<FieldError>,
) -> Option<&'a RawValue> {
    let Some(raw) = raw else {
        return Some(empty_object());
    };
    if !raw.get().starts_with('{') {
        errors.push(at.error("data", "must be a JSON object"));
        return None;
    }
    if let Some(why) = json_guard::unstorable(raw.get()) {
        errors.push(at.error("data", &format!("cannot be stored: {why}")));
        return None;
    }
    Some(raw)
}

/// `timestamp`: RFC 3339 with an offset, in years 1 to 9999 once in UTC (what RFC 3339's
/// four-digit years, and so the stream entry and every reader, can write); `Some(None)` when
/// absent.
fn parse_timestamp(
    raw: Option<&RawValue>,
    at: EventPath,
    errors: &mut Vec<FieldError>,
) -> Option<Option<DateTime<FixedOffset>>> {
    let Some(raw) = raw else {
        return Some(None);
    };
    let problem = match string_of(raw) {
        Err(problem) => problem,
        Ok(s) => match DateTime::parse_from_rfc3339(&s).map(without_leap_second) {
            Ok(t) => match t.with_timezone(&chrono::Utc).year() {
                ..=0 => "must be in year 1 or later",
                10_000.. => "must be in year 9999 or earlier once in UTC",
                _ => return Some(Some(t)),
            },
            Err(_) => "must be an RFC 3339 timestamp with an offset, e.g. 2026-11-26T10:15:00Z",
        },
    };
    errors.push(at.error("timestamp", problem));
    None
}

/// A leap second (`23:59:60`) as the instant PostgreSQL stores for it, the start of the next
/// second: checked, stored and read back as that instant. Other times are unchanged.
fn without_leap_second(t: DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    let nanos = t.timestamp_subsec_nanos();
    if nanos < 1_000_000_000 {
        return t;
    }
    // In range: a parsed time is within years 0 to 9999 of its offset, a second more is too.
    DateTime::from_timestamp(t.timestamp() + 1, nanos - 1_000_000_000)
        .map_or(t, |next| next.with_timezone(t.offset()))
}

/// A JSON string's text, or what is wrong with it.
fn string_of(raw: &RawValue) -> Result<Cow<'_, str>, &'static str> {
    let raw = raw.get();
    if !raw.starts_with('"') {
        return Err("must be a string");
    }
    // The usual case, a text without escapes, is what lies between the quotes: the body's
    // parse has checked the string already (no control characters, valid UTF-8).
    let inner = &raw[1..raw.len() - 1];
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw)
        .map(Cow::Owned)
        .map_err(|_| "must be valid Unicode text (it has an unpaired surrogate escape)")
}

fn required_string<'a>(
    raw: Option<&'a RawValue>,
    at: EventPath,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Cow<'a, str>> {
    let Some(raw) = raw else {
        errors.push(at.error(name, "is required"));
        return None;
    };
    match string_of(raw) {
        Ok(s) if s.is_empty() => {
            errors.push(at.error(name, "is required"));
            None
        }
        Ok(s) => Some(s),
        Err(problem) => {
            errors.push(at.error(name, problem));
            None
        }
    }
}

/// Text stored as-is in PostgreSQL: at most `max` characters and no NUL.
fn bounded_text<'a>(
    s: Cow<'a, str>,
    max: usize,
    at: EventPath,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<Cow<'a, str>> {
    // A text of at most `max` bytes has at most `max` characters: counted only when longer.
    if s.len() > max && s.chars().count() > max {
        errors.push(at.error(name, &format!("must be 1-{max} characters")));
        None
    } else if s.contains('\0') {
        errors.push(at.error(name, "must not contain the NUL character"));
        None
    } else {
        Some(s)
    }
}

fn parse_version(raw: &str) -> Option<SchemaVersion> {
    if raw == "\"latest\"" {
        return Some(SchemaVersion::Latest);
    }
    // A positive whole number, however written (`2`, `2.0`, `2e0`: JSON Schema's `integer`).
    let n = serde_json::from_str::<serde_json::Number>(raw).ok()?;
    let n = super::whole_number(&n)?;
    SchemaVersion::number(n).map(SchemaVersion::Exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: &str) -> String {
        format!(r#"{{"signal":"page_view","identity":{{"type":"account","id":"acc-1"}}{extra}}}"#)
    }

    fn batch(events: &[String]) -> String {
        format!(r#"{{"events":[{}]}}"#, events.join(","))
    }

    fn errors_of(body: &str) -> Vec<FieldError> {
        match parse_batch(body) {
            Err(BodyError::Invalid(errors, _)) => errors,
            other => panic!("expected field errors for {body}, got {other:?}"),
        }
    }

    #[test]
    fn a_minimal_event_gets_defaults() {
        let body = batch(&[event("")]);
        let events = parse_batch(&body).unwrap();
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.signal, "page_view");
        assert_eq!(e.version, SchemaVersion::Latest);
        assert_eq!(e.data.get(), "{}");
        assert_eq!(e.timestamp, None);
        assert_eq!(e.reference, None);
    }

    #[test]
    fn every_field_is_read() {
        let body = batch(&[event(
            r#","version":3,"data":{"plan":"pro","n":[1,2]},"timestamp":"2026-11-26T10:15:00+01:00","reference":"evt-1""#,
        )]);
        let e = &parse_batch(&body).unwrap()[0];
        assert_eq!(e.version, SchemaVersion::Exact(3));
        assert_eq!(e.data.get(), r#"{"plan":"pro","n":[1,2]}"#);
        assert_eq!(
            e.timestamp.unwrap().to_rfc3339(),
            "2026-11-26T10:15:00+01:00"
        );
        assert_eq!(e.reference.as_deref(), Some("evt-1"));
    }

    #[test]
    fn top_level_problems() {
        assert!(matches!(parse_batch("{"), Err(BodyError::InvalidJson(m)) if m.contains("line 1")));
        assert!(
            matches!(parse_batch("[1]"), Err(BodyError::InvalidJson(m)) if m.contains("object"))
        );
        assert!(matches!(
            parse_batch("\"x\""),
            Err(BodyError::InvalidJson(_))
        ));
        assert!(matches!(
            parse_batch(r#"{"events":[]}"#),
            Err(BodyError::NoEvents)
        ));
        assert!(matches!(
            parse_batch(r#"{"events":{}}"#),
            Err(BodyError::NoEvents)
        ));
        assert!(matches!(
            parse_batch(r#"{"events":null}"#),
            Err(BodyError::NoEvents)
        ));
        assert!(matches!(parse_batch(r#"{}"#), Err(BodyError::NoEvents)));
        assert!(
            matches!(parse_batch(r#"{"events":[],"events":[]}"#), Err(BodyError::InvalidJson(m)) if m.contains("duplicate"))
        );
        let many = batch(&vec![event(""); 101]);
        assert_eq!(parse_batch(&many).unwrap_err(), BodyError::TooMany(101));
        assert_eq!(
            parse_batch(&batch(&vec![event(""); 100])).unwrap().len(),
            100
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let body = batch(&[
            event(""),
            r#"{"signal":"x","identity":{"type":"account"}}"#.to_owned(),
            r#"{"signal":7,"identity":{"type":"Bad Type","id":""},"version":0,"data":[1],"timestamp":"yesterday","reference":5}"#.to_owned(),
            "42".to_owned(),
        ]);
        let errors = errors_of(&body);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "events[1].identity.id",
                "events[2].signal",
                "events[2].version",
                "events[2].identity.type",
                "events[2].identity.id",
                "events[2].data",
                "events[2].timestamp",
                "events[2].reference",
                "events[3]",
            ]
        );
        assert_eq!(errors[0].message, "events[1].identity.id is required");
        assert_eq!(errors[0].index, 1);
    }

    #[test]
    fn timestamps_are_years_1_to_9999_once_in_utc() {
        let timestamp = |t: &str| batch(&[event(&format!(r#","timestamp":"{t}""#))]);
        for (t, message) in [
            ("0000-12-31T23:00:00Z", "must be in year 1 or later"),
            ("0001-01-01T00:30:00+01:00", "must be in year 1 or later"),
            (
                "9999-12-31T23:00:00-05:00",
                "must be in year 9999 or earlier once in UTC",
            ),
            // A leap second is the start of the next second, as PostgreSQL stores it.
            (
                "9999-12-31T23:59:60Z",
                "must be in year 9999 or earlier once in UTC",
            ),
            (
                "9999-12-31T18:59:60.5-05:00",
                "must be in year 9999 or earlier once in UTC",
            ),
        ] {
            let errors = errors_of(&timestamp(t));
            assert_eq!(errors[0].message, format!("events[0].timestamp {message}"));
        }
        for t in [
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:30:00-01:00",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T18:59:59.999999-05:00",
        ] {
            assert!(parse_batch(&timestamp(t)).is_ok(), "{t}");
        }
        for (leap, next) in [
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00Z"),
            (
                "2016-12-31T18:59:60.25-05:00",
                "2016-12-31T19:00:00.25-05:00",
            ),
            ("9999-12-31T17:59:60-05:00", "9999-12-31T18:00:00-05:00"),
        ] {
            let body = timestamp(leap);
            let parsed = parse_batch(&body).unwrap()[0].timestamp.unwrap();
            assert_eq!(
                parsed,
                DateTime::parse_from_rfc3339(next).unwrap(),
                "{leap}"
            );
            assert_eq!(
                parsed.offset(),
                DateTime::parse_from_rfc3339(next).unwrap().offset()
            );
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        let long_id = "é".repeat(257);
        for (extra_identity_id, field) in [
            (long_id.as_str(), "events[0].identity.id"),
            ("a\\u0000b", "events[0].identity.id"),
            ("\\ud800", "events[0].identity.id"),
        ] {
            let body = batch(&[format!(
                r#"{{"signal":"s","identity":{{"type":"account","id":"{extra_identity_id}"}}}}"#
            )]);
            assert_eq!(errors_of(&body)[0].field, field);
        }
        let ok_id = "é".repeat(256);
        let body = batch(&[format!(
            r#"{{"signal":"s","identity":{{"type":"account","id":"{ok_id}"}}}}"#
        )]);
        assert!(parse_batch(&body).is_ok());
        for data in [r#"{"a":"\u0000"}"#, r#"{"a":1e999}"#, r#"{"a":"\udfff"}"#] {
            let body = batch(&[event(&format!(r#","data":{data}"#))]);
            assert_eq!(errors_of(&body)[0].field, "events[0].data");
        }
        let dup = batch(&[
            r#"{"signal":"a","signal":"b","identity":{"type":"account","id":"1"}}"#.to_owned(),
        ]);
        assert!(errors_of(&dup)[0].message.contains("duplicate field"));
        for not_a_version in ["1.5", "0", "0.0", "-1", "1e999", "true"] {
            let body = batch(&[event(&format!(r#","version":{not_a_version}"#))]);
            assert!(
                errors_of(&body)[0].field.ends_with("version"),
                "{not_a_version}"
            );
        }
        // A whole number is one however it is written, as JSON Schema reads `integer`.
        for two in ["2", "2.0", "2e0", "20e-1"] {
            let body = batch(&[event(&format!(r#","version":{two}"#))]);
            assert_eq!(
                parse_batch(&body).unwrap()[0].version,
                SchemaVersion::Exact(2)
            );
        }
        assert!(
            errors_of(&batch(&[event(r#","version":2147483648"#)]))[0]
                .field
                .ends_with("version")
        );
        assert!(
            errors_of(&batch(&[event(r#","version":"2""#)]))[0]
                .field
                .ends_with("version")
        );
    }

    #[test]
    fn nulls_mean_absent() {
        let body = batch(&[event(
            r#","version":null,"data":null,"timestamp":null,"reference":null"#,
        )]);
        let e = &parse_batch(&body).unwrap()[0];
        assert_eq!(e.version, SchemaVersion::Latest);
        assert_eq!(e.data.get(), "{}");
    }

    /// Events are read in the array's own pass: each one's problems stay its own, keys are read
    /// unescaped, and a field named twice is refused even when its first value was null.
    #[test]
    fn each_event_is_judged_alone_in_the_same_pass() {
        let body = r#"{"events":[
            {"sign\u0061l":"a","identity":{"type":"deal","id":"1"},"extra":{"deep":[1e400]}},
            [1, 2],
            {"signal":null,"signal":"a","identity":{"type":"deal","id":"2"}},
            "text",
            {"signal":"a","identity":{"type":"deal","id":"3"},"version":0}
        ]}"#;
        let errors = errors_of(body);
        let said: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.field.as_str(), e.message.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("events[1]", "events[1] must be an object"),
                (
                    "events[2]",
                    "events[2] is not a valid event: duplicate field `signal`"
                ),
                ("events[3]", "events[3] must be an object"),
                (
                    "events[4].version",
                    "events[4].version must be a positive integer or \"latest\""
                ),
            ]
        );
    }

    #[test]
    fn identity_in_every_form() {
        let with = |identity: &str| batch(&[format!(r#"{{"signal":"s","identity":{identity}}}"#)]);
        let accepted = |identity: &str| {
            let body = with(identity);
            let e = &parse_batch(&body).unwrap()[0];
            (e.identity_type.to_string(), e.identity_id.to_string())
        };
        let refused = |identity: &str| -> Vec<String> {
            errors_of(&with(identity))
                .into_iter()
                .map(|e| e.message)
                .collect()
        };
        let ok = |t: &str, id: &str| (t.to_owned(), id.to_owned());
        assert_eq!(
            accepted(r#"{"type":"account","id":"a-1"}"#),
            ok("account", "a-1")
        );
        // Field order, escaped names, escapes in values, other fields and text beyond ASCII.
        assert_eq!(accepted(r#"{"id":"7","type":"deal"}"#), ok("deal", "7"));
        assert_eq!(
            accepted(r#"{"typ\u0065":"lead","\u0069d":"x"}"#),
            ok("lead", "x")
        );
        assert_eq!(
            accepted(r#"{"type":"account","id":"a\"b\u00e9"}"#),
            ok("account", "a\"b\u{e9}")
        );
        assert_eq!(
            accepted(r#"{"type":"account","id":"\u00e9t\u00e9"}"#),
            ok("account", "\u{e9}t\u{e9}")
        );
        assert_eq!(
            accepted("{\"type\":\"account\",\"id\":\"\u{e9}t\u{e9}\"}"),
            ok("account", "\u{e9}t\u{e9}")
        );
        assert_eq!(
            accepted(r#"{"type":"account","extra":{"deep":[1,{"id":2}]},"id":"a"}"#),
            ok("account", "a")
        );
        for (identity, messages) in [
            ("null", vec!["events[0].identity is required"]),
            (
                r#"["account","a"]"#,
                vec!["events[0].identity must be an object with type and id"],
            ),
            (
                r#""account:a""#,
                vec!["events[0].identity must be an object with type and id"],
            ),
            (
                "7",
                vec!["events[0].identity must be an object with type and id"],
            ),
            (
                r#"{"type":"account","id":"a","id":"b"}"#,
                vec!["events[0].identity is not valid: duplicate field `id`"],
            ),
            (
                r#"{"type":null,"id":"a","type":"account","id":"b"}"#,
                vec!["events[0].identity is not valid: duplicate field `type`"],
            ),
            (
                "{}",
                vec![
                    "events[0].identity.type is required",
                    "events[0].identity.id is required",
                ],
            ),
            (
                r#"{"type":null,"id":""}"#,
                vec![
                    "events[0].identity.type is required",
                    "events[0].identity.id is required",
                ],
            ),
            (
                r#"{"type":7,"id":["a"]}"#,
                vec![
                    "events[0].identity.type must be a string",
                    "events[0].identity.id must be a string",
                ],
            ),
        ] {
            assert_eq!(refused(identity), messages, "{identity}");
        }
    }

    #[test]
    fn single_events_name_fields_without_prefix() {
        let body = event(r#","version":"latest""#);
        let e = parse_single(&body).unwrap();
        assert_eq!(e.version, SchemaVersion::Latest);
        match parse_single(r#"{"identity":{"type":"account","id":"1"}}"#) {
            Err(BodyError::Invalid(errors, 1)) => {
                assert_eq!(errors[0].message, "signal is required")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse_single("[]"), Err(BodyError::InvalidJson(_))));
    }
}

/// Whatever arrives, parsing never panics, and everything it accepts holds the invariants the
/// rest of the pipeline relies on.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, nested a few levels, with strings drawn to include hostile characters.
    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let text = prop_oneof![
            any::<String>(),
            "[a-z_]{0,70}",
            Just("\u{0}".to_owned()),
            Just("é\u{200d}😀\u{202e}".to_owned()),
            Just("latest".to_owned()),
            Just("2026-11-26T10:15:00Z".to_owned()),
            Just("0000-01-01T00:00:00Z".to_owned()),
            Just("9999-12-31T23:00:00-05:00".to_owned()),
        ];
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            text.prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("signal".to_owned()),
                        Just("identity".to_owned()),
                        Just("type".to_owned()),
                        Just("id".to_owned()),
                        Just("data".to_owned()),
                        Just("version".to_owned()),
                        Just("timestamp".to_owned()),
                        Just("reference".to_owned()),
                        Just("events".to_owned()),
                        any::<String>(),
                    ],
                    inner,
                    0..8,
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn check_accepted(events: &[Event<'_>]) {
        assert!(!events.is_empty() && events.len() <= MAX_BATCH);
        for e in events {
            assert!(!e.signal.is_empty() && e.signal.chars().count() <= MAX_SIGNAL_LEN);
            assert!(IdentityType::is_valid(&e.identity_type));
            let n = e.identity_id.chars().count();
            assert!((1..=IdentityId::MAX_CHARS).contains(&n) && !e.identity_id.contains('\0'));
            assert!(e.data.get().starts_with('{'));
            assert_eq!(json_guard::unstorable(e.data.get()), None);
            assert!(
                e.reference
                    .as_ref()
                    .is_none_or(|r| r.chars().count() <= MAX_REFERENCE_LEN && !r.contains('\0'))
            );
            assert!(
                e.timestamp
                    .is_none_or(|t| (1..=9999).contains(&t.with_timezone(&chrono::Utc).year()))
            );
            if let SchemaVersion::Exact(v) = e.version {
                assert!(v >= 1 && v <= i32::MAX as u32);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(text) = std::str::from_utf8(&bytes) {
                if let Ok(events) = parse_batch(text) {
                    check_accepted(&events);
                }
                if let Ok(event) = parse_single(text) {
                    check_accepted(std::slice::from_ref(&event));
                }
            }
        }

        #[test]
        fn arbitrary_json_never_panics_and_accepted_events_hold_every_rule(events in prop::collection::vec(json_value(), 0..6)) {
            let body = serde_json::json!({ "events": events }).to_string();
            match parse_batch(&body) {
                Ok(parsed) => check_accepted(&parsed),
                Err(BodyError::Invalid(errors, n)) => {
                    prop_assert!(!errors.is_empty());
                    prop_assert_eq!(n, events.len());
                    prop_assert!(errors.iter().all(|e| e.index < events.len() && e.message.starts_with(&e.field)));
                }
                Err(_) => {}
            }
        }

        #[test]
        fn well_formed_events_with_hostile_values_are_judged_not_crashed(
            signal in any::<String>(),
            kind in any::<String>(),
            id in any::<String>(),
            reference in any::<String>(),
            data in json_value(),
        ) {
            let body = serde_json::json!({"events": [{
                "signal": signal, "identity": {"type": kind, "id": id}, "data": data, "reference": reference,
            }]}).to_string();
            if let Ok(parsed) = parse_batch(&body) {
                check_accepted(&parsed);
            }
        }
    }
}
