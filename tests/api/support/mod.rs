//! Spawning Sluice against real dependencies, and talking to it over real HTTP.

pub mod certs;
pub mod cluster;
pub mod proxy;
pub mod servers;

use std::collections::HashMap;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use serde_json::Value;
use sluice::config::Settings;
use sluice::keyspace::Keyspace;
use sluice::redis_pool::Redis;
use sluice::registry::Registry;

pub use servers::{Postgres, RedisServer, wait_until};

/// Redis, PostgreSQL (migrated) and the settings that point at them.
pub struct TestEnv {
    pub redis: RedisServer,
    pub pg: Postgres,
    pub registry: Registry,
    vars: HashMap<String, String>,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts the dependencies; `vars` are extra `SLUICE__...` settings.
    pub async fn start_with(vars: &[(&str, &str)]) -> Self {
        Self::start_on(RedisServer::start(), vars).await
    }

    /// Like `start_with`, with a Redis that keeps every acknowledged write across a kill -9.
    pub async fn start_durable_with(vars: &[(&str, &str)]) -> Self {
        Self::start_on(RedisServer::start_durable(), vars).await
    }

    /// Like `start_with`, on a Redis Cluster (the standalone `redis` of the env is then unused).
    pub async fn start_on_cluster(cluster: &cluster::RedisCluster, vars: &[(&str, &str)]) -> Self {
        let settings = cluster.settings();
        let mut all: Vec<(&str, &str)> = settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend_from_slice(vars);
        Self::start_on(RedisServer::start(), &all).await
    }

    /// Like `start_with`, on a PostgreSQL of the caller's (one serving TLS only, say); `vars`
    /// then name its URL.
    pub async fn start_on_postgres(pg: Postgres, vars: &[(&str, &str)]) -> Self {
        Self::start_on_both(RedisServer::start(), pg, vars).await
    }

    async fn start_on(redis: RedisServer, vars: &[(&str, &str)]) -> Self {
        Self::start_on_both(redis, Postgres::start(), vars).await
    }

    /// Like `start_with`, on a Redis of the caller's (one serving TLS only, say).
    pub async fn start_on_redis(redis: RedisServer, vars: &[(&str, &str)]) -> Self {
        Self::start_on(redis, vars).await
    }

    async fn start_on_both(redis: RedisServer, pg: Postgres, vars: &[(&str, &str)]) -> Self {
        let mut map: HashMap<String, String> = HashMap::from([
            ("SLUICE__POSTGRES__URL".into(), pg.url("sluice")),
            ("SLUICE__API__WORKERS".into(), "1".into()),
            ("SLUICE__LOG__LEVEL".into(), "warn".into()),
        ]);
        map.extend(redis.settings());
        for (k, v) in vars {
            map.insert(k.to_string(), v.to_string());
        }
        let settings = settings_from(&map);
        sluice::pg::ensure_database(&settings.postgres)
            .await
            .unwrap();
        let pool = sluice::pg::pool(&settings.postgres).unwrap();
        sluice::pg::migrate(&pool).await.unwrap();
        let registry = Registry::new(
            pool,
            Redis::new(&settings.redis).unwrap(),
            Keyspace::new(settings.redis.partitions),
        );
        TestEnv {
            redis,
            pg,
            registry,
            vars: map,
        }
    }

    /// The common case: a tenant with a key, an event signal `page_view`, and an api replica.
    /// Returns (env, api, key).
    pub async fn with_page_view() -> (Self, TestApi, String) {
        let env = Self::start().await;
        let (tenant, key) = env.tenant().await;
        env.signal(&tenant, "page_view", "event", None).await;
        let api = env.spawn_api().await;
        (env, api, key)
    }

    pub fn settings(&self) -> Settings {
        settings_from(&self.vars)
    }

    /// The environment a binary needs to use these dependencies.
    pub fn env_vars(&self) -> &HashMap<String, String> {
        &self.vars
    }

