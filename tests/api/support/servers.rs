//! Real `redis-server` and PostgreSQL processes for tests, on free loopback ports in temporary
//! directories, stopped when dropped.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` user (created by Debian's package). `initdb` is slow, so it runs once per machine
//! into a template under the target directory; each test copies the template and starts its
//! own server on it.

use std::fs::{self, File};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::RedisTls;

/// A port nobody listens on right now, never handed out before by this process, and with the
/// port 10,000 above it free too (a Redis Cluster node's bus port).
///
/// Both lie below the kernel's ephemeral range (from 32768), so no outgoing connection takes a
/// test server's port as its own while that server is down for a restart, and no other test of
/// the same process is handed it meanwhile: a restarted server always gets its port back.
pub fn free_port() -> u16 {
    const FIRST: u16 = 10_000;
    const COUNT: u16 = 12_000; // ports 10000–21999, bus ports 20000–31999
    static NEXT: AtomicU16 = AtomicU16::new(0);
    static START: OnceLock<u16> = OnceLock::new();
    // Parallel test processes start at different places.
    let start = *START.get_or_init(|| rand::random_range(0..COUNT));
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % COUNT;
        let port = FIRST + (start + n) % COUNT;
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair left in {FIRST}–{}", FIRST + COUNT - 1);
}

/// A `redis-server` on loopback.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
    /// With an append-only file, its `appendfsync` policy (`always`: a kill -9 loses nothing
    /// acknowledged); none without.
    fsync: Option<&'static str>,
    /// TLS only, with these certificates.
    pub tls: Option<RedisTls>,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(None, None)
    }

    /// A Redis that keeps its data across a kill -9 and restart.
    pub fn start_durable() -> Self {
        Self::start_with(Some("always"), None)
    }

    /// A Redis that speaks TLS only, with the certificates of `tls`.
    pub fn start_tls(tls: RedisTls) -> Self {
        Self::start_with(None, Some(tls))
    }

    /// A Redis as deployed (the benchmark's): append-only file, fsync every second; TLS only
    /// with `tls`.
    #[allow(dead_code)] // the benchmark's (bench/main.rs)
    pub fn start_as_deployed(tls: Option<RedisTls>) -> Self {
        Self::start_with(Some("everysec"), tls)
    }

    fn start_with(fsync: Option<&'static str>, tls: Option<RedisTls>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut server = RedisServer {
            port,
            child: None,
            dir,
            fsync,
            tls,
        };
        server.spawn();
        server
    }

    /// Its URL; with TLS, by the name its certificate is issued for.
    pub fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("rediss://localhost:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The `SLUICE__*` settings that reach it (its URL, and certificates with TLS).
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut vars = vec![("SLUICE__REDIS__URL".to_owned(), self.url())];
        if let Some(tls) = &self.tls {
            vars.extend(tls.settings());
        }
        vars
    }

    fn client(&self) -> redis::RedisResult<redis::Client> {
        match &self.tls {
            Some(tls) => redis::Client::build_with_tls(self.url(), tls.certificates()),
            None => redis::Client::open(self.url()),
        }
    }

    fn spawn(&mut self) {
        let port_args = match &self.tls {
            Some(tls) => tls.server_args(self.port),
            None => vec!["--port".to_owned(), self.port.to_string()],
        };
        let child = Command::new("redis-server")
            .args(port_args)
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                if self.fsync.is_some() { "yes" } else { "no" },
                "--appendfsync",
                self.fsync.unwrap_or("always"),
            ])
            .args([
                "--dir",
                self.dir.path().to_str().unwrap(),
                "--loglevel",
                "warning",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (deploy/dev/install-deps.sh)");
        self.child = Some(child);
        if self.tls.is_some() {
            // Its certificate may be one the tests mean to be refused: wait for the port only.
            wait_until("redis-server to listen", || {
                std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            });
            return;
        }
        wait_until("redis-server to accept connections", || {
            self.client()
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        });
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (with its data when durable).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Pauses the process (SIGSTOP), as a hung Redis would be: connections stay open, nothing answers.
    pub fn freeze(&self) {
        signal(self.child.as_ref().unwrap().id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.as_ref().unwrap().id(), "CONT");
    }

    /// A synchronous connection, for inspecting state from tests.
    pub fn conn(&self) -> redis::Connection {
        self.client().unwrap().get_connection().unwrap()
    }

    /// Resets the command statistics ([`RedisServer::script_stats`] counts from here).
    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.conn())
            .unwrap();
    }

    /// The time (µs) Redis spent running scripts, and how many it ran, since the statistics
    /// were last reset (`INFO commandstats`).
    pub fn script_stats(&self) -> (f64, u64) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.conn())
            .unwrap();
        let field = |line: &str, name: &str| -> Option<f64> {
            let (_, rest) = line.split_once(&format!("{name}="))?;
            rest.split(',').next()?.parse().ok()
        };
        info.lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                let rest = l.split_once(':')?.1;
                Some((field(rest, "usec")?, field(rest, "calls")? as u64))
            })
            .fold((0.0, 0), |(u, c), (du, dc)| (u + du, c + dc))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), "CONT");
        }
        self.stop();
    }
}

