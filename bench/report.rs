//! BENCHMARKS.md from one run's results, with the targets each figure is held to.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;

use crate::measure::Load;
use crate::peer::{COMMIT, Wrk};

/// What each measure must reach; a figure is marked met or not met against it.
mod targets {
    /// Ingest with 100-event batches ÷ raw pipelined per-event `XADD`, at least.
    pub const INGEST_VS_RAW_XADD: f64 = 1.0;
    /// Admission script per 100-event request, µs, at most.
    pub const SCRIPT_US_100: f64 = 100.0;
    /// Admission script per 1-event request, µs, at most.
    pub const SCRIPT_US_1: f64 = 15.0;
    /// Api CPU per event at batch 100, µs, at most.
    pub const API_CPU_US_PER_EVENT: f64 = 1.5;
    /// Api CPU per 1-event request, µs, at most.
    pub const API_CPU_US_1: f64 = 15.0;
    /// p99 at a light open-loop rate, ms, at most.
    pub const LIGHT_P99_MS: f64 = 5.0;
    /// Api peak memory, MiB, at most.
    pub const API_RSS_MIB: u64 = 128;
    /// Worker drain ÷ raw `COPY`, at least.
    pub const DRAIN_VS_COPY: f64 = 0.8;
    /// Sluice ÷ the capture server, requests per second, at 1 and 100 events per request.
    pub const VS_CAPTURE: f64 = 1.0;
    /// Read p99, ms, at most: by id; a first page by identity or signal.
    pub const READ_BY_ID_P99_MS: f64 = 10.0;
    pub const READ_PAGE_P99_MS: f64 = 30.0;
}

pub struct Ingest {
    pub load: Load,
    /// The admission script's Redis time per request, µs.
    pub script_us: f64,
    /// Requests per script call (src/ingest/lanes.rs).
    pub requests_per_call: f64,
    /// One replica only.
    pub cpu_us_per_event: Option<f64>,
}

/// Sluice and the capture server at one request size.
pub struct PeerRow {
    pub batch: usize,
    /// Per round: Sluice, then the capture server.
    pub rounds: Vec<(Side, Side)>,
}

/// One server measured once.
pub struct Side {
    pub wrk: Wrk,
    /// CPU of the server's processes per request answered, µs.
    pub cpu_us_per_request: f64,
    /// Shares (percent) of the machine's CPU left idle and taken by the hypervisor (steal)
    /// while it ran.
    pub idle_pct: f64,
    pub steal_pct: f64,
}

pub struct Read {
    pub kind: &'static str,
    pub load: Load,
}

pub struct Recovery {
    pub held: u64,
    pub idle_seconds: f64,
    pub seconds: f64,
}

/// Everything one run measured.
pub struct Results {
    pub seconds: f64,
    /// By (replicas, batch).
    pub ingest: BTreeMap<(usize, usize), Ingest>,
    pub light: Option<Load>,
    pub api_rss_mib: u64,
    /// Without a key, then with one.
    pub idempotency: Vec<Load>,
    pub idem_record_bytes: u64,
    pub idem_records: usize,
    /// By batch.
    pub tls: BTreeMap<usize, Load>,
    pub raw_xadd: f64,
    pub entry_bytes: usize,
    pub drain_events: u64,
    pub drain_seconds: f64,
    pub copy_seconds: f64,
    pub read_events: u64,
    pub reads: Vec<Read>,
    pub recovery: Option<Recovery>,
    /// Beside the capture server, or why it was not measured.
    pub peer: Result<Vec<PeerRow>, String>,
}

impl Results {
    pub fn new(seconds: f64) -> Self {
        Results {
            seconds,
            ingest: BTreeMap::new(),
            light: None,
            api_rss_mib: 0,
            idempotency: Vec::new(),
            idem_record_bytes: 0,
            idem_records: 0,
            tls: BTreeMap::new(),
            raw_xadd: 0.0,
            entry_bytes: 0,
            drain_events: 0,
            drain_seconds: 0.0,
            copy_seconds: 0.0,
            read_events: 0,
            reads: Vec::new(),
            recovery: None,
            peer: Err("not run".to_owned()),
        }
    }

