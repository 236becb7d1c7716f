//! Every way a request can fail, and its exact response: status, message, headers.
//!
//! All errors share the contract's shape `{"success": false, "error": "..."}` (plus `details` for
//! validation). The full cause of a 503 goes to the log, not to the client.

use actix_web::http::StatusCode;
use actix_web::http::header::RETRY_AFTER;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use super::rate_headers::RateHeaders;
use crate::domain::FieldError;

/// `Retry-After` of a 503 for a full backlog, in seconds.
pub const BACKLOG_RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing API key")]
    MissingKey,
    #[error("Invalid API key")]
    InvalidKey,
    #[error("Missing admin token")]
    MissingAdminToken,
    #[error("Invalid admin token")]
    InvalidAdminToken,
    /// A resource of the self-service or admin API that does not exist (the message names it).
    #[error("{0}")]
    NotFound(String),
    /// A change that clashes with what exists (the message says what).
    #[error("{0}")]
    Conflict(String),
    /// Saved in PostgreSQL, but the Redis copy the api reads could not be updated.
    #[error(
        "Saved, but the registry copy in Redis could not be updated; the api replicas see the change \
         once POST /admin/v1/sync (or the worker's next reconcile) succeeds"
    )]
    CopyStale(String),
    /// The admin API's PostgreSQL or Redis did not answer (operators see the cause).
    #[error("{0}; please retry")]
    Dependency(String),
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("Content-Encoding {0:?} is not supported; send gzip or an uncompressed body")]
    UnsupportedEncoding(String),
    #[error("Request body exceeds the limit of {limit} bytes (counted after decompression)")]
    PayloadTooLarge { limit: usize },
    #[error("Request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("Invalid JSON: {0}")]
    InvalidJson(String),
    #[error("{0}")]
    BadRequest(String),
    /// Field problems; the message is the first one's.
    #[error("{}", .0.first().map(|e| e.message.as_str()).unwrap_or("Invalid event"))]
    Validation(Vec<FieldError>),
    #[error("Signals not found: {}", .0.join(", "))]
    SignalsNotFound(Vec<String>),
    #[error("{message}")]
    RateLimited {
        message: String,
        headers: RateHeaders,
    },
    #[error("Idempotency-Key has already been used with a different request")]
    IdempotencyKeyReused,
    #[error("Event store unavailable, please retry")]
    Unavailable(String),
    /// Redis memory, which holds the events not yet stored, is full (or past the brake).
    #[error(
        "Event backlog is full: nothing was ingested; retry after the Retry-After seconds, while \
         stored events make room"
    )]
    BacklogFull,
    /// Redis would evict acknowledged events, or its streams are laid out over another partition
    /// count (operators see which).
    #[error(
        "Event store is not configured to keep events: nothing was ingested, please retry later"
    )]
    Unfit(String),
    /// The admission script was sent but its answer did not arrive: it may have run.
    #[error(
        "Event store did not confirm in time; the events may have been accepted. Retry with the \
         same Idempotency-Key to have them stored exactly once"
    )]
    Unconfirmed(String),
    #[error(
        "Events were enqueued but not confirmed by enough Redis replicas; they may still be stored. \
         Retry with the same Idempotency-Key to have them stored exactly once"
    )]
    NotReplicated(String),
}

/// Every error answer: `success` is false, `error` says what went wrong.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error, example = json!({"success": false, "error": "Invalid API key"}))]
pub struct Body<'a> {
    /// Always false.
    success: bool,
    error: String,
    /// Validation errors only: every problem found, by event and field.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<FieldError>>)]
    details: Option<&'a [FieldError]>,
}

impl Body<'_> {
    /// An error answer with no details.
    pub fn message(error: String) -> Self {
        Body {
            success: false,
            error,
            details: None,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::MissingAdminToken
            | ApiError::InvalidAdminToken => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::InvalidJson(_) | ApiError::BadRequest(_) | ApiError::Validation(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::SignalsNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_)
            | ApiError::Unconfirmed(_)
            | ApiError::NotReplicated(_)
            | ApiError::CopyStale(_)
            | ApiError::Dependency(_)
            | ApiError::BacklogFull
            | ApiError::Unfit(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited { headers, .. } => {
                headers.apply(&mut response, true);
            }
            ApiError::Unavailable(cause)
            | ApiError::Unconfirmed(cause)
            | ApiError::NotReplicated(cause)
            | ApiError::CopyStale(cause)
            | ApiError::Dependency(cause) => {
                tracing::warn!(%cause, "answering 503");
                response.insert_header((RETRY_AFTER, "1"));
            }
            // Room comes back as the worker stores events: give it a few seconds.
            ApiError::BacklogFull => {
                response.insert_header((RETRY_AFTER, BACKLOG_RETRY_AFTER_SECS));
            }
            // An operator has to change a setting: ask for patience.
            ApiError::Unfit(cause) => {
                tracing::warn!(%cause, "answering 503");
                response.insert_header((RETRY_AFTER, "30"));
            }
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::MissingAdminToken
            | ApiError::InvalidAdminToken => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            _ => {}
        }
        let details = match self {
            ApiError::Validation(errors) => Some(errors.as_slice()),
            _ => None,
        };
        response.json(Body {
            success: false,
            error: self.to_string(),
            details,
        })
    }
}

impl From<crate::redis_pool::RedisError> for ApiError {
    fn from(e: crate::redis_pool::RedisError) -> Self {
        match e {
            crate::redis_pool::RedisError::NotReplicated { .. } => {
                ApiError::NotReplicated(e.to_string())
            }
            crate::redis_pool::RedisError::Unconfirmed(_) => ApiError::Unconfirmed(e.to_string()),
            crate::redis_pool::RedisError::Command(ref c) if c.code() == Some("OOM") => {
                ApiError::BacklogFull
            }
            _ => ApiError::Unavailable(e.to_string()),
        }
    }
}

impl From<crate::registry::RegistryError> for ApiError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError as R;
        match e {
            R::NotFound(m) => ApiError::NotFound(m),
            R::Conflict(m) => ApiError::Conflict(m),
            R::Invalid(m) => ApiError::BadRequest(m),
            R::CopyStale(cause) => ApiError::CopyStale(cause),
            R::Postgres(_) | R::Redis(_) => ApiError::Dependency(e.to_string()),
        }
    }
}

impl From<crate::stream::dead_letters::DeadLetterError> for ApiError {
    fn from(e: crate::stream::dead_letters::DeadLetterError) -> Self {
        use crate::stream::dead_letters::DeadLetterError as D;
        match e {
            D::NotFound(m) => ApiError::NotFound(m),
            D::NotReplayable(m) => ApiError::Conflict(m),
            D::Postgres(_) | D::Redis(_) => ApiError::Dependency(e.to_string()),
        }
    }
}

impl From<crate::redis_memory::Refusal> for ApiError {
    fn from(refusal: crate::redis_memory::Refusal) -> Self {
        match refusal {
            crate::redis_memory::Refusal::Unfit(why) => ApiError::Unfit(why),
            crate::redis_memory::Refusal::Full => ApiError::BacklogFull,
        }
    }
}
