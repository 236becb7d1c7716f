//! The benchmark's instruments: the stack under test (Redis and PostgreSQL from the tests'
//! launchers, the release binaries), the load generator, and what `/proc` and Redis report.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::keyspace::Keyspace;
use sluice::stream::entry;
use tempfile::TempDir;

use crate::servers::{Postgres, RedisServer, free_port, wait_until};

/// The longest a backlog may take to drain before the run is given up.
const DRAIN_PATIENCE: Duration = Duration::from_secs(600);

/// Redis and PostgreSQL as deployed, migrated, with one tenant, its key and its signals.
pub struct Stack {
    pub redis: RedisServer,
    pub pg: Postgres,
    /// The `SLUICE__*` settings every binary gets, and what they say.
    pub vars: Vec<(String, String)>,
    settings: sluice::config::Settings,
    pub tenant: String,
    pub key: String,
    pub stream: String,
    /// The signals' `--signal` arguments for the load generator.
    signals: Vec<String>,
    /// Logs and scratch files.
    pub work: TempDir,
}

impl Stack {
    pub fn start(signals: usize) -> Self {
        let redis = RedisServer::start_as_deployed(None);
        let pg = Postgres::start_as_deployed();
        let mut vars = redis.settings();
        vars.push(("SLUICE__POSTGRES__URL".into(), pg.url("sluice")));
        vars.push(("SLUICE__LOG__LEVEL".into(), "warn".into()));
        admin(&vars, &["migrate"]);
        let tenant = admin(&vars, &["tenant", "create", "--name", "bench"])["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let key = admin(&vars, &["key", "create", "--tenant", &tenant])["key"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut args = Vec::new();
        for i in 0..signals {
            let slug = format!("bench{i}");
            admin(
                &vars,
                &[
                    "signal",
                    "create",
                    "--tenant",
                    &tenant,
                    "--slug",
                    &slug,
                    "--type",
                    "event",
                    "--limit",
                    "2000000000",
                ],
            );
            args.extend(["--signal".to_owned(), slug]);
        }
        let map: std::collections::HashMap<String, String> = vars.iter().cloned().collect();
        let settings =
            sluice::config::Settings::load_from(None, &map).expect("the bench's settings");
        let keyspace = Keyspace::new(settings.redis.partitions);
        let stream = Keyspace::stream(keyspace.partition_of(&tenant));
        Stack {
            redis,
            pg,
            vars,
            settings,
            tenant,
            key,
            stream,
            signals: args,
            work: tempfile::tempdir().unwrap(),
        }
    }

    /// An empty stream and fresh command statistics, for a measurement of its own.
    pub fn fresh_stream_and_stats(&self) {
        let mut conn = self.redis.conn();
        let _: () = redis::cmd("DEL")
            .arg(&self.stream)
            .query(&mut conn)
            .unwrap();
        // And the staged events of its entries, as a worker deletes them once stored.
        let staged: Vec<String> = redis::cmd("KEYS")
            .arg("sluice:*:staged:*")
            .query(&mut conn)
            .unwrap();
        for keys in staged.chunks(10_000) {
            let _: () = redis::cmd("UNLINK").arg(keys).query(&mut conn).unwrap();
        }
        self.redis.reset_stats();
    }

    /// The Redis server's process id.
    pub fn redis_pid(&self) -> u32 {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.redis.conn())
            .unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
            .expect("INFO server names the process")
    }

