//! `Idempotency-Key` on the ingest endpoints: the answer of a request that admitted anything is
//! recorded by the admission script itself, and a retry with the same key and request gets that
//! answer again (same ids, nothing admitted or counted twice) from any replica, after restarts,
//! and after a late answer or a fault made the client retry.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::proxy::DelayProxy;
use crate::support::{ApiProcess, Reply, TestApi, TestEnv, event, spawn_api_process};

/// POSTs `body` to `path` with `key` and, if given, an `Idempotency-Key`.
pub async fn send(api: &TestApi, path: &str, key: &str, idem: Option<&str>, body: &Value) -> Reply {
    let mut req = api
        .request(awc::http::Method::POST, path)
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"));
    if let Some(idem) = idem {
        req = req.insert_header(("Idempotency-Key", idem));
    }
    api.send(req, body.to_string().into_bytes()).await
}

fn batch(refs: &[&str]) -> Value {
    json!({"events": refs.iter().map(|r| {
        let mut e = event("page_view", r);
        e["reference"] = json!(r);
        e
    }).collect::<Vec<_>>()})
}

/// How many rows of `events` carry each reference.
async fn stored_references(env: &TestEnv) -> HashMap<String, i64> {
    env.pg_client()
        .await
        .query(
            "SELECT reference, count(*) FROM events WHERE reference IS NOT NULL GROUP BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[actix_web::test]
async fn a_retry_with_the_same_key_replays_the_first_answer_from_any_replica_and_after_restarts() {
    let mut env = TestEnv::start_durable_with(&[]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let body = batch(&["r1", "r2", "r3"]);

    let first = send(&a, "/v1/events/batch", &key, Some("order-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("Idempotent-Replayed"), None);
    let remaining = first.header("X-RateLimit-Remaining").unwrap().to_owned();
    assert_eq!(remaining, "97");
    let ids: Vec<&str> = first.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "time-ordered: {ids:?}");

    // Another replica, the key quoted as the draft writes it: the same answer, byte for byte;
    // nothing enqueued or counted again.
    let again = send(&b, "/v1/events/batch", &key, Some("\"order-1\""), &body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("X-RateLimit-Remaining"), Some("97"));
    assert_eq!(env.stream_entries().len(), 3);

    // Concurrent requests under a new key: exactly one admits, the others replay it.
    let body2 = batch(&["c1", "c2"]);
    let replies = futures_util::future::join_all((0..6).map(|i| {
        send(
            if i % 2 == 0 { &a } else { &b },
            "/v1/events/batch",
            &key,
            Some("order-2"),
            &body2,
        )
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == 200));
    let admitted = replies
        .iter()
        .filter(|r| r.header("Idempotent-Replayed").is_none())
        .count();
    assert_eq!(admitted, 1);
    assert!(
        replies
            .iter()
            .all(|r| r.body["data"] == replies[0].body["data"])
    );
    assert_eq!(env.stream_entries().len(), 5);

    // A new replica, and Redis restarted from its append-only file: still the same answer.
    drop((a, b));
    env.redis.restart();
    let c = env.spawn_api().await;
    let after = send(&c, "/v1/events/batch", &key, Some("order-1"), &body).await;
    assert_eq!(after.status, 200, "{}", after.text);
    assert_eq!(after.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(after.body["data"], first.body["data"]);

    // Stored once, under the ids the answers gave.
    let _worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(5, 30).await, 5);
    let client = env.pg_client().await;
    for id in ids {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM events WHERE id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "{id}");
    }
    assert!(stored_references(&env).await.values().all(|&n| n == 1));
}

#[actix_web::test]
async fn a_key_with_another_request_is_422_and_keys_belong_to_their_tenant() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (other, other_key) = env.tenant().await;
    env.signal(&other, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    let body = batch(&["x1"]);
    let first = send(&api, "/v1/events/batch", &key, Some("k"), &body).await;
    assert_eq!(first.status, 200);

    // A different body, or the same body to the other endpoint, under the same key.
    let different = send(&api, "/v1/events/batch", &key, Some("k"), &batch(&["x2"])).await;
    assert_eq!(different.status, 422, "{}", different.text);
    assert_eq!(
        different.error(),
        "Idempotency-Key has already been used with a different request"
    );
    let single = send(&api, "/v1/events", &key, Some("k"), &body["events"][0]).await;
    assert_eq!(single.status, 422, "{}", single.text);
    assert_eq!(env.stream_entries().len(), 1);

    // Another tenant with the same key and body: its own request, admitted, other ids.
    let theirs = send(&api, "/v1/events/batch", &other_key, Some("k"), &body).await;
    assert_eq!(theirs.status, 200, "{}", theirs.text);
    assert_eq!(theirs.header("Idempotent-Replayed"), None);
    assert_ne!(theirs.body["data"][0]["id"], first.body["data"][0]["id"]);
    assert_eq!(env.stream_entries().len(), 2);
}

#[actix_web::test]
async fn a_partly_limited_answer_replays_unchanged_and_a_429_records_nothing() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(3)).await;
    let api = env.spawn_api().await;
    let body = batch(&["p1", "p2", "p3", "p4", "p5"]);
    let first = send(&api, "/v1/events/batch", &key, Some("partly"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(first.body["rate_limited"].as_array().unwrap().len(), 2);

    let window_key = sluice::keyspace::Keyspace::new(16).rate_limits(&tenant);
    let used = |conn: &mut redis::Connection| -> i64 {
        let state: String = redis::cmd("HGET")
            .arg(&window_key)
            .arg("page_view")
            .query(conn)
            .unwrap();
        state.split_once(':').unwrap().1.parse().unwrap()
    };
    let mut conn = env.redis.conn();
    assert_eq!(used(&mut conn), 3);
    let again = send(&api, "/v1/events/batch", &key, Some("partly"), &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.header("X-RateLimit-Remaining"), Some("0"));
    assert_eq!(used(&mut conn), 3, "a replay counts nothing");

    // Nothing admitted: 429, and no record, so the key is free for a later attempt.
    let late = batch(&["q1"]);
    let limited = send(&api, "/v1/events/batch", &key, Some("later"), &late).await;
    assert_eq!(limited.status, 429);
    let record = sluice::keyspace::Keyspace::new(16).idempotency(&tenant, "later");
    let exists: i64 = redis::cmd("EXISTS").arg(&record).query(&mut conn).unwrap();
    assert_eq!(exists, 0);
    // The window starts afresh (as the next minute would): the same key is admitted anew.
    let _: () = redis::cmd("DEL").arg(&window_key).query(&mut conn).unwrap();
    let admitted = send(&api, "/v1/events/batch", &key, Some("later"), &late).await;
    assert_eq!(admitted.status, 200, "{}", admitted.text);
    assert_eq!(admitted.header("Idempotent-Replayed"), None);
    assert_eq!(env.stream_entries().len(), 4);
}

#[actix_web::test]
async fn the_single_event_endpoint_replays_and_bad_keys_are_400() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let api = env.spawn_api().await;
    let one = event("page_view", "s1");
    let first = send(&api, "/v1/events", &key, Some("single-1"), &one).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = send(&api, "/v1/events", &key, Some("single-1"), &one).await;
    assert_eq!(again.text, first.text);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));

    let long = "k".repeat(256);
    let longest = "k".repeat(255);
    for bad in [
        "",
        "has space",
        long.as_str(),
        "\"unterminated",
        "\"in\"side\"",
    ] {
        let reply = send(&api, "/v1/events/batch", &key, Some(bad), &batch(&["b"])).await;
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.text);
        assert!(
            reply.error().starts_with("Idempotency-Key "),
            "{}",
            reply.text
        );
    }
    // Bytes that are not ASCII, and the header twice.
    let req = api
        .request(awc::http::Method::POST, "/v1/events/batch")
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .insert_header((
            "Idempotency-Key",
            awc::http::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        ));
    let reply = api.send(req, batch(&["b"]).to_string().into_bytes()).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let req = api
        .request(awc::http::Method::POST, "/v1/events/batch")
        .insert_header(("Authorization", format!("Bearer {key}")))
        .insert_header(("Content-Type", "application/json"))
        .append_header(("Idempotency-Key", "one"))
        .append_header(("Idempotency-Key", "two"));
    let reply = api.send(req, batch(&["b"]).to_string().into_bytes()).await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    assert_eq!(reply.error(), "Idempotency-Key must be sent once");
    assert_eq!(
        env.stream_entries().len(),
        1,
        "no bad key admitted anything"
    );
    let ok = send(
        &api,
        "/v1/events/batch",
        &key,
        Some(&longest),
        &batch(&["b"]),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
}

/// The api's settings with Redis reached through `proxy` and a short deadline.
fn through(env: &TestEnv, proxy: &DelayProxy) -> sluice::config::Settings {
    // One connection, opened by the first request: later delays hit a script, not a handshake.
    env.settings_through(
        proxy,
        &[
            ("SLUICE__REDIS__TIMEOUT_MS", "300"),
            ("SLUICE__REDIS__POOL_SIZE", "1"),
        ],
    )
}

#[actix_web::test]
async fn a_late_answer_retried_with_its_key_is_stored_once_and_without_one_twice() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let proxy = DelayProxy::start(env.redis.port);
    let api = env.spawn_api_with(&through(&env, &proxy));
    // Caches the API key, so only the admission script meets the delay.
    assert_eq!(
        send(&api, "/v1/events/batch", &key, None, &batch(&["warm"]))
            .await
            .status,
        200
    );

    for (reference, idem) in [("late-keyed", Some("late-1")), ("late-bare", None)] {
        let body = batch(&[reference]);
        proxy.delay_replies(Duration::from_millis(1000));
        let late = send(&api, "/v1/events/batch", &key, idem, &body).await;
        proxy.delay_replies(Duration::ZERO);
        assert_eq!(late.status, 503, "{}", late.text);
        assert!(late.error().contains("Idempotency-Key"), "{}", late.text);
        let retry = send(&api, "/v1/events/batch", &key, idem, &body).await;
        assert_eq!(retry.status, 200, "{}", retry.text);
        assert_eq!(
            retry.header("Idempotent-Replayed"),
            idem.map(|_| "true"),
            "the script ran the first time"
        );
    }

    let _worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(4, 30).await, 4);
    let stored = stored_references(&env).await;
    assert_eq!(stored["late-keyed"], 1);
    assert_eq!(
        stored["late-bare"], 2,
        "without a key the retry stores it again"
    );
}

