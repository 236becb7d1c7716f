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
//! `pool_size` long-lived connections, opened on first use and used round-robin. A connection
//! that does not answer in time is dropped and replaced on next use; a failure at the transport
//! level (the server went away) drops them all, so a restarted Redis costs one failed request,
//! not one per connection. On a cluster, the redis crate follows `MOVED`/`ASK` redirects and refreshes the
//! slot map when the topology changes. Measured effect: BENCHMARKS.md, "History".
//!
//! TLS is rustls (as for PostgreSQL: nothing to build or link from OpenSSL), with the server's
//! certificate always checked against the CA of `SLUICE__REDIS__TLS_CA_FILE` (or the system's
//! roots) and the name connected to; on a cluster the same CA and client certificate serve every
//! node the cluster names.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, ScriptInvocation, Value};

use crate::config::{RedisMode, RedisSettings};
use crate::keyspace::cluster_slot;
use crate::tls::TlsFiles;

#[derive(Debug, thiserror::Error)]
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
    Standalone(redis::Client),
    Cluster(ClusterClient),
}

struct Shared {
    /// Long-lived multiplexed connections; `None` until first used or after a failure.
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
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
    /// Prepares the connections. They are opened on first use, so a binary can start (and
    /// report itself unready) while Redis is still down; a bad URL or certificate file stops it
    /// here.
    pub fn new(settings: &RedisSettings) -> Result<Self, String> {
        let certs = certificates(&settings.tls)?;
        let client = match settings.mode {
            RedisMode::Standalone => {
                let url = settings.url.expose().trim();
                match certs {
                    Some(certs) => redis::Client::build_with_tls(url, certs),
                    None => redis::Client::open(url),
                }
                .map(Client::Standalone)
            }
            RedisMode::Cluster => {
                let mut builder = ClusterClientBuilder::new(settings.urls());
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                builder.build().map(Client::Cluster)
            }
        }
        .map_err(|e| format!("SLUICE__REDIS__URL: cannot use it: {e}"))?;
        let slots = (0..settings.pool_size).map(|_| Mutex::new(None)).collect();
        Ok(Redis {
            client,
            timeout: settings.timeout,
            shared: Arc::new(Shared {
                slots,
                next: AtomicUsize::new(0),
            }),
        })
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

    /// Runs a Lua script by its SHA, loading it first where Redis does not have it yet. With
    /// `replicas > 0`, then waits until that many replicas of the node holding `key` confirm the
    /// script's writes.
    pub async fn invoke<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
    ) -> Result<T, RedisError> {
        let wait_for = self.timeout / 2;
        self.with_connection(true, async |conn| {
            let reply: T = script.invoke_async(conn).await?;
            if replicas > 0 {
                let got = conn.wait_for_replicas(key, replicas, wait_for).await?;
                if got < i64::from(replicas) {
                    return Err(RedisError::NotReplicated {
                        wanted: replicas,
                        got,
                    });
                }
            }
            Ok(reply)
        })
        .await
    }

    /// `PING`, for readiness checks (on a cluster, every primary must answer).
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.query::<String>(&redis::cmd("PING")).await.map(drop)
    }

    /// Runs `op` on a connection within the deadline; a connection that failed at the
    /// transport level (or did not answer in time) is replaced. With `writes`, a deadline or a
    /// transport failure once `op` has started is [`RedisError::Unconfirmed`]: what was sent
    /// may have run.
    async fn with_connection<T>(
        &self,
        writes: bool,
        op: impl AsyncFnOnce(&mut Conn) -> Result<T, RedisError>,
    ) -> Result<T, RedisError> {
        let slot = self.shared.next.fetch_add(1, Ordering::Relaxed) % self.shared.slots.len();
        let sent = AtomicBool::new(false);
        let attempt = async {
            let mut conn = self.connection(slot).await?;
            sent.store(true, Ordering::Relaxed);
            op(&mut conn).await.map_err(|e| match e {
                RedisError::Command(e)
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_unrecoverable_error() =>
                {
                    // The server went away (a restart, a failover): every connection to it is
                    // stale, so all are replaced now rather than each failing one request first.
                    self.discard_all();
                    if writes {
                        RedisError::Unconfirmed(e.to_string())
                    } else {
                        RedisError::Command(e)
                    }
                }
                e => e,
            })
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.discard(slot);
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

    async fn connection(&self, slot: usize) -> Result<Conn, RedisError> {
        if let Some(conn) = self.shared.slots[slot].lock().expect("slot lock").clone() {
            return Ok(conn);
        }
        let conn = match &self.client {
            Client::Standalone(client) => client
                .get_multiplexed_async_connection()
                .await
                .map(Conn::Standalone),
            Client::Cluster(client) => client.get_async_connection().await.map(Conn::Cluster),
        }
        .map_err(RedisError::Connect)?;
        *self.shared.slots[slot].lock().expect("slot lock") = Some(conn.clone());
        Ok(conn)
    }

    fn discard(&self, slot: usize) {
        self.shared.slots[slot].lock().expect("slot lock").take();
    }

    fn discard_all(&self) {
        for slot in 0..self.shared.slots.len() {
            self.discard(slot);
        }
    }
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
            crate::tls::read_certs(cert)
                .map_err(|e| format!("SLUICE__REDIS__TLS_CERT_FILE: {e}"))?;
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