    /// Settings for an api that reaches Redis through `proxy`, with `extra` variables.
    pub fn settings_through(&self, proxy: &proxy::DelayProxy, extra: &[(&str, &str)]) -> Settings {
        let mut vars = self.vars.clone();
        vars.insert(
            "SLUICE__REDIS__URL".into(),
            format!("redis://127.0.0.1:{}", proxy.port),
        );
        for (name, value) in extra {
            vars.insert((*name).to_owned(), (*value).to_owned());
        }
        settings_from(&vars)
    }

    /// Resets Redis's command statistics ([`TestEnv::script_calls`] counts from here).
    pub fn reset_redis_stats(&self) {
        self.redis.reset_stats();
    }

    /// How many times Redis has run a script since its statistics were last reset.
    pub fn script_calls(&self) -> u64 {
        self.redis.script_stats().1
    }

    /// Starts an api replica in this process on a free port.
    pub async fn spawn_api(&self) -> TestApi {
        self.spawn_api_with(&self.settings())
    }

    pub fn spawn_api_with(&self, settings: &Settings) -> TestApi {
        let api = sluice::api::serve(settings, "127.0.0.1:0".parse().unwrap()).unwrap();
        let handle = api.server.handle();
        actix_web::rt::spawn(api.server);
        TestApi {
            base: format!("http://{}", api.addr),
            handle: Some(handle),
            client: client(),
        }
    }

    /// Starts an api replica with its admin listener (SLUICE__ADMIN__BIND), both on free ports;
    /// returns (public, admin).
    pub fn spawn_api_with_admin(&self) -> (TestApi, TestApi) {
        let mut settings = self.settings();
        settings.admin.bind = Some("127.0.0.1:0".parse().unwrap());
        let mut api = sluice::api::serve(&settings, "127.0.0.1:0".parse().unwrap()).unwrap();
        let admin = *api.admin.take().expect("the admin listener is bound");
        let running = |server: sluice::api::ApiServer| {
            let handle = server.server.handle();
            actix_web::rt::spawn(server.server);
            TestApi {
                base: format!("http://{}", server.addr),
                handle: Some(handle),
                client: client(),
            }
        };
        let admin = running(admin);
        (running(api), admin)
    }

    /// A tenant with one API key. Returns (tenant id, key).
    pub async fn tenant(&self) -> (String, String) {
        let tenant = self
            .registry
            .create_tenant(&valid("Test tenant"))
            .await
            .unwrap();
        let (_, key) = self
            .registry
            .create_key(&valid(&tenant.id), Some(&valid("test")))
            .await
            .unwrap();
        (tenant.id, key.expose().to_owned())
    }

    /// Registers a signal; returns its id.
    pub async fn signal(&self, tenant: &str, slug: &str, kind: &str, limit: Option<u32>) -> String {
        self.registry
            .create_signal(
                &valid(tenant),
                &valid(slug),
                kind.parse().unwrap(),
                None,
                limit.map(|l| sluice::domain::PerMinute::new(l.into()).unwrap()),
            )
            .await
            .unwrap()
            .id
    }

    /// Adds the next schema version of a signal; returns the version.
    pub async fn schema(&self, tenant: &str, slug: &str, schema: Value) -> u32 {
        self.registry
            .add_schema(&valid(tenant), &valid(slug), &schema)
            .await
            .unwrap()
            .1
            .version
    }

    /// Runs `sluice-admin` against this environment as an operator would; the command must
    /// succeed, and its JSON is returned.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = self.run_admin(args);
        assert!(
            out.status.success(),
            "sluice-admin {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs `sluice-admin` as [`TestEnv::admin`] does; the command must fail, and its stderr
    /// is returned.
    pub fn admin_refused(&self, args: &[&str]) -> String {
        let out = self.run_admin(args);
        assert!(!out.status.success(), "sluice-admin {args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn run_admin(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice-admin"))
            .args(args)
            .envs(self.env_vars())
            .env_remove("SLUICE_CONFIG")
            .output()
            .unwrap()
    }

