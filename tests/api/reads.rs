//! The read API: a client follows each event from `pending` to `processed` or `invalid`, lists
//! its events in pages, reads identities' latest states and metrics' rollups — only its own, and
//! with ingest unaffected while PostgreSQL is down.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{PATIENCE, Reply, TestApi, TestEnv, WorkerProcess, eventually};

/// A tenant with `page_view` (event), `mrr` (metric, value must be a number), `plan` and `tier`
/// (states), limits high enough for any test here; (tenant, key).
async fn tenant(env: &TestEnv) -> (String, String) {
    let (tenant, key) = env.tenant().await;
    env.signal(&tenant, "page_view", "event", Some(100_000))
        .await;
    env.signal(&tenant, "mrr", "metric", Some(100_000)).await;
    env.schema(
        &tenant,
        "mrr",
        json!({"type": "object", "properties": {"value": {"type": "number"}}, "required": ["value"]}),
    )
    .await;
    env.signal(&tenant, "plan", "state", Some(100_000)).await;
    env.signal(&tenant, "tier", "state", Some(100_000)).await;
    (tenant, key)
}

fn ev(signal: &str, account: &str, data: Value, at: &str, reference: &str) -> Value {
    json!({"signal": signal, "identity": {"type": "account", "id": account}, "data": data,
           "timestamp": at, "reference": reference})
}

/// Sends `events` (at most 100) and returns their ids.
async fn send(api: &TestApi, key: &str, events: Vec<Value>) -> Vec<String> {
    let reply = api.batch(key, Value::Array(events)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.body.get("rate_limited").is_none(), "{}", reply.text);
    reply.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn get(api: &TestApi, key: &str, path: &str) -> Reply {
    api.call("GET", path, key, None).await
}

/// Dependencies, a tenant (`tenant`), an api replica and a worker: (env, api, key, worker).
async fn running() -> (TestEnv, TestApi, String, WorkerProcess) {
    let env = TestEnv::start().await;
    let (_, key) = tenant(&env).await;
    let api = env.spawn_api().await;
    let worker = env.spawn_worker(&[]);
    (env, api, key, worker)
}

/// Each path is refused with 400 naming what is wrong; `unknown` (a path naming the slug
/// `nope`) answers 404 as ingest says it.
async fn assert_refused(api: &TestApi, key: &str, cases: &[(&str, &str)], unknown: &str) {
    for (path, names) in cases {
        let reply = get(api, key, path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text);
        assert!(reply.error().contains(names), "{path}: {}", reply.text);
    }
    let reply = get(api, key, unknown).await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.error(), "Signals not found: nope");
}

