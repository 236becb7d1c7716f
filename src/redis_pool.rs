//! Connections to Redis (one server or a Redis Cluster, over TLS with `rediss://` URLs), with
//! one deadline over every operation.
//!
//! Requirement: a dead or slow Redis never hangs a request. Every call here (connecting, the
//! command itself) finishes within the configured timeout or fails with [`RedisError`], which
//! the api answers with 503.
//!
//! Connections are multiplexed: one TCP connection (per node, on a cluster) carries any number
//! of concurrent commands. So instead of checking a connection out of a pool per call (which
//! costs a health-check round trip, `UNWATCH` + `PING`, every time), each process keeps
//! `pool_size` long-lived connections, opened on first use. The api keeps each of its HTTP
//! worker threads on one connection opened on that thread ([`Redis::for_requests`]): each actix
//! worker runs its own single-threaded runtime, and a command on a connection whose reader runs
//! on another thread costs two cross-thread wake-ups (a third less CPU per 1-event request
//! without them). The worker and `sluice-admin` use theirs round-robin: a blocking stream read
//! must not hold up the acknowledgements queued behind it on the same connection. Measured
//! effect: bench/history.md.
//!
//! Requirement: a Redis restart between two requests costs no request. A connection's reader
//! (the redis crate's driver task, which this module spawns itself) marks the connection closed
//! the moment it sees the server go away, so a command is never handed to a connection already
//! known to be dead: the slot is reopened first. And since the connection counts the bytes its
//! socket accepted, a command that fails with the connection while nothing more was written
//! (the reader saw the close just before it) is known never to have reached Redis, and is sent
//! again on a fresh connection within the same deadline. Only a write that did reach a socket
//! and got no answer is [`RedisError::Unconfirmed`] (it may have run); a read is then simply
//! sent once more. On a cluster the redis crate opens the sockets, reconnects a node that went
//! away and follows `MOVED`/`ASK` redirects itself.
//!
//! TLS is rustls (as for PostgreSQL: nothing to build or link from OpenSSL), with the server's
//! certificate always checked against the CA of `SLUICE__REDIS__TLS_CA_FILE` (or the system's
//! roots) and the name connected to; on a cluster the same CA and client certificate serve every
//! node the cluster names.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::aio::{AsyncStream, ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr,
};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisFuture, Script, ScriptInvocation, Value,
};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::TlsConnector;

use crate::config::{RedisMode, RedisSettings};
use crate::keyspace::cluster_slot;
use crate::tls::TlsFiles;

#[derive(Clone, Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A write (a script) was handed to the connection but no answer came back: it may or may
    /// not have run.
    #[error("no answer from Redis after the write was sent: {0}")]
    Unconfirmed(String),
    /// No connection could be made (refused, TLS handshake or certificate check failed, …).
    #[error("cannot connect to Redis: {0}")]
    Connect(redis::RedisError),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
    /// The writes happened, but fewer replicas than required confirmed them in time.
    #[error("writes confirmed by {got} of the {wanted} required replicas")]
    NotReplicated { wanted: u32, got: i64 },
}

/// A cheap-to-clone handle on the connections.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// What connections are opened with.
#[derive(Clone)]
enum Client {
    Standalone(Arc<Server>),
    /// Boxed: a cluster client is several times the size of the other variant.
    Cluster(Box<ClusterClient>),
}

/// One Redis server: where it is, what to say on connecting (`AUTH`, `SELECT`), and how to
/// speak TLS to it.
struct Server {
    info: ConnectionInfo,
    /// Set for `rediss://` URLs.
    tls: Option<TlsConnector>,
}

struct Shared {
    /// Long-lived multiplexed connections; `None` until first used or after a failure.
    slots: Vec<Mutex<Option<Pooled>>>,
    next: AtomicUsize,
    /// Each thread keeps to one slot ([`Redis::for_requests`]); else round-robin.
    per_thread: bool,
}