#[actix_web::test]
async fn a_connection_lost_after_the_script_ran_is_unconfirmed_and_a_keyed_retry_stores_it_once() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let proxy = DelayProxy::start(env.redis.port);
    let api = env.spawn_api_with(&through(&env, &proxy));
    // Caches the API key, so the script is the command whose answer is lost.
    let warm = send(&api, "/v1/events/batch", &key, None, &batch(&["warm"])).await;
    assert_eq!(warm.status, 200, "{}", warm.text);

    let body = batch(&["cut"]);
    // The script's answer ("ok …", lua/admit.lua) is lost; a health check's or a key lookup's
    // is not.
    proxy.cut_reply(b"EVALSHA", b"\r\nok ");
    let lost = send(&api, "/v1/events/batch", &key, Some("cut-1"), &body).await;
    // The script reached Redis and ran: sending it again unasked would admit the event twice.
    assert_eq!(lost.status, 503, "{}", lost.text);
    assert!(
        lost.error().contains("may have been accepted"),
        "{}",
        lost.text
    );
    let retry = send(&api, "/v1/events/batch", &key, Some("cut-1"), &body).await;
    assert_eq!(retry.status, 200, "{}", retry.text);
    assert_eq!(retry.header("Idempotent-Replayed"), Some("true"));

    let _worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(2, 30).await, 2);
    let stored = stored_references(&env).await;
    assert_eq!(stored["cut"], 1);
}