/// A PostgreSQL server on loopback, trusting local connections.
pub struct Postgres {
    pub port: u16,
    child: Option<Child>,
    bin: PathBuf,
    data: PathBuf,
    /// Serving TLS only: TCP connections without it are refused.
    tls: bool,
    /// Durability traded for speed, as tests can afford (`fsync=off`, ...); off: the server's
    /// own defaults, as deployed.
    for_tests: bool,
    /// The temporary directory holding `data`; `None` for a kept server's own directory.
    _dir: Option<TempDir>,
}

impl Postgres {
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// A server with PostgreSQL's own settings (the benchmark's): commits flushed to disk.
    #[allow(dead_code)] // the benchmark's (bench/main.rs)
    pub fn start_as_deployed() -> Self {
        let mut pg = Self::prepare(None, false);
        pg.spawn();
        pg
    }

    /// A server that accepts TCP connections over TLS only, with this certificate and key
    /// (PEM), as managed PostgreSQL with `force_ssl` does.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::start_with_tls(Some((cert_pem, key_pem)))
    }

    fn start_with_tls(tls: Option<(&str, &str)>) -> Self {
        let mut pg = Self::prepare(tls, true);
        pg.spawn();
        pg
    }

    /// A data directory copied from the template (with TLS files when given), not started.
    fn prepare(tls: Option<(&str, &str)>, for_tests: bool) -> Self {
        let bin = pg_bin_dir();
        let template = template(&bin);
        let dir = tempfile::tempdir().unwrap();
        // The server user must be able to reach its data directory inside our temp dir.
        fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let data = dir.path().join("data");
        let status = Command::new("cp")
            .arg("-a")
            .arg(&template)
            .arg(&data)
            .status()
            .unwrap();
        assert!(status.success(), "copying the PostgreSQL template");
        if let Some((cert, key)) = tls {
            fs::write(data.join("server.crt"), cert).unwrap();
            fs::write(data.join("server.key"), key).unwrap();
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
            )
            .unwrap();
            fs::set_permissions(
                data.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )
            .unwrap();
            if let Some((uid, gid)) = server_user() {
                let status = Command::new("chown")
                    .arg(format!("{uid}:{gid}"))
                    .args([
                        data.join("server.crt"),
                        data.join("server.key"),
                        data.join("pg_hba.conf"),
                    ])
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        Postgres {
            port: free_port(),
            child: None,
            bin,
            data,
            tls: tls.is_some(),
            for_tests,
            _dir: Some(dir),
        }
    }

    /// The local development server (`deploy/dev/up.sh`, through `deploy/dev/postgres.rs`):
    /// PostgreSQL's own settings on `data`, a directory that outlives this process (initialised
    /// on first use), logging to `server.log` in it, out of the terminal's signals. It is left
    /// running: `deploy/dev/down.sh` stops it.
    #[allow(dead_code)] // deploy/dev/postgres.rs's
    pub fn start_kept(data: &Path, port: u16) {
        let bin = pg_bin_dir();
        if !data.join("PG_VERSION").exists() {
            initdb(&bin, data, true);
        }
        let mut pg = Postgres {
            port,
            child: None,
            bin,
            data: data.to_owned(),
            tls: false,
            for_tests: false,
            _dir: None,
        };
        let log = File::options()
            .create(true)
            .append(true)
            .open(data.join("server.log"))
            .expect("opening server.log");
        let mut command = pg.command();
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0);
        pg.spawn_and_wait(command);
        // Not stopped when dropped.
        pg.child.take();
    }

    fn spawn(&mut self) {
        let mut command = self.command();
        command.stdout(Stdio::null()).stderr(Stdio::null());
        self.spawn_and_wait(command);
    }

    /// The server's command line, as the server user.
    fn command(&self) -> Command {
        let mut command = as_server_user(Command::new(self.bin.join("postgres")));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.data)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(if self.for_tests {
                &[
                    // Safe against process crashes (the OS keeps the writes). Commits stay
                    // synchronous: a crashed server must never forget a commit the worker acked.
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "shared_buffers=32MB",
                    "-c",
                    "max_connections=200",
                ][..]
            } else {
                &[][..]
            })
            .args(if self.tls {
                &["-c", "ssl=on"][..]
            } else {
                &[][..]
            });
        command
    }

    /// Starts `command` and waits until the server accepts connections.
    fn spawn_and_wait(&mut self, mut command: Command) {
        self.child = Some(command.spawn().expect("starting postgres"));
        // Over the Unix socket, which every server here trusts with or without TLS.
        let url = self.socket_url("postgres");
        wait_until("postgres to accept connections", || {
            let url = url.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        tokio_postgres::connect(&url, tokio_postgres::NoTls)
                            .await
                            .is_ok()
                    })
            })
            .join()
            .unwrap()
        });
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The connection string of database `db` over the server's Unix socket.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={db}",
            self.data.display(),
            self.port
        )
    }

    /// Stops the server the way an operator would (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "INT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Crashes the server: an immediate shutdown (SIGQUIT), which needs crash recovery at the
    /// next start.
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "QUIT");
            let _ = child.wait();
        }
    }

    /// Starts it after a stop or crash, on the same data and port.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.spawn();
    }

    /// Starts it again on the same data and port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` with a server in it.