    /// A direct connection to the test database (over its Unix socket, which every test server
    /// trusts, with or without TLS on TCP).
    pub async fn pg_client(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.pg.socket_url("sluice"), tokio_postgres::NoTls)
                .await
                .unwrap();
        actix_web::rt::spawn(conn);
        client
    }

    /// Every event in every partition stream, as field maps: `entry_id`, the event as a
    /// one-event entry has it (`m`, `e`), and for readable assertions what they hold (`id`,
    /// `tenant`, `signal`, `type`, `version`, `event`). Read the way the worker reads them:
    /// staged events read back into their entry, through the stream contract's decoder,
    /// rate-limited events left out.
    pub fn stream_entries(&self) -> Vec<HashMap<String, String>> {
        let mut conn = self.redis.conn();
        let keyspace = Keyspace::new(self.settings().redis.partitions);
        let mut all = Vec::new();
        for stream in keyspace.streams() {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg("-")
                .arg("+")
                .query(&mut conn)
                .unwrap();
            for id in reply.ids {
                let mut fields: HashMap<String, String> = id
                    .map
                    .into_iter()
                    .map(|(k, v)| (k, redis::from_redis_value::<String>(v).unwrap()))
                    .collect();
                unstage(&mut conn, &mut fields);
                let Ok(events) =
                    sluice::stream::StreamEntry::decode_all(|f| fields.get(f).cloned())
                else {
                    all.push(fields);
                    continue;
                };
                for event in events {
                    let mut item: HashMap<String, String> = match &event.alone {
                        Some(alone) => alone
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                        None => fields.clone(),
                    };
                    item.insert("entry_id".into(), id.id.clone());
                    if let Ok(entry) = event.event {
                        let version = entry.schema_version.unwrap_or(0).to_string();
                        let e = item.get("e").cloned().unwrap_or_default();
                        for (name, value) in [
                            ("tenant", entry.tenant),
                            ("signal", entry.signal),
                            ("type", entry.signal_type.as_str().to_owned()),
                            ("version", version),
                            ("id", entry.id.to_string()),
                            ("event", e),
                        ] {
                            item.insert(name.to_owned(), value);
                        }
                    }
                    all.push(item);
                }
            }
        }
        all
    }
}

fn settings_from(vars: &HashMap<String, String>) -> Settings {
    Settings::load_from(None, vars).unwrap()
}

/// Puts an entry's staged events (the key in its `r` field) back into its `b` field, as the
/// worker reads them; an entry whose staged events are gone is left as it is.
pub fn unstage(conn: &mut redis::Connection, fields: &mut HashMap<String, String>) {
    use sluice::stream::entry::{EVENTS, STAGED};
    let Some(staged) = fields.get(STAGED) else {
        return;
    };
    let events: Option<String> = redis::cmd("GET").arg(staged).query(conn).unwrap();
    if let Some(events) = events {
        fields.remove(STAGED);
        fields.insert(EVENTS.to_owned(), events);
    }
}

