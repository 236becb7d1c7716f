//! Redis memory, where acknowledged events wait: an evicting Redis is refused by every binary,
//! a full one costs clients 503s with `Retry-After` and nothing else, and a worker started
//! against a full Redis drains it.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::servers::free_port;
use crate::support::{
    PATIENCE, Reply, TestApi, TestEnv, eventually, exits_refusing, ids_of, metric_value,
    roomy_tenant, run_binary, spawn_api_process,
};
use crate::worker::assert_exactly_once;

const EVICTING: [&str; 2] = ["allkeys-lru", "volatile-lru"];

fn config_set(env: &TestEnv, name: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(name)
        .arg(value)
        .query(&mut env.redis.conn())
        .unwrap();
}

fn used_memory(env: &TestEnv) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut env.redis.conn())
        .unwrap();
    sluice::redis_memory::NodeMemory::parse("test", &info)
        .unwrap()
        .used_memory
}

/// 8 MiB of data that is not Sluice's, in keys starting `prefix` (in small writes: a large one
/// would leave a large query buffer behind that shrinks later).
fn other_data(conn: &mut redis::Connection, prefix: &str) {
    for i in 0..256 {
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}:other-data:{i}"))
            .arg(vec![b'x'; 32 << 10])
            .query(conn)
            .unwrap();
    }
}

/// Room for `bytes` more in Redis from now on.
fn cap_memory(env: &TestEnv, bytes: u64) {
    config_set(env, "maxmemory", &(used_memory(env) + bytes).to_string());
}

/// 100 events of about 300 bytes each, referenced `{prefix}-{n}-{i}`.
fn big_batch(prefix: &str, n: usize) -> Value {
    let pad = "x".repeat(250);
    Value::Array(
        (0..100)
            .map(|i| {
                json!({"signal": "page_view", "identity": {"type": "account", "id": format!("a{i}")},
                       "data": {"pad": pad}, "reference": format!("{prefix}-{n}-{i}")})
            })
            .collect(),
    )
}

/// A refusal for a full backlog, as the contract shapes it.
fn assert_backlog_full(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}", reply.body["error"]);
    assert!(reply.error().contains("backlog is full"), "{}", reply.text);
    assert_eq!(reply.header("retry-after"), Some("5"));
}

#[actix_web::test]
async fn evicting_policies_are_refused_by_every_binary_unless_allowed() {
    let env = TestEnv::start().await;
    roomy_tenant(&env).await;
    let api_bind = ("SLUICE__API__BIND", format!("127.0.0.1:{}", free_port()));
    let worker_bind = (
        "SLUICE__WORKER__METRICS_BIND",
        format!("127.0.0.1:{}", free_port()),
    );
    for policy in EVICTING {
        config_set(&env, "maxmemory-policy", policy);
        for (bin, extra) in [
            (env!("CARGO_BIN_EXE_sluice-api"), &api_bind),
            (env!("CARGO_BIN_EXE_sluice-worker"), &worker_bind),
        ] {
            let (code, stderr) = exits_refusing(&env, bin, std::slice::from_ref(extra));
            assert_eq!(code, Some(2), "{bin} on {policy}: {stderr}");
            assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
            assert!(
                stderr.contains(&format!("maxmemory-policy {policy}")),
                "{bin}: {stderr}"
            );
        }
        let vars: Vec<(&str, &str)> = env
            .env_vars()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for command in ["doctor", "sync"] {
            let (code, stdout, stderr) =
                run_binary(env!("CARGO_BIN_EXE_sluice-admin"), &[command], &vars);
            assert_eq!(code, Some(1), "sluice-admin {command}: {stdout}");
            assert!(
                stderr.contains(&format!("maxmemory-policy {policy}")),
                "sluice-admin {command}: {stderr}"
            );
        }
    }

    // The opt-out, for those who know better: it runs, and says what it runs on.
    let mut vars: Vec<(&str, &str)> = env
        .env_vars()
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    vars.push(("SLUICE__REDIS__ALLOW_EVICTION", "true"));
    let (code, stdout, stderr) = run_binary(env!("CARGO_BIN_EXE_sluice-admin"), &["doctor"], &vars);
    assert_eq!(code, Some(0), "{stderr}");
    let doctor: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doctor["redis"][0]["maxmemory_policy"], "volatile-lru");
    let (_api, base) = spawn_api_process(&env, None, &[("SLUICE__REDIS__ALLOW_EVICTION", "true")]);
    assert_eq!(TestApi::at(&base).get("/readyz").await.status, 200);

    config_set(&env, "maxmemory-policy", "noeviction");
    vars.pop();
    let (code, stdout, stderr) = run_binary(env!("CARGO_BIN_EXE_sluice-admin"), &["doctor"], &vars);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(r#""maxmemory_policy":"noeviction""#),
        "{stdout}"
    );
}

