//! The `X-RateLimit-*` and `Retry-After` headers of every 200 and 429 from the ingest endpoints.

use actix_web::HttpResponseBuilder;
use chrono::{DateTime, Utc};

use crate::ingest::Admitted;

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
        response
            .insert_header(("X-RateLimit-Limit", self.limit.to_string()))
            .insert_header(("X-RateLimit-Remaining", self.remaining.to_string()))
            .insert_header((
                "X-RateLimit-Reset",
                self.reset
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        if with_retry_after {
            response.insert_header(("Retry-After", self.retry_after.to_string()));
        }
    }
}
