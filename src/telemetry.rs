//! Logging setup shared by the binaries.

use crate::config::{LogFormat, LogSettings};

/// Installs a `tracing` subscriber writing to stderr, filtered by `SLUICE__LOG__LEVEL`
/// (or `RUST_LOG` when set), as text or JSON lines by `SLUICE__LOG__FORMAT`.
///
/// What is never logged: API keys (only key ids and tenant ids appear) and event data.
pub fn init(settings: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
