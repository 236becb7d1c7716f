//! Turning stream entries into records: schema validation with compiled schemas cached, and
//! the checks each signal type needs before it can be rolled up or kept as a state.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::Value;

use super::sink::{Record, SinkError};
use crate::domain::SignalType;
use crate::stream::StreamEntry;

/// Schema versions never change once added, so compiled validators are kept for good; the
/// cache is bounded only against a pathological number of versions.
const MAX_CACHED: usize = 10_000;
/// How many schema violations an invalid event's `error` lists.
const MAX_REPORTED: usize = 5;

/// The largest magnitude of a metric's `data.value`: a rollup bucket's `sum` is a double, and
/// 2^63 values of this size (more than its `count` can hold) add up to less than `f64::MAX`, so
/// no sum can overflow — neither the worker's upsert nor a read adding up every identity.
const MAX_METRIC_VALUE: f64 = 1e289;

type Compiled = Option<Arc<jsonschema::Validator>>;

#[derive(Default)]
pub struct Validator {
    /// signal id → version → compiled schema, or `None` when PostgreSQL has no such version.
    cache: HashMap<String, HashMap<u32, Compiled>>,
    /// How many versions `cache` holds.
    cached: usize,
}

impl Validator {
    /// Compiles the schema versions `entries` need that are not cached yet. The only step that
    /// talks to PostgreSQL, so the only one retried during an outage.
    pub async fn load_missing(
        &mut self,
        pg: &Pool,
        entries: &[StreamEntry],
    ) -> Result<(), SinkError> {
        let mut wanted: Vec<(&str, u32)> = entries
            .iter()
            .filter_map(|e| Some((e.signal.as_str(), e.schema_version?)))
            .filter(|(signal, version)| {
                self.cache
                    .get(*signal)
                    .is_none_or(|v| !v.contains_key(version))
            })
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        wanted.sort_unstable();
        wanted.dedup();
        if self.cached + wanted.len() > MAX_CACHED {
            self.cache.clear();
            self.cached = 0;
        }
        let signals: Vec<&str> = wanted.iter().map(|(s, _)| *s).collect();
        let versions: Vec<i32> = wanted.iter().map(|(_, v)| *v as i32).collect();
        let client = pg.get().await?;
        let rows = client
            .query(
                "SELECT s.signal_id, s.version, s.schema FROM signal_schemas s
                 JOIN unnest($1::text[], $2::int[]) AS w(signal_id, version)
                   ON w.signal_id = s.signal_id AND w.version = s.version",
                &[&signals, &versions],
            )
            .await?;
        let mut found: HashMap<(String, u32), Compiled> = HashMap::with_capacity(rows.len());
        for row in rows {
            let schema: Value = row.get(2);
            // Schemas are checked when added; one that no longer compiles counts as missing.
            let compiled = jsonschema::validator_for(&schema).ok().map(Arc::new);
            found.insert((row.get(0), row.get::<_, i32>(1) as u32), compiled);
        }
        for (signal, version) in wanted {
            let compiled = found.remove(&(signal.to_owned(), version)).flatten();
            self.cache
                .entry(signal.to_owned())
                .or_default()
                .insert(version, compiled);
            self.cached += 1;
        }
        Ok(())
    }

    /// Turns an entry into a record; its schema version must have been loaded.
    pub fn check(&self, entry: StreamEntry) -> Record {
        // The api already checked that data is a storable object; it needs parsing only to be
        // checked against a schema or to have its metric value read.
        if entry.schema_version.is_none() && entry.signal_type != SignalType::Metric {
            return Record {
                entry,
                invalid: None,
                value: None,
            };
        }
        let data: Value = match serde_json::from_str(entry.data.get()) {
            Ok(v) => v,
            Err(e) => return invalid(entry, format!("data is not readable JSON: {e}")),
        };
        if let Some(version) = entry.schema_version {
            match self
                .cache
                .get(&entry.signal)
                .and_then(|versions| versions.get(&version))
            {
                Some(Some(schema)) => {
                    let problems: Vec<String> = schema
                        .iter_errors(&data)
                        .take(MAX_REPORTED)
                        .map(|e| {
                            let at = e.instance_path().to_string();
                            if at.is_empty() {
                                e.to_string()
                            } else {
                                format!("{at}: {e}")
                            }
                        })
                        .collect();
                    if !problems.is_empty() {
                        let reason = format!(
                            "data does not match schema version {version}: {}",
                            problems.join("; ")
                        );
                        return invalid(entry, reason);
                    }
                }
                _ => {
                    let reason = format!(
                        "schema version {version} of signal {} not found",
                        entry.signal
                    );
                    return invalid(entry, reason);
                }
            }
        }
        let value = match entry.signal_type {
            SignalType::Metric => match data.get("value").and_then(Value::as_f64) {
                Some(v) if v.abs() <= MAX_METRIC_VALUE => Some(v),
                Some(_) => {
                    let reason = format!(
                        "metric events need a data.value from -{MAX_METRIC_VALUE:e} to \
                         {MAX_METRIC_VALUE:e}, so that their rollups' sums stay within a double"
                    );
                    return invalid(entry, reason);
                }
                None => {
                    return invalid(entry, "metric events need a numeric data.value".to_owned());
                }
            },
            _ => None,
        };
        Record {
            entry,
            invalid: None,
            value,
        }
    }
}

fn invalid(entry: StreamEntry, reason: String) -> Record {
    Record {
        entry,
        invalid: Some(reason),
        value: None,
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_METRIC_VALUE;

    #[test]
    fn no_bucket_of_metric_values_can_sum_past_a_double() {
        let most = i64::MAX as f64 * MAX_METRIC_VALUE;
        assert!(most.is_finite() && most < f64::MAX / 1.5, "{most}");
    }
}