    fn ingest(&self, replicas: usize, batch: usize) -> &Ingest {
        &self.ingest[&(replicas, batch)]
    }

    fn drain_rate(&self) -> f64 {
        self.drain_events as f64 / self.drain_seconds
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "not met" }
}

/// Thousands separated by commas, no decimals.
fn n(x: f64) -> String {
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(d);
    }
    if x < -0.5 { format!("-{out}") } else { out }
}

/// The first line a command prints, for naming versions.
fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{cmd}: unknown"))
}

/// The whole of BENCHMARKS.md.
pub fn render(r: &Results) -> String {
    let mut out = header(r);
    ingest_section(r, &mut out);
    limits_section(r, &mut out);
    peer_section(r, &mut out);
    reads_section(r, &mut out);
    idempotency_section(r, &mut out);
    tls_section(r, &mut out);
    recovery_section(r, &mut out);
    out.push_str(
        "## History\n\nWhat each change to the hot paths bought, with before and after figures, and \
         the experiments that\nmade no difference: [bench/history.md](bench/history.md). What \
         bounds ingest today, with its\nprofile, is written there too.\n",
    );
    out
}

fn header(r: &Results) -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_mib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC");
    format!(
        "# Benchmarks\n\nReproduce with one command: `bench/run.sh` (`cargo bench --bench run`, \
         bench/main.rs: it starts\nRedis, PostgreSQL, the api and the worker itself through the \
         test suite's launchers; {} s per\nmeasurement; about ten minutes with the capture server). The load generator \
         is `sluice-loadgen`, on the same machine,\nsharing its cores. The targets are \
         bench/report.rs's.\n\n\
         - Machine: {cpu}, {cores} cores, {mem_mib} MiB\n\
         - Run: {now}; {}; {}\n\
         - Redis with `appendonly yes`, `appendfsync everysec`; PostgreSQL defaults.\n\n",
        r.seconds,
        version("redis-server", "--version"),
        version("psql", "--version"),
    )
}

fn ingest_section(r: &Results, out: &mut String) {
    out.push_str(
        "## Ingest (api only, worker stopped; 32 connections; events of about 300 bytes over 10 \
         signals)\n\nEach admitted request is one stream entry; the admission script's cost is \
         per request and per\nsignal, not per event (docs/design.md, \"One stream entry per \
         request\"). Requests that arrive on an api thread while\nits call is in flight share \
         the next call (docs/design.md, \"Requests share script calls\"): the script's Redis \
         time\n(`INFO commandstats`) is given per request, with how many requests a call \
         carried.\n\n| api replicas | batch | events/s | requests/s | p50 ms | p99 ms | script \
         µs per request | requests per call | non-200 |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for ((replicas, batch), i) in &r.ingest {
        let l = &i.load;
        let _ = writeln!(
            out,
            "| {replicas} | {batch} | {} | {} | {:.2} | {:.2} | {:.1} | {:.1} | {} |",
            n(l.events_per_sec),
            n(l.requests_per_sec),
            l.p50(),
            l.p99(),
            i.script_us,
            i.requests_per_call,
            l.non_200()
        );
    }
    out.push('\n');
}

