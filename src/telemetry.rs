//! Logging setup shared by the binaries.

use crate::config::LogSettings;

/// Installs a `tracing` subscriber writing to stderr, filtered by `SLUICE__LOG__LEVEL`
/// (or `RUST_LOG` when set).
pub fn init(settings: &LogSettings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
