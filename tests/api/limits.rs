//! Per-signal fixed windows: order of admission, partial limiting, headers, and exactness across
//! replicas under concurrency.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::{Value, json};

use sluice::keyspace::{Keyspace, WindowCount};

use crate::support::proxy::DelayProxy;
use crate::support::{TestEnv, event};

/// Waits out the end of a window so a test's requests all fall in one window.
async fn fresh_window(env: &TestEnv) {
    let (secs, _): (u64, u64) = redis::cmd("TIME").query(&mut env.redis.conn()).unwrap();
    let into = secs % 60;
    if into >= 45 {
        actix_web::rt::time::sleep(Duration::from_secs(61 - into)).await;
    }
}

#[actix_web::test]
async fn partial_limiting_admits_in_request_order_and_lists_the_rest() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    let state_id = env.signal(&tenant, "plan", "state", Some(3)).await;
    env.signal(&tenant, "visits", "metric", None).await;
    let api = env.spawn_api().await;
    fresh_window(&env).await;

    let mut events = Vec::new();
    for i in 0..5 {
        let mut e = event("plan", &format!("acc-{i}"));
        e["reference"] = json!(format!("p{i}"));
        events.push(e);
        events.push(event("visits", &format!("acc-{i}")));
    }
    let reply = api.batch(&key, json!(events)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = reply.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 8, "3 of plan + 5 of visits");
    let refs: Vec<&Value> = data
        .iter()
        .map(|d| &d["reference"])
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(
        refs,
        [&json!("p0"), &json!("p1"), &json!("p2")],
        "the first three in request order"
    );
    let limited = reply.body["rate_limited"].as_array().unwrap();
    assert_eq!(
        limited,
        &vec![
            json!({"signal_id": state_id, "reference": "p3", "index": 6}),
            json!({"signal_id": state_id, "reference": "p4", "index": 8}),
        ]
    );
    assert_eq!(
        reply.header("x-ratelimit-limit"),
        Some("1000"),
        "highest limit among the signals"
    );
    assert_eq!(
        reply.header("x-ratelimit-remaining"),
        Some("0"),
        "lowest remaining among them"
    );
    assert_eq!(
        env.stream_entries().len(),
        8,
        "only admitted events are enqueued"
    );
}

#[actix_web::test]
async fn a_fully_limited_batch_is_429_with_retry_after() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "plan", "state", None).await;
    let api = env.spawn_api().await;
    fresh_window(&env).await;

    let thirty: Vec<Value> = (0..30).map(|i| event("plan", &i.to_string())).collect();
    let first = api.batch(&key, json!(thirty)).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("x-ratelimit-limit"),
        Some("30"),
        "state default"
    );
    assert_eq!(first.header("x-ratelimit-remaining"), Some("0"));

    let reply = api
        .batch(&key, json!([event("plan", "x"), event("plan", "y")]))
        .await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.error(), "Rate limit exceeded for all events in batch");
    assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let reset =
        chrono::DateTime::parse_from_rfc3339(reply.header("x-ratelimit-reset").unwrap()).unwrap();
    let until = reset.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (until - retry as i64).abs() <= 2,
        "Retry-After {retry} vs reset in {until}"
    );
    assert_eq!(env.stream_entries().len(), 30);
}

#[actix_web::test]
async fn a_counter_from_an_older_window_counts_as_zero() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "plan", "state", Some(1)).await;
    let api = env.spawn_api().await;
    fresh_window(&env).await;
    assert_eq!(
        api.batch(&key, json!([event("plan", "1")])).await.status,
        200
    );
    assert_eq!(
        api.batch(&key, json!([event("plan", "2")])).await.status,
        429
    );

    // Age the counter by one window, as if a minute had passed.
    let keyspace = sluice::keyspace::Keyspace::new(env.settings().redis.partitions);
    let rl = keyspace.rate_limits(&tenant);
    let mut conn = env.redis.conn();
    let window = |conn: &mut redis::Connection| -> (i64, i64) {
        let state: String = redis::cmd("HGET").arg(&rl).arg("plan").query(conn).unwrap();
        let (w, n) = state.split_once(':').unwrap();
        (w.parse().unwrap(), n.parse().unwrap())
    };
    let (w, n) = window(&mut conn);
    let _: () = redis::cmd("HSET")
        .arg(&rl)
        .arg("plan")
        .arg(format!("{}:{n}", w - 60))
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        api.batch(&key, json!([event("plan", "3")])).await.status,
        200
    );
    let (_, n) = window(&mut conn);
    assert_eq!(n, 1);
}

