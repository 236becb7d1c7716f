//! `sluice-api`: the stateless HTTP replica.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::config::Settings;
use sluice::shutdown::Shutdown;

#[derive(Parser)]
#[command(
    name = "sluice-api",
    version,
    about = "The Sluice ingest replica: POST /v1/events/batch and /v1/events, GET /v1/signals, plus /livez, \
             /readyz, /metrics and /openapi.json; with SLUICE__ADMIN__BIND, the admin API on its own listener.",
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
    /// Print the OpenAPI 3.1 document the public listener serves at /openapi.json (with
    /// --admin: the admin listener's), for client generators; needs no settings.
    Openapi {
        #[arg(long)]
        admin: bool,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi { admin }) = cli.command {
        let doc = if admin {
            sluice::api::openapi::admin()
        } else {
            sluice::api::openapi::public()
        };
        println!("{}", doc.to_pretty_json().expect("the document serializes"));
        return ExitCode::SUCCESS;
    }
    let healthcheck = matches!(cli.command, Some(Command::Healthcheck));
    let (settings, _logs) =
        match sluice::ops::start_service("sluice-api", healthcheck, |s| s.api.bind) {
            Ok(started) => started,
            Err(exit) => return exit,
        };
    if let Err(line) = refuse_unfit_redis(&settings).await {
        eprintln!("sluice-api: {line}");
        return ExitCode::from(2);
    }
    let api = match sluice::api::serve(&settings, settings.api.bind) {
        Ok(api) => api,
        Err(e) => {
            eprintln!("sluice-api: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(addr = %api.addr, partitions = settings.redis.partitions, "sluice-api listening");
    if let Some(admin) = &api.admin {
        tracing::info!(addr = %admin.addr, "admin API listening");
    }

    // SIGTERM or SIGINT: stop accepting connections, let requests in flight finish (up to
    // SLUICE__API__SHUTDOWN_GRACE_SECS), exit 0. The admin listener stops with the api.
    let shutdown = Shutdown::on_signals().expect("installing signal handlers");
    let mut handles = vec![api.server.handle()];
    handles.extend(api.admin.as_ref().map(|a| a.server.handle()));
    actix_web::rt::spawn(async move {
        shutdown.requested().await;
        futures_util::future::join_all(handles.iter().map(|h| h.stop(true))).await;
    });
    let admin = async move {
        match api.admin {
            Some(admin) => admin.server.await,
            None => Ok(()),
        }
    };
    match futures_util::future::join(api.server, admin).await {
        (Ok(()), Ok(())) => ExitCode::SUCCESS,
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("sluice-api: {e}");
            ExitCode::FAILURE
        }
    }
}

/// An evicting Redis would lose acknowledged events, and one laid out over another partition
/// count would strand them: the api does not start on either.
async fn refuse_unfit_redis(settings: &Settings) -> Result<(), String> {
    let redis = sluice::redis_pool::Redis::new(&settings.redis)?;
    let keyspace = sluice::keyspace::Keyspace::new(settings.redis.partitions);
    sluice::redis_memory::refuse_unfit_at_start(
        &redis,
        keyspace,
        sluice::redis_memory::Role::Api,
        settings.redis.allow_eviction,
    )
    .await
}
