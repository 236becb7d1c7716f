//! A worker killed with full batches in hand: the entries it held are claimed and stored at
//! drain speed once idle, not a hundred at a time.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{TestApi, TestEnv};

/// Tenants on distinct partitions, so the held entries span several streams.
const TENANTS: usize = 4;
const BATCH: &str = "5000";
const CLAIM_IDLE: Duration = Duration::from_secs(2);

/// Sends `per_tenant` events for each tenant, 100 per request.
async fn ingest(api: &TestApi, keys: &[String], per_tenant: usize, round: usize) {
    for (t, key) in keys.iter().enumerate() {
        for r in 0..per_tenant / 100 {
            let events: Vec<Value> = (0..100)
                .map(|i| {
                    json!({"signal": "hits", "identity": {"type": "account", "id": "a"},
                           "data": {"value": i}, "reference": format!("{round}-{t}-{r}-{i}")})
                })
                .collect();
            let reply = api.batch(key, Value::Array(events)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
    }
}

/// Tenants whose partitions differ, each with a key and a high-limit metric signal `hits`.
async fn tenants_on_distinct_partitions(env: &TestEnv) -> Vec<String> {
    let keyspace = sluice::keyspace::Keyspace::new(env.settings().redis.partitions);
    let mut used = std::collections::HashSet::new();
    let mut keys = Vec::new();
    while keys.len() < TENANTS {
        let (tenant, key) = env.tenant().await;
        if used.insert(keyspace.partition_of(&tenant)) {
            env.signal(&tenant, "hits", "metric", Some(1_000_000)).await;
            keys.push(key);
        }
    }
    keys
}

/// Kills a worker holding full batches on every partition, starts `survivor` (a consumer name,
/// or a new consumer when `None`) claiming after `survivor_idle`, and asserts everything is
/// stored within `wait` (the claim idle time, or nothing for a restart under the same name) plus
/// three normal drains of what was held.
async fn crash_and_recover(
    doomed_consumer: Option<&str>,
    survivor: Option<&str>,
    survivor_idle: Duration,
    wait: Duration,
) {
    let env = TestEnv::start().await;
    let keys = tenants_on_distinct_partitions(&env).await;
    let api = env.spawn_api().await;
    let settings = |consumer: Option<&str>, idle: Duration| {
        let mut vars = vec![
            ("SLUICE__WORKER__BATCH_SIZE".to_owned(), BATCH.to_owned()),
            (
                "SLUICE__WORKER__CLAIM_IDLE_MS".to_owned(),
                idle.as_millis().to_string(),
            ),
        ];
        if let Some(name) = consumer {
            vars.push(("SLUICE__WORKER__CONSUMER".to_owned(), name.to_owned()));
        }
        vars
    };
    let spawn = |consumer: Option<&str>, idle: Duration| {
        let vars = settings(consumer, idle);
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.spawn_worker(&vars)
    };

    // The normal drain rate of this machine, for the bound below.
    let warmup = 10_000;
    ingest(&api, &keys, warmup / TENANTS, 0).await;
    let started = Instant::now();
    let mut worker = spawn(None, CLAIM_IDLE);
    assert_eq!(env.wait_for_events(warmup as i64, 120).await, warmup as i64);
    let drain_rate = warmup as f64 / started.elapsed().as_secs_f64();
    assert_eq!(worker.terminate(30), Some(0));

    // A worker takes full batches from every partition and dies holding them.
    let total = 48_000;
    ingest(&api, &keys, total / TENANTS, 1).await;
    let mut doomed = spawn(doomed_consumer, CLAIM_IDLE);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Entries hold one 100-event request each: 150 entries are 15,000 events.
    while env.pending() < 150 {
        assert!(
            Instant::now() < deadline,
            "the worker never held its batches"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    doomed.kill9();
    let killed = Instant::now();
    let held = env.pending() * 100;

    let _survivor = spawn(survivor, survivor_idle);
    let all = (warmup + total) as i64;
    // The bound: the wait, plus three times what a normal drain of the held entries takes,
    // plus a margin for starting the process. Claiming 100 entries per partition per cycle
    // (as it once did) needs far longer for this many.
    let normal = Duration::from_secs_f64(held as f64 / drain_rate);
    let bound = wait + normal * 3 + Duration::from_secs(3);
    let stored = env.wait_for_events(all, 180).await;
    let took = killed.elapsed();
    assert_eq!(stored, all);
    eprintln!(
        "recovery: {held} held events stored {took:?} after the kill (bound {bound:?}, \
         normal drain {drain_rate:.0} events/s)"
    );
    assert!(
        took <= bound,
        "{held} held events: everything stored {took:?} after the kill; the bound was {bound:?} \
         (normal drain {drain_rate:.0} events/s)"
    );

    // Exactly once, and nothing left pending.
    let client = env.pg_client().await;
    let distinct: i64 = client
        .query_one("SELECT count(DISTINCT reference) FROM events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(distinct, all);
    crate::support::wait_until("the group to have nothing pending", || env.pending() == 0);
}

#[actix_web::test]
async fn a_killed_workers_entries_are_claimed_at_drain_speed() {
    crash_and_recover(None, None, CLAIM_IDLE, CLAIM_IDLE).await;
}

#[actix_web::test]
async fn a_worker_restarted_under_its_name_replays_its_entries_at_drain_speed() {
    // The restarted worker claims nothing from others for 10 minutes: only its replay of its
    // own pending entries can store them within the bound.
    let never = Duration::from_secs(600);
    crash_and_recover(Some("stable-1"), Some("stable-1"), never, Duration::ZERO).await;
}