/// A tenant's windows hash always expires a minute after the window it was last written in:
/// set by the first write of a window (a new hash, or one last written in an older window) and
/// kept by the later writes of that window.
#[actix_web::test]
async fn the_windows_hash_expires_a_minute_after_its_newest_window() {
    let env = TestEnv::start().await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "visits", "metric", None).await;
    env.signal(&tenant, "plan", "state", None).await;
    let api = env.spawn_api().await;
    fresh_window(&env).await;
    let rl = Keyspace::new(env.settings().redis.partitions).rate_limits(&tenant);
    let mut conn = env.redis.conn();
    let expiry = |conn: &mut redis::Connection| -> (i64, i64) {
        let visits: String = redis::cmd("HGET")
            .arg(&rl)
            .arg("visits")
            .query(conn)
            .unwrap();
        let window = visits.parse::<WindowCount>().unwrap().start;
        let at: i64 = redis::cmd("EXPIRETIME").arg(&rl).query(conn).unwrap();
        (window, at)
    };
    let send = |name: &'static str| {
        let api = &api;
        let key = &key;
        async move { api.batch(key, json!([event(name, "acc-1")])).await.status }
    };

    assert_eq!(send("visits").await, 200);
    let (window, at) = expiry(&mut conn);
    assert_eq!(at, window + 120, "a new hash");
    assert_eq!(send("visits").await, 200);
    assert_eq!(send("plan").await, 200);
    assert_eq!(
        expiry(&mut conn),
        (window, window + 120),
        "later writes keep it"
    );

    // As the hash would be had both slugs last been written a minute earlier.
    for slug in ["visits", "plan"] {
        let _: () = redis::cmd("HSET")
            .arg(&rl)
            .arg(slug)
            .arg(
                WindowCount {
                    start: window - 60,
                    admitted: 1,
                }
                .to_string(),
            )
            .query(&mut conn)
            .unwrap();
    }
    let _: () = redis::cmd("EXPIREAT")
        .arg(&rl)
        .arg(window + 60)
        .query(&mut conn)
        .unwrap();
    assert_eq!(send("visits").await, 200);
    assert_eq!(
        expiry(&mut conn),
        (window, window + 120),
        "the first write of a window"
    );
}

