//! `POST /v1/events/batch` and `POST /v1/events`.
//!
//! Both run the same steps: authenticate, read the body, parse it into validated events (CPU
//! only), then one admission script call; they differ only in body shape and response shape.

use actix_web::http::header::ContentType;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::auth::Principal;
use super::error::{ApiError, Body as ErrorBody};
use super::idempotency;
use super::rate_headers::RateHeaders;
use crate::domain::{self, BodyError, Event};
use crate::ingest::{Admitted, BadVersion, Idempotency, Outcome, Verdict};
use crate::json;

/// One accepted event in a response.
#[derive(Serialize, ToSchema)]
#[schema(as = Accepted)]
pub struct AcceptedItem<'a> {
    /// The event's id (a UUIDv7), as stored.
    id: uuid::Uuid,
    #[schema(example = "sig_bFyqj0qg")]
    signal_id: &'a str,
    /// The resolved schema version; null when the signal has no schema.
    schema_version: Option<u32>,
    /// Always `pending`: the event is queued and will be stored exactly once.
    #[schema(example = "pending", pattern = "^pending$")]
    status: &'static str,
    /// The event's `reference`, or null.
    reference: Option<&'a str>,
}

/// One rate-limited event in a batch response.
#[derive(Serialize, ToSchema)]
#[schema(as = RateLimited)]
pub struct LimitedItem<'a> {
    signal_id: &'a str,
    reference: Option<&'a str>,
    /// The event's position in the request.
    index: usize,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true,
    "data": [{"id": "0193a5c8-7d2e-7000-8000-4f2b9c1d3e5a", "signal_id": "sig_bFyqj0qg",
              "schema_version": null, "status": "pending", "reference": "evt-001"}],
    "rate_limited": [{"signal_id": "sig_bFyqj0qg", "reference": "evt-002", "index": 1}]}))]
pub struct BatchResponse<'a> {
    /// Always true.
    success: bool,
    /// The accepted events, in request order.
    data: Vec<AcceptedItem<'a>>,
    /// Present only when some events were rate limited.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rate_limited: Vec<LimitedItem<'a>>,
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"success": true,
    "data": {"id": "0193a5c8-7d2e-7000-8000-4f2b9c1d3e5a", "signal_id": "sig_bFyqj0qg",
             "schema_version": null, "status": "pending", "reference": "evt-001"}}))]
pub struct SingleResponse<'a> {
    /// Always true.
    success: bool,
    data: AcceptedItem<'a>,
}

// The answers' text: what serde writes for these types (their derives are the reference, and
// the OpenAPI document's), written by `crate::json` without serde's escaping pass over keys,
// ids and the other texts that need none. The tests below hold the two to the same bytes.

impl AcceptedItem<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        json::uuid(out, &self.id);
        out.extend_from_slice(b",\"signal_id\":");
        json::string(out, self.signal_id);
        out.extend_from_slice(b",\"schema_version\":");
        json::optional_number(out, self.schema_version);
        out.extend_from_slice(b",\"status\":");
        json::string(out, self.status);
        out.extend_from_slice(b",\"reference\":");
        json::optional_string(out, self.reference);
        out.push(b'}');
    }
}

impl LimitedItem<'_> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"signal_id\":");
        json::string(out, self.signal_id);
        out.extend_from_slice(b",\"reference\":");
        json::optional_string(out, self.reference);
        out.extend_from_slice(b",\"index\":");
        json::number(out, self.index as u64);
        out.push(b'}');
    }
}

impl BatchResponse<'_> {
    fn to_json(&self) -> Vec<u8> {
        // An accepted item is under 200 bytes but for its reference.
        let references: usize = self
            .data
            .iter()
            .map(|d| d.reference.map_or(0, str::len))
            .sum();
        let mut out = Vec::with_capacity(64 + 200 * self.data.len() + references);
        out.extend_from_slice(b"{\"success\":");
        json::boolean(&mut out, self.success);
        out.extend_from_slice(b",\"data\":");
        json::array(&mut out, &self.data, |out, item| item.write_json(out));
        if !self.rate_limited.is_empty() {
            out.extend_from_slice(b",\"rate_limited\":");
            json::array(&mut out, &self.rate_limited, |out, item| {
                item.write_json(out)
            });
        }
        out.push(b'}');
        out
    }
}

