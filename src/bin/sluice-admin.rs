//! `sluice-admin`: migrations, tenants, API keys, signals, schemas, sync.

use std::process::ExitCode;

use clap::Parser;
use sluice::admin::{Cli, run};
use sluice::config::Settings;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-admin: {e}");
            return ExitCode::from(2);
        }
    };
    match run(cli, &settings).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sluice-admin: {e}");
            ExitCode::FAILURE
        }
    }
}
