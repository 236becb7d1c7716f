//! `sluice-api`: the stateless HTTP replica.

use std::process::ExitCode;

use sluice::config::Settings;
use sluice::shutdown::Shutdown;

#[actix_web::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return ExitCode::from(2);
        }
    };
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
