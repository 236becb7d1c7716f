//! The read API: what became of a tenant's events, and what they add up to, with the same key it
//! ingests with. `GET /v1/events/{id}` (`processed` or `invalid`, with the reason),
//! `GET /v1/events` (by signal, status, identity and time, newest first, in pages),
//! `GET /v1/identities/{type}/{id}` (the latest state per state signal) and
//! `GET /v1/signals/{slug}/rollups` (a metric's hourly or daily buckets).
//!
//! Reads go to PostgreSQL through their own pool ([`crate::pg::reads`]), never through anything
//! ingest uses: with PostgreSQL slow or down they answer 503 naming it, and ingest goes on.
//! An event acknowledged a moment ago may not be stored yet: it answers 404 until it is.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::auth::Principal;
use super::error::ApiError;
use crate::domain::{IdentityId, IdentityType, PageLimit, Rule, SignalType, Slug, hex};
use crate::pg::reads::{
    Bucket, EventFilter, Position, ReadError, RollupQuery, State, StoredEvent, StoredJson,
};

/// The CRM object an event is about.
#[derive(Serialize, ToSchema)]
pub struct IdentityView {
    #[serde(rename = "type")]
    #[schema(example = "account")]
    kind: String,
    #[schema(example = "acc_123")]
    id: String,
}

/// `data` as stored: a JSON object of any shape (for generators: an object with any
/// properties, not an empty one).
pub struct StoredData;

impl utoipa::PartialSchema for StoredData {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        super::schemas::free_form_object("The event's `data`, as stored").into()
    }
}

impl ToSchema for StoredData {}

/// A stored event.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "01936f0e-2c4a-7000-8000-5f2f1c6d7e80", "signal": "mrr",
    "signal_id": "sig_bFyqj0qg", "schema_version": 1, "status": "invalid",
    "error": "data.value: \"lots\" is not of type \"number\"",
    "identity": {"type": "account", "id": "acc_123"}, "data": {"value": "lots"},
    "timestamp": "2026-11-26T10:14:03Z", "received_at": "2026-11-26T10:14:03.512Z",
    "reference": "evt-001"}))]
pub struct EventView {
    #[schema(format = Uuid)]
    id: String,
    /// The signal's slug.
    signal: String,
    signal_id: String,
    /// The schema version the event was checked against; null when the signal has none.
    schema_version: Option<i32>,
    /// `processed`, or `invalid` (failed its schema, or could not be stored as sent).
    #[schema(example = "processed")]
    status: String,
    /// Why the event is `invalid`; null when processed.
    error: Option<String>,
    identity: IdentityView,
    /// The event's `data` as stored.
    #[schema(value_type = StoredData)]
    data: StoredJson,
    /// The event's timestamp (RFC 3339, UTC).
    #[schema(format = DateTime)]
    timestamp: String,
    /// When Sluice received it (RFC 3339, UTC).
    #[schema(format = DateTime)]
    received_at: String,
    /// The client's `reference`, if it sent one.
    reference: Option<String>,
}

