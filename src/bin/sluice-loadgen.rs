//! `sluice-loadgen`: drives `POST /v1/events/batch` with realistic batches over many keep-alive
//! connections and reports throughput, latency percentiles and every non-200 by status; with
//! `--get-paths`, the read API instead.
//!
//! ```text
//! sluice-loadgen --url http://127.0.0.1:8080 --key sk_... --signal page_view \
//!                --batch 100 --event-bytes 200 --connections 32 --duration 10
//! ```
//! Several `--url`s spread connections over replicas; several `--key`s (tenants) and `--signal`s
//! are cycled through. `--rate` caps requests per second over all connections. `--json` prints
//! one JSON object instead of the table.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "sluice-loadgen",
    version,
    about = "Load generator for the Sluice ingest API (bench/run.sh uses it)"
)]
struct Args {
    /// Base URL of an api replica; repeat for several.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// API key; repeat for several tenants.
    #[arg(long = "key", required = true)]
    keys: Vec<String>,
    /// Signal slug; repeat for several. Each key must own every slug given.
    #[arg(long = "signal", required_unless_present = "get_paths")]
    signals: Vec<String>,
    /// Read instead of ingest: GET the paths of this file (one per line, such as
    /// `/v1/events/<id>`), each connection taking them in turn.
    #[arg(long)]
    get_paths: Option<std::path::PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Approximate size of one event's JSON, in bytes.
    #[arg(long, default_value_t = 200)]
    event_bytes: usize,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to run (after warm-up), unless --requests is reached first.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many measured requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Requests per second over all connections, open loop (latency counted from each
    /// request's scheduled time); unlimited when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Send a fresh Idempotency-Key with every request (each is recorded for replays).
    #[arg(long)]
    idempotency_keys: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    events_accepted: u64,
    transport_errors: u64,
}

fn bodies(args: &Args, conn: usize) -> Vec<String> {
    // The padding brings each event to about --event-bytes.
    let skeleton =
        r#"{"signal":"","identity":{"type":"account","id":"acc-000000"},"data":{"pad":""}}"#.len();
    (0..8)
        .map(|variant| {
            let events: Vec<serde_json::Value> = (0..args.batch)
                .map(|i| {
                    let signal = &args.signals[(conn + variant + i) % args.signals.len()];
                    let pad = args.event_bytes.saturating_sub(skeleton + signal.len());
                    json!({
                        "signal": signal,
                        "identity": {"type": "account", "id": format!("acc-{:06}", (conn * 7919 + variant * 131 + i) % 1_000_000)},
                        "data": {"pad": "x".repeat(pad)},
                    })
                })
                .collect();
            json!({ "events": events }).to_string()
        })
        .collect()
}

/// The paths of `--get-paths`, one per non-empty line.
fn get_paths(args: &Args) -> Option<Vec<String>> {
    let file = args.get_paths.as_ref()?;
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
        eprintln!("sluice-loadgen: cannot read {}: {e}", file.display());
        std::process::exit(2);
    });
    Some(
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

async fn connection(args: Args, conn: usize, start_measuring: Instant, stop_at: Instant) -> Tally {
    let base = args.urls[conn % args.urls.len()]
        .trim_end_matches('/')
        .to_owned();
    let url = format!("{base}/v1/events/batch");
    let key = format!("Bearer {}", args.keys[conn % args.keys.len()]);
    let gets = get_paths(&args).filter(|paths| !paths.is_empty());
    let bodies = if gets.is_some() {
        Vec::new()
    } else {
        bodies(&args, conn)
    };
    // Keys unique to this run, so a second run against the same Redis replays nothing.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .connector(awc::Connector::new().limit(1))
        .finish();
    let interval = args
        .rate
        .map(|r| Duration::from_secs_f64(args.connections as f64 / r));
    let per_conn_limit = args.requests.map(|r| r.div_ceil(args.connections as u64));
    let mut tally = Tally::default();
    let mut next_send = Instant::now();
    let mut n = 0usize;
    while Instant::now() < stop_at {
        if per_conn_limit.is_some_and(|l| tally.latencies_us.len() as u64 >= l) {
            break;
        }
        // Open loop: with a rate, each request has a scheduled time and its latency counts from
        // then, so a slow answer that delays the next send is charged to the requests it
        // delayed (no coordinated omission), as wrk2 and HdrHistogram's corrected recording do.
        let mut scheduled = None;
        if let Some(every) = interval {
            let now = Instant::now();
            if next_send > now {
                actix_web::rt::time::sleep(next_send - now).await;
            }
            scheduled = Some(next_send);
            next_send += every;
        }
        n += 1;
        let sent = scheduled.unwrap_or_else(Instant::now);
        let result = match &gets {
            Some(paths) => {
                let path = &paths[(conn + n * args.connections) % paths.len()];
                client
                    .get(format!("{base}{path}"))
                    .insert_header(("Authorization", key.as_str()))
                    .send()
                    .await
            }
            None => {
                let mut request = client
                    .post(&url)
                    .insert_header(("Authorization", key.as_str()))
                    .insert_header(("Content-Type", "application/json"));
                if args.idempotency_keys {
                    request =
                        request.insert_header(("Idempotency-Key", format!("{run}-{conn}-{n}")));
                }
                request.send_body(bodies[n % bodies.len()].clone()).await
            }
        };
        let (status, accepted) = match result {
            Ok(mut res) => {
                let status = res.status().as_u16();
                let body = res.body().limit(4 << 20).await.unwrap_or_default();
                // Count accepted events without parsing the whole body.
                let accepted = if status == 200 { count_ids(&body) } else { 0 };
                (Some(status), accepted)
            }
            Err(_) => (None, 0),
        };
        if sent < start_measuring {
            continue;
        }
        match status {
            Some(s) => {
                tally
                    .latencies_us
                    .push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                *tally.statuses.entry(s).or_default() += 1;
                tally.events_accepted += accepted;
            }
            None => {
                tally.transport_errors += 1;
                actix_web::rt::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tally
}

fn count_ids(body: &[u8]) -> u64 {
    let needle = br#""status":"pending""#;
    body.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank]) / 1000.0
}

fn main() {
    let args = Args::parse();
    if args.batch == 0 || args.connections == 0 {
        eprintln!("sluice-loadgen: --batch and --connections must be positive");
        std::process::exit(2);
    }
    let started = Instant::now();
    let start_measuring = started + Duration::from_secs_f64(args.warmup);
    let stop_at = start_measuring + Duration::from_secs_f64(args.duration);

    // One OS thread per core, each with its own runtime, connections spread over them.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(args.connections);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let args = args.clone();
            std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let conns = (t..args.connections).step_by(threads);
                    futures_util::future::join_all(
                        conns.map(|c| connection(args.clone(), c, start_measuring, stop_at)),
                    )
                    .await
                })
            })
        })
        .collect();
    let tallies: Vec<Tally> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    let measured = Instant::now()
        .saturating_duration_since(start_measuring)
        .as_secs_f64()
        .max(1e-9);

    let mut latencies: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    for t in &tallies {
        for (s, n) in &t.statuses {
            *statuses.entry(*s).or_default() += n;
        }
    }
    let requests = latencies.len() as u64;
    let events: u64 = tallies.iter().map(|t| t.events_accepted).sum();
    let transport_errors: u64 = tallies.iter().map(|t| t.transport_errors).sum();
    let report = json!({
        "connections": args.connections,
        "batch": args.batch,
        "event_bytes": args.event_bytes,
        "seconds": measured,
        "requests": requests,
        "events_accepted": events,
        "requests_per_sec": requests as f64 / measured,
        "events_per_sec": events as f64 / measured,
        "latency_ms": {
            "p50": percentile(&latencies, 50.0),
            "p95": percentile(&latencies, 95.0),
            "p99": percentile(&latencies, 99.0),
            "max": latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        },
        "statuses": statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "transport_errors": transport_errors,
    });
    if args.json {
        println!("{report}");
        return;
    }
    println!(
        "connections {}  batch {}  event ~{} B  measured {:.1} s",
        args.connections, args.batch, args.event_bytes, measured
    );
    println!(
        "requests    {requests}  ({:.0}/s)",
        requests as f64 / measured
    );
    println!(
        "events      {events}  ({:.0}/s accepted)",
        events as f64 / measured
    );
    println!(
        "latency ms  p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 95.0),
        percentile(&latencies, 99.0),
        latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0)
    );
    let non_200: Vec<String> = statuses
        .iter()
        .filter(|(s, _)| **s != 200)
        .map(|(s, n)| format!("{s}: {n}"))
        .collect();
    println!(
        "non-200     {}",
        if non_200.is_empty() {
            "none".to_owned()
        } else {
            non_200.join(", ")
        }
    );
    if transport_errors > 0 {
        println!("no answer   {transport_errors}");
    }
}
