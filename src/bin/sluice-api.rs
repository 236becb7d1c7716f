//! `sluice-api`: the stateless HTTP replica.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Settings;
use sluice::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "sluice-api",
    version,
    about = "The Sluice ingest replica: POST /v1/events/batch and /v1/events, plus /livez, /readyz and /metrics.",
    after_help = "Settings come from SLUICE__<SECTION>__<KEY> environment variables and the TOML file \
                  named by SLUICE_CONFIG (see the README); it listens on SLUICE__API__BIND."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Ask the api listening on SLUICE__API__BIND on this host whether it is ready (GET /readyz);
    /// exit 0 if it is, 1 with the reason if not. For container health checks.
    Healthcheck,
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Healthcheck) = cli.command {
        return sluice::ops::healthcheck_exit("sluice-api", settings.api.bind);
    }
    sluice::telemetry::init(&settings.log);
    let api = match sluice::api::serve(&settings, settings.api.bind) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(addr = %api.addr, partitions = settings.redis.partitions, "sluice-api listening");

    // SIGTERM or SIGINT: stop accepting connections, let requests in flight finish (up to
    // SLUICE__API__SHUTDOWN_GRACE_SECS), exit 0.
    let shutdown = Shutdown::on_signals().expect("installing signal handlers");
    let handle = api.server.handle();
    actix_web::rt::spawn(async move {
        shutdown.requested().await;
        handle.stop(true).await;
    });
    match api.server.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            ExitCode::FAILURE
        }
    }
}
