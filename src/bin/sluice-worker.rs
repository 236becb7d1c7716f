//! `sluice-worker`: drains the partition streams into PostgreSQL.

use std::process::ExitCode;
use std::sync::Arc;

use sluice::config::Settings;
use sluice::metrics::WorkerMetrics;
use sluice::worker::{Worker, http};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[actix_web::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
    sluice::telemetry::init(&settings.log);

    let (stop, stopped) = watch::channel(false);
    let worker = match Worker::new(&settings, WorkerMetrics::new(), stopped) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let (server, addr) = match http::serve(Arc::clone(&worker), settings.worker.metrics_bind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(%addr, "sluice-worker serving /metrics, /livez, /readyz");
    let server_handle = server.handle();
    actix_web::rt::spawn(server);

    // SIGTERM or SIGINT: stop reading, finish the batch in hand, commit, acknowledge, exit 0.
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    actix_web::rt::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutdown requested; finishing the batch in hand");
        let _ = stop.send(true);
    });

    worker.run().await;
    server_handle.stop(true).await;
    ExitCode::SUCCESS
}
