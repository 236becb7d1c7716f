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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing API key")]
    MissingKey,
    #[error("Invalid API key")]
    InvalidKey,
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

#[derive(Serialize)]
struct Body<'a> {
    success: bool,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a [FieldError]>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MissingKey | ApiError::InvalidKey => StatusCode::UNAUTHORIZED,
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
            ApiError::Unavailable(_) | ApiError::Unconfirmed(_) | ApiError::NotReplicated(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            | ApiError::NotReplicated(cause) => {
                tracing::warn!(%cause, "answering 503");
                response.insert_header((RETRY_AFTER, "1"));
            }
            ApiError::MissingKey | ApiError::InvalidKey => {
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
            _ => ApiError::Unavailable(e.to_string()),
        }
    }
}