/// A connection in a slot.
#[derive(Clone)]
struct Pooled {
    conn: Conn,
    /// Raised by the connection's reader when it ends (the server closed the connection or
    /// reset it): from then on nothing sent on it can reach a server, so the slot is reopened
    /// instead. Never raised on a cluster connection, which reconnects its nodes itself.
    closed: Arc<AtomicBool>,
    /// Bytes handed to the socket so far; `None` on a cluster connection, whose sockets the
    /// redis crate opens. A command that failed while this did not move was never written.
    written: Option<Arc<AtomicU64>>,
}

impl Pooled {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn written(&self) -> Option<u64> {
        self.written.as_ref().map(|w| w.load(Ordering::Acquire))
    }
}

/// Raises the flag when dropped: when the reader's task ends, however it ends (its runtime
/// shutting down included).
struct RaiseOnDrop(Arc<AtomicBool>);

impl Drop for RaiseOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub enum Conn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// `WAIT replicas timeout` on the node that holds `key`, over the connection that wrote it:
    /// how many replicas acknowledged this connection's writes so far.
    async fn wait_for_replicas(
        &mut self,
        key: &str,
        replicas: u32,
        timeout: Duration,
    ) -> redis::RedisResult<i64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(replicas).arg(timeout.as_millis() as u64);
        match self {
            Conn::Standalone(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => {
                let route = Route::new(cluster_slot(key), SlotAddr::Master);
                let reply = c
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                redis::from_redis_value(reply).map_err(Into::into)
            }
        }
    }
}