#[actix_web::test]
async fn a_signal_limit_of_its_own_overrides_the_type_default() {
    let env = TestEnv::start_with(&[("SLUICE__LIMITS__EVENT", "2")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "default_limit", "event", None).await;
    env.signal(&tenant, "own_limit", "event", Some(4)).await;
    let api = env.spawn_api().await;
    fresh_window(&env).await;
    let five = |slug: &str| {
        json!(
            (0..5)
                .map(|i| event(slug, &i.to_string()))
                .collect::<Vec<_>>()
        )
    };
    let a = api.batch(&key, five("default_limit")).await;
    assert_eq!(a.body["data"].as_array().unwrap().len(), 2);
    assert_eq!(a.header("x-ratelimit-limit"), Some("2"));
    let b = api.batch(&key, five("own_limit")).await;
    assert_eq!(b.body["data"].as_array().unwrap().len(), 4);
    assert_eq!(b.header("x-ratelimit-limit"), Some("4"));
}

#[actix_web::test]
async fn rate_limit_never_overadmits_across_replicas() {
    let env = TestEnv::start_with(&[("SLUICE__API__WORKERS", "2")]).await;
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "plan", "state", None).await;
    let replicas = [
        env.spawn_api().await,
        env.spawn_api().await,
        env.spawn_api().await,
    ];
    fresh_window(&env).await;

    // 60 concurrent requests of 2 events each, spread over the replicas: 120 asks for 30 slots.
    let requests = (0..60).map(|i| {
        let api = &replicas[i % replicas.len()];
        let key = key.clone();
        async move {
            api.batch(
                &key,
                json!([
                    event("plan", &format!("{i}a")),
                    event("plan", &format!("{i}b"))
                ]),
            )
            .await
        }
    });
    let replies = join_all(requests).await;

    let mut accepted = Vec::new();
    for reply in &replies {
        match reply.status {
            200 => accepted.extend(
                reply.body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["id"].as_str().unwrap().to_owned()),
            ),
            429 => assert_eq!(reply.error(), "Rate limit exceeded for all events in batch"),
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!(accepted.len(), 30, "exactly the limit is admitted");
    let mut stored: Vec<String> = env
        .stream_entries()
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    stored.sort();
    accepted.sort();
    assert_eq!(
        stored, accepted,
        "every acknowledged event, and only those, is in the stream"
    );
}

#[actix_web::test]
async fn requests_sharing_a_script_call_are_each_answered_as_if_alone() {
    // One api thread and one partition: every request below goes through one lane, so the
    // requests that arrive while a call is in flight share the next one, whatever their tenant.
    let env = TestEnv::start_with(&[
        ("SLUICE__API__WORKERS", "1"),
        ("SLUICE__REDIS__PARTITIONS", "1"),
    ])
    .await;
    let (a, key_a) = env.tenant().await;
    let (b, key_b) = env.tenant().await;
    for tenant in [&a, &b] {
        env.signal(tenant, "plan", "state", None).await;
        env.signal(tenant, "page_view", "event", None).await;
    }
    // Redis's replies held back 20 ms: whatever the machine's speed, the requests that arrive
    // while a call is in flight do wait for it.
    let proxy = DelayProxy::start(env.redis.port);
    let api = env.spawn_api_with(&env.settings_through(&proxy, &[]));
    let mut warm = Vec::new();
    for key in [&key_a, &key_b] {
        // Caches the keys: only the script calls meet the delay.
        let reply = api.batch(key, json!([event("page_view", "warm")])).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        warm.push(reply.body["data"][0]["id"].as_str().unwrap().to_owned());
    }
    proxy.delay_replies(Duration::from_millis(20));
    fresh_window(&env).await;
    env.reset_redis_stats();

    // 200 requests at once, of four kinds in turn: one state event of tenant a, one of tenant b
    // (each tenant's "plan" admits 30 a minute), a page view of tenant a under one of five
    // Idempotency-Keys (each key sent ten times with the same body), and an unknown signal of
    // tenant b.
    const REQUESTS: usize = 200;
    let requests = (0..REQUESTS).map(|i| {
        let (api, key_a, key_b) = (&api, &key_a, &key_b);
        async move {
            let reply = match i % 4 {
                0 => {
                    api.batch(key_a, json!([event("plan", &format!("a{i}"))]))
                        .await
                }
                1 => {
                    api.batch(key_b, json!([event("plan", &format!("b{i}"))]))
                        .await
                }
                2 => {
                    let n = i / 4 % 5;
                    let body = json!({"events": [event("page_view", &format!("k{n}"))]});
                    let req = api
                        .request(awc::http::Method::POST, "/v1/events/batch")
                        .insert_header(("Authorization", format!("Bearer {key_a}")))
                        .insert_header(("Content-Type", "application/json"))
                        .insert_header(("Idempotency-Key", format!("key-{n}")));
                    api.send(req, body.to_string().into_bytes()).await
                }
                _ => {
                    api.batch(key_b, json!([event("nope", &format!("n{i}"))]))
                        .await
                }
            };
            (i, reply)
        }
    });
    let replies = join_all(requests).await;

    let mut admitted = HashMap::<&str, Vec<String>>::new();
    let mut keyed = HashMap::<usize, Vec<String>>::new();
    for (i, reply) in &replies {
        let id = || reply.body["data"][0]["id"].as_str().unwrap().to_owned();
        match (i % 4, reply.status) {
            (0, 200) => admitted.entry("a").or_default().push(id()),
            (1, 200) => admitted.entry("b").or_default().push(id()),
            (0 | 1, 429) => {
                assert_eq!(reply.error(), "Rate limit exceeded for all events in batch")
            }
            (2, 200) => keyed.entry(i / 4 % 5).or_default().push(id()),
            (3, 404) => assert!(reply.error().contains("nope"), "{}", reply.text),
            (kind, status) => panic!("request {i} (kind {kind}): {status} {}", reply.text),
        }
    }
    assert_eq!(
        admitted["a"].len(),
        30,
        "tenant a's window admits exactly its limit"
    );
    assert_eq!(
        admitted["b"].len(),
        30,
        "tenant b's window admits exactly its limit"
    );
    assert_eq!(keyed.len(), 5);
    for (n, ids) in &keyed {
        assert_eq!(ids.len(), 10, "every request under key-{n} is answered 200");
        assert!(
            ids.iter().all(|id| *id == ids[0]),
            "every request under key-{n} gets the first one's id: {ids:?}"
        );
    }
    let calls = env.script_calls();
    assert!(
        calls < REQUESTS as u64,
        "requests waiting on a call in flight share the next: {calls} calls for {REQUESTS}"
    );

    let mut expected: Vec<String> = admitted.into_values().flatten().collect();
    expected.extend(keyed.into_values().map(|ids| ids[0].clone()));
    expected.extend(warm);
    expected.sort();
    let mut stored: Vec<String> = env
        .stream_entries()
        .into_iter()
        .map(|e| e["id"].clone())
        .collect();
    stored.sort();
    assert_eq!(
        stored, expected,
        "every acknowledged event is in the stream once, and nothing else"
    );
    for (tenant, expect) in [(&a, 30), (&b, 30)] {
        let window: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Keyspace::new(1).rate_limits(tenant))
            .query(&mut env.redis.conn())
            .unwrap();
        let count: WindowCount = window["plan"].parse().unwrap();
        assert_eq!(
            count.admitted, expect,
            "the window counts exactly what was enqueued: {window:?}"
        );
    }
}