#[actix_web::test]
async fn a_policy_changed_while_running_makes_both_unready_and_the_api_admit_nothing() {
    let env = TestEnv::start().await;
    let (_, key) = roomy_tenant(&env).await;
    let api = env.spawn_api().await;
    let worker = env.spawn_worker(&[]);
    worker.wait_ready(200).await;
    let one = json!([crate::support::event("page_view", "1")]);
    assert_eq!(api.batch(&key, one.clone()).await.status, 200);

    for policy in EVICTING {
        config_set(&env, "maxmemory-policy", policy);
        // Each readiness check reads the policy, and the api's brake with it.
        let ready = api.get("/readyz").await;
        assert_eq!(ready.status, 503);
        assert!(
            ready.text.contains(&format!("maxmemory-policy {policy}")),
            "{}",
            ready.text
        );
        let (status, body) = worker.get("/readyz").await;
        assert_eq!(status, 503);
        assert!(
            body.contains(&format!("maxmemory-policy {policy}")),
            "{body}"
        );
        let refused = api.batch(&key, one.clone()).await;
        assert_eq!(refused.status, 503, "{}", refused.text);
        assert!(refused.error().contains("not configured to keep events"));
        assert!(refused.header("retry-after").is_some());
    }

    config_set(&env, "maxmemory-policy", "noeviction");
    assert_eq!(api.get("/readyz").await.status, 200);
    worker.wait_ready(200).await;
    assert_eq!(api.batch(&key, one).await.status, 200);
    eventually("the worker done", async || env.drained().then_some(())).await;
    assert_eq!(
        env.wait_for_events(2, 1).await,
        2,
        "nothing admitted while refused"
    );
}