impl Redis {
    /// Connections used round-robin, for callers that may block one (the worker's reads).
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        Self::with_slots(settings, false)
    }

    /// Connections for serving requests: each thread keeps to its own, opened on it, so a reply
    /// wakes the request on the thread that serves it. Blocking commands would hold up the
    /// thread's other requests: the api sends none.
    pub fn for_requests(settings: &RedisSettings) -> Result<Self, String> {
        Self::with_slots(settings, true)
    }

    /// Prepares the connections. They are opened on first use, so a binary can start (and
    /// report itself unready) while Redis is still down; a bad URL or certificate file stops it
    /// here.
    fn with_slots(settings: &RedisSettings, per_thread: bool) -> Result<Self, String> {
        let client = match settings.mode {
            RedisMode::Standalone => Server::new(settings).map(|s| Client::Standalone(Arc::new(s))),
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(settings.urls());
                if let Some(certs) = certificates(&settings.tls())? {
                    builder = builder.certs(certs);
                }
                builder
                    .build()
                    .map(|client| Client::Cluster(Box::new(client)))
                    .map_err(|e| format!("SLUICE__REDIS__URL: cannot use it: {e}"))
            }
        }?;
        let slots = (0..settings.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(Redis {
            client,
            timeout: settings.timeout,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
                per_thread,
            }),
        })
    }

    /// The deadline of any call (`SLUICE__REDIS__TIMEOUT_MS`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// True on a Redis Cluster, where one command may only touch keys of one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// Runs one command.
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.with_connection(false, async |conn| Ok(cmd.query_async(conn).await?))
            .await
    }

    /// Runs a pipeline of commands that are safe to send twice (as [`Redis::query`]); on a
    /// cluster, of keys of one slot.
    pub async fn query_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &Pipeline,
    ) -> Result<T, RedisError> {
        self.with_connection(false, async |conn| Ok(pipeline.query_async(conn).await?))
            .await
    }

    /// Runs a Lua script by its SHA, loading it first where Redis does not have it yet. With
    /// `replicas > 0`, then waits until that many replicas of the node holding `key` confirm the
    /// script's writes.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
    ) -> Result<T, RedisError> {
        self.with_connection(true, async |conn| {
            let reply: T = script.invoke_async(conn).await?;
            self.confirm(conn, key, replicas).await?;
            Ok(reply)
        })
        .await
    }

    /// As [`Redis::invoke`], for a pipeline (with `ignore_errors`) whose last command is
    /// `EVALSHA` of `script`, its others writes the script may rely on (such as staged
    /// events): the error of each of those (`None` where it succeeded) with the script's reply.
    /// Where Redis does not have the script yet, it is loaded and the whole pipeline sent again.
    pub async fn invoke_pipeline<T: FromRedisValue>(
        &self,
        pipeline: &Pipeline,
        script: &Script,
        key: &str,
        replicas: u32,
    ) -> Result<(Vec<Option<redis::RedisError>>, T), RedisError> {
        type Replies = (Vec<Option<redis::RedisError>>, redis::RedisResult<Value>);
        async fn run(pipeline: &Pipeline, conn: &mut Conn) -> redis::RedisResult<Replies> {
            let mut commands = pipeline.cmd_iter();
            if let (Some(only), None) = (commands.next(), commands.next()) {
                // The script alone: as a command (a pipeline's replies cost more to collect).
                return Ok((Vec::new(), only.query_async(conn).await));
            }
            let mut replies: Vec<Value> = pipeline.query_async(conn).await?;
            let last = replies.pop().unwrap_or(Value::Nil);
            let before = replies
                .into_iter()
                .map(|reply| reply.extract_error().err())
                .collect();
            Ok((before, last.extract_error()))
        }
        self.with_connection(true, async |conn| {
            let (before, reply) = match run(pipeline, conn).await? {
                (_, Err(e)) if e.code() == Some("NOSCRIPT") => {
                    script.load_async(conn).await?;
                    run(pipeline, conn).await?
                }
                replies => replies,
            };
            let reply = redis::from_redis_value(reply?).map_err(redis::RedisError::from)?;
            self.confirm(conn, key, replicas).await?;
            Ok((before, reply))
        })
        .await
    }

    /// With `replicas > 0`, waits until that many replicas of the node holding `key` confirm
    /// this connection's writes so far.
    async fn confirm(&self, conn: &mut Conn, key: &str, replicas: u32) -> Result<(), RedisError> {
        if replicas > 0 {
            let got = conn
                .wait_for_replicas(key, replicas, self.timeout / 2)
                .await?;
            if got < i64::from(replicas) {
                return Err(RedisError::NotReplicated {
                    wanted: replicas,
                    got,
                });
            }
        }
        Ok(())
    }

    /// Runs `cmd` on every primary: each one's `host:port` with its reply (standalone: the one
    /// server's).
    pub async fn on_each_primary(&self, cmd: &Cmd) -> Result<Vec<(String, Value)>, RedisError> {
        if let Client::Standalone(server) = &self.client {
            return Ok(vec![(server.address(), self.query(cmd).await?)]);
        }
        let every_primary = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
        let reply = self
            .with_connection(false, async |conn| match conn {
                Conn::Cluster(c) => Ok(c.route_command(cmd.clone(), every_primary.clone()).await?),
                Conn::Standalone(c) => Ok(cmd.query_async(c).await?),
            })
            .await?;
        let Value::Map(replies) = reply else {
            return Err(RedisError::Command(redis::RedisError::from((
                redis::ErrorKind::Parse,
                "expected one reply per primary",
            ))));
        };
        replies
            .into_iter()
            .map(|(node, reply)| {
                let node =
                    redis::from_redis_value::<String>(node).map_err(redis::RedisError::from)?;
                Ok((node, reply))
            })
            .collect()
    }

    /// Runs `cmd` on the primary `node` (`host:port`, as [`Redis::on_each_primary`] names it).
    pub async fn on_primary<T: FromRedisValue>(
        &self,
        node: &str,
        cmd: &Cmd,
    ) -> Result<T, RedisError> {
        if let Client::Standalone(_) = &self.client {
            return self.query(cmd).await;
        }
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)))
            .ok_or_else(|| {
                RedisError::Command(redis::RedisError::from((
                    redis::ErrorKind::Client,
                    "not a node address",
                    node.to_owned(),
                )))
            })?;
        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port });
        let reply = self
            .with_connection(false, async |conn| match conn {
                Conn::Cluster(c) => Ok(c.route_command(cmd.clone(), route.clone()).await?),
                Conn::Standalone(c) => Ok(cmd.query_async(c).await?),
            })
            .await?;
        Ok(redis::from_redis_value(reply).map_err(redis::RedisError::from)?)
    }

    /// `PING`, for readiness checks (on a cluster, every primary must answer).
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Runs `op` on a connection within the deadline. A connection known to be closed is
    /// reopened before anything is sent on it. A transport failure once `op` has started is,
    /// with `writes`, [`RedisError::Unconfirmed`] (what was sent may have run); without, `op`
    /// runs once more on a fresh connection, within the same deadline.
    async fn with_connection<T>(
        &self,
        writes: bool,
        op: impl AsyncFn(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let slot = self.slot();
        let sent = AtomicBool::new(false);
        let attempt = async {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut pooled = self.connection(slot).await?;
                let before = pooled.written();
                sent.store(true, Ordering::Relaxed);
                match op(&mut pooled.conn).await {
                    Err(RedisError::Command(e)) if is_transport_failure(&e) => {
                        // Its reader raises the flag too, but perhaps only later.
                        self.discard(slot, &pooled);
                        // The reader reads before it writes, so a connection that had closed
                        // before the command reached the socket fails it with nothing written.
                        let unsent = before.is_some() && pooled.written() == before;
                        if writes && !unsent {
                            return Err(RedisError::Unconfirmed(e.to_string()));
                        }
                        if tries == 2 {
                            return Err(RedisError::Command(e));
                        }
                        sent.store(false, Ordering::Relaxed);
                    }
                    result => return result,
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                // A connection that does not answer in time is replaced on next use.
                self.shared.slots[slot].lock().expect("slot lock").take();
                if writes && sent.load(Ordering::Relaxed) {
                    Err(RedisError::Unconfirmed(format!(
                        "did not answer within {:?}",
                        self.timeout
                    )))
                } else {
                    Err(RedisError::Timeout(self.timeout))
                }
            }
        }
    }

    /// The slot of the next command: the calling thread's own (threads numbered in the order
    /// they first ask), or the next in turn.
    fn slot(&self) -> usize {
        static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
        }
        let n = if self.shared.per_thread {
            THREAD.with(|t| *t)
        } else {
            self.shared.next.fetch_add(1, Ordering::Relaxed)
        };
        n % self.shared.slots.len()
    }

    /// The slot's connection, opened anew when there is none or its reader has seen it close.
    async fn connection(&self, slot: usize) -> Result<Pooled, RedisError> {
        if let Some(pooled) = &*self.shared.slots[slot].lock().expect("slot lock")
            && !pooled.is_closed()
        {
            return Ok(pooled.clone());
        }
        let pooled = match &self.client {
            Client::Standalone(server) => server.open().await,
            Client::Cluster(client) => client.get_async_connection().await.map(|conn| Pooled {
                conn: Conn::Cluster(conn),
                closed: Arc::new(AtomicBool::new(false)),
                written: None,
            }),
        }
        .map_err(RedisError::Connect)?;
        *self.shared.slots[slot].lock().expect("slot lock") = Some(pooled.clone());
        Ok(pooled)
    }

    /// Empties the slot if it still holds `failed` (another request may have reopened it).
    fn discard(&self, slot: usize, failed: &Pooled) {
        let mut held = self.shared.slots[slot].lock().expect("slot lock");
        if held
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.closed, &failed.closed))
        {
            held.take();
        }
    }
}