fn limits_section(r: &Results, out: &mut String) {
    use targets::*;
    let best100 = r
        .ingest(1, 100)
        .load
        .events_per_sec
        .max(r.ingest(2, 100).load.events_per_sec);
    let ratio = best100 / r.raw_xadd;
    let script = r.ingest(1, 100).script_us;
    let script1 = r.ingest(1, 1).script_us;
    let cpu = |batch| r.ingest(1, batch).cpu_us_per_event.unwrap_or(f64::NAN);
    let light = r.light.as_ref().expect("the light-load run");
    let sat = &r.ingest(1, 100).load;
    let copy = r.drain_events as f64 / r.copy_seconds;
    let drain_ratio = r.drain_rate() / copy;
    let _ = write!(
        out,
        "## Against the physical limits and the targets\n\n| measure | value | target | |\n\
         |---|---|---|---|\n\
         | raw pipelined XADD, one entry per event of the same size ({} bytes; redis-benchmark, \
         32 clients, pipeline 16) | {} entries/s | | |\n\
         | best ingest with 100-event batches over 10 signals ÷ raw per-event XADD | {} ÷ {} = \
         **{ratio:.2}** | ≥ {INGEST_VS_RAW_XADD:.1} | {} |\n\
         | admission script per 100-event request over 10 signals (`INFO commandstats`: \
         `usec` ÷ requests, 1 replica) | **{script:.1} µs** | ≤ {SCRIPT_US_100:.0} µs | {} |\n\
         | admission script per 1-event request (the same) | **{script1:.1} µs** | \
         ≤ {SCRIPT_US_1:.0} µs | {} |\n\
         | api CPU per event, batch 100 (user + system from `/proc`, 1 replica) | **{:.2} µs** \
         ({:.2} s per million events) | ≤ {API_CPU_US_PER_EVENT:.1} µs | {} |\n\
         | api CPU per 1-event request (the same) | **{:.2} µs** | ≤ {API_CPU_US_1:.0} µs | {} |\n\
         | api CPU per event, batch 10 | {:.2} µs | | |\n\
         | latency at a constant light rate (open loop, 100 requests/s of 100 events, from each \
         request's scheduled time) | p50 {:.2} ms, p95 {:.2} ms, p99 **{:.2} ms**, max {:.2} ms \
         | p99 ≤ {LIGHT_P99_MS:.0} ms | {} |\n\
         | latency at saturation (1 replica, batch 100, 32 connections) | p50 {:.2} ms, p99 \
         {:.2} ms | | |\n\
         | api peak RSS after the runs above | **{} MiB** | ≤ {API_RSS_MIB} MiB | {} |\n\
         | worker drain of a {}-event backlog | {} events/s ({:.1} s) | | |\n\
         | raw `\\copy` of the same rows into a table like `events` | {} rows/s ({:.1} s) | | |\n\
         | worker drain ÷ raw COPY | **{drain_ratio:.2}** | ≥ {DRAIN_VS_COPY} | {} |\n\n",
        r.entry_bytes,
        n(r.raw_xadd),
        n(best100),
        n(r.raw_xadd),
        verdict(ratio >= INGEST_VS_RAW_XADD),
        verdict(script <= SCRIPT_US_100),
        verdict(script1 <= SCRIPT_US_1),
        cpu(100),
        cpu(100),
        verdict(cpu(100) <= API_CPU_US_PER_EVENT),
        cpu(1),
        verdict(cpu(1) <= API_CPU_US_1),
        cpu(10),
        light.p50(),
        light.p95(),
        light.p99(),
        light.max(),
        verdict(light.p99() <= LIGHT_P99_MS),
        sat.p50(),
        sat.p99(),
        r.api_rss_mib,
        verdict(r.api_rss_mib <= API_RSS_MIB),
        n(r.drain_events as f64),
        n(r.drain_rate()),
        r.drain_seconds,
        n(copy),
        r.copy_seconds,
        verdict(drain_ratio >= DRAIN_VS_COPY),
    );
}