#[actix_web::test]
async fn the_brake_refuses_before_redis_is_full_and_counts_nothing() {
    let env = TestEnv::start().await;
    let (_, key) = roomy_tenant(&env).await;
    let api = env.spawn_api().await;
    let admitted = api.batch(&key, big_batch("before", 0)).await;
    assert_eq!(admitted.status, 200, "{}", admitted.text);
    let window = |r: &Reply| r.body["data"]["window"]["used"].clone();
    let before = api.call("GET", "/v1/signals/page_view", &key, None).await;

    // 93 % full: past the brake (0.9 by default), short of Redis's own refusal, with room
    // for the connections' own buffers (8 MiB of other data make that 7 % some 600 KiB).
    other_data(&mut env.redis.conn(), "");
    let used = used_memory(&env);
    let max = used * 100 / 93;
    config_set(&env, "maxmemory", &max.to_string());
    assert_eq!(api.get("/readyz").await.status, 200, "full is not unready");
    let refused = api.batch(&key, big_batch("full", 0)).await;
    assert_backlog_full(&refused);
    let _: String = redis::cmd("SET")
        .arg("room-left")
        .arg("yes")
        .query(&mut env.redis.conn())
        .expect("Redis itself still takes writes: the api stopped first");

    // Self-service reads go on, and show nothing counted.
    let after = api.call("GET", "/v1/signals/page_view", &key, None).await;
    assert_eq!(after.status, 200, "{}", after.text);
    if before.body["data"]["window"]["reset"] == after.body["data"]["window"]["reset"] {
        assert_eq!(
            window(&before),
            window(&after),
            "refused events are not counted"
        );
    }
    let metrics = api.get("/metrics").await.text;
    assert_eq!(
        metric_value(&metrics, "sluice_backlog_full_refusals_total"),
        Some(1.0)
    );
    let node = format!("node=\"127.0.0.1:{}\"", env.redis.port);
    assert_eq!(
        metric_value(&metrics, &format!("sluice_redis_maxmemory_bytes{{{node}}}")),
        Some(max as f64)
    );
    assert!(
        metric_value(
            &metrics,
            &format!("sluice_redis_used_memory_bytes{{{node}}}")
        )
        .is_some_and(|bytes| bytes > 0.0)
    );
    assert_eq!(
        metric_value(
            &metrics,
            &format!("sluice_redis_maxmemory_policy_info{{{node},policy=\"noeviction\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        env.stream_entries().len(),
        100,
        "nothing enqueued when refused"
    );
}

/// Sends 100-event batches until `refusals` in a row are refused; every answer is 200 or the
/// backlog's 503. The ids acknowledged.
async fn fill(api: &TestApi, key: &str, prefix: &str, refusals: usize) -> Vec<String> {
    let mut acked = Vec::new();
    let mut in_a_row = 0;
    for n in 0.. {
        let reply = api.batch(key, big_batch(prefix, n)).await;
        if reply.status == 200 {
            acked.extend(ids_of(&reply));
            in_a_row = 0;
            continue;
        }
        assert_backlog_full(&reply);
        in_a_row += 1;
        if in_a_row == refusals {
            break;
        }
        assert!(n < 10_000, "Redis never filled");
    }
    acked
}

#[actix_web::test]
async fn a_full_redis_costs_503s_only_and_a_worker_started_on_it_drains_it() {
    let env = TestEnv::start().await;
    let (_, key) = roomy_tenant(&env).await;
    // The consumer groups exist, as they do once any worker has run; then no worker runs.
    let mut first = env.spawn_worker(&[]);
    first.wait_ready(200).await;
    assert_eq!(first.terminate(30), Some(0));

    // Left to Redis itself (no brake): its own refusal, OOM, is the same 503.
    let mut settings = env.settings();
    settings.api.max_memory_fraction = 1.0;
    let api = env.spawn_api_with(&settings);
    cap_memory(&env, 4 << 20);
    let acked = fill(&api, &key, "fill", 5).await;
    println!(
        "4 MiB of Redis memory held {} events of ~330 bytes in 100-event entries",
        acked.len()
    );
    assert!(acked.len() >= 1000, "{} acknowledged", acked.len());
    // (fill stopped at its fifth refusal in a row: Redis was full.)
    let signals = api.call("GET", "/v1/signals", &key, None).await;
    assert_eq!(signals.status, 200, "self-service reads still answer");

    // A worker started against the full Redis reads, stores, acknowledges and trims.
    let _worker = env.spawn_worker(&[("SLUICE__WORKER__TRIM_INTERVAL_MS", "200")]);
    assert_eq!(
        env.wait_for_events(acked.len() as i64, PATIENCE.as_secs())
            .await,
        acked.len() as i64
    );
    // Ingest comes back by itself as trimming frees memory.
    let again = eventually("ingest to come back", async || {
        let reply = api.batch(&key, big_batch("again", 0)).await;
        match reply.status {
            200 => Some(ids_of(&reply)),
            _ => {
                assert_backlog_full(&reply);
                None
            }
        }
    })
    .await;
    let all: Vec<String> = acked.into_iter().chain(again).collect();
    eventually("everything stored and acknowledged", async || {
        env.drained().then_some(())
    })
    .await;
    assert_exactly_once(&env, &all).await;
}

#[actix_web::test]
async fn sustained_overload_costs_only_503s_and_loses_or_doubles_nothing() {
    let env = TestEnv::start().await;
    let (_, key) = roomy_tenant(&env).await;
    // A slow worker (small reads), so that the producers are several times faster.
    let worker = env.spawn_worker(&[
        ("SLUICE__WORKER__BATCH_SIZE", "100"),
        ("SLUICE__WORKER__TRIM_INTERVAL_MS", "200"),
    ]);
    worker.wait_ready(200).await;
    let api = Rc::new(env.spawn_api().await);
    cap_memory(&env, 4 << 20);

    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..4)
        .map(|p| {
            let (api, key, stop) = (api.clone(), key.clone(), stop.clone());
            actix_web::rt::spawn(async move {
                let mut acked = Vec::new();
                let mut statuses: HashMap<u16, usize> = HashMap::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let reply = api.batch(&key, big_batch(&format!("p{p}"), n)).await;
                    n += 1;
                    *statuses.entry(reply.status).or_default() += 1;
                    match reply.status {
                        200 => acked.extend(ids_of(&reply)),
                        _ => {
                            assert_backlog_full(&reply);
                            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acked, statuses)
            })
        })
        .collect();
    actix_web::rt::time::sleep(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for producer in producers {
        let (ids, seen) = producer.await.expect("a producer saw only 200s and 503s");
        acked.extend(ids);
        for (status, n) in seen {
            *statuses.entry(status).or_default() += n;
        }
    }
    println!("overload: {statuses:?}, {} acknowledged", acked.len());
    assert!(
        statuses.get(&503).copied().unwrap_or(0) > 0,
        "the producers outran the worker: {statuses:?}"
    );
    assert_eq!(
        env.wait_for_events(acked.len() as i64, PATIENCE.as_secs())
            .await,
        acked.len() as i64
    );
    eventually("everything stored and acknowledged", async || {
        env.drained().then_some(())
    })
    .await;
    assert_exactly_once(&env, &acked).await;
}

#[actix_web::test]
async fn on_a_cluster_the_brake_holds_back_only_the_tenants_of_the_full_primary() {
    use sluice::keyspace::{Keyspace, cluster_slot};
    let cluster = crate::support::cluster::RedisCluster::start();
    let env = TestEnv::start_on_cluster(&cluster, &[]).await;
    let keyspace = Keyspace::new(16);
    let mut tenants = Vec::new();
    for _ in 0..12 {
        tenants.push(roomy_tenant(&env).await);
    }
    let api = env.spawn_api().await;
    let primary_of = |tenant: &str| {
        cluster.master_of(cluster_slot(&Keyspace::stream(
            keyspace.partition_of(tenant),
        )))
    };
    let full = primary_of(&tenants[0].0);

    // That primary 93 % full (8 MiB of other data in one of its slots), the others empty.
    let mut node = redis::Client::open(format!("redis://127.0.0.1:{full}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let tag = Keyspace::stream(keyspace.partition_of(&tenants[0].0));
    other_data(&mut node, &tag);
    let info: String = redis::cmd("INFO").arg("memory").query(&mut node).unwrap();
    let used = sluice::redis_memory::NodeMemory::parse("full", &info)
        .unwrap()
        .used_memory;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used * 100 / 93)
        .query(&mut node)
        .unwrap();
    assert_eq!(api.get("/readyz").await.status, 200);

    let (mut held, mut admitted) = (0, 0);
    for (tenant, key) in &tenants {
        let reply = api.batch(key, big_batch("c", 0)).await;
        if primary_of(tenant) == full {
            assert_backlog_full(&reply);
            held += 1;
        } else {
            assert_eq!(reply.status, 200, "{}", reply.body["error"]);
            admitted += 1;
        }
    }
    assert!(held > 0 && admitted > 0, "{held} held, {admitted} admitted");
    let metrics = api.get("/metrics").await.text;
    let nodes = metrics
        .lines()
        .filter(|l| l.starts_with("sluice_redis_maxmemory_policy_info{"))
        .count();
    assert_eq!(nodes, 3, "one series per primary: {metrics}");
}
