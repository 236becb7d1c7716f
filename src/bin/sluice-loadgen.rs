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

/// What one connection sends: to which replica, with which key, which bodies or paths.
struct Target {
    base: String,
    key: String,
    /// `--get-paths`: the read API's paths, taken in turn; else ingest with `bodies`.
    gets: Option<Vec<String>>,
    bodies: Vec<String>,
    /// Unique to this run, so a second run against the same Redis replays no Idempotency-Key.
    run: u128,
    client: awc::Client,
}

impl Target {
    fn new(args: &Args, conn: usize) -> Self {
        let gets = get_paths(args).filter(|paths| !paths.is_empty());
        Target {
            base: args.urls[conn % args.urls.len()]
                .trim_end_matches('/')
                .to_owned(),
            key: format!("Bearer {}", args.keys[conn % args.keys.len()]),
            bodies: if gets.is_some() {
                Vec::new()
            } else {
                bodies(args, conn)
            },
            gets,
            run: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                .connector(awc::Connector::new().limit(1))
                .finish(),
        }
    }

    /// Request `n` of connection `conn`: its status (none without an answer) and the events
    /// it had accepted.
    async fn send(&self, args: &Args, conn: usize, n: usize) -> (Option<u16>, u64) {
        let authorization = ("Authorization", self.key.as_str());
        let result = match &self.gets {
            Some(paths) => {
                let path = &paths[(conn + n * args.connections) % paths.len()];
                let url = format!("{}{path}", self.base);
                self.client
                    .get(url)
                    .insert_header(authorization)
                    .send()
                    .await
            }
            None => {
                let url = format!("{}/v1/events/batch", self.base);
                let mut request = self
                    .client
                    .post(url)
                    .insert_header(authorization)
                    .insert_header(("Content-Type", "application/json"));
                if args.idempotency_keys {
                    let key = format!("{}-{conn}-{n}", self.run);
                    request = request.insert_header(("Idempotency-Key", key));
                }
                let body = self.bodies[n % self.bodies.len()].clone();
                request.send_body(body).await
            }
        };
        match result {
            Ok(mut res) => {
                let status = res.status().as_u16();
                let body = res.body().limit(4 << 20).await.unwrap_or_default();
                // Count accepted events without parsing the whole body.
                let accepted = if status == 200 { count_ids(&body) } else { 0 };
                (Some(status), accepted)
            }
            Err(_) => (None, 0),
        }
    }
}

async fn connection(args: Args, conn: usize, start_measuring: Instant, stop_at: Instant) -> Tally {
    let target = Target::new(&args, conn);
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
        let (status, accepted) = target.send(&args, conn, n).await;
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
    let (tallies, measured) = run(&args);
    let summary = Summary::of(&tallies, measured);
    if args.json {
        println!("{}", summary.json(&args));
    } else {
        summary.print(&args);
    }
}

/// Runs the load: one OS thread per core, each with its own runtime, connections spread over
/// them. Returns every connection's tally and the seconds measured.
fn run(args: &Args) -> (Vec<Tally>, f64) {
    let started = Instant::now();
    let start_measuring = started + Duration::from_secs_f64(args.warmup);
    let stop_at = start_measuring + Duration::from_secs_f64(args.duration);
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
    let tallies = handles
        .into_iter()
        .flat_map(|h| h.join().expect("load thread"))
        .collect();
    let measured = Instant::now()
        .saturating_duration_since(start_measuring)
        .as_secs_f64()
        .max(1e-9);
    (tallies, measured)
}

/// Every connection's tally, added up.
struct Summary {
    /// Sorted.
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    events: u64,
    transport_errors: u64,
    seconds: f64,
}

impl Summary {
    fn of(tallies: &[Tally], seconds: f64) -> Self {
        let mut latencies_us: Vec<u32> = tallies
            .iter()
            .flat_map(|t| t.latencies_us.iter().copied())
            .collect();
        latencies_us.sort_unstable();
        let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
        for t in tallies {
            for (s, n) in &t.statuses {
                *statuses.entry(*s).or_default() += n;
            }
        }
        Summary {
            latencies_us,
            statuses,
            events: tallies.iter().map(|t| t.events_accepted).sum(),
            transport_errors: tallies.iter().map(|t| t.transport_errors).sum(),
            seconds,
        }
    }

    fn requests(&self) -> u64 {
        self.latencies_us.len() as u64
    }

    /// p50, p95, p99 and the maximum, in milliseconds.
    fn latency_ms(&self) -> [f64; 4] {
        let sorted = &self.latencies_us;
        [
            percentile(sorted, 50.0),
            percentile(sorted, 95.0),
            percentile(sorted, 99.0),
            sorted.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        ]
    }

    fn json(&self, args: &Args) -> serde_json::Value {
        let [p50, p95, p99, max] = self.latency_ms();
        let statuses: serde_json::Map<_, _> = (self.statuses.iter())
            .map(|(s, n)| (s.to_string(), json!(n)))
            .collect();
        json!({
            "connections": args.connections,
            "batch": args.batch,
            "event_bytes": args.event_bytes,
            "seconds": self.seconds,
            "requests": self.requests(),
            "events_accepted": self.events,
            "requests_per_sec": self.requests() as f64 / self.seconds,
            "events_per_sec": self.events as f64 / self.seconds,
            "latency_ms": {"p50": p50, "p95": p95, "p99": p99, "max": max},
            "statuses": statuses,
            "transport_errors": self.transport_errors,
        })
    }

    fn print(&self, args: &Args) {
        let (requests, events, seconds) = (self.requests(), self.events, self.seconds);
        let [p50, p95, p99, max] = self.latency_ms();
        println!(
            "connections {}  batch {}  event ~{} B  measured {seconds:.1} s",
            args.connections, args.batch, args.event_bytes
        );
        println!(
            "requests    {requests}  ({:.0}/s)",
            requests as f64 / seconds
        );
        println!(
            "events      {events}  ({:.0}/s accepted)",
            events as f64 / seconds
        );
        println!("latency ms  p50 {p50:.2}  p95 {p95:.2}  p99 {p99:.2}  max {max:.2}");
        let non_200: Vec<String> = (self.statuses.iter())
            .filter(|(s, _)| **s != 200)
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        let non_200 = if non_200.is_empty() {
            "none".to_owned()
        } else {
            non_200.join(", ")
        };
        println!("non-200     {non_200}");
        if self.transport_errors > 0 {
            println!("no answer   {}", self.transport_errors);
        }
    }
}