fn peer_section(r: &Results, out: &mut String) {
    let _ = write!(
        out,
        "## Against PostHog's capture server\n\nPostHog's Rust capture server (`PostHog/capture` \
         {COMMIT}) with `PRINT_SINK=true`: it authenticates,\nparses and drops the events — no \
         enqueue, no rate limits. One replica of each, on the same machine in the\nsame run, \
         driven by the same client (`wrk -t2 -c64 -d{}s`, one request body repeated) with the \
         same\nevents of about 260 bytes (bench/peer.rs).\n\n",
        r.seconds.ceil()
    );
    let rows = match &r.peer {
        Ok(rows) => rows,
        Err(why) => {
            let _ = write!(out, "Not measured in this run: {why}.\n\n");
            return;
        }
    };
    let rounds = rows.first().map_or(0, |r| r.rounds.len());
    let _ = write!(
        out,
        "{rounds} rounds, each measuring both servers back to back (in turn first); every figure \
         is the range over\nthe rounds, the ratio taken within each round. CPU per request: \
         Sluice's api and Redis processes\n(with the append-only-file rewrites Redis forks), the \
         capture server's process (user + system from `/proc`);\nper CPU-second, Sluice ÷ \
         capture is the capture server's CPU per\nrequest over Sluice's, which neither the machine's idle share nor steal moves. Idle and steal: \
         the shares of the\nmachine's CPU left idle and taken by the hypervisor for other \
         machines (`/proc/stat`) while each server ran.\n\n| events per request | Sluice \
         requests/s | capture requests/s | Sluice ÷ capture | target | | Sluice CPU µs per \
         request (api + Redis) | capture CPU µs per request | per CPU-second, Sluice ÷ capture | \
         idle % (Sluice / capture) | steal % (Sluice / capture) | Sluice p99 ms | capture p99 \
         ms | non-2xx (Sluice / capture) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for row in rows {
        let range = |f: &dyn Fn(&(Side, Side)) -> f64, fmt: &dyn Fn(f64) -> String| {
            let (lo, hi) = row
                .rounds
                .iter()
                .map(f)
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            if fmt(lo) == fmt(hi) {
                fmt(lo)
            } else {
                format!("{}–{}", fmt(lo), fmt(hi))
            }
        };
        let ratios: Vec<f64> = row
            .rounds
            .iter()
            .map(|(s, c)| s.wrk.requests_per_sec / c.wrk.requests_per_sec)
            .collect();
        let worst = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let (target, met) = if row.batch == 10 {
            (String::new(), "")
        } else {
            let t = targets::VS_CAPTURE;
            (format!("≥ {t:.1} in every round"), verdict(worst >= t))
        };
        let failed: (u64, u64) = row.rounds.iter().fold((0, 0), |(a, b), (s, c)| {
            (a + s.wrk.failed, b + c.wrk.failed)
        });
        let fixed1 = |v: f64| format!("{v:.1}");
        let fixed2 = |v: f64| format!("{v:.2}");
        let percent = |v: f64| format!("{v:.0}");
        let _ = writeln!(
            out,
            "| {} | {} | {} | **{}** | {target} | {met} | {} | {} | {} | {} / {} | {} / {} | {} | \
             {} | {} / {} |",
            row.batch,
            range(&|(s, _)| s.wrk.requests_per_sec, &n),
            range(&|(_, c)| c.wrk.requests_per_sec, &n),
            range(
                &|(s, c)| s.wrk.requests_per_sec / c.wrk.requests_per_sec,
                &fixed2
            ),
            range(&|(s, _)| s.cpu_us_per_request, &fixed1),
            range(&|(_, c)| c.cpu_us_per_request, &fixed1),
            range(
                &|(s, c)| c.cpu_us_per_request / s.cpu_us_per_request,
                &fixed2
            ),
            range(&|(s, _)| s.idle_pct, &percent),
            range(&|(_, c)| c.idle_pct, &percent),
            range(&|(s, _)| s.steal_pct, &percent),
            range(&|(_, c)| c.steal_pct, &percent),
            range(&|(s, _)| s.wrk.p99_ms, &fixed2),
            range(&|(_, c)| c.wrk.p99_ms, &fixed2),
            failed.0,
            failed.1
        );
    }
    out.push('\n');
}

