//! Logging setup shared by the binaries.

use std::io::BufWriter;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

use crate::config::{LogFormat, LogSettings};

/// The log lines not yet written: they are written when this is dropped, so a binary holds it
/// until it exits.
#[must_use = "dropping it stops the log writer"]
pub struct Logs(#[allow(dead_code)] WorkerGuard);

/// Installs a `tracing` subscriber writing to stderr, filtered by `SLUICE__LOG__LEVEL`
/// (or `RUST_LOG` when set), as text or JSON lines by `SLUICE__LOG__FORMAT`.
///
/// Lines are written by a thread of their own, in one write for all the lines waiting, so that
/// the request threads make no system call per log line (the api logs one per request). Nothing
/// is dropped: when that thread falls behind by more than its queue, logging waits for it.
///
/// Text lines are plain, without terminal colours wherever they go: `tracing-subscriber` built
/// with colour support runs every part of every line through its styling code even with colours
/// off, about 3% of the api's instructions per request (bench/history.md, run 14).
///
/// What is never logged: API keys (only key ids and tenant ids appear) and event data.
pub fn init(settings: &LogSettings) -> Logs {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&settings.level));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sluice-log")
        .finish(BufWriter::with_capacity(64 * 1024, std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    Logs(guard)
}
