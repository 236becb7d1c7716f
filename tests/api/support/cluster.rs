//! A Redis Cluster on loopback: six `redis-server --cluster-enabled yes` nodes joined by
//! `redis-cli --cluster create … --cluster-replicas 1` (three masters, one replica each).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::certs::RedisTls;
use super::servers::{free_port, wait_until};

pub struct RedisCluster {
    nodes: Vec<Node>,
    /// TLS only (clients, the cluster bus and replication), with these certificates.
    tls: Option<Arc<RedisTls>>,
}

struct Node {
    port: u16,
    child: Option<Child>,
    dir: TempDir,
    tls: Option<Arc<RedisTls>>,
}

impl Node {
    fn spawn(&mut self) {
        let port_args = match &self.tls {
            Some(tls) => {
                let mut args = tls.server_args(self.port);
                args.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
                args
            }
            None => vec!["--port".to_owned(), self.port.to_string()],
        };
        let child = Command::new("redis-server")
            .args(port_args)
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .args([
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let port = self.port;
        wait_until("a cluster node to answer", || {
            cli(self.tls.as_deref(), port, &["PING"]).is_some_and(|o| o.trim() == "PONG")
        });
    }
}

/// Runs `redis-cli -p port args…` (over TLS with `tls`); its stdout when it exits 0.
fn cli(tls: Option<&RedisTls>, port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(tls.map(RedisTls::cli_args).unwrap_or_default())
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

impl RedisCluster {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// A cluster that speaks TLS only, with the certificates of `tls` (issued for 127.0.0.1,
    /// the address the nodes announce).
    pub fn start_tls(tls: RedisTls) -> Self {
        Self::start_with(Some(Arc::new(tls)))
    }

    fn start_with(tls: Option<Arc<RedisTls>>) -> Self {
        let mut nodes: Vec<Node> = (0..6)
            .map(|_| Node {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().unwrap(),
                tls: tls.clone(),
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(tls.as_deref().map(RedisTls::cli_args).unwrap_or_default())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster { nodes, tls };
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// Seed URLs for `SLUICE__REDIS__URL`.
    pub fn seeds(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The `SLUICE__*` settings that reach it.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut vars = vec![
            ("SLUICE__REDIS__MODE".to_owned(), "cluster".to_owned()),
            ("SLUICE__REDIS__URL".to_owned(), self.seeds()),
        ];
        if let Some(tls) = &self.tls {
            vars.extend(tls.settings());
        }
        vars
    }

    /// Runs `redis-cli` against the node on `port`.
    fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(self.tls.as_deref(), port, args)
    }

    fn live_port(&self) -> u16 {
        self.nodes
            .iter()
            .find(|n| n.child.is_some())
            .expect("a live node")
            .port
    }

    /// Waits until every live node reports `cluster_state:ok` with three masters serving all
    /// slots, and every replica is in sync.
    pub fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            // Healthy: every live node sees all slots served, and every replica is in sync with its
            // master (a replica that never synced would refuse to take over).
            let ok = self.nodes.iter().filter(|n| n.child.is_some()).all(|n| {
                let info = self.cli(n.port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let repl = self
                    .cli(n.port, &["INFO", "replication"])
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && (repl.contains("role:master") || repl.contains("master_link_status:up"))
            });
            if ok && self.masters().len() == 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy in {within:?}: masters {:?}, info {:?}",
                self.masters(),
                self.cli(self.live_port(), &["CLUSTER", "INFO"]).map(|i| i
                    .lines()
                    .take(6)
                    .collect::<Vec<_>>()
                    .join(" "))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// (port, first slot, last slot) of every master serving slots.
    pub fn masters(&self) -> Vec<(u16, u16, u16)> {
        let nodes = self
            .cli(self.live_port(), &["CLUSTER", "NODES"])
            .unwrap_or_default();
        let mut masters = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for range in &fields[8..] {
                if let Some((a, b)) = range.split_once('-') {
                    masters.push((port, a.parse().unwrap_or(0), b.parse().unwrap_or(0)));
                } else if let Ok(s) = range.parse() {
                    masters.push((port, s, s));
                }
            }
        }
        masters
    }

    /// The port of the replica of master `master_port`.
    pub fn replica_of(&self, master_port: u16) -> u16 {
        let nodes = self
            .cli(self.live_port(), &["CLUSTER", "NODES"])
            .unwrap_or_default();
        let port_of = |f: &str| {
            f.split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(0)
        };
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        let master_id = lines
            .iter()
            .find(|f| f.len() > 2 && port_of(f[1]) == master_port)
            .expect("the master")[0];
        let replica = lines
            .iter()
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == master_id)
            .expect("its replica");
        port_of(replica[1])
    }

    /// The port of the master that serves `slot`.
    pub fn master_of(&self, slot: u16) -> u16 {
        self.masters()
            .into_iter()
            .find(|(_, a, b)| (*a..=*b).contains(&slot))
            .expect("slot served")
            .0
    }

    /// Waits until a replica has taken over the slots of the killed master `port`.
    pub fn wait_failover(&self, port: u16, within: Duration) {
        let deadline = Instant::now() + within;
        while self.masters().iter().any(|(p, _, _)| *p == port) {
            assert!(
                Instant::now() < deadline,
                "no failover of {port} in {within:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_healthy(deadline.saturating_duration_since(Instant::now()));
    }

    /// SIGKILL one node.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a killed node again; it rejoins the cluster (as a replica if it lost its slots).
    pub fn restart(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node of this cluster");
        node.spawn();
    }

    /// Runs a command on the master holding `key`.
    pub fn on_key(&self, key: &str, args: &[&str]) -> Option<String> {
        self.cli(self.master_of(sluice::keyspace::cluster_slot(key)), args)
    }
}

/// Each node stops with its owner, so none outlives a test, even one that fails while the
/// cluster is still being made.
impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
