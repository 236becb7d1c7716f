//! Parsed, validated types. Raw input becomes one of these at the edge, once; inner code never
//! looks at raw JSON again.

mod event;
mod ids;
pub mod json_guard;

pub use event::{
    BodyError, Event, FieldError, MAX_BATCH, SchemaVersion, parse_batch, parse_single,
};
pub use ids::{AdminTokenId, ApiKey, KeyId, Secret, SignalId, TenantId, hex, random_base62};

use std::fmt;
use std::str::FromStr;

/// The three kinds of signal. The type decides the default rate limit and, in the worker, how
/// an event is rolled up.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum SignalType {
    Event,
    Metric,
    State,
}

impl SignalType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Event => "event",
            SignalType::Metric => "metric",
            SignalType::State => "state",
        }
    }
}

impl fmt::Display for SignalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignalType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "event" => Ok(SignalType::Event),
            "metric" => Ok(SignalType::Metric),
            "state" => Ok(SignalType::State),
            other => Err(format!(
                "unknown signal type {other:?}: expected event, metric or state"
            )),
        }
    }
}

/// A signal's slug: what clients name it by, unique within its tenant.
/// 1–64 characters of `[a-z0-9_-]`, starting with a letter or digit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Slug(String);

impl Slug {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Slug(s.to_owned()))
        } else {
            Err(format!(
                "invalid slug {s:?}: use 1-{} characters of a-z, 0-9, '_' and '-', starting with a letter or digit",
                Self::MAX_LEN
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many items a page of a list holds: 1 to [`PageLimit::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit(u32);

impl PageLimit {
    pub const MAX: u32 = 1000;

    /// `limit`, or `default` when none was asked for.
    pub fn new(limit: Option<u32>, default: u32) -> Result<Self, String> {
        match limit.unwrap_or(default) {
            n @ 1..=Self::MAX => Ok(PageLimit(n)),
            _ => Err(format!("limit must be from 1 to {}", Self::MAX)),
        }
    }

    /// [`PageLimit::new`] of a query parameter's text.
    pub fn parse(limit: Option<&str>, default: u32) -> Result<Self, String> {
        let limit = limit
            .map(|text| text.parse::<u32>().map_err(|_| ()))
            .transpose()
            .map_err(|()| format!("limit must be from 1 to {}", Self::MAX))?;
        Self::new(limit, default)
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The value of a JSON number with no fractional part, as JSON Schema's `integer` reads it:
/// `500` and `500.0` alike. `None` for fractions, and for magnitudes past 2^53 written with a
/// fraction or exponent (they cannot be told from their neighbours).
pub fn whole_number(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            .map(|f| f as i64)
    })
}

/// True when `s` is a valid identity type: 1–64 characters of `[a-z0-9_-]`. The built-in
/// types (`account`, `contact`, `deal`, `lead`) are such strings too.
pub fn is_identity_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["a", "page_view", "mrr-2", "0day"] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Page", "_x", "a b", "é", &"a".repeat(65)] {
            assert!(Slug::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn page_limits() {
        assert_eq!(PageLimit::parse(None, 100).unwrap().get(), 100);
        assert_eq!(PageLimit::parse(Some("1000"), 100).unwrap().get(), 1000);
        for bad in ["0", "1001", "-1", "ten", "", "1.5"] {
            assert!(PageLimit::parse(Some(bad), 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_types() {
        for ok in ["account", "contact", "deal", "lead", "custom_obj-1"] {
            assert!(is_identity_type(ok));
        }
        for bad in ["", "Account", "a.b", "ü", &"x".repeat(65)] {
            assert!(!is_identity_type(bad));
        }
    }
}