/// Clients that retry every failure (the same request, with the same key when `with_keys`)
/// against two api replicas behind a proxy to Redis, while replies are delayed past the
/// deadline, a replica is killed and restarted, and Redis is killed and restarted. Returns the
/// references acknowledged and how many times each was stored.
async fn retrying_clients_under_faults(with_keys: bool) -> (Vec<String>, HashMap<String, i64>) {
    let mut env = TestEnv::start_durable_with(&[("SLUICE__LIMITS__EVENT", "1000000")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let proxy = DelayProxy::start(env.redis.port);
    let redis_url = format!("redis://127.0.0.1:{}", proxy.port);
    let api_vars = [
        ("SLUICE__REDIS__URL", redis_url.as_str()),
        ("SLUICE__REDIS__TIMEOUT_MS", "300"),
    ];
    let mut apis: Vec<(ApiProcess, String)> = (0..2)
        .map(|_| spawn_api_process(&env, None, &api_vars))
        .collect();
    let worker = env.spawn_worker(&[("SLUICE__WORKER__CLAIM_IDLE_MS", "1000")]);
    worker.wait_ready(200).await;

    let stop = Arc::new(AtomicBool::new(false));
    let targets: Vec<String> = apis.iter().map(|(_, a)| a.clone()).collect();
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let clients = (0..4).map(|c| {
                    let (targets, key, stop) = (targets.clone(), key.clone(), stop.clone());
                    async move {
                        let http = awc::Client::builder()
                            .timeout(Duration::from_secs(5))
                            .finish();
                        let mut acked = Vec::new();
                        let mut attempt = c;
                        for n in 0.. {
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                            let refs: Vec<String> =
                                (0..5).map(|i| format!("c{c}-{n}-{i}")).collect();
                            let body = batch(&refs.iter().map(String::as_str).collect::<Vec<_>>());
                            let idem = format!("c{c}-{n}");
                            // Retry until acknowledged: every failure, any status but 200.
                            let deadline = Instant::now() + Duration::from_secs(30);
                            while Instant::now() < deadline {
                                attempt += 1;
                                let target = &targets[attempt % targets.len()];
                                let mut req = http
                                    .post(format!("http://{target}/v1/events/batch"))
                                    .insert_header(("Authorization", format!("Bearer {key}")))
                                    .insert_header(("Content-Type", "application/json"));
                                if with_keys {
                                    req = req.insert_header(("Idempotency-Key", idem.as_str()));
                                }
                                if let Ok(mut res) = req.send_body(body.to_string()).await
                                    && res.status() == 200
                                    && let Ok(bytes) = res.body().limit(1 << 20).await
                                {
                                    let answer: Value = serde_json::from_slice(&bytes).unwrap();
                                    acked.extend(
                                        answer["data"]
                                            .as_array()
                                            .unwrap()
                                            .iter()
                                            .map(|d| d["reference"].as_str().unwrap().to_owned()),
                                    );
                                    break;
                                }
                                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        acked
                    }
                });
                futures_util::future::join_all(clients)
                    .await
                    .into_iter()
                    .flatten()
                    .collect::<Vec<String>>()
            })
        })
    };
    let pause = |secs: f64| std::thread::sleep(Duration::from_secs_f64(secs));

    pause(1.5);
    proxy.delay_replies(Duration::from_millis(600));
    pause(1.0);
    proxy.delay_replies(Duration::ZERO);
    pause(1.0);
    let port: u16 = apis[0].1.rsplit(':').next().unwrap().parse().unwrap();
    let _ = apis[0].0.kill();
    let _ = apis[0].0.wait();
    pause(0.3);
    apis[0] = spawn_api_process(&env, Some(port), &api_vars);
    pause(1.0);
    env.redis.stop(); // kill -9
    pause(0.5);
    env.redis.restart(); // same port, the append-only file (fsync always)
    pause(1.5);
    proxy.delay_replies(Duration::from_millis(600));
    pause(1.0);
    proxy.delay_replies(Duration::ZERO);
    pause(1.0);
    stop.store(true, Ordering::Relaxed);
    let acked = load.join().unwrap();
    assert!(
        acked.len() > 200,
        "the load kept going: {} acknowledged",
        acked.len()
    );

    // Wait until everything acknowledged is stored, then a little longer for duplicates.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut stored = HashMap::new();
    while Instant::now() < deadline {
        stored = stored_references(&env).await;
        if acked.iter().all(|r| stored.contains_key(r)) && env.pending() == 0 {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    }
    drop(worker);
    (acked, stored)
}