/// The ids an ingest answer gives its events, in order.
pub fn ids_of(reply: &Reply) -> Vec<String> {
    reply.body["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|e| e["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `s` as the rule type `T`, which it must follow.
pub fn valid<T: sluice::domain::Rule>(s: &str) -> T {
    T::parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .finish()
}

/// A running api replica.
pub struct TestApi {
    pub base: String,
    /// The in-process server, stopped on drop; `None` for a client of a `sluice-api` process.
    handle: Option<ServerHandle>,
    client: awc::Client,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// The contract's error shape, or a panic saying why not.
    pub fn error(&self) -> &str {
        assert_eq!(self.body["success"], false, "not an error: {}", self.text);
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {}", self.text))
    }
}

impl TestApi {
    /// A client of the `sluice-api` process at `addr` (`host:port`, as `spawn_api_process`
    /// returns it).
    pub fn at(addr: &str) -> Self {
        TestApi {
            base: format!("http://{addr}"),
            handle: None,
            client: client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs JSON with a bearer key.
    pub async fn post(&self, path: &str, key: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            body.to_string().into_bytes(),
        )
        .await
    }

    pub async fn batch(&self, key: &str, events: Value) -> Reply {
        self.post(
            "/v1/events/batch",
            key,
            &serde_json::json!({ "events": events }),
        )
        .await
    }

    /// Sends `body` with the given request, whatever it is.
    pub async fn send(&self, req: awc::ClientRequest, body: Vec<u8>) -> Reply {
        let mut res = req.send_body(body).await.expect("the api answers");
        let bytes = res.body().limit(16 << 20).await.expect("a readable body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        Reply {
            status: res.status().as_u16(),
            headers: res
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path)), Vec::new()).await
    }

    /// `method` on `path` with a bearer credential and, if given, a JSON body.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self
            .request(method.parse().unwrap(), path)
            .insert_header(("Authorization", format!("Bearer {bearer}")));
        let bytes = match body {
            Some(body) => {
                req = req.insert_header(("Content-Type", "application/json"));
                body.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        self.send(req, bytes).await
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        // Stops accepting and lets the workers go; the test's runtime ends right after.
        if let Some(handle) = &self.handle {
            actix_web::rt::spawn(handle.stop(false));
        }
    }
}

/// How long a test waits for what the product does by itself (a reconnect, a rebuilt registry
/// copy, a drained stream): ample for a loaded 2-core machine. Reaching it fails the test.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Polls `check` until it returns `Some` (every 100 ms, for at most [`PATIENCE`]) and returns
/// what it found; panics naming `what` otherwise.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The ids of every stored event, as text.
pub async fn stored_event_ids(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query("SELECT id::text FROM events", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The value of the sample `series` (a metric name with its labels, as exposed) in a Prometheus
/// text exposition; `None` when it is not there.
pub fn metric_value(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// Runs binary `bin` with `args` and exactly the `SLUICE__*` settings in `env` (none from a
/// config file): (exit code, stdout, stderr).
pub fn run_binary(bin: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `bin` with `env`'s settings and `extra`, and waits for it to exit by itself: its exit
/// code and stderr. One that keeps running (it accepted the Redis) fails the test.
pub fn exits_refusing(env: &TestEnv, bin: &str, extra: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(bin);
    cmd.envs(env.env_vars())
        .env_remove("SLUICE_CONFIG")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{bin} kept running on a Redis it must refuse");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

/// `n` events of `signal` for accounts `{tag}-0`, `{tag}-1`…, each about 250 bytes in its
/// entry (100 of them are staged).
pub fn events(signal: &str, tag: &str, n: usize) -> Value {
    serde_json::json!(
        (0..n)
            .map(|i| event(signal, &format!("{tag}-{i}")))
            .collect::<Vec<_>>()
    )
}

/// A tenant whose `page_view` signal takes a billion events a minute, so that only memory ever
/// refuses its events (four producers get well over a million a minute in); (tenant, key).
pub async fn roomy_tenant(env: &TestEnv) -> (String, String) {
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(1_000_000_000))
        .await;
    (tenant, key)
}

/// An event of `signal` for account `id`.
pub fn event(signal: &str, id: &str) -> Value {
    serde_json::json!({"signal": signal, "identity": {"type": "account", "id": id}})
}

/// A `sluice-worker` process.
pub struct WorkerProcess {
    child: std::process::Child,
    pub metrics_url: String,
}

impl TestEnv {
    /// Starts the real `sluice-worker` binary against this environment; `vars` override settings.
    pub fn spawn_worker(&self, vars: &[(&str, &str)]) -> WorkerProcess {
        let port = servers::free_port();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-worker"));
        cmd.envs(self.env_vars())
            .env_remove("SLUICE_CONFIG")
            .env("SLUICE__WORKER__METRICS_BIND", format!("127.0.0.1:{port}"))
            .env("SLUICE__WORKER__BLOCK_MS", "20")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        if std::env::var_os("SLUICE_TEST_WORKER_LOGS").is_some() {
            cmd.stderr(std::process::Stdio::inherit())
                .env("SLUICE__LOG__LEVEL", "info");
        }
        WorkerProcess {
            child: cmd.spawn().unwrap(),
            metrics_url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// Polls until `events` holds `n` rows (or fails after `secs`); returns the count.
    pub async fn wait_for_events(&self, n: i64, secs: u64) -> i64 {
        let client = self.pg_client().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let count: i64 = match client.query_one("SELECT count(*) FROM events", &[]).await {
                Ok(row) => row.get(0),
                Err(_) => -1,
            };
            if count >= n || std::time::Instant::now() > deadline {
                return count;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// True once the consumer group has been handed every entry of every partition stream and
    /// has acknowledged them all: whatever was added, the worker has finished with.
    pub fn drained(&self) -> bool {
        type Info = HashMap<String, redis::Value>;
        let text = |info: &Info, field: &str| {
            info.get(field)
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default()
        };
        let mut conn = self.redis.conn();
        let keyspace = Keyspace::new(self.settings().redis.partitions);
        keyspace.streams().all(|stream| {
            let Ok(info) = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query::<Info>(&mut conn)
            else {
                return true; // no stream: nothing to drain
            };
            let groups: Vec<Info> = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query(&mut conn)
                .unwrap_or_default();
            groups.iter().any(|group| {
                text(group, "name") == "sluice"
                    && text(group, "last-delivered-id") == text(&info, "last-generated-id")
                    && text(group, "pending") == "0"
            })
        })
    }

    /// Pending entries of the consumer group, over all partitions.
    pub fn pending(&self) -> i64 {
        let mut conn = self.redis.conn();
        let keyspace = Keyspace::new(self.settings().redis.partitions);
        keyspace
            .streams()
            .map(|s| {
                redis::cmd("XPENDING")
                    .arg(&s)
                    .arg("sluice")
                    .query::<(
                        i64,
                        Option<String>,
                        Option<String>,
                        Option<Vec<(String, String)>>,
                    )>(&mut conn)
                    .map(|r| r.0)
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl WorkerProcess {
    /// SIGKILL: the process dies wherever it is.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit (at most `secs`); the exit status code.
    pub fn terminate(&mut self, secs: u64) -> Option<i32> {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// GETs one of the worker's endpoints: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        match client()
            .get(format!("{}{path}", self.metrics_url))
            .send()
            .await
        {
            Ok(mut res) => {
                let body = res
                    .body()
                    .await
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                (res.status().as_u16(), body)
            }
            Err(_) => (0, String::new()),
        }
    }

    /// Waits until `/readyz` answers `status` (at most 30 s).
    pub async fn wait_ready(&self, status: u16) -> String {
        for _ in 0..300 {
            let (s, body) = self.get("/readyz").await;
            if s == status {
                return body;
            }
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("worker /readyz never answered {status}");
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A `sluice-api` process, killed when the guard is dropped, so no test leaves one running
/// whether it passes or fails. Derefs to the child for signals, waits and its stderr.
pub struct ApiProcess(std::process::Child);

impl std::ops::Deref for ApiProcess {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ApiProcess {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the real `sluice-api` binary on `port` (a free one when `None`), its stderr piped;
/// returns the process and its `host:port`.
pub fn spawn_api_process(
    env: &TestEnv,
    port: Option<u16>,
    extra: &[(&str, &str)],
) -> (ApiProcess, String) {
    spawn_api_process_to(env, port, extra, std::process::Stdio::piped())
}

/// As [`spawn_api_process`], its stderr (the log) going to `stderr`: a file, for a long run
/// whose log would fill a pipe nobody reads.
pub fn spawn_api_process_to(
    env: &TestEnv,
    port: Option<u16>,
    extra: &[(&str, &str)],
    stderr: std::process::Stdio,
) -> (ApiProcess, String) {
    let port = port.unwrap_or_else(servers::free_port);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-api"));
    cmd.envs(env.env_vars())
        .env_remove("SLUICE_CONFIG")
        .env_remove("RUST_LOG")
        .env("SLUICE__API__BIND", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let child = ApiProcess(cmd.spawn().unwrap());
    let base = format!("127.0.0.1:{port}");
    wait_until("sluice-api to listen", || {
        std::net::TcpStream::connect(&base).is_ok()
    });
    (child, base)
}
