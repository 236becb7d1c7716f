//! Starts the local development PostgreSQL for `deploy/dev/up.sh` the way the tests and the
//! benchmark start theirs (`tests/api/support/servers.rs`), and leaves it running.
//!
//! `cargo run --example dev-postgres -- <data directory> <port>`: initialises the directory on
//! first use, starts the server on 127.0.0.1:<port> (its socket in the data directory, its log
//! in `server.log` there) and returns once it accepts connections.

#[path = "../../tests/api/support/certs.rs"]
#[allow(dead_code)]
mod certs;
#[path = "../../tests/api/support/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(data), Some(Ok(port)), 2) = (
        args.first().map(PathBuf::from),
        args.get(1).map(|p| p.parse::<u16>()),
        args.len(),
    ) else {
        eprintln!("usage: dev-postgres <data directory> <port>");
        return ExitCode::from(2);
    };
    servers::Postgres::start_kept(&data, port);
    ExitCode::SUCCESS
}
