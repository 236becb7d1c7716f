//! The `X-RateLimit-*` and `Retry-After` headers of every 200 and 429 from the ingest endpoints.

use actix_web::HttpResponseBuilder;
use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use chrono::{DateTime, Utc};

use crate::ingest::Admitted;

// Names as they go out (HTTP names are case-insensitive; these are sent lower-case, as any
// name is), made once rather than parsed for every answer.
const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateHeaders {
    /// Highest limit among the request's signals.
    pub limit: u32,
    /// Lowest remaining count among them, after the request.
    pub remaining: u32,
    /// When the current window ends.
    pub reset: DateTime<Utc>,
    /// Whole seconds until `reset`, at least 1.
    pub retry_after: i64,
}

impl RateHeaders {
    pub fn of(admitted: &Admitted) -> Self {
        let limit = admitted.signals.iter().map(|s| s.limit).max().unwrap_or(0);
        let remaining = admitted
            .signals
            .iter()
            .map(|s| s.remaining)
            .min()
            .unwrap_or(0);
        let micros_left = (admitted.reset - admitted.now)
            .num_microseconds()
            .unwrap_or(0);
        let retry_after = ((micros_left + 999_999) / 1_000_000).max(1);
        RateHeaders {
            limit,
            remaining,
            reset: admitted.reset,
            retry_after,
        }
    }

    pub fn apply(&self, response: &mut HttpResponseBuilder, with_retry_after: bool) {
        let reset = self
            .reset
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        response
            .insert_header((LIMIT, HeaderValue::from(self.limit)))
            .insert_header((REMAINING, HeaderValue::from(self.remaining)))
            .insert_header((RESET, reset));
        if with_retry_after {
            response.insert_header((RETRY_AFTER, HeaderValue::from(self.retry_after)));
        }
    }
}
