//! A Redis that restarts between two requests costs no client anything: every api connection to
//! it was closed by the server, and none is used again. Standalone, over TLS, and on a cluster,
//! with every connection slot of every api worker thread exercised before and after.
//!
//! (A connection lost after a script was sent stays a 503 that says the events may have been
//! accepted: tests/api/idempotency.rs.)

use std::time::Duration;

use serde_json::json;

use crate::support::certs::{RedisTls, TestCa};
use crate::support::cluster::RedisCluster;
use crate::support::{ApiProcess, RedisServer, TestEnv, event, spawn_api_process};

/// Connection slots per api process and its worker threads: the requests below go over a new
/// HTTP connection each, which the api hands to its threads in turn, and each takes the next
/// slot, so 3 × slots × threads requests reach every slot from every thread.
const POOL_SIZE: &str = "3";
const WORKERS: &str = "2";
const REQUESTS: usize = 18;

/// Sends `REQUESTS` single-event batches for each key, each on a new connection; the statuses
/// and bodies of those that were not 200.
async fn refused(base: &str, keys: &[String]) -> Vec<(u16, String)> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut refused = Vec::new();
    for key in keys {
        for i in 0..REQUESTS {
            let body = json!({"events": [event("page_view", &format!("r{i}"))]});
            let mut res = client
                .post(format!("http://{base}/v1/events/batch"))
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .insert_header(("Connection", "close"))
                .send_body(body.to_string())
                .await
                .expect("the api answers");
            let status = res.status().as_u16();
            if status != 200 {
                let text = res.body().await.unwrap_or_default();
                refused.push((status, String::from_utf8_lossy(&text).into_owned()));
            }
        }
    }
    refused
}

/// An api process with `POOL_SIZE` connections and `WORKERS` threads.
fn api_process(env: &TestEnv) -> (ApiProcess, String) {
    spawn_api_process(
        env,
        None,
        &[
            ("SLUICE__REDIS__POOL_SIZE", POOL_SIZE),
            ("SLUICE__API__WORKERS", WORKERS),
        ],
    )
}

/// Tenants with a `page_view` signal and a key each.
async fn keys(env: &TestEnv, n: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for _ in 0..n {
        let (tenant, key) = env.tenant().await;
        env.signal(&tenant, "page_view", "event", None).await;
        keys.push(key);
    }
    keys
}

/// Warms every connection of an api process, restarts the standalone Redis (kill -9, same
/// port, its data lost), restores the registry copy, and expects every request to be admitted.
async fn a_restart_costs_no_request(mut env: TestEnv) {
    let keys = keys(&env, 1).await;
    let (_api, base) = api_process(&env);
    assert_eq!(refused(&base, &keys).await, vec![], "before the restart");

    env.redis.restart();
    env.registry.sync().await.unwrap();
    assert_eq!(refused(&base, &keys).await, vec![], "after the restart");
}

#[actix_web::test]
async fn a_redis_restart_between_requests_costs_no_request() {
    a_restart_costs_no_request(TestEnv::start().await).await;
}

#[actix_web::test]
async fn a_tls_redis_restart_between_requests_costs_no_request() {
    let ca = TestCa::new("Sluice test CA");
    let server = ca.server(&["localhost", "127.0.0.1"]);
    let redis = RedisServer::start_tls(RedisTls::new(&ca, &server, true));
    a_restart_costs_no_request(TestEnv::start_on_redis(redis, &[]).await).await;
}

#[actix_web::test]
async fn a_cluster_node_restart_between_requests_costs_no_request() {
    let mut cluster = RedisCluster::start();
    let env = TestEnv::start_on_cluster(&cluster, &[]).await;
    // Enough tenants for every master to hold some of their partitions.
    let keys = keys(&env, 8).await;
    let (_api, base) = api_process(&env);
    assert_eq!(refused(&base, &keys).await, vec![], "before the restart");

    for (port, _, _) in cluster.masters() {
        cluster.kill(port);
        cluster.restart(port);
        cluster.wait_healthy(Duration::from_secs(60));
    }
    // The masters came back empty (no persistence here): the registry copy is written again.
    env.registry.sync().await.unwrap();
    assert_eq!(refused(&base, &keys).await, vec![], "after the restarts");
}
