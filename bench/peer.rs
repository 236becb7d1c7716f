//! The peer: PostHog's Rust capture server (`PostHog/capture` at commit 56dfe44), run with
//! `PRINT_SINK=true`, so it authenticates, parses and drops — no enqueue, no limits. Measured
//! in the same run as Sluice with the same client (`wrk`, 2 threads, 64 connections) and events
//! of the same size, at 1, 10 and 100 events per request.
//!
//! Found as `BENCH_CAPTURE_BIN` (a built `capture-server`), or built from `BENCH_CAPTURE_SRC` (a
//! clone of the repository holding that commit) into `target/peer` with the recipe that builds
//! it today: `cargo update -p time --precise 0.3.36`, `cmake` installed. Without either, the run
//! says so in BENCHMARKS.md and measures Sluice alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::measure::{Process, Stack};
use crate::servers::{free_port, wait_until};

pub const COMMIT: &str = "56dfe44";

/// What `wrk` measured.
#[derive(Clone, Debug)]
pub struct Wrk {
    /// Answers received in the run.
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p99_ms: f64,
    /// Answers that were not 2xx.
    pub failed: u64,
}

/// The built capture server, or why there is none.
pub fn capture_server(root: &Path) -> Result<PathBuf, String> {
    if let Ok(bin) = std::env::var("BENCH_CAPTURE_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(format!("BENCH_CAPTURE_BIN={} is not a file", bin.display()))
        };
    }
    let Ok(src) = std::env::var("BENCH_CAPTURE_SRC") else {
        return Err(format!(
            "set BENCH_CAPTURE_SRC to a clone of PostHog/capture (commit {COMMIT}) to measure it"
        ));
    };
    let dir = root.join("target/peer").join(format!("capture-{COMMIT}"));
    let bin = dir.join("target/release/capture-server");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("bench: building the capture server {COMMIT} (once; several minutes)");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let sh = format!(
        "git -C '{src}' archive {COMMIT} | tar -x -C '{dir}' && cd '{dir}' && \
         cargo update -q -p time --precise 0.3.36 && cargo build -q --release -p capture-server",
        dir = dir.display()
    );
    let status = Command::new("sh").args(["-c", &sh]).status();
    match status {
        Ok(s) if s.success() && bin.is_file() => Ok(bin),
        _ => Err(format!(
            "building the capture server from {src} failed (needs cmake and libssl-dev)"
        )),
    }
}

/// The capture server on a free port, answering; stopped when dropped.
pub fn start_capture(bin: &Path, stack: &Stack) -> (Process, String) {
    let port = free_port();
    let vars: Vec<(String, String)> = [
        ("PRINT_SINK", "true".to_owned()),
        ("ADDRESS", format!("127.0.0.1:{port}")),
        ("REDIS_URL", stack.redis.url()),
        ("KAFKA_HOSTS", "127.0.0.1:9".to_owned()),
        ("KAFKA_TOPIC", "unused".to_owned()),
        ("EXPORT_PROMETHEUS", "false".to_owned()),
        // The print sink logs every event at info: quiet, it only drops them.
        ("RUST_LOG", "error".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let capture = Process::spawn(
        bin.to_str().unwrap(),
        &vars,
        &stack.work.path().join("capture.log"),
    );
    wait_until("the capture server to listen", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (capture, format!("http://127.0.0.1:{port}"))
}

/// The data every event carries (about 200 bytes of JSON): the same for both servers.
fn data(i: usize) -> String {
    format!(
        r#"{{"path":"/pricing/plan-{i}","utm":{{"source":"newsletter","campaign":"winter-{i}"}},"value":{i}.5,"note":"{}"}}"#,
        "x".repeat(60)
    )
}

/// A Sluice batch of `n` events over `signals` signals (about 260 bytes an event, as
/// [`capture_body`]'s).
pub fn sluice_body(n: usize, signals: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"signal":"bench{}","identity":{{"type":"account","id":"acc_{i:06}"}},"data":{},"reference":"ref-{i}"}}"#,
                i % signals,
                data(i)
            )
        })
        .collect();
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

/// A capture batch of `n` events of the same data.
pub fn capture_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"api_key":"phc_bench0123456789abcdef","event":"page_view","distinct_id":"acc_{i:06}","properties":{}}}"#,
                data(i)
            )
        })
        .collect();
    format!("[{}]", events.join(","))
}

/// `wrk -t2 -c64` POSTing `body` to `url` for `seconds`, with `headers`.
pub fn wrk(work: &Path, url: &str, body: &str, headers: &[(&str, &str)], seconds: f64) -> Wrk {
    let script = work.join("wrk.lua");
    let mut lua = format!(
        "wrk.method = \"POST\"\nwrk.body = [==[{body}]==]\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    for (name, value) in headers {
        lua.push_str(&format!("wrk.headers[\"{name}\"] = \"{value}\"\n"));
    }
    std::fs::write(&script, lua).unwrap();
    let out = Command::new("wrk")
        .args(["-t2", "-c64", "--latency"])
        .arg(format!("-d{}s", seconds.ceil()))
        .arg("-s")
        .arg(&script)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .expect("wrk is installed (bench/run.sh installs it)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn parse_wrk(text: &str) -> Wrk {
    let after = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
    };
    let latency = |prefix: &str| {
        let v = after(prefix);
        let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap());
        let number: f64 = number.parse().unwrap();
        match unit {
            "us" => number / 1000.0,
            "ms" => number,
            "s" => number * 1000.0,
            "m" => number * 60_000.0,
            other => panic!("unit {other} in wrk's output"),
        }
    };
    let failed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().unwrap());
    // "123456 requests in 8.00s, 50.12MB read"
    let requests = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's output:\n{text}"));
    Wrk {
        requests,
        requests_per_sec: after("Requests/sec:").parse().unwrap(),
        p99_ms: latency("99%"),
        failed,
    }
}