impl From<StoredEvent> for EventView {
    fn from(e: StoredEvent) -> Self {
        EventView {
            id: e.id.to_string(),
            signal: e.signal,
            signal_id: e.signal_id,
            schema_version: e.schema_version,
            status: e.status,
            error: e.error,
            identity: IdentityView {
                kind: e.identity_type,
                id: e.identity_id,
            },
            data: e.data,
            timestamp: rfc3339(e.timestamp),
            received_at: rfc3339(e.received_at),
            reference: e.reference,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct EventOne {
    /// Always true.
    success: bool,
    data: EventView,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// Always true.
    success: bool,
    /// Newest first: by timestamp, then id.
    data: Vec<EventView>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// The latest state of an identity for one state signal.
#[derive(Serialize, ToSchema)]
pub struct StateView {
    signal: String,
    signal_id: String,
    /// The `data` of the state event with the latest timestamp.
    #[schema(value_type = StoredData)]
    data: StoredJson,
    /// That event's timestamp (RFC 3339, UTC).
    #[schema(format = DateTime)]
    timestamp: String,
    #[schema(format = Uuid)]
    event_id: String,
}

impl From<State> for StateView {
    fn from(s: State) -> Self {
        StateView {
            signal: s.signal,
            signal_id: s.signal_id,
            data: s.data,
            timestamp: rfc3339(s.timestamp),
            event_id: s.event_id.to_string(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct IdentityStates {
    identity: IdentityView,
    /// By signal slug; empty when nothing is stored for the identity.
    states: Vec<StateView>,
}

#[derive(Serialize, ToSchema)]
pub struct IdentityOne {
    /// Always true.
    success: bool,
    data: IdentityStates,
}

/// A rollup bucket of a metric's `data.value` (each from -1e289 to 1e289, so `sum` stays a number).
#[derive(Serialize, ToSchema)]
pub struct BucketView {
    /// When the hour or day starts (RFC 3339, UTC).
    #[schema(format = DateTime)]
    start: String,
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
}

impl From<&Bucket> for BucketView {
    fn from(b: &Bucket) -> Self {
        BucketView {
            start: rfc3339(b.start),
            count: b.count,
            sum: b.sum,
            min: b.min,
            max: b.max,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct RollupPage {
    /// Always true.
    success: bool,
    /// Oldest first.
    data: Vec<BucketView>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// Which events to list. Every parameter narrows the list.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this signal's events (its slug).
    #[param(value_type = Option<Slug>, inline)]
    signal: Option<String>,
    /// `processed` or `invalid`.
    #[param(pattern = "^(processed|invalid)$")]
    status: Option<String>,
    /// Only events about this identity: give `identity_id` too.
    #[param(value_type = Option<IdentityType>, inline)]
    identity_type: Option<String>,
    /// Only events about this identity: give `identity_type` too.
    #[param(value_type = Option<IdentityId>, inline)]
    identity_id: Option<String>,
    /// Events whose timestamp is at or after this (RFC 3339 with an offset).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Events whose timestamp is before this (RFC 3339 with an offset).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Events per page, 1-1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-f]{48}$")]
    cursor: Option<String>,
}

/// Which rollup buckets to read.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RollupsQuery {
    /// One identity's buckets (give `identity_id` too); without both, the buckets over every
    /// identity.
    #[param(value_type = Option<IdentityType>, inline)]
    identity_type: Option<String>,
    /// One identity's buckets (give `identity_type` too).
    #[param(value_type = Option<IdentityId>, inline)]
    identity_id: Option<String>,
    /// `hour` or `day` (the default).
    #[param(pattern = "^(hour|day)$")]
    granularity: Option<String>,
    /// Buckets starting at or after this (RFC 3339 with an offset).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Buckets starting before this (RFC 3339 with an offset).
    #[param(format = DateTime)]
    until: Option<String>,
    /// Buckets per page, 1-1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9a-f]{16}$")]
    cursor: Option<String>,
}

/// One stored event of the caller's tenant.
#[utoipa::path(
    get,
    path = "/v1/events/{id}",
    tag = "reads",
    security(("api_key" = [])),
    params(("id" = String, Path, description = "The id the ingest answer gave the event",
        format = Uuid)),
    responses(
        (status = 200, description = "The event as stored", body = EventOne),
        (status = 400, description = "`Not an event id: <id>`", body = super::error::Body),
        (status = 404, description = "`Event not found: <id>`: unknown, another tenant's, or \
            acknowledged but not stored yet (retry in a moment)", body = super::error::Body),
    )
)]
pub async fn event(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&req, &state).await?;
    let parsed =
        Uuid::try_parse(&id).map_err(|_| ApiError::BadRequest(format!("Not an event id: {id}")))?;
    let event = state
        .reads
        .event(&principal.tenant_id, parsed)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::NotFound(format!("Event not found: {id}")))?;
    Ok(HttpResponse::Ok().json(EventOne {
        success: true,
        data: event.into(),
    }))
}

/// The caller's stored events, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "reads",
    security(("api_key" = [])),
    params(EventsQuery),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "A parameter is not valid (the message names it)",
            body = super::error::Body),
        (status = 404, description = "`Signals not found: <slug>`", body = super::error::Body),
    )
)]
pub async fn events(
    req: HttpRequest,
    query: web::Query<EventsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&req, &state).await?;
    let q = query.into_inner();
    let limit = PageLimit::parse(q.limit.as_deref(), 100).map_err(ApiError::BadRequest)?;
    let after = q.cursor.as_deref().map(event_cursor).transpose()?;
    let status = match q.status.as_deref() {
        None | Some("processed" | "invalid") => q.status,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "status must be processed or invalid, not {other:?}"
            )));
        }
    };
    let identity = identity(q.identity_type, q.identity_id)?;
    let (since, until) = (time("since", q.since)?, time("until", q.until)?);
    let signal_id = match &q.signal {
        Some(slug) => Some(signal(&state, &principal, "signal", slug).await?.id),
        None => None,
    };
    let filter = EventFilter {
        signal_id,
        status,
        identity,
        since,
        until,
    };
    // One more than the page, to know whether another follows.
    let mut page = state
        .reads
        .events(&principal.tenant_id, &filter, after, limit.get() + 1)
        .await
        .map_err(unavailable)?;
    let next_cursor = next(&mut page, limit).map(|last| {
        let Position { at, id } = last.position();
        let mut bytes = at.timestamp_micros().to_be_bytes().to_vec();
        bytes.extend_from_slice(id.as_bytes());
        hex(&bytes)
    });
    Ok(HttpResponse::Ok().json(EventPage {
        success: true,
        data: page.into_iter().map(EventView::from).collect(),
        next_cursor,
    }))
}