impl SingleResponse<'_> {
    fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"success\":");
        json::boolean(&mut out, self.success);
        out.extend_from_slice(b",\"data\":");
        self.data.write_json(&mut out);
        out.push(b'}');
        out
    }
}

/// The OpenAPI tag of the ingest endpoints, whose answers carry the rate-limit headers.
pub const TAG: &str = "ingest";

/// Sends 1 to 100 events. Each is admitted against its signal's window in request order; those
/// over the limit are listed in `rate_limited`, the rest are acknowledged at once.
#[utoipa::path(
    post,
    path = "/v1/events/batch",
    tag = TAG,
    params(super::schemas::IdempotencyKey),
    request_body(content = super::schemas::BatchInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted (some may be rate limited)", body = BatchResponse,
            headers(("Idempotency-Replayed" = String,
                description = "`true` when this is the recorded answer to an earlier request with the same key"))),
        (status = 400, description = "`Invalid JSON: ...`, `events array is required and must not be empty`, \
            `Maximum 100 events per batch`, a field's problem (with `details`), an unknown schema version, \
            or a malformed `Idempotency-Key`", body = ErrorBody),
        (status = 404, description = "`Signals not found: a, b`", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 422, description = "`Idempotency-Key has already been used with a different request`", body = ErrorBody),
        (status = 429, description = "`Rate limit exceeded for all events in batch`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Whole seconds until the window resets, at least 1"))),
    )
)]
pub async fn batch(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request = read_authenticated(&req, payload, &state).await?;
    let events = domain::parse_batch(&request.body).map_err(|e| state.rejected(e))?;
    let admitted = admit(&request, &state, &events, true).await?;
    let headers = RateHeaders::of(&admitted);

    let mut data = Vec::with_capacity(events.len());
    let mut rate_limited = Vec::new();
    for (index, (outcome, event)) in admitted.events.iter().zip(&events).enumerate() {
        match outcome {
            Outcome::Accepted { .. } => data.push(accepted_item(outcome, event, &admitted)),
            Outcome::RateLimited { signal } => rate_limited.push(LimitedItem {
                signal_id: &admitted.signals[*signal].id,
                reference: event.reference.as_deref(),
                index,
            }),
        }
    }
    if data.is_empty() {
        return Err(ApiError::RateLimited {
            message: "Rate limit exceeded for all events in batch".to_owned(),
            headers,
        });
    }
    let mut response = HttpResponse::Ok();
    headers.apply(&mut response, false);
    mark_replay(&mut response, &admitted);
    let answer = BatchResponse {
        success: true,
        data,
        rate_limited,
    };
    Ok(response
        .insert_header(ContentType::json())
        .body(answer.to_json()))
}

/// Sends one event.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = TAG,
    params(super::schemas::IdempotencyKey),
    request_body(content = super::schemas::EventInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted", body = SingleResponse,
            headers(("Idempotency-Replayed" = String,
                description = "`true` when this is the recorded answer to an earlier request with the same key"))),
        (status = 400, description = "`Invalid JSON: ...`, a field's problem (with `details`), an unknown \
            schema version, or a malformed `Idempotency-Key`", body = ErrorBody),
        (status = 404, description = "`Signals not found: <slug>`", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 422, description = "`Idempotency-Key has already been used with a different request`", body = ErrorBody),
        (status = 429, description = "`Rate limit exceeded for signal <slug>`", body = ErrorBody,
            headers(("Retry-After" = String, description = "Whole seconds until the window resets, at least 1"))),
    )
)]
pub async fn single(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let request = read_authenticated(&req, payload, &state).await?;
    let event = domain::parse_single(&request.body).map_err(|e| state.rejected(e))?;
    let events = [event];
    let admitted = admit(&request, &state, &events, false).await?;
    let headers = RateHeaders::of(&admitted);
    let outcome = &admitted.events[0];
    if let Outcome::RateLimited { .. } = outcome {
        return Err(ApiError::RateLimited {
            message: format!("Rate limit exceeded for signal {}", events[0].signal),
            headers,
        });
    }
    let mut response = HttpResponse::Ok();
    headers.apply(&mut response, false);
    mark_replay(&mut response, &admitted);
    let answer = SingleResponse {
        success: true,
        data: accepted_item(outcome, &events[0], &admitted),
    };
    Ok(response
        .insert_header(ContentType::json())
        .body(answer.to_json()))
}

