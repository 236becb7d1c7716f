//! Sluice on a Redis Cluster: partitions spread over shards, every acknowledged event stored
//! exactly once, and a master's death survived.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::keyspace::{Keyspace, cluster_slot};

use crate::faults::start_load;
use crate::support::cluster::RedisCluster;
use crate::support::{ApiProcess, TestEnv, event, spawn_api_process};
use crate::worker::{HIGH_LIMITS, assert_exactly_once, ingest};

/// Twelve tenants, each with a metric signal `visits` and an event signal `clicks`.
async fn tenants(env: &TestEnv) -> Vec<(String, String)> {
    let mut all = Vec::new();
    for _ in 0..12 {
        let (tenant, key) = env.tenant().await;
        env.signal(&tenant, "visits", "metric", None).await;
        env.signal(&tenant, "clicks", "event", None).await;
        all.push((tenant, key));
    }
    all
}

/// The masters whose slots hold the tenants' streams.
fn shards_of(cluster: &RedisCluster, tenants: &[(String, String)]) -> HashSet<u16> {
    let keyspace = Keyspace::new(16);
    tenants
        .iter()
        .map(|(t, _)| cluster.master_of(cluster_slot(&Keyspace::stream(keyspace.partition_of(t)))))
        .collect()
}

#[actix_web::test]
async fn twelve_tenants_spread_over_shards_and_every_event_is_stored_once() {
    let cluster = RedisCluster::start();
    let env = TestEnv::start_on_cluster(&cluster, HIGH_LIMITS).await;
    let tenants = tenants(&env).await;
    let api = env.spawn_api().await;
    let mut acked = Vec::new();
    for (tenant, key) in &tenants {
        acked.extend(ingest(&api, key, 2, tenant).await);
    }
    let shards = shards_of(&cluster, &tenants);
    assert!(shards.len() >= 2, "streams on {} shard(s)", shards.len());
    // Each tenant's events are in its own partition's stream, on that partition's master.
    let keyspace = Keyspace::new(16);
    let stream = Keyspace::stream(keyspace.partition_of(&tenants[0].0));
    let len: usize = cluster
        .on_key(&stream, &["XLEN", &stream])
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(len >= 2, "one entry per request: {len}");

    let _worker = env.spawn_worker(&[]);
    assert_eq!(
        env.wait_for_events(acked.len() as i64, 60).await,
        acked.len() as i64
    );
    assert_exactly_once(&env, &acked).await;
}