    /// The admission script's Redis-side time (µs) and calls since the statistics were reset.
    /// A call may carry several requests (src/ingest/lanes.rs).
    pub fn script_usec_and_calls(&self) -> (f64, u64) {
        self.redis.script_stats()
    }

    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.redis.conn())
            .unwrap()
    }

    pub fn memory_usage(&self, key: &str) -> u64 {
        redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .query(&mut self.redis.conn())
            .unwrap()
    }

    /// The first event of the stream's first entry, as the api wrote it.
    pub fn first_event_json(&self) -> String {
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&self.stream)
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query(&mut self.redis.conn())
            .unwrap();
        let entry = reply.ids.first().expect("an entry on the stream");
        let events: String = match entry.get::<String>(entry::STAGED) {
            // A large request's events, staged under their own key.
            Some(staged) => redis::cmd("GET")
                .arg(staged)
                .query(&mut self.redis.conn())
                .expect("the staged events of an entry"),
            None => entry.get(entry::EVENTS).expect("an entry with events"),
        };
        let events: Vec<Value> = serde_json::from_str(&events).unwrap();
        events[0].to_string()
    }

    /// `redis-benchmark`'s pipelined `XADD` rate of entries with these two fields.
    pub fn redis_benchmark_xadd(&self, meta: &str, event: &str) -> f64 {
        let out = Command::new("redis-benchmark")
            .args(["-p", &self.redis.port.to_string()])
            .args(["-c", "32", "-P", "16", "-n", "2000000", "-q"])
            .args(["xadd", "rawbench", "*"])
            .args([entry::META, meta, entry::EVENT, event])
            .output()
            .expect("redis-benchmark is installed with redis-server");
        let _: () = redis::cmd("DEL")
            .arg("rawbench")
            .query(&mut self.redis.conn())
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
        text.split_whitespace()
            .zip(text.split_whitespace().skip(1))
            .filter(|(_, unit)| *unit == "requests")
            .filter_map(|(n, _)| n.parse::<f64>().ok())
            .last()
            .unwrap_or_else(|| panic!("no rate in redis-benchmark's output: {text}"))
    }

    /// `requests` requests of 100 events on the stream, as fast as one api takes them.
    pub fn fill(&self, requests: u64) {
        let apis = Apis::start(self, &self.vars, 1);
        apis.load(&[
            "--batch",
            "100",
            "--connections",
            "16",
            "--requests",
            &requests.to_string(),
            "--warmup",
            "0",
            "--duration",
            "600",
        ]);
    }

    /// Reads every entry of the stream as consumer `name` of the workers' group and never
    /// acknowledges it: what a worker killed with them in hand leaves. The events it holds.
    pub fn read_without_acknowledging(&self, name: &str) -> u64 {
        let settings = &self.settings;
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let redis = sluice::redis_pool::Redis::new(&settings.redis).unwrap();
            let keyspace = Keyspace::new(settings.redis.partitions);
            let consumer = sluice::stream::Consumer::new(redis, keyspace, name.to_owned());
            consumer.ensure_groups().await.unwrap();
            let mut held = 0;
            loop {
                let entries = consumer.read(1000, 0, false).await.unwrap();
                if entries.is_empty() {
                    return held;
                }
                held += entries.len() as u64;
            }
        })
    }

    /// A worker with the bench's settings and `extra` ones, stopped when dropped.
    pub fn start_worker(&self, extra: &[(&str, &str)]) -> Process {
        let bind = format!("127.0.0.1:{}", free_port());
        let mut vars = self.vars.clone();
        vars.push(("SLUICE__WORKER__METRICS_BIND".into(), bind));
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Process::spawn(
            env!("CARGO_BIN_EXE_sluice-worker"),
            &vars,
            &self.log("worker"),
        )
    }

    /// Waits until `events` holds `rows` rows.
    pub fn wait_for_rows(&self, rows: u64) {
        let started = Instant::now();
        while self
            .psql("select count(*) from events")
            .parse::<u64>()
            .unwrap()
            < rows
        {
            assert!(
                started.elapsed() < DRAIN_PATIENCE,
                "the backlog was not stored"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seconds a raw `\copy` of every stored event into a table like `events` takes.
    pub fn copy_events(&self) -> f64 {
        let csv = self.work.path().join("events.csv");
        // The server runs as another user: the client reads and writes the file.
        self.psql(&format!(
            "\\copy (select * from events) to '{}' csv",
            csv.display()
        ));
        self.psql("create table events_copy (like events including defaults including indexes)");
        let started = Instant::now();
        self.psql(&format!("\\copy events_copy from '{}' csv", csv.display()));
        let seconds = started.elapsed().as_secs_f64();
        self.psql("drop table events_copy");
        seconds
    }

    /// `sql`'s output from `psql -At`, trimmed.
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .arg(self.pg.url("sluice"))
            .args(["-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("psql is installed (deploy/dev/install-deps.sh)");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn log(&self, name: &str) -> std::path::PathBuf {
        self.work.path().join(format!("{name}.log"))
    }
}

/// A child process with the given settings, its stderr in a log file; killed when dropped.
pub struct Process {
    child: Child,
}

impl Process {
    pub fn spawn(bin: &str, vars: &[(String, String)], log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(bin)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(vars.iter().cloned())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        Process { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// Api replicas, each on a port of its own, ready; stopped when dropped.
pub struct Apis<'a> {
    stack: &'a Stack,
    replicas: Vec<(Process, String)>,
}

impl<'a> Apis<'a> {
    pub fn start(stack: &'a Stack, vars: &[(String, String)], replicas: usize) -> Self {
        let replicas = (0..replicas)
            .map(|_| {
                let port = free_port();
                let mut vars = vars.to_vec();
                vars.push(("SLUICE__API__BIND".into(), format!("127.0.0.1:{port}")));
                let api =
                    Process::spawn(env!("CARGO_BIN_EXE_sluice-api"), &vars, &stack.log("api"));
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
                wait_until("the api to be ready", || {
                    sluice::ops::healthcheck(addr).is_ok()
                });
                (api, format!("http://127.0.0.1:{port}"))
            })
            .collect();
        Apis { stack, replicas }
    }

    pub fn pid(&self, replica: usize) -> u32 {
        self.replicas[replica].0.pid()
    }

    pub fn url(&self, replica: usize) -> &str {
        &self.replicas[replica].1
    }

    /// `sluice-loadgen` over every replica with the bench's key and signals and `args`.
    pub fn load(&self, args: &[&str]) -> Load {
        let mut all: Vec<String> = self.signals_and_key();
        all.extend(["--event-bytes".into(), "300".into()]);
        all.extend(args.iter().map(|a| a.to_string()));
        self.loadgen(&all)
    }

    /// As many requests of `batch` events as 32 connections can send for `seconds`.
    pub fn saturate(&self, batch: usize, seconds: f64) -> Load {
        let (batch, seconds) = (batch.to_string(), seconds.to_string());
        self.load(&[
            "--batch",
            &batch,
            "--connections",
            "32",
            "--duration",
            &seconds,
            "--warmup",
            "0",
        ])
    }

    /// `sluice-loadgen --get-paths`: GETs of the paths in `file`, one connection.
    pub fn load_paths(&self, file: &Path, seconds: f64) -> Load {
        let mut all = vec!["--key".to_owned(), self.stack.key.clone()];
        all.extend(["--get-paths".into(), file.display().to_string()]);
        all.extend(["--connections".into(), "1".into()]);
        all.extend(["--duration".into(), seconds.to_string()]);
        self.loadgen(&all)
    }

    fn signals_and_key(&self) -> Vec<String> {
        let mut args = vec!["--key".to_owned(), self.stack.key.clone()];
        args.extend(self.stack.signals.iter().cloned());
        args
    }

    fn loadgen(&self, args: &[String]) -> Load {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice-loadgen"));
        for (_, url) in &self.replicas {
            cmd.args(["--url", url]);
        }
        let out = cmd.args(args).arg("--json").output().unwrap();
        assert!(
            out.status.success(),
            "sluice-loadgen {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("sluice-loadgen's JSON")
    }
}

/// What `sluice-loadgen --json` reports.
#[derive(serde::Deserialize, Debug, Clone)]
pub struct Load {
    pub requests_per_sec: f64,
    pub events_per_sec: f64,
    pub events_accepted: u64,
    #[serde(rename = "latency_ms")]
    latency: Latency,
    pub statuses: BTreeMap<String, u64>,
}

#[derive(serde::Deserialize, Debug, Clone, Copy)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

impl Load {
    /// Requests answered, whatever their status.
    pub fn requests(&self) -> u64 {
        self.statuses.values().sum()
    }
    pub fn p50(&self) -> f64 {
        self.latency.p50
    }
    pub fn p95(&self) -> f64 {
        self.latency.p95
    }
    pub fn p99(&self) -> f64 {
        self.latency.p99
    }
    pub fn max(&self) -> f64 {
        self.latency.max
    }
}

/// Runs `sluice-admin` with `vars`; its JSON.
pub fn admin(vars: &[(String, String)], args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(vars.iter().cloned())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sluice-admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// CPU seconds (user and system) process `pid` has used so far, with those of its children
/// it has waited for: Redis's append-only-file rewrites run in a child it forks and reaps, and
/// are work the events it holds cost it.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), counted from 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // utime, stime, cutime, cstime.
    let ticks: f64 = fields[11..15]
        .iter()
        .map(|v| v.parse::<f64>().unwrap())
        .sum();
    ticks / clock_ticks()
}

/// The machine's CPU time so far, from the first line of `/proc/stat`, in clock ticks: all of
/// it, the part no process had (idle and waiting for I/O), and the part the hypervisor gave to
/// other machines (steal), which no process here sees but every measurement pays.
#[derive(Clone, Copy, Debug)]
pub struct MachineCpu {
    pub total: f64,
    pub idle: f64,
    pub steal: f64,
}

impl MachineCpu {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("cpu "))
            .expect("/proc/stat starts with the machine's cpu line")
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        MachineCpu {
            total: ticks.iter().take(8).sum(),
            idle: ticks[3] + ticks[4],
            steal: ticks.get(7).copied().unwrap_or(0.0),
        }
    }

    /// The shares (percent) of the machine's CPU that were idle and stolen since `before`.
    pub fn shares_since(&self, before: &MachineCpu) -> (f64, f64) {
        let total = (self.total - before.total).max(1.0);
        (
            (self.idle - before.idle) / total * 100.0,
            (self.steal - before.steal) / total * 100.0,
        )
    }
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Process `pid`'s peak resident memory, MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib / 1024
}