fn reads_section(r: &Results, out: &mut String) {
    let _ = write!(
        out,
        "## Reads\n\nThe read API over the {} events of one tenant stored by the drain above \
         (one api replica,\none connection, one request at a time, each to a different target; \
         `sluice-loadgen --get-paths`).\n\n| read | requests/s | p50 ms | p99 ms | target | | \
         non-200 |\n|---|---|---|---|---|---|---|\n",
        n(r.read_events as f64)
    );
    for read in &r.reads {
        let (what, target) = match read.kind {
            "by_id" => ("`GET /v1/events/{id}`", targets::READ_BY_ID_P99_MS),
            "by_identity" => (
                "`GET /v1/events?identity_type=…&identity_id=…` (first page of 100)",
                targets::READ_PAGE_P99_MS,
            ),
            _ => (
                "`GET /v1/events?signal=…` (first page of 100)",
                targets::READ_PAGE_P99_MS,
            ),
        };
        let l = &read.load;
        let _ = writeln!(
            out,
            "| {what} | {} | {:.2} | **{:.2}** | p99 ≤ {target:.0} ms | {} | {} |",
            n(l.requests_per_sec),
            l.p50(),
            l.p99(),
            verdict(l.p99() <= target),
            l.non_200()
        );
    }
    out.push_str("\nQuery plans and the indexes behind them: docs/design.md, \"Reads\".\n\n");
}

fn idempotency_section(r: &Results, out: &mut String) {
    let [plain, keyed] = [&r.idempotency[0], &r.idempotency[1]];
    let _ = write!(
        out,
        "## Idempotency-Key\n\nThe same ingest (1 api replica, batch 100, 32 connections) with a \
         fresh `Idempotency-Key` on every\nrequest, so every answer is recorded by the admission \
         script, beside the same requests without.\n\n| | events/s | p99 ms |\n|---|---|---|\n\
         | without a key | {} | {:.2} |\n| with a key | {} | {:.2} |\n| with ÷ without | \
         **{:.2}** | |\n\nOne record (100 events over 10 signals, a key of about 30 characters \
         as the load generator sends): **{} bytes**\nof Redis memory (`MEMORY USAGE`); {} \
         records were written in the run. Capacity\narithmetic: docs/operations.md, \
         \"Idempotency records\".\n\n",
        n(plain.events_per_sec),
        plain.p99(),
        n(keyed.events_per_sec),
        keyed.p99(),
        keyed.events_per_sec / plain.events_per_sec,
        r.idem_record_bytes,
        n(r.idem_records as f64),
    );
}

fn tls_section(r: &Results, out: &mut String) {
    out.push_str(
        "## TLS to Redis\n\nThe same ingest (1 api replica, 32 connections), once over \
         `rediss://` to a TLS-only Redis with\nthe certificate verified (rustls), beside the \
         plain-text figures of the table above.\n\n| batch | plain events/s | TLS events/s | \
         TLS ÷ plain | plain p99 ms | TLS p99 ms | TLS non-200 |\n|---|---|---|---|---|---|---|\n",
    );
    for (batch, tls) in &r.tls {
        let plain = &r.ingest(1, *batch).load;
        let _ = writeln!(
            out,
            "| {batch} | {} | {} | **{:.2}** | {:.2} | {:.2} | {} |",
            n(plain.events_per_sec),
            n(tls.events_per_sec),
            tls.events_per_sec / plain.events_per_sec,
            plain.p99(),
            tls.p99(),
            tls.non_200()
        );
    }
    out.push('\n');
}

fn recovery_section(r: &Results, out: &mut String) {
    let rec = r.recovery.as_ref().expect("the recovery run");
    let rate = rec.held as f64 / (rec.seconds - rec.idle_seconds).max(0.001);
    let _ = write!(
        out,
        "## Recovery after a worker crash\n\nA consumer takes all {} events of a backlog and \
         dies without acknowledging any, as a\nworker killed with them in hand would; a worker \
         started with\n`SLUICE__WORKER__CLAIM_IDLE_MS={:.0}` claims and stores them once idle\n\
         (`tests/api/recovery.rs` does the same with a real `kill -9`).\n\n| measure | value |\n\
         |---|---|\n| everything stored, from the crash | {:.1} s |\n| of which the claim idle \
         time | {:.1} s |\n| recovery rate after the idle time | **{} events/s** |\n| normal \
         drain rate (above) | {} events/s |\n| recovery ÷ normal drain | **{:.2}** |\n\n",
        n(rec.held as f64),
        rec.idle_seconds * 1000.0,
        rec.seconds,
        rec.idle_seconds,
        n(rate),
        n(r.drain_rate()),
        rate / r.drain_rate(),
    );
}