/// An identity's latest state for each of the caller's state signals.
#[utoipa::path(
    get,
    path = "/v1/identities/{type}/{id}",
    tag = "reads",
    security(("api_key" = [])),
    params(
        ("type" = inline(IdentityType), Path,
            description = "`account`, `contact`, `deal`, `lead` or a custom type"),
        ("id" = inline(IdentityId), Path, description = "The object's id in the CRM"),
    ),
    responses(
        (status = 200, description = "The identity's latest states (none stored: an empty list)",
            body = IdentityOne),
        (status = 400, description = "Not a valid identity type or id", body = super::error::Body),
    )
)]
pub async fn identity_states(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&req, &state).await?;
    let (kind, id) = path.into_inner();
    let Some((kind, id)) = identity(Some(kind), Some(id))? else {
        unreachable!("both given")
    };
    let states = state
        .reads
        .states(&principal.tenant_id, &kind, &id)
        .await
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(IdentityOne {
        success: true,
        data: IdentityStates {
            identity: IdentityView { kind, id },
            states: states.into_iter().map(StateView::from).collect(),
        },
    }))
}

/// A metric signal's rollup buckets, oldest first, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/signals/{slug}/rollups",
    tag = "reads",
    security(("api_key" = [])),
    params(("slug" = inline(Slug), Path, description = "A metric signal's slug"), RollupsQuery),
    responses(
        (status = 200, description = "A page of buckets", body = RollupPage),
        (status = 400, description = "A parameter is not valid (the message names it), or the \
            signal is not a metric", body = super::error::Body),
        (status = 404, description = "`Signals not found: <slug>`", body = super::error::Body),
    )
)]
pub async fn rollups(
    req: HttpRequest,
    slug: web::Path<String>,
    query: web::Query<RollupsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let principal = authenticate(&req, &state).await?;
    let q = query.into_inner();
    let limit = PageLimit::parse(q.limit.as_deref(), 1000).map_err(ApiError::BadRequest)?;
    let granularity = match q.granularity.as_deref().unwrap_or("day") {
        g @ ("hour" | "day") => g,
        other => {
            return Err(ApiError::BadRequest(format!(
                "granularity must be hour or day, not {other:?}"
            )));
        }
    };
    let after = q.cursor.as_deref().map(bucket_cursor).transpose()?;
    let identity = identity(q.identity_type, q.identity_id)?;
    let (since, until) = (time("since", q.since)?, time("until", q.until)?);
    let signal = signal(&state, &principal, "slug", &slug).await?;
    if signal.signal_type != SignalType::Metric {
        return Err(ApiError::BadRequest(format!(
            "{slug} is a signal of type {}; rollups are kept for metric signals",
            signal.signal_type.as_str()
        )));
    }
    let mut buckets = state
        .reads
        .rollups(
            &principal.tenant_id,
            &RollupQuery {
                signal_id: &signal.id,
                identity: identity.as_ref().map(|(t, i)| (t.as_str(), i.as_str())),
                granularity,
                since,
                until,
                after,
                limit: limit.get() + 1,
            },
        )
        .await
        .map_err(unavailable)?;
    let next_cursor =
        next(&mut buckets, limit).map(|last| hex(&last.start.timestamp_micros().to_be_bytes()));
    Ok(HttpResponse::Ok().json(RollupPage {
        success: true,
        data: buckets.iter().map(BucketView::from).collect(),
        next_cursor,
    }))
}

async fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Principal, ApiError> {
    let principal = state.keys.authenticate(req, &state.redis).await?;
    req.extensions_mut().insert(principal.clone());
    utf8_url(req)?;
    Ok(principal)
}

/// 400 unless the URL's path and query decode to UTF-8. actix's extractors read a byte that is
/// not as U+FFFD, so `identity_id=%FF` would find the identity whose id is that character.
fn utf8_url(req: &HttpRequest) -> Result<(), ApiError> {
    let uri = req.uri();
    let decodes = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .is_ok()
    };
    if decodes(uri.path()) && decodes(uri.query().unwrap_or("")) {
        return Ok(());
    }
    Err(ApiError::BadRequest(
        "Invalid URL: a percent-encoded sequence is not UTF-8 text".into(),
    ))
}

/// The tenant's signal `slug` (parameter `name`): 400 if it cannot be a slug, 404 as ingest
/// says it if the tenant has none.
async fn signal(
    state: &AppState,
    principal: &Principal,
    name: &str,
    slug: &str,
) -> Result<crate::pg::reads::SignalRef, ApiError> {
    Slug::parse(slug).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))?;
    state
        .reads
        .signal(&principal.tenant_id, slug)
        .await
        .map_err(unavailable)?
        .ok_or_else(|| ApiError::SignalsNotFound(vec![slug.to_owned()]))
}

/// An identity filter: both parts or neither, each valid.
fn identity(
    kind: Option<String>,
    id: Option<String>,
) -> Result<Option<(String, String)>, ApiError> {
    match (kind, id) {
        (None, None) => Ok(None),
        (Some(kind), Some(id)) => {
            let bad = |name: &str, e: String| ApiError::BadRequest(format!("{name} {e}"));
            let kind = IdentityType::parse(&kind).map_err(|e| bad("identity_type", e))?;
            let id = IdentityId::parse(&id).map_err(|e| bad("identity_id", e))?;
            Ok(Some((kind.into_string(), id.into_string())))
        }
        _ => Err(ApiError::BadRequest(
            "identity_type and identity_id go together: give both or neither".to_owned(),
        )),
    }
}