/// The server went away or the connection broke: nothing more will come back on it.
fn is_transport_failure(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

impl Server {
    /// `host:port` (or the socket's path), for metrics and messages: never the password.
    fn address(&self) -> String {
        match self.info.addr() {
            ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                format!("{host}:{port}")
            }
            ConnectionAddr::Unix(path) => path.display().to_string(),
            other => format!("{other:?}"),
        }
    }

    fn new(settings: &RedisSettings) -> Result<Self, String> {
        let info = settings
            .url
            .expose()
            .trim()
            .into_connection_info()
            .map_err(|e| format!("SLUICE__REDIS__URL: cannot use it: {e}"))?;
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { .. } => Some(tls_connector(&settings.tls())?),
            _ => None,
        };
        Ok(Server { info, tls })
    }

    /// Connects, says hello (`AUTH`, `SELECT` as the URL asks), and spawns the connection's
    /// reader on this runtime, watched so that its end marks the connection closed.
    async fn open(&self) -> redis::RedisResult<Pooled> {
        let stream: Pin<Box<dyn AsyncStream + Send + Sync>> = match self.info.addr() {
            ConnectionAddr::Tcp(host, port) => Box::pin(tcp(host, *port).await?),
            ConnectionAddr::TcpTls { host, port, .. } => {
                let tls = self
                    .tls
                    .as_ref()
                    .expect("a rediss:// URL has its TLS connector");
                let name = ServerName::try_from(host.clone())?;
                Box::pin(tls.connect(name, tcp(host, *port).await?).await?)
            }
            ConnectionAddr::Unix(path) => Box::pin(tokio::net::UnixStream::connect(path).await?),
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "unsupported Redis address",
                    format!("{other:?}"),
                )));
            }
        };
        let written = Arc::new(AtomicU64::new(0));
        let stream = Counted {
            inner: stream,
            written: written.clone(),
        };
        let (conn, reader) = MultiplexedConnection::new_with_config(
            self.info.redis_settings(),
            stream,
            AsyncConnectionConfig::new(),
        )
        .await?;
        let closed = Arc::new(AtomicBool::new(false));
        let raise = RaiseOnDrop(closed.clone());
        tokio::spawn(async move {
            reader.await;
            drop(raise);
        });
        Ok(Pooled {
            conn: Conn::Standalone(conn),
            closed,
            written: Some(written),
        })
    }
}