/// An authenticated request, read whole.
struct Request {
    principal: Principal,
    /// The body, decompressed.
    body: String,
    /// Its `Idempotency-Key`, with the request's fingerprint.
    idempotency: Option<(String, String)>,
}

async fn read_authenticated(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
) -> Result<Request, ApiError> {
    let principal = state.keys.authenticate(req, &state.redis).await?;
    req.extensions_mut().insert(principal.clone());
    let key = idempotency::key_of(req)?;
    let body = super::body::read_json(
        req,
        payload,
        state.settings.body_limit_bytes,
        state.settings.body_timeout,
    )
    .await?;
    let idempotency = key.map(|key| {
        let fingerprint =
            Idempotency::fingerprint(req.method().as_str(), req.path(), body.as_bytes());
        (key, fingerprint)
    });
    Ok(Request {
        principal,
        body,
        idempotency,
    })
}

fn mark_replay(response: &mut actix_web::HttpResponseBuilder, admitted: &Admitted) {
    if admitted.replayed {
        response.insert_header((idempotency::REPLAYED, "true"));
    }
}

/// Runs the admission script and turns refusals into errors; counts the outcome.
async fn admit(
    request: &Request,
    state: &AppState,
    events: &[Event<'_>],
    batch: bool,
) -> Result<Admitted, ApiError> {
    let timer = state.metrics.script_duration.start_timer();
    let idempotency = request
        .idempotency
        .as_ref()
        .map(|(key, fingerprint)| Idempotency {
            key,
            fingerprint,
            ttl: state.settings.idempotency_ttl,
        });
    let principal = &request.principal;
    if let Err(refusal) = state.memory.check(principal.keys.partition) {
        return Err(refused(state, refusal.into(), events.len()));
    }
    let verdict = state
        .admission
        .admit(
            &state.redis,
            &principal.tenant_id,
            &principal.keys,
            events,
            Utc::now(),
            idempotency.as_ref(),
        )
        .await;
    timer.observe_duration();
    let reject = |reason: &str| {
        let events = events.len() as u64;
        state
            .metrics
            .events_rejected
            .with_label_values(&[reason])
            .inc_by(events)
    };
    let verdict = verdict.map_err(|e| refused(state, e.into(), events.len()))?;
    match verdict {
        Verdict::NotFound(slugs) => {
            reject("signal_not_found");
            Err(ApiError::SignalsNotFound(slugs))
        }
        Verdict::BadVersions(bad) => {
            reject("schema_version");
            let errors = bad.iter().map(|b| version_error(b, batch)).collect();
            Err(ApiError::Validation(errors))
        }
        Verdict::KeyReused => Err(ApiError::IdempotencyKeyReused),
        Verdict::Admitted(admitted) if admitted.replayed => {
            // Counted when first admitted; nothing was admitted now.
            state.metrics.idempotent_replays.inc();
            Ok(admitted)
        }
        Verdict::Admitted(admitted) => {
            count_admitted(state, &admitted);
            Ok(admitted)
        }
    }
}

/// An event that asked for a schema version its signal does not have.
fn version_error(bad: &BadVersion, batch: bool) -> domain::FieldError {
    let at = domain::EventPath {
        index: bad.index,
        batch,
    };
    let field = at.field("version");
    let has = match bad.available {
        0 => "it has no schema".to_owned(),
        n => format!("latest is {n}"),
    };
    domain::FieldError {
        index: bad.index,
        message: format!(
            "{field}: signal {} has no schema version {} ({has})",
            bad.slug, bad.requested
        ),
        field,
    }
}

/// Counts a request's accepted and rate-limited events per signal type: tallied per signal
/// first, so one labelled-counter lookup per signal, not per event.
fn count_admitted(state: &AppState, admitted: &Admitted) {
    let mut tally = vec![(0u64, 0u64); admitted.signals.len()];
    for outcome in &admitted.events {
        match outcome {
            Outcome::Accepted { signal, .. } => tally[*signal].0 += 1,
            Outcome::RateLimited { signal } => tally[*signal].1 += 1,
        }
    }
    for (window, (accepted, limited)) in admitted.signals.iter().zip(tally) {
        let label = [window.signal_type.as_str()];
        if accepted > 0 {
            state
                .metrics
                .events_accepted
                .with_label_values(&label)
                .inc_by(accepted);
        }
        if limited > 0 {
            state
                .metrics
                .events_rate_limited
                .with_label_values(&label)
                .inc_by(limited);
        }
    }
}

fn accepted_item<'a>(
    outcome: &Outcome,
    event: &'a Event<'_>,
    admitted: &'a Admitted,
) -> AcceptedItem<'a> {
    let Outcome::Accepted {
        id,
        signal,
        schema_version,
    } = outcome
    else {
        unreachable!("only accepted outcomes are listed in data");
    };
    AcceptedItem {
        id: *id,
        signal_id: &admitted.signals[*signal].id,
        schema_version: *schema_version,
        status: "pending",
        reference: event.reference.as_deref(),
    }
}