/// Query parameter `name` as a time.
fn time(name: &str, value: Option<String>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|v| {
            DateTime::parse_from_rfc3339(&v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    // `+01:00` sent unencoded arrives as ` 01:00`: say so.
                    let plus = v.len() > 6 && v.as_bytes()[v.len() - 6] == b' ';
                    let hint = if plus {
                        " (a + in a query string must be sent as %2B)"
                    } else {
                        ""
                    };
                    ApiError::BadRequest(format!(
                        "{name} must be an RFC 3339 time with an offset, such as \
                         2026-11-26T10:15:00Z, not {v:?}{hint}"
                    ))
                })
        })
        .transpose()
}

/// Drops the extra item fetched beyond `limit`; the last item kept when a next page exists.
fn next<T>(items: &mut Vec<T>, limit: PageLimit) -> Option<&T> {
    let limit = limit.get() as usize;
    if items.len() > limit {
        items.truncate(limit);
        items.last()
    } else {
        None
    }
}

fn bad_cursor() -> ApiError {
    ApiError::BadRequest("cursor is not one this list returned".to_owned())
}

/// 16 hex digits: the last bucket's start, in microseconds.
fn bucket_cursor(text: &str) -> Result<DateTime<Utc>, ApiError> {
    let bytes = unhex::<8>(text).ok_or_else(bad_cursor)?;
    cursor_time(i64::from_be_bytes(bytes))
}

/// A cursor's time: one an event or bucket can have (years 1 to 9999), else no cursor of ours.
fn cursor_time(micros: i64) -> Result<DateTime<Utc>, ApiError> {
    DateTime::from_timestamp_micros(micros)
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(bad_cursor)
}

/// 48 hex digits: the last event's timestamp (microseconds) and id.
fn event_cursor(text: &str) -> Result<Position, ApiError> {
    let bytes = unhex::<24>(text).ok_or_else(bad_cursor)?;
    let micros = i64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    Ok(Position {
        at: cursor_time(micros)?,
        id: Uuid::from_slice(&bytes[8..]).map_err(|_| bad_cursor())?,
    })
}

/// `N` bytes from exactly `2 × N` lowercase hex digits.
fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// PostgreSQL did not answer: 503 naming it (the cause goes to the log).
fn unavailable(e: ReadError) -> ApiError {
    tracing::warn!(error = %e, "a read failed");
    ApiError::Dependency("PostgreSQL is not answering reads".to_owned())
}

/// RFC 3339 in UTC, with as many fractional digits as there are.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_read_back_what_was_written_and_nothing_else() {
        let at = DateTime::from_timestamp_micros(1_795_775_845_146_123).unwrap();
        let id = Uuid::from_u128(0x0193_6f0e_2c4a_7000_8000_5f2f_1c6d_7e80);
        let mut bytes = at.timestamp_micros().to_be_bytes().to_vec();
        bytes.extend_from_slice(id.as_bytes());
        assert_eq!(event_cursor(&hex(&bytes)).unwrap(), Position { at, id });
        assert_eq!(
            bucket_cursor(&hex(&at.timestamp_micros().to_be_bytes())).unwrap(),
            at
        );
        for bad in ["", "zz", &"0".repeat(47), &"G".repeat(48), &"A".repeat(48)] {
            assert!(event_cursor(bad).is_err(), "{bad}");
        }
        assert!(bucket_cursor("7fffffffffffffff").is_err(), "out of range");
        assert!(bucket_cursor("d92ee007803780ce").is_err(), "before year 1");
    }

    #[test]
    fn identity_filters_come_in_pairs() {
        assert!(identity(None, None).unwrap().is_none());
        assert!(identity(Some("account".into()), None).is_err());
        assert!(identity(None, Some("a".into())).is_err());
        assert!(identity(Some("Account".into()), Some("a".into())).is_err());
        assert!(identity(Some("account".into()), Some(String::new())).is_err());
        assert!(identity(Some("account".into()), Some("x".repeat(257))).is_err());
        assert!(identity(Some("account".into()), Some("a".into())).is_ok());
    }
}