/// Kills the master holding the most tenants' streams under load, restarts it (it rejoins as
/// a replica), and checks what clients saw and what was stored.
async fn a_master_dies_under_load(min_replicas_ack: &str) {
    let mut cluster = RedisCluster::start();
    let mut vars = HIGH_LIMITS.to_vec();
    vars.push(("SLUICE__REDIS__MIN_REPLICAS_ACK", min_replicas_ack));
    vars.push(("SLUICE__API__WORKERS", "1"));
    let env = TestEnv::start_on_cluster(&cluster, &vars).await;
    let tenants = tenants(&env).await;
    let apis: Vec<(ApiProcess, String)> =
        (0..2).map(|_| spawn_api_process(&env, None, &[])).collect();
    let worker = env.spawn_worker(&[("SLUICE__WORKER__CLAIM_IDLE_MS", "1000")]);
    worker.wait_ready(200).await;

    let stop = Arc::new(AtomicBool::new(false));
    let keys: Vec<String> = tenants.iter().map(|(_, k)| k.clone()).collect();
    let load = start_load(
        apis.iter().map(|(_, a)| a.clone()).collect(),
        keys,
        6,
        stop.clone(),
    );
    std::thread::sleep(Duration::from_secs(2));

    let keyspace = Keyspace::new(16);
    let victim = {
        let mut counts = std::collections::HashMap::new();
        for (t, _) in &tenants {
            *counts
                .entry(cluster.master_of(cluster_slot(&Keyspace::stream(keyspace.partition_of(t)))))
                .or_insert(0) += 1;
        }
        counts.into_iter().max_by_key(|(_, n)| *n).unwrap().0
    };
    cluster.kill(victim);
    let killed = Instant::now();
    // The node comes back only after its replica took over: a node without persistence that
    // returned sooner would still own its slots, with none of their data.
    cluster.wait_failover(victim, Duration::from_secs(20));
    cluster.restart(victim);

    // Every tenant ingests again within 30 s of the kill.
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    for (tenant, key) in &tenants {
        loop {
            let sent = client
                .post(format!("http://{}/v1/events/batch", apis[0].1))
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json"))
                .send_body(json!({"events": [event("clicks", "probe")]}).to_string())
                .await;
            if sent.is_ok_and(|r| r.status().as_u16() == 200) {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(30),
                "tenant {tenant} cannot ingest 30 s after the kill"
            );
            actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let recovered = Instant::now();
    let probes = tenants.len() as i64;
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let report = load.join().unwrap();
    println!(
        "min_replicas_ack={min_replicas_ack}: {} acknowledged, statuses {:?}, {} unanswered, recovered {:?} after the kill",
        report.acked.len(),
        report.statuses,
        report.no_answer,
        recovered - killed
    );
    let bad: Vec<_> = report
        .statuses
        .keys()
        .filter(|s| **s >= 500 && **s != 503)
        .collect();
    assert!(bad.is_empty(), "5xx other than 503: {:?}", report.statuses);
    assert!(
        report.statuses.get(&503).is_some_and(|n| *n > 0),
        "the kill was felt: {:?}",
        report.statuses
    );

    // What must be stored: with the knob, everything acknowledged; without it, everything
    // acknowledged after recovery (earlier acknowledgements may have been lost with the master).
    let must: Vec<String> = report
        .acked
        .iter()
        .filter(|(at, _)| min_replicas_ack != "0" || *at > recovered)
        .map(|(_, id)| id.clone())
        .collect();
    assert!(!must.is_empty());
    let pg = env.pg_client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let missing = loop {
        let stored: HashSet<String> = crate::support::stored_event_ids(&pg)
            .await
            .into_iter()
            .collect();
        let missing = must.iter().filter(|id| !stored.contains(*id)).count();
        if missing == 0 || Instant::now() > deadline {
            break missing;
        }
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged events were not stored",
        must.len()
    );
    let twice: i64 = pg
        .query_one(
            "SELECT count(*) FROM (SELECT id FROM events GROUP BY id HAVING count(*) > 1) d",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "nothing stored twice");
    let stored: i64 = pg
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert!(stored >= must.len() as i64 + probes.min(1));
}

#[actix_web::test]
async fn a_master_dies_under_load_and_everything_acknowledged_after_recovery_is_stored() {
    a_master_dies_under_load("0").await;
}

#[actix_web::test]
async fn with_replica_acks_required_nothing_acknowledged_is_lost_when_a_master_dies() {
    a_master_dies_under_load("1").await;
}

#[actix_web::test]
async fn with_replica_acks_required_a_shard_without_its_replica_answers_503() {
    let mut cluster = RedisCluster::start();
    let env =
        TestEnv::start_on_cluster(&cluster, &[("SLUICE__REDIS__MIN_REPLICAS_ACK", "1")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "clicks", "event", None).await;
    let api = env.spawn_api().await;
    assert_eq!(
        api.batch(&key, json!([event("clicks", "1")])).await.status,
        200
    );

    let stream = Keyspace::stream(Keyspace::new(16).partition_of(&tenant));
    let replica = cluster.replica_of(cluster.master_of(cluster_slot(&stream)));
    cluster.kill(replica);
    let reply = api.batch(&key, json!([event("clicks", "2")])).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert!(
        reply
            .error()
            .contains("not confirmed by enough Redis replicas"),
        "{}",
        reply.error()
    );

    cluster.restart(replica);
    cluster.wait_healthy(Duration::from_secs(20));
    crate::support::eventually("acknowledged again once the replica is back", async || {
        let status = api.batch(&key, json!([event("clicks", "3")])).await.status;
        (status == 200).then_some(())
    })
    .await;
}

/// `sluice-admin repartition` finds each tenant's keys on the master that holds them and moves
/// them to the master of its new partition.
#[actix_web::test]
async fn repartition_moves_each_tenants_keys_across_shards() {
    let cluster = RedisCluster::start();
    let env = TestEnv::start_on_cluster(&cluster, HIGH_LIMITS).await;
    let tenants = tenants(&env).await;
    let (_api, base) = spawn_api_process(&env, None, &[]);
    let api = crate::support::TestApi::at(&base);
    let body = json!({"events": [event("clicks", "acc-1")]});
    for (_, key) in &tenants {
        let reply =
            crate::idempotency::send(&api, "/v1/events/batch", key, Some("k-1"), &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let (code, stdout, stderr) = crate::layout::admin(&env, "8", &["repartition", "--wait", "120"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (sixteen, eight) = (Keyspace::new(16), Keyspace::new(8));
    let exists = |key: &str| cluster.on_key(key, &["EXISTS", key]).unwrap().trim() == "1";
    let mut moved = 0;
    for (tenant, _) in &tenants {
        let (old, new) = (
            sixteen.idempotency(tenant, "k-1"),
            eight.idempotency(tenant, "k-1"),
        );
        assert!(exists(&new), "{new} missing: {stdout}");
        if old != new {
            assert!(!exists(&old), "{old} left behind");
            assert!(exists(&eight.rate_limits(tenant)));
            moved += 1;
        }
    }
    let changed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        changed["moved"]["idempotency_records"],
        json!(moved),
        "{stdout}"
    );
    assert!(moved > 0, "no tenant changed partition");
}