impl AppState {
    /// Maps a body problem to its response, and counts the events it refused (none can be
    /// counted in a body that is not JSON or has no events array).
    fn rejected(&self, e: BodyError) -> ApiError {
        let (reason, events, error) = match e {
            BodyError::InvalidJson(what) => ("malformed", 0, ApiError::InvalidJson(what)),
            BodyError::NoEvents => (
                "malformed",
                0,
                ApiError::BadRequest("events array is required and must not be empty".to_owned()),
            ),
            BodyError::TooMany(n) => (
                "too_many",
                n,
                ApiError::BadRequest(format!("Maximum {} events per batch", domain::MAX_BATCH)),
            ),
            BodyError::Invalid(errors, n) => ("validation", n, ApiError::Validation(errors)),
        };
        self.metrics
            .events_rejected
            .with_label_values(&[reason])
            .inc_by(events as u64);
        error
    }
}

/// Counts a request refused for Redis memory (or any other reason Redis gave) and passes the
/// error on.
fn refused(state: &AppState, error: ApiError, events: usize) -> ApiError {
    if let ApiError::BacklogFull = error {
        state.metrics.backlog_full.inc();
        state
            .metrics
            .events_rejected
            .with_label_values(&["backlog_full"])
            .inc_by(events as u64);
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(reference: Option<&str>, schema_version: Option<u32>) -> AcceptedItem<'_> {
        AcceptedItem {
            id: uuid::Uuid::now_v7(),
            signal_id: "sig_bFyqj0qg",
            schema_version,
            status: "pending",
            reference,
        }
    }

    #[test]
    fn the_answers_are_the_text_serde_writes() {
        let references = [None, Some("evt-1"), Some("quote \" tab \t é 😀"), Some("")];
        let batches = [
            (vec![item(None, None)], vec![]),
            (
                references.iter().map(|r| item(*r, Some(3))).collect(),
                vec![
                    LimitedItem {
                        signal_id: "sig_x",
                        reference: Some("r\u{1}"),
                        index: 4,
                    },
                    LimitedItem {
                        signal_id: "sig_x",
                        reference: None,
                        index: 99,
                    },
                ],
            ),
        ];
        for (data, rate_limited) in batches {
            let answer = BatchResponse {
                success: true,
                data,
                rate_limited,
            };
            assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
        for reference in references {
            let answer = SingleResponse {
                success: true,
                data: item(reference, Some(u32::MAX)),
            };
            assert_eq!(
                String::from_utf8(answer.to_json()).unwrap(),
                serde_json::to_string(&answer).unwrap()
            );
        }
    }
}
