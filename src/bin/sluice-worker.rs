//! `sluice-worker`: drains the partition streams into PostgreSQL.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use sluice::metrics::WorkerMetrics;
use sluice::shutdown::Shutdown;
use sluice::worker::Worker;

#[derive(Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "The Sluice worker: drains the Redis partition streams into PostgreSQL, exactly once.",
    after_help = "Settings come from SLUICE__<SECTION>__<KEY> environment variables and the TOML file \
                  named by SLUICE_CONFIG (see the README); /livez, /readyz and /metrics are served on \
                  SLUICE__WORKER__METRICS_BIND."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the worker serving SLUICE__WORKER__METRICS_BIND on this host whether it is ready
    /// (GET /readyz); exit 0 if it is, 1 with the reason if not. For container health checks.
    Healthcheck,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let healthcheck = matches!(cli.command, Some(Command::Healthcheck));
    let started =
        sluice::ops::start_service("sluice-worker", healthcheck, |s| s.worker.metrics_bind);
    let (settings, _logs) = match started {
        Ok(started) => started,
        Err(exit) => return exit,
    };

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

    let result = worker.run().await;
    server_handle.stop(true).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-worker: {e}");
            ExitCode::from(2)
        }
    }
}
