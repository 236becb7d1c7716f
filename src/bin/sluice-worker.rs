//! `sluice-worker`: drains the partition streams into PostgreSQL.

use std::process::ExitCode;
use std::sync::Arc;

use sluice::config::Settings;
use sluice::metrics::WorkerMetrics;
use sluice::shutdown::Shutdown;
use sluice::worker::Worker;

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

    // SIGTERM or SIGINT: stop reading, finish the batch in hand, commit, acknowledge, exit 0.
    let shutdown = Shutdown::on_signals().expect("installing signal handlers");
    let worker = match Worker::new(&settings, WorkerMetrics::new(), shutdown) {
        Ok(w) => Arc::new(w),
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let bind = settings.worker.metrics_bind;
    let (server, addr) =
        match sluice::ops::serve(Arc::clone(&worker), bind, "SLUICE__WORKER__METRICS_BIND") {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice-worker: {e}");
                return ExitCode::from(2);
            }
        };
    tracing::info!(%addr, "sluice-worker serving /metrics, /livez, /readyz");
    let server_handle = server.handle();
    actix_web::rt::spawn(server);

    worker.run().await;
    server_handle.stop(true).await;
    ExitCode::SUCCESS
}