#[actix_web::test]
async fn an_event_is_followed_from_pending_to_processed_or_invalid() {
    let env = TestEnv::start().await;
    let (_, key) = tenant(&env).await;
    let api = env.spawn_api().await;
    let ids = send(
        &api,
        &key,
        vec![
            ev(
                "page_view",
                "acc_1",
                json!({"path": "/pricing"}),
                "2026-11-26T10:00:00Z",
                "r1",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": 499.5}),
                "2026-11-26T10:00:01.250Z",
                "r2",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": "lots"}),
                "2026-11-26T10:00:02Z",
                "r3",
            ),
        ],
    )
    .await;
    // Acknowledged, not stored yet: not found, which the docs say may be a moment's wait.
    let early = get(&api, &key, &format!("/v1/events/{}", ids[0])).await;
    assert_eq!(early.status, 404, "{}", early.text);
    assert_eq!(early.error(), format!("Event not found: {}", ids[0]));

    let _worker = env.spawn_worker(&[]);
    env.wait_for_events(3, PATIENCE.as_secs()).await;
    let read = |i: usize| {
        let (api, key, id) = (&api, &key, ids[i].clone());
        async move {
            let reply = get(api, key, &format!("/v1/events/{id}")).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            reply.body["data"].clone()
        }
    };
    let page_view = read(0).await;
    assert_eq!(page_view["id"], ids[0].as_str());
    assert_eq!(page_view["signal"], "page_view");
    assert!(page_view["signal_id"].as_str().unwrap().starts_with("sig_"));
    assert_eq!(page_view["schema_version"], Value::Null);
    assert_eq!(page_view["status"], "processed");
    assert_eq!(page_view["error"], Value::Null);
    assert_eq!(
        page_view["identity"],
        json!({"type": "account", "id": "acc_1"})
    );
    assert_eq!(page_view["data"], json!({"path": "/pricing"}));
    assert_eq!(page_view["timestamp"], "2026-11-26T10:00:00Z");
    assert!(page_view["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(page_view["reference"], "r1");

    let valid = read(1).await;
    assert_eq!(
        (valid["status"].as_str(), valid["schema_version"].as_i64()),
        (Some("processed"), Some(1))
    );
    assert_eq!(valid["timestamp"], "2026-11-26T10:00:01.250Z");
    let invalid = read(2).await;
    assert_eq!(invalid["status"], "invalid");
    assert!(
        invalid["error"]
            .as_str()
            .is_some_and(|e| e.contains("value")),
        "{invalid}"
    );
    assert_eq!(invalid["data"], json!({"value": "lots"}));

    // Not an id at all; an id no event has; a UUID of another kind than event ids.
    let bad = get(&api, &key, "/v1/events/not-a-uuid").await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.error(), "Not an event id: not-a-uuid");
    for unknown in [
        "01936f0e-2c4a-7000-8000-5f2f1c6d7e80",
        "6f1c9f5e-8a3b-4d2e-9c1a-0b7e8f1c3f44",
    ] {
        let reply = get(&api, &key, &format!("/v1/events/{unknown}")).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
    }
    let without_key = api.get(&format!("/v1/events/{}", ids[0])).await;
    assert_eq!(without_key.status, 401);
}

/// Every page of `GET /v1/events?{query}`, following `next_cursor`; `between` runs after each
/// page. Asserts each page's order.
async fn all_pages(
    api: &TestApi,
    key: &str,
    query: &str,
    mut between: impl AsyncFnMut(),
) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/events?{query}&cursor={c}"),
            None => format!("/v1/events?{query}"),
        };
        let reply = get(api, key, &path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let page = reply.body["data"].as_array().unwrap().clone();
        let order: Vec<(String, String)> = page
            .iter()
            .map(|e| {
                (
                    e["timestamp"].as_str().unwrap().to_owned(),
                    e["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut sorted = order.clone();
        sorted.sort_by(|a, b| b.cmp(a));
        assert_eq!(order, sorted, "newest first, then by id");
        all.extend(page);
        match reply.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return all,
        }
        between().await;
    }
}

fn ids_of(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[actix_web::test]
async fn events_list_in_pages_by_signal_status_identity_and_time_and_never_skip_or_repeat() {
    let (env, api, key, _worker) = running().await;
    // 300 events over two accounts and three signals, two a second; the mrr events of n = 1,
    // 31, 61, … invalid;
    // several share a timestamp, so ids break ties.
    let mut ids = Vec::new();
    for chunk in 0..3 {
        let events = (0..100)
            .map(|i| {
                let n = chunk * 100 + i;
                let at = format!("2026-11-26T10:{:02}:{:02}Z", n / 2 / 60, n / 2 % 60);
                let account = if n % 2 == 0 { "acc_even" } else { "acc_odd" };
                match n % 3 {
                    0 => ev("page_view", account, json!({"n": n}), &at, &format!("e{n}")),
                    1 if n % 10 == 1 => ev(
                        "mrr",
                        account,
                        json!({"value": "bad"}),
                        &at,
                        &format!("e{n}"),
                    ),
                    1 => ev("mrr", account, json!({"value": n}), &at, &format!("e{n}")),
                    _ => ev("plan", account, json!({"n": n}), &at, &format!("e{n}")),
                }
            })
            .collect();
        ids.extend(send(&api, &key, events).await);
    }
    env.wait_for_events(300, PATIENCE.as_secs()).await;

    // Pages of 40 while more events arrive between pages, newer and older than the cursor:
    // every event there at the start comes exactly once.
    let mut arrived = 0;
    let listed = all_pages(&api, &key, "limit=40", async || {
        arrived += 1;
        send(
            &api,
            &key,
            vec![
                ev(
                    "page_view",
                    "acc_new",
                    json!({}),
                    "2026-11-27T00:00:00Z",
                    "newer",
                ),
                ev(
                    "page_view",
                    "acc_new",
                    json!({}),
                    "2026-11-25T00:00:00Z",
                    "older",
                ),
            ],
        )
        .await;
    })
    .await;
    let listed_ids = ids_of(&listed);
    let unique: HashSet<&String> = listed_ids.iter().collect();
    assert_eq!(unique.len(), listed_ids.len(), "no event twice");
    for id in &ids {
        assert!(unique.contains(id), "{id} skipped");
    }
    assert!(arrived >= 7, "{arrived} pages");

    // Filters, each against what was sent.
    let by_signal = all_pages(&api, &key, "signal=mrr&limit=1000", async || {}).await;
    assert_eq!(by_signal.len(), 100);
    assert!(by_signal.iter().all(|e| e["signal"] == "mrr"));
    let invalid = all_pages(&api, &key, "status=invalid", async || {}).await;
    assert_eq!(invalid.len(), 10);
    assert!(
        invalid
            .iter()
            .all(|e| e["status"] == "invalid" && e["signal"] == "mrr")
    );
    let odd = all_pages(
        &api,
        &key,
        "identity_type=account&identity_id=acc_odd&signal=plan",
        async || {},
    )
    .await;
    assert_eq!(odd.len(), 50);
    assert!(odd.iter().all(|e| e["identity"]["id"] == "acc_odd"));
    // since is inclusive, until exclusive: 10:00:00 to 10:00:10 holds n = 0..20.
    let window = all_pages(
        &api,
        &key,
        "since=2026-11-26T10:00:00Z&until=2026-11-26T11:00:10%2B01:00",
        async || {},
    )
    .await;
    assert_eq!(window.len(), 20);

    assert_refused(
        &api,
        &key,
        &[
            ("/v1/events?limit=0", "limit"),
            ("/v1/events?limit=1001", "limit"),
            ("/v1/events?limit=ten", "limit"),
            ("/v1/events?status=pending", "status"),
            ("/v1/events?since=yesterday", "since"),
            ("/v1/events?until=2026-11-26", "until"),
            // An offset's + unencoded, so read as a space: the answer says how to send it.
            (
                "/v1/events?since=2026-11-26T10:00:00+01:00",
                "not \"2026-11-26T10:00:00 01:00\" (a + in a query string must be sent as %2B)",
            ),
            ("/v1/events?identity_type=account", "identity_id"),
            (
                "/v1/events?identity_type=Account&identity_id=a",
                "identity_type",
            ),
            ("/v1/events?cursor=abc", "cursor"),
            ("/v1/events?signal=Not_A_Slug", "signal"),
            ("/v1/events?colour=red", "colour"),
            ("/v1/events?signal=mrr&signal=plan", "signal"),
            ("/v1/events?identity_type=account&identity_id=%FF", "UTF-8"),
        ],
        "/v1/events?signal=nope",
    )
    .await;
}

#[actix_web::test]
async fn an_identity_reads_its_latest_state_per_signal_by_event_timestamp() {
    let (env, api, key, _worker) = running().await;
    // The newer plan arrives first; the older one after it must not win.
    let newer = send(
        &api,
        &key,
        vec![ev(
            "plan",
            "acc_1",
            json!({"plan": "pro"}),
            "2026-11-26T12:00:00Z",
            "p2",
        )],
    )
    .await;
    env.wait_for_events(1, PATIENCE.as_secs()).await;
    send(
        &api,
        &key,
        vec![
            ev(
                "plan",
                "acc_1",
                json!({"plan": "free"}),
                "2026-11-26T09:00:00Z",
                "p1",
            ),
            ev(
                "tier",
                "acc_1",
                json!({"tier": 2}),
                "2026-11-26T09:30:00Z",
                "t1",
            ),
            ev(
                "plan",
                "acc_2",
                json!({"plan": "team"}),
                "2026-11-26T09:00:00Z",
                "o1",
            ),
        ],
    )
    .await;
    env.wait_for_events(4, PATIENCE.as_secs()).await;

    let reply = get(&api, &key, "/v1/identities/account/acc_1").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let data = &reply.body["data"];
    assert_eq!(data["identity"], json!({"type": "account", "id": "acc_1"}));
    let states = data["states"].as_array().unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(states[0]["signal"], "plan");
    assert_eq!(states[0]["data"], json!({"plan": "pro"}));
    assert_eq!(states[0]["timestamp"], "2026-11-26T12:00:00Z");
    assert_eq!(states[0]["event_id"], newer[0].as_str());
    assert_eq!(states[1]["signal"], "tier");
    assert!(states[1]["signal_id"].as_str().unwrap().starts_with("sig_"));

    let nothing = get(&api, &key, "/v1/identities/deal/never-seen").await;
    assert_eq!(nothing.status, 200);
    assert_eq!(nothing.body["data"]["states"], json!([]));
    let bad = get(&api, &key, "/v1/identities/Account/acc_1").await;
    assert_eq!(bad.status, 400);
    assert!(bad.error().contains("identity_type"), "{}", bad.text);
    let long = get(
        &api,
        &key,
        &format!("/v1/identities/account/{}", "x".repeat(257)),
    )
    .await;
    assert_eq!(long.status, 400);
    // A byte that is not UTF-8 is refused, not read as U+FFFD; U+FFFD itself is an id like any.
    let not_utf8 = get(&api, &key, "/v1/identities/account/acc%FF").await;
    assert_eq!(not_utf8.status, 400, "{}", not_utf8.text);
    assert!(not_utf8.error().contains("UTF-8"), "{}", not_utf8.text);
    let replacement = get(&api, &key, "/v1/identities/account/acc%EF%BF%BD").await;
    assert_eq!(replacement.status, 200, "{}", replacement.text);
    assert_eq!(replacement.body["data"]["identity"]["id"], "acc\u{fffd}");
}

#[actix_web::test]
async fn a_metric_reads_its_rollups_by_hour_and_day_for_one_identity_or_all() {
    let (env, api, key, _worker) = running().await;
    send(
        &api,
        &key,
        vec![
            ev(
                "mrr",
                "acc_1",
                json!({"value": 10}),
                "2026-11-26T10:05:00Z",
                "a",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": 30}),
                "2026-11-26T10:55:00Z",
                "b",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": 5}),
                "2026-11-26T11:00:00Z",
                "c",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": 7}),
                "2026-11-27T00:00:00Z",
                "d",
            ),
            ev(
                "mrr",
                "acc_2",
                json!({"value": 100}),
                "2026-11-26T10:30:00Z",
                "e",
            ),
            ev(
                "mrr",
                "acc_2",
                json!({"value": "bad"}),
                "2026-11-26T10:30:00Z",
                "f",
            ),
        ],
    )
    .await;
    env.wait_for_events(6, PATIENCE.as_secs()).await;

    let buckets = |reply: &Reply| -> Vec<Value> { reply.body["data"].as_array().unwrap().clone() };
    let hourly = get(
        &api,
        &key,
        "/v1/signals/mrr/rollups?identity_type=account&identity_id=acc_1&granularity=hour",
    )
    .await;
    assert_eq!(hourly.status, 200, "{}", hourly.text);
    assert_eq!(
        buckets(&hourly),
        vec![
            json!({"start": "2026-11-26T10:00:00Z", "count": 2, "sum": 40.0, "min": 10.0, "max": 30.0}),
            json!({"start": "2026-11-26T11:00:00Z", "count": 1, "sum": 5.0, "min": 5.0, "max": 5.0}),
            json!({"start": "2026-11-27T00:00:00Z", "count": 1, "sum": 7.0, "min": 7.0, "max": 7.0}),
        ]
    );
    assert_eq!(hourly.body["next_cursor"], Value::Null);
    // Every identity, by day (the default), from a time on; the invalid event counts nowhere.
    let daily = get(
        &api,
        &key,
        "/v1/signals/mrr/rollups?until=2026-11-27T00:00:00Z",
    )
    .await;
    assert_eq!(
        buckets(&daily),
        vec![
            json!({"start": "2026-11-26T00:00:00Z", "count": 4, "sum": 145.0, "min": 5.0, "max": 100.0})
        ]
    );
    // A page at a time.
    let first = get(
        &api,
        &key,
        "/v1/signals/mrr/rollups?granularity=hour&limit=2",
    )
    .await;
    assert_eq!(buckets(&first).len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = get(
        &api,
        &key,
        &format!("/v1/signals/mrr/rollups?granularity=hour&limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(buckets(&rest).len(), 1);
    assert_eq!(buckets(&rest)[0]["start"], "2026-11-27T00:00:00Z");

    assert_refused(
        &api,
        &key,
        &[
            ("/v1/signals/mrr/rollups?granularity=week", "granularity"),
            ("/v1/signals/page_view/rollups", "metric"),
            ("/v1/signals/mrr/rollups?identity_id=acc_1", "identity_type"),
            ("/v1/signals/mrr/rollups?since=now", "since"),
            ("/v1/signals/mrr/rollups?limit=5000", "limit"),
            (
                "/v1/signals/mrr/rollups?identity_type=account&identity_id=a%C3",
                "UTF-8",
            ),
        ],
        "/v1/signals/nope/rollups",
    )
    .await;
}

/// A deployment upgraded with rollups already stored: the migration that adds the totals over
/// every identity computes them from the per-identity rows, and the read answers from them.
#[actix_web::test]
async fn rollups_stored_before_the_totals_existed_read_back_after_migrating() {
    let env = TestEnv::start().await;
    let (tenant, key) = tenant(&env).await;
    let pg = env.pg_client().await;
    // The database as migration 5 left it.
    pg.batch_execute(
        "DROP TABLE metric_rollup_totals;
         CREATE INDEX metric_rollups_signal ON metric_rollups (signal_id, granularity, bucket_start);
         DELETE FROM schema_migrations WHERE version = 6;",
    )
    .await
    .unwrap();
    let mrr: String = pg
        .query_one(
            "SELECT id FROM signals WHERE slug = 'mrr' AND tenant_id = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0);
    for (identity, count, sum, min, max) in [
        ("acc_1", 2_i64, 40.0, 10.0, 30.0),
        ("acc_2", 1, 100.0, 100.0, 100.0),
    ] {
        pg.execute(
            "INSERT INTO metric_rollups (signal_id, identity_type, identity_id, granularity,
                                         bucket_start, tenant_id, count, sum, min, max)
             VALUES ($1, 'account', $2, 'day', '2026-11-26T00:00:00Z', $3, $4, $5, $6, $7)",
            &[&mrr, &identity, &tenant, &count, &sum, &min, &max],
        )
        .await
        .unwrap();
    }
    assert_eq!(env.admin(&["migrate"])["applied"], json!([6]));

    let api = env.spawn_api().await;
    let all = get(&api, &key, "/v1/signals/mrr/rollups").await;
    assert_eq!(
        all.body["data"],
        json!([{"start": "2026-11-26T00:00:00Z", "count": 3, "sum": 140.0, "min": 10.0, "max": 100.0}]),
        "{}",
        all.text
    );
}

/// A bucket's sum is a double. A metric value is at most 1e289 in magnitude, so that no sum of
/// up to 2^63 of them leaves a double's range: larger ones are stored `invalid`, and every sum
/// reads back as a number — whether the events arrive in one batch or one by one.
#[actix_web::test]
async fn metric_values_too_large_to_sum_are_invalid_and_sums_stay_numbers() {
    let (env, api, key, _worker) = running().await;
    let at = "2026-11-26T10:05:00Z";
    let mut stored = 0;
    let mut one_by_one = |events: Vec<Value>| {
        stored += events.len() as i64;
        let (api, key, env) = (&api, &key, &env);
        async move {
            let ids = send(api, key, events).await;
            env.wait_for_events(stored, PATIENCE.as_secs()).await;
            ids
        }
    };
    one_by_one(vec![ev("mrr", "acc_1", json!({"value": 1e289}), at, "a")]).await;
    one_by_one(vec![ev("mrr", "acc_1", json!({"value": 1e289}), at, "b")]).await;
    one_by_one(vec![ev("mrr", "acc_2", json!({"value": 1e289}), at, "c")]).await;
    let huge = one_by_one(vec![
        ev("mrr", "acc_3", json!({"value": 1.7e308}), at, "d"),
        ev("mrr", "acc_3", json!({"value": -1.7e308}), at, "e"),
    ])
    .await;
    let later = one_by_one(vec![ev("mrr", "acc_3", json!({"value": 1.7e308}), at, "f")]).await;

    for id in huge.iter().chain(&later) {
        let read = get(&api, &key, &format!("/v1/events/{id}")).await;
        assert_eq!(read.body["data"]["status"], "invalid", "{}", read.text);
        let error = read.body["data"]["error"].as_str().unwrap();
        assert!(error.contains("from -1e289 to 1e289"), "{error}");
    }
    let one = get(
        &api,
        &key,
        "/v1/signals/mrr/rollups?identity_type=account&identity_id=acc_1",
    )
    .await;
    assert_eq!(
        one.body["data"],
        json!([{"start": "2026-11-26T00:00:00Z", "count": 2, "sum": 2e289, "min": 1e289, "max": 1e289}]),
        "{}",
        one.text
    );
    // Over every identity, the sum is added up at read time.
    let all = get(&api, &key, "/v1/signals/mrr/rollups?granularity=hour").await;
    assert_eq!(all.status, 200, "{}", all.text);
    let bucket = &all.body["data"][0];
    assert_eq!(bucket["count"], 3, "{}", all.text);
    let sum = bucket["sum"].as_f64().expect("a number");
    assert!((sum / 3e289 - 1.0).abs() < 1e-15, "{}", all.text);
}

#[actix_web::test]
async fn a_tenant_never_reads_another_tenants_anything() {
    let env = TestEnv::start().await;
    let (_, key_a) = tenant(&env).await;
    let (_, key_b) = tenant(&env).await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(&[]);
    // The same slugs and identities in both tenants; only A sends.
    let ids = send(
        &api,
        &key_a,
        vec![
            ev(
                "page_view",
                "acc_1",
                json!({}),
                "2026-11-26T10:00:00Z",
                "a1",
            ),
            ev(
                "mrr",
                "acc_1",
                json!({"value": 1}),
                "2026-11-26T10:00:00Z",
                "a2",
            ),
            ev(
                "plan",
                "acc_1",
                json!({"plan": "pro"}),
                "2026-11-26T10:00:00Z",
                "a3",
            ),
        ],
    )
    .await;
    env.wait_for_events(3, PATIENCE.as_secs()).await;
    for id in &ids {
        assert_eq!(
            get(&api, &key_a, &format!("/v1/events/{id}")).await.status,
            200
        );
        let reply = get(&api, &key_b, &format!("/v1/events/{id}")).await;
        assert_eq!(reply.status, 404, "{}", reply.text);
    }
    for query in [
        "",
        "?signal=mrr",
        "?identity_type=account&identity_id=acc_1",
        "?status=processed",
    ] {
        let reply = get(&api, &key_b, &format!("/v1/events{query}")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body["data"], json!([]), "{query}");
        let own = get(&api, &key_a, &format!("/v1/events{query}")).await;
        assert!(!own.body["data"].as_array().unwrap().is_empty(), "{query}");
    }
    let states = get(&api, &key_b, "/v1/identities/account/acc_1").await;
    assert_eq!(states.body["data"]["states"], json!([]));
    for path in [
        "/v1/signals/mrr/rollups",
        "/v1/signals/mrr/rollups?identity_type=account&identity_id=acc_1",
    ] {
        let reply = get(&api, &key_b, path).await;
        assert_eq!(reply.body["data"], json!([]), "{path}");
    }
}

#[actix_web::test]
async fn with_postgresql_down_reads_answer_503_naming_it_and_ingest_goes_on() {
    let mut env = TestEnv::start_with(&[("SLUICE__POSTGRES__READ_TIMEOUT_MS", "1000")]).await;
    let (_, key) = tenant(&env).await;
    let api = env.spawn_api().await;
    let worker = env.spawn_worker(&[]);
    let ids = send(
        &api,
        &key,
        vec![ev("page_view", "a", json!({}), "2026-11-26T10:00:00Z", "1")],
    )
    .await;
    env.wait_for_events(1, PATIENCE.as_secs()).await;
    let path = format!("/v1/events/{}", ids[0]);
    assert_eq!(get(&api, &key, &path).await.status, 200);

    // Killed while a reader keeps reading: every answer is 200 or a 503 naming PostgreSQL,
    // each within the read deadline (1 s here) and a margin for a loaded machine.
    let reader = {
        let (base, key, path) = (api.base.clone(), key.clone(), path.clone());
        actix_web::rt::spawn(async move {
            let api = TestApi::at(base.trim_start_matches("http://"));
            let mut seen = Vec::new();
            let started = Instant::now();
            // Until the kill has been felt (a loaded machine may take a while to get there).
            while !seen.contains(&503) && started.elapsed() < PATIENCE {
                let asked = Instant::now();
                let reply = get(&api, &key, &path).await;
                assert!(
                    reply.status == 200
                        || (reply.status == 503 && reply.error().contains("PostgreSQL")),
                    "{} {}",
                    reply.status,
                    reply.text
                );
                assert!(asked.elapsed() < Duration::from_secs(10), "a read hung");
                seen.push(reply.status);
            }
            seen
        })
    };
    env.pg.crash();
    let seen = reader.await.unwrap();
    assert!(seen.contains(&503), "{seen:?}");
    let down = get(&api, &key, &path).await;
    assert_eq!(down.status, 503);
    assert!(down.header("retry-after").is_some());

    // Ingest needs no PostgreSQL: it goes on, and the events are stored once it is back.
    let during = send(
        &api,
        &key,
        vec![ev("page_view", "a", json!({}), "2026-11-26T10:01:00Z", "2")],
    )
    .await;
    env.pg.start_again();
    worker.wait_ready(200).await;
    let path = format!("/v1/events/{}", during[0]);
    eventually(
        "the event sent during the outage to be readable",
        async || (get(&api, &key, &path).await.status == 200).then_some(()),
    )
    .await;
}

#[actix_web::test]
async fn reads_go_to_the_read_url_when_one_is_set() {
    let closed = format!(
        "postgres://postgres@127.0.0.1:{}/sluice",
        crate::support::servers::free_port()
    );
    let env = TestEnv::start_with(&[
        ("SLUICE__POSTGRES__READ_URL", closed.as_str()),
        ("SLUICE__POSTGRES__READ_TIMEOUT_MS", "1000"),
    ])
    .await;
    let (_, key) = tenant(&env).await;
    let api = env.spawn_api().await;
    let _worker = env.spawn_worker(&[]);
    send(
        &api,
        &key,
        vec![ev("page_view", "a", json!({}), "2026-11-26T10:00:00Z", "1")],
    )
    .await;
    env.wait_for_events(1, PATIENCE.as_secs()).await;
    let reply = get(&api, &key, "/v1/events").await;
    assert_eq!(
        reply.status, 503,
        "reads went to the read URL: {}",
        reply.text
    );
}

/// `data` reads back as PostgreSQL stores it: numbers beyond a 64-bit integer, or with more
/// digits than a float keeps, exactly as sent; strings with their spaces; no spaces added.
#[actix_web::test]
async fn data_reads_back_with_its_numbers_exactly_as_stored() {
    let (_env, api, key, _worker) = running().await;
    let data = r#"{"big":18446744073709551616,"neg":-123456789012345678901234567890,"dec":0.1000000000000000055511151231257827,"s":"a: b, c\t\"q\"","nested":{"list":[1, 2.50,{"k":null}]}}"#;
    // jsonb keeps the numbers exactly, but its own order of keys and its own spacing.
    let stored = r#"{"s":"a: b, c\t\"q\"","big":18446744073709551616,"dec":0.1000000000000000055511151231257827,"neg":-123456789012345678901234567890,"nested":{"list":[1,2.50,{"k":null}]}}"#;
    let body = format!(
        r#"{{"events":[{{"signal":"plan","identity":{{"type":"account","id":"exact"}},"data":{data}}}]}}"#
    );
    let reply = api
        .send(
            api.request(awc::http::Method::POST, "/v1/events/batch")
                .insert_header(("Authorization", format!("Bearer {key}")))
                .insert_header(("Content-Type", "application/json")),
            body.into_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let id = reply.body["data"][0]["id"].as_str().unwrap().to_owned();
    let one = eventually("the event to be stored", async || {
        let reply = get(&api, &key, &format!("/v1/events/{id}")).await;
        (reply.status == 200).then_some(reply)
    })
    .await;
    assert!(
        one.text.contains(&format!(r#""data":{stored},"#)),
        "{}",
        one.text
    );
    let states = get(&api, &key, "/v1/identities/account/exact").await;
    assert!(
        states.text.contains(&format!(r#""data":{stored},"#)),
        "{}",
        states.text
    );
    let list = get(
        &api,
        &key,
        "/v1/events?identity_type=account&identity_id=exact",
    )
    .await;
    assert!(
        list.text.contains(&format!(r#""data":{stored},"#)),
        "{}",
        list.text
    );
}