fn pg_bin_dir() -> PathBuf {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (deploy/dev/install-deps.sh)")
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql/*/bin")
        .1
}

/// An initialised data directory to copy, made once per machine.
fn template(bin: &Path) -> PathBuf {
    // Cargo names a scratch directory for tests and benchmarks, not for examples.
    let root = PathBuf::from(
        option_env!("CARGO_TARGET_TMPDIR")
            .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/target/tmp")),
    );
    fs::create_dir_all(&root).unwrap();
    let version = bin
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let template = root.join(format!("pg-template-{version}"));
    let ready = root.join(format!("pg-template-{version}.ready"));
    let lock = File::create(root.join("pg-template.lock")).unwrap();
    lock.lock().unwrap();
    if !ready.exists() {
        let _ = fs::remove_dir_all(&template);
        if server_user().is_some() {
            // Every directory above the template must be traversable by the server user.
            let mut dir = template.parent();
            while let Some(d) = dir {
                let mode = fs::metadata(d).unwrap().permissions();
                let m = std::os::unix::fs::PermissionsExt::mode(&mode);
                if m & 0o001 == 0 {
                    fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(m | 0o011))
                        .unwrap();
                }
                dir = d.parent();
            }
        }
        initdb(bin, &template, false);
        File::create(&ready).unwrap();
    }
    lock.unlock().unwrap();
    template
}

/// Initialises a data directory at `data` for the server user (trusting local connections);
/// `sync`: flushed to disk, as a directory meant to last should be.
fn initdb(bin: &Path, data: &Path, sync: bool) {
    fs::create_dir_all(data).unwrap();
    if let Some((uid, gid)) = server_user() {
        let status = Command::new("chown")
            .arg(format!("{uid}:{gid}"))
            .arg(data)
            .status()
            .unwrap();
        assert!(status.success());
    }
    let out = as_server_user(Command::new(bin.join("initdb")))
        .arg("-D")
        .arg(data)
        .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
        .args(if sync { &[][..] } else { &["--no-sync"][..] })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `postgres` user's uid and gid when we run as root, else `None`.
fn server_user() -> Option<(u32, u32)> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let euid: u32 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("running as root needs the postgres user (Debian's postgresql package creates it)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().unwrap(), fields[3].parse().unwrap()))
}

fn as_server_user(mut cmd: Command) -> Command {
    if let Some((uid, gid)) = server_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Polls `ready` until it holds, for at most 30 s.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
