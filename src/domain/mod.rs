//! Parsed, validated types. Raw input becomes one of these at the edge, once; inner code never
//! looks at raw JSON again.

mod event;
mod ids;
pub mod json_guard;
pub mod text;

pub use event::{
    BodyError, Event, EventPath, FieldError, MAX_BATCH, SchemaVersion, parse_batch, parse_single,
};
pub use ids::{AdminTokenId, ApiKey, KeyId, Secret, SignalId, TenantId, hex, random_base62};
pub use text::{IdentityId, IdentityType, Label, PerMinute, Rule, Slug, TenantName};

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

/// A limit given as text (a command-line option): 1 to [`PageLimit::MAX`].
impl std::str::FromStr for PageLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(Some(text), 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_limits() {
        assert_eq!(PageLimit::parse(None, 100).unwrap().get(), 100);
        assert_eq!(PageLimit::parse(Some("1000"), 100).unwrap().get(), 1000);
        for bad in ["0", "1001", "-1", "ten", "", "1.5"] {
            assert!(PageLimit::parse(Some(bad), 100).is_err(), "{bad}");
        }
    }
}