#[actix_web::test]
async fn clients_retrying_with_keys_store_every_event_once_through_kills_and_restarts() {
    let (acked, stored) = retrying_clients_under_faults(true).await;
    let missing: Vec<_> = acked.iter().filter(|r| !stored.contains_key(*r)).collect();
    assert!(
        missing.is_empty(),
        "acknowledged, never stored: {missing:?}"
    );
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "stored twice: {twice:?}");
}

#[actix_web::test]
async fn clients_retrying_without_keys_store_duplicates_through_the_same_faults() {
    let (acked, stored) = retrying_clients_under_faults(false).await;
    assert!(acked.iter().all(|r| stored.contains_key(r)));
    let twice = stored.values().filter(|n| **n > 1).count();
    println!("without keys: {twice} references stored more than once");
    assert!(twice > 0, "the faults made retries that admitted again");
}

#[actix_web::test]
async fn a_record_of_a_100_event_request_costs_under_1_kib() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(1000)).await;
    let api = env.spawn_api().await;
    let keyspace = sluice::keyspace::Keyspace::new(16);
    let mut conn = env.redis.conn();
    let refs: Vec<String> = (0..100).map(|i| format!("ref-{i}")).collect();
    let body = batch(&refs.iter().map(String::as_str).collect::<Vec<_>>());
    // A UUID, as most clients send, and the longest key allowed.
    let longest = "k".repeat(255);
    for idem in ["0b7e8f1c-3f44-4a8e-9a59-5f2f1c6d7e80", longest.as_str()] {
        let reply = send(&api, "/v1/events/batch", &key, Some(idem), &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let bytes: i64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(keyspace.idempotency(&tenant, idem))
            .query(&mut conn)
            .unwrap();
        println!("record for a {}-character key: {bytes} bytes", idem.len());
        assert!(bytes <= 1024, "{bytes} bytes");
    }
    // For the capacity arithmetic of docs/operations.md: the smallest request.
    let idem = "1c9d3e0a-5b6f-4a7e-8c9d-0e1f2a3b4c5d";
    let reply = send(&api, "/v1/events/batch", &key, Some(idem), &batch(&["one"])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let bytes: i64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keyspace.idempotency(&tenant, idem))
        .query(&mut conn)
        .unwrap();
    println!("record of a 1-event request: {bytes} bytes");
}

#[actix_web::test]
async fn on_a_redis_cluster_the_record_lives_beside_the_stream_and_replays() {
    let cluster = crate::support::cluster::RedisCluster::start();
    let env = TestEnv::start_on_cluster(&cluster, &[]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", None).await;
    let (a, b) = (env.spawn_api().await, env.spawn_api().await);
    let body = batch(&["k1", "k2"]);
    let first = send(&a, "/v1/events/batch", &key, Some("cluster-1"), &body).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = send(&b, "/v1/events/batch", &key, Some("cluster-1"), &body).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(again.text, first.text);
    // Same slot as the stream: one script call could write both.
    let keyspace = sluice::keyspace::Keyspace::new(16);
    let record = keyspace.idempotency(&tenant, "cluster-1");
    let stream = sluice::keyspace::Keyspace::stream(keyspace.partition_of(&tenant));
    assert_eq!(
        sluice::keyspace::cluster_slot(&record),
        sluice::keyspace::cluster_slot(&stream)
    );
    let _worker = env.spawn_worker(&[]);
    assert_eq!(env.wait_for_events(2, 30).await, 2);
}