/// A stream that counts the bytes the socket accepted.
struct Counted {
    inner: Pin<Box<dyn AsyncStream + Send + Sync>>,
    written: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self, done: Poll<std::io::Result<usize>>) -> Poll<std::io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = done {
            self.written.fetch_add(n as u64, Ordering::Release);
        }
        done
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let done = self.inner.as_mut().poll_write(cx, buf);
        self.count(done)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let done = self.inner.as_mut().poll_write_vectored(cx, bufs);
        self.count(done)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.as_mut().poll_shutdown(cx)
    }
}

async fn tcp(host: &str, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    // Commands are small and answered one by one: none waits for a full segment.
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// rustls for a `rediss://` server: its certificate checked against the CA file (else the
/// system's roots) and the name connected to, with the client certificate where one is named.
fn tls_connector(files: &TlsFiles) -> Result<TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = crate::tls::roots(files.ca.as_deref())
        .map_err(|e| format!("SLUICE__REDIS__TLS_CA_FILE: {e}"))?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = crate::tls::client_auth(builder, files)
        .map_err(|e| format!("SLUICE__REDIS__TLS_CERT_FILE / SLUICE__REDIS__TLS_KEY_FILE: {e}"))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The CA, client certificate and key as the redis crate takes them (PEM bytes), each file
/// checked first so that a bad one is named at start.
fn certificates(files: &TlsFiles) -> Result<Option<redis::TlsCertificates>, String> {
    if files.is_empty() {
        return Ok(None);
    }
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let root_cert = match &files.ca {
        Some(ca) => {
            crate::tls::read_certs(ca).map_err(|e| format!("SLUICE__REDIS__TLS_CA_FILE: {e}"))?;
            Some(read(ca)?)
        }
        None => None,
    };
    let client_tls = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            crate::tls::read_certs(cert).map_err(|e| {
                format!("SLUICE__REDIS__TLS_CERT_FILE / SLUICE__REDIS__TLS_KEY_FILE: {e}")
            })?;
            crate::tls::read_key(key).map_err(|e| format!("SLUICE__REDIS__TLS_KEY_FILE: {e}"))?;
            Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            })
        }
        _ => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}
