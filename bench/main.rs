//! The benchmark behind BENCHMARKS.md (`bench/run.sh`, which is `cargo bench --bench run`).
//!
//! It starts Redis and PostgreSQL as deployed through the same launchers the integration tests
//! use (`tests/api/support/servers.rs`), then the release binaries; measures Sluice beside the
//! raw limits of its dependencies in the same run; and rewrites BENCHMARKS.md from the results
//! and the targets (`report.rs`). Every process it starts is stopped when it ends, pass or fail.
//!
//! `BENCH_SECONDS` (default 8) sets each measurement's length, `BENCH_BACKLOG` (default 200,000)
//! the events of the drain and read measurements.

#[allow(dead_code)]
#[path = "../tests/api/support/certs.rs"]
mod certs;
mod measure;
mod peer;
mod report;
#[allow(dead_code)]
#[path = "../tests/api/support/servers.rs"]
mod servers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use measure::{Apis, Load, MachineCpu, Stack, cpu_seconds, peak_rss_mib};
use report::{Ingest, PeerRow, Read, Recovery, Results, Side};

/// Signals of the reference case: each request's events spread over all of them.
const SIGNALS: usize = 10;

fn main() {
    let seconds: f64 = setting("BENCH_SECONDS", 8.0);
    let backlog: u64 = setting("BENCH_BACKLOG", 200_000);
    let stack = Stack::start(SIGNALS);
    let mut results = Results::new(seconds);
    ingest(&stack, seconds, &mut results);
    against_capture(&stack, seconds, &mut results);
    idempotency(&stack, seconds, &mut results);
    tls(&stack, seconds, &mut results);
    raw_xadd(&stack, &mut results);
    drain(&stack, backlog, &mut results);
    reads(&stack, seconds, &mut results);
    recovery(&stack, backlog, &mut results);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    std::fs::write(&path, report::render(&results)).expect("writing BENCHMARKS.md");
    eprintln!("bench: wrote BENCHMARKS.md");
}

/// A number from the environment, or `default`.
fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Ingest throughput over batch sizes and replicas, the worker stopped (the api alone); for one
/// replica also the script's cost in Redis, the api's CPU per event, latency at a light open-loop
/// rate, and the replica's peak memory.
fn ingest(stack: &Stack, seconds: f64, results: &mut Results) {
    for replicas in [1, 2] {
        let apis = Apis::start(stack, &stack.vars, replicas);
        for batch in [1, 10, 100] {
            stack.fresh_stream_and_stats();
            let cpu = cpu_seconds(apis.pid(0));
            let load = apis.saturate(batch, seconds);
            let cpu = cpu_seconds(apis.pid(0)) - cpu;
            eprintln!(
                "bench: ingest replicas={replicas} batch={batch}: {:.0} events/s",
                load.events_per_sec
            );
            let (script_usec, calls) = stack.script_usec_and_calls();
            let requests = load.requests().max(1) as f64;
            results.ingest.insert(
                (replicas, batch),
                Ingest {
                    cpu_us_per_event: (replicas == 1)
                        .then(|| cpu / load.events_accepted.max(1) as f64 * 1e6),
                    script_us: script_usec / requests,
                    requests_per_call: requests / calls.max(1) as f64,
                    load,
                },
            );
        }
        if replicas == 1 {
            results.light = Some(apis.load(&[
                "--batch",
                "100",
                "--connections",
                "8",
                "--rate",
                "100",
                "--duration",
                &seconds.to_string(),
            ]));
            results.api_rss_mib = peak_rss_mib(apis.pid(0));
        }
    }
}

/// Rounds of the comparison with the capture server: its throughput varies between runs on
/// one machine by more than most changes do, so each figure is given as the range over rounds,
/// and each round measures both servers back to back (in turn first).
const PEER_ROUNDS: usize = 3;

