//! `sluice-api`: the stateless HTTP replica.

use sluice::config::Settings;

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    sluice::telemetry::init(&settings.log);
    let api = match sluice::api::serve(&settings, settings.api.bind) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    tracing::info!(addr = %api.addr, partitions = settings.redis.partitions, "sluice-api listening");
    match api.server.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
