//! Self-service for client developers: `GET /v1/signals` and `GET /v1/signals/{slug}`, with
//! the tenant's own API key. Each answer costs one Redis call (`lua/signals.lua`), reads the
//! windows admission raises, and counts against no limit.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Body as ErrorBody};
use crate::domain::{Rule, SignalType, Slug};
use crate::ingest::windows::SignalStatus;

/// The current rate-limit window of a signal.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"used": 12, "remaining": 88, "reset": "2026-11-26T10:15:00Z"}))]
pub struct Window {
    /// Events admitted in this window.
    used: u32,
    /// Events it may still admit.
    remaining: u32,
    /// When the window ends (ISO 8601, UTC): the next one starts empty.
    #[schema(format = DateTime)]
    reset: String,
}

/// A signal of the caller's tenant, with its window.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"id": "sig_bFyqj0qg", "slug": "page_view", "type": "event", "active": true,
    "limit": 100, "schema_versions": [1, 2],
    "window": {"used": 12, "remaining": 88, "reset": "2026-11-26T10:15:00Z"}}))]
pub struct SignalView {
    #[schema(example = "sig_bFyqj0qg")]
    id: String,
    slug: String,
    #[serde(rename = "type")]
    signal_type: SignalType,
    /// Inactive signals refuse events (404 on ingest).
    active: bool,
    /// Events per minute: the signal's own limit, or the default for its type.
    limit: u32,
    /// The schema versions events may name, oldest first (empty: no schema).
    schema_versions: Vec<u32>,
    window: Window,
}

impl From<&SignalStatus> for SignalView {
    fn from(s: &SignalStatus) -> Self {
        SignalView {
            id: s.signal.id.clone(),
            slug: s.slug.clone(),
            signal_type: s.signal.signal_type,
            active: s.signal.active,
            limit: s.limit,
            schema_versions: (1..=s.signal.schema_versions).collect(),
            window: Window {
                used: s.used,
                remaining: s.remaining(),
                reset: s.reset.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SignalList {
    /// Always true.
    success: bool,
    /// Every signal of the tenant, active or not, by slug.
    data: Vec<SignalView>,
}

#[derive(Serialize, ToSchema)]
pub struct SignalOne {
    /// Always true.
    success: bool,
    data: SignalView,
}

/// Lists the caller's signals with their current windows.
#[utoipa::path(
    get,
    path = "/v1/signals",
    tag = "self-service",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The tenant's signals", body = SignalList),
        (status = 401, description = "`Missing API key` or `Invalid API key`", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 503, description = "Redis unreachable or too slow; retry", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let signals = read(&req, &state, None).await?;
    Ok(HttpResponse::Ok().json(SignalList {
        success: true,
        data: signals.iter().map(SignalView::from).collect(),
    }))
}

/// One of the caller's signals with its current window.
#[utoipa::path(
    get,
    path = "/v1/signals/{slug}",
    tag = "self-service",
    security(("api_key" = [])),
    params(("slug" = inline(Slug), Path, description = "The signal's slug")),
    responses(
        (status = 200, description = "The signal", body = SignalOne),
        (status = 400, description = "Not a valid slug", body = ErrorBody),
        (status = 401, description = "`Missing API key` or `Invalid API key`", body = ErrorBody,
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`Signal not found: <slug>`: the tenant has no such signal", body = ErrorBody),
        (status = 503, description = "Redis unreachable or too slow; retry", body = ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn one(
    req: HttpRequest,
    slug: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let signals = read(&req, &state, Some(&slug)).await?;
    let signal = signals
        .first()
        .ok_or_else(|| ApiError::NotFound(format!("Signal not found: {slug}")))?;
    Ok(HttpResponse::Ok().json(SignalOne {
        success: true,
        data: signal.into(),
    }))
}

async fn read(
    req: &HttpRequest,
    state: &AppState,
    slug: Option<&str>,
) -> Result<Vec<SignalStatus>, ApiError> {
    let principal = state.keys.authenticate(req, &state.redis).await?;
    req.extensions_mut().insert(principal.clone());
    if let Some(slug) = slug {
        Slug::parse(slug).map_err(ApiError::BadRequest)?;
    }
    state
        .windows
        .read(&state.redis, &principal.tenant_id, slug)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}