/// Sluice beside PostHog's capture server (`peer`), one replica each, the same client and
/// event sizes, at 1, 10 and 100 events per request, [`PEER_ROUNDS`] times; with the CPU each
/// spends per request (Sluice: the api and Redis; capture: its one process).
fn against_capture(stack: &Stack, seconds: f64, results: &mut Results) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = match peer::capture_server(root) {
        Ok(bin) => bin,
        Err(why) => {
            eprintln!("bench: the capture server is not measured: {why}");
            results.peer = Err(why);
            return;
        }
    };
    let apis = Apis::start(stack, &stack.vars, 1);
    let (capture, capture_url) = peer::start_capture(&bin, stack);
    let auth = format!("Bearer {}", stack.key);
    let work = stack.work.path();
    let sluice_pids = [apis.pid(0), stack.redis_pid()];
    let measure = |pids: &[u32], url: &str, body: &str, headers: &[(&str, &str)]| {
        let cpu = || pids.iter().map(|&pid| cpu_seconds(pid)).sum::<f64>();
        let (before, machine) = (cpu(), MachineCpu::now());
        let wrk = peer::wrk(work, url, body, headers, seconds);
        let spent = cpu() - before;
        let (idle_pct, steal_pct) = MachineCpu::now().shares_since(&machine);
        Side {
            cpu_us_per_request: spent / wrk.requests.max(1) as f64 * 1e6,
            idle_pct,
            steal_pct,
            wrk,
        }
    };
    let mut rows: Vec<PeerRow> = [1, 10, 100]
        .into_iter()
        .map(|batch| PeerRow {
            batch,
            rounds: Vec::new(),
        })
        .collect();
    for round in 0..PEER_ROUNDS {
        for row in &mut rows {
            let batch = row.batch;
            stack.fresh_stream_and_stats();
            let sluice_url = format!("{}/v1/events/batch", apis.url(0));
            let capture_url = format!("{capture_url}/i/v0/e");
            let (sluice_body, capture_body) =
                (peer::sluice_body(batch, SIGNALS), peer::capture_body(batch));
            let sluice = || {
                measure(
                    &sluice_pids,
                    &sluice_url,
                    &sluice_body,
                    &[("Authorization", &auth)],
                )
            };
            let peer = || measure(&[capture.pid()], &capture_url, &capture_body, &[]);
            let (sluice, capture) = if round % 2 == 0 {
                let s = sluice();
                (s, peer())
            } else {
                let c = peer();
                (sluice(), c)
            };
            eprintln!(
                "bench: round {} of {PEER_ROUNDS}, {batch} events per request: Sluice {:.0} \
                 requests/s ({:.1} µs CPU each; {:.0}% idle, {:.0}% steal), capture {:.0} \
                 ({:.1} µs; {:.0}% idle, {:.0}% steal)",
                round + 1,
                sluice.wrk.requests_per_sec,
                sluice.cpu_us_per_request,
                sluice.idle_pct,
                sluice.steal_pct,
                capture.wrk.requests_per_sec,
                capture.cpu_us_per_request,
                capture.idle_pct,
                capture.steal_pct
            );
            row.rounds.push((sluice, capture));
        }
    }
    results.peer = Ok(rows);
}

/// The same ingest with a fresh `Idempotency-Key` on every request beside the same requests
/// without, and what one record takes in Redis.
fn idempotency(stack: &Stack, seconds: f64, results: &mut Results) {
    let apis = Apis::start(stack, &stack.vars, 1);
    for keyed in [false, true] {
        stack.fresh_stream_and_stats();
        let mut args = vec!["--batch", "100", "--connections", "32"];
        let duration = seconds.to_string();
        args.extend(["--duration", &duration]);
        if keyed {
            args.push("--idempotency-keys");
        }
        let load = apis.load(&args);
        eprintln!(
            "bench: ingest batch=100 keyed={keyed}: {:.0} events/s",
            load.events_per_sec
        );
        results.idempotency.push(load);
    }
    let records = stack.keys("sluice:*:idem:*");
    results.idem_records = records.len();
    results.idem_record_bytes = records.first().map_or(0, |k| stack.memory_usage(k));
}

/// The same ingest over TLS to a TLS-only Redis (rustls, certificate verified), its registry
/// copy written by `sluice-admin sync`.
fn tls(stack: &Stack, seconds: f64, results: &mut Results) {
    let ca = certs::TestCa::new("Sluice bench CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let redis =
        servers::RedisServer::start_as_deployed(Some(certs::RedisTls::new(&ca, &server, false)));
    let mut vars = stack.vars.clone();
    vars.retain(|(k, _)| k != "SLUICE__REDIS__URL");
    vars.extend(redis.settings());
    measure::admin(&vars, &["sync"]);
    let apis = Apis::start(stack, &vars, 1);
    for batch in [1, 100] {
        let load = apis.saturate(batch, seconds);
        eprintln!(
            "bench: ingest over TLS batch={batch}: {:.0} events/s",
            load.events_per_sec
        );
        results.tls.insert(batch, load);
    }
}

/// The physical limit: pipelined `XADD` of one entry per event, each the size of one event of
/// the reference case (its JSON as the api writes it, and the one-event layout's meta field).
fn raw_xadd(stack: &Stack, results: &mut Results) {
    let apis = Apis::start(stack, &stack.vars, 1);
    stack.fresh_stream_and_stats();
    apis.load(&[
        "--batch",
        "100",
        "--connections",
        "1",
        "--requests",
        "1",
        "--warmup",
        "0",
    ]);
    drop(apis);
    let event = stack.first_event_json();
    // The one-event layout's meta field of the same event.
    let meta = sluice::stream::Meta {
        tenant: &stack.tenant,
        signal: "sig_bench0",
        signal_type: "event",
        version: 0,
    }
    .to_string();
    results.entry_bytes = event.len() + meta.len();
    results.raw_xadd = stack.redis_benchmark_xadd(&meta, &event);
}

/// The worker draining a backlog, beside a raw `\copy` of the same rows.
fn drain(stack: &Stack, backlog: u64, results: &mut Results) {
    stack.fill(backlog / 100);
    let worker = stack.start_worker(&[]);
    let started = Instant::now();
    stack.wait_for_rows(backlog);
    results.drain_events = backlog;
    results.drain_seconds = started.elapsed().as_secs_f64();
    drop(worker);
    results.copy_seconds = stack.copy_events();
}

/// The read API over the stored backlog: one connection, one request at a time, each to a
/// different target, as planned on statistics autovacuum would have gathered.
fn reads(stack: &Stack, seconds: f64, results: &mut Results) {
    stack.psql("analyze events");
    results.read_events = stack.psql("select count(*) from events").parse().unwrap();
    let apis = Apis::start(stack, &stack.vars, 1);
    for (kind, query) in [
        (
            "by_id",
            "select '/v1/events/' || id from events order by random() limit 5000",
        ),
        (
            "by_identity",
            "select '/v1/events?identity_type=account&identity_id=' || identity_id \
             from (select distinct identity_id from events) i order by random() limit 5000",
        ),
        (
            "by_signal",
            "select '/v1/events?signal=' || slug from signals",
        ),
    ] {
        let paths = stack.work.path().join(format!("read_{kind}"));
        std::fs::write(&paths, stack.psql(query) + "\n").unwrap();
        let load = apis.load_paths(&paths, seconds);
        eprintln!("bench: read {kind}: p99 {:.2} ms", load.p99());
        results.reads.push(Read { kind, load });
    }
}

/// Recovery after a worker crash: a consumer takes a backlog and never acknowledges it, as a
/// worker killed with it in hand leaves it; a worker with a short claim idle time stores it.
fn recovery(stack: &Stack, backlog: u64, results: &mut Results) {
    const IDLE: Duration = Duration::from_secs(2);
    stack.psql("truncate events, metric_rollups, metric_rollup_totals, signal_states");
    stack.fresh_stream_and_stats();
    stack.fill(backlog / 200);
    let held = stack.read_without_acknowledging("crashed-worker") * 100;
    let started = Instant::now();
    let idle_ms = IDLE.as_millis().to_string();
    let worker = stack.start_worker(&[("SLUICE__WORKER__CLAIM_IDLE_MS", idle_ms.as_str())]);
    stack.wait_for_rows(held);
    results.recovery = Some(Recovery {
        held,
        idle_seconds: IDLE.as_secs_f64(),
        seconds: started.elapsed().as_secs_f64(),
    });
    drop(worker);
}

impl Load {
    /// The statuses other than 200, for the tables (`none` when every answer was 200).
    fn non_200(&self) -> String {
        let other: Vec<String> = self
            .statuses
            .iter()
            .filter(|(status, _)| status.as_str() != "200")
            .map(|(status, n)| format!("{status}: {n}"))
            .collect();
        if other.is_empty() {
            "none".to_owned()
        } else {
            other.join(", ")
        }
    }
}
